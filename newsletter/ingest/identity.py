"""Paper identity: the arXiv id without version when known, else a normalized title key.

Two entries are the same paper when their keys are equal: ``2509.04664v2``, ``2509.04664v1``
and ``2509.04664`` are one paper (:func:`arxiv_version` reads the version an entry names, which
decides whose title and abstract the stored paper keeps: ``newsletter.store.rows.merged``).
The title key ignores case, punctuation, white space, Unicode form, hyphenation (pre-training =
pretraining) and LaTeX markup (``E$^{2}$GAN`` = ``E2GAN``), because digests copy titles with
all of those varying.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from newsletter.domain import ParsedPaper

_ARXIV_ID = re.compile(
    r"(?:arxiv:)?(\d{4}\.\d{4,5}|[a-z\-]{1,16}(?:\.[A-Z]{2})?/\d{7})(?:v(\d+))?$", re.I
)
MAX_KEY_CHARS = 200  # a title key longer than this is shortened with a hash of the rest
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_NOT_WORD = re.compile(r"[\W_]+")


def normalize_arxiv_id(raw: str) -> str | None:
    """``arXiv:2509.04664v2`` -> ``2509.04664``; None when it is not an arXiv id."""
    match = _ARXIV_ID.match(raw.strip())
    return match.group(1).lower() if match else None


def arxiv_version(raw: str) -> int | None:
    """``arXiv:2509.04664v2`` -> 2; None when the id names no version (or is no arXiv id)."""
    match = _ARXIV_ID.match(raw.strip())
    digits = match.group(2) if match else None
    return int(digits) if digits and len(digits) <= 6 else None  # no real paper has v1000000


def title_key(title: str) -> str:
    text = unicodedata.normalize("NFKC", title)
    text = _LATEX_COMMAND.sub("", text)
    key = _NOT_WORD.sub("", text.casefold())
    if len(key) > MAX_KEY_CHARS:  # keys are indexed columns of bounded width
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        key = f"{key[: MAX_KEY_CHARS - 33]}~{digest}"
    return key


def paper_key(paper: ParsedPaper) -> str:
    if paper.arxiv_id:
        arxiv = normalize_arxiv_id(paper.arxiv_id)
        if arxiv:
            return f"arxiv:{arxiv}"
    return f"title:{title_key(paper.title)}"
