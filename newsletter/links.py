"""A paper's links besides its main one: PDF, Hugging Face page, code repository.

Derived, never invented: the PDF and the Hugging Face paper page exist for every arXiv paper
(from its id; an id that does not look like arXiv's gets neither), and the code link is the
first GitHub, GitLab, Codeberg or Hugging Face repository URL the abstract itself names (as
"Code is available at https://github.com/…"). Every URL passes
:func:`~newsletter.limits.http_url`, the one rule for links from digest files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from newsletter.domain import Paper
from newsletter.limits import http_url

__all__ = ["PaperLinks", "arxiv_id_of", "paper_links"]

# New-style ids (2509.04664, optionally v2) and old-style ones (cs/0112017).
_ARXIV_ID_RE = re.compile(r"(?:\d{4}\.\d{4,5}|[a-z][a-z.-]*/\d{7})(?:v\d+)?", re.IGNORECASE)
_CODE_RE = re.compile(
    r"https?://(?:www\.)?(?:github\.com|gitlab\.com|codeberg\.org|huggingface\.co)"
    r"/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+",
)


@dataclass(frozen=True)
class PaperLinks:
    """``pdf`` and ``huggingface`` when the arXiv id is known; ``code`` when the abstract names
    a repository; each None otherwise."""

    pdf: str | None = None
    huggingface: str | None = None
    code: str | None = None


def arxiv_id_of(paper: Paper) -> str | None:
    """The paper's arXiv id without its version (``2509.04664``), or None."""
    raw = (paper.arxiv_id or "").strip()
    if not raw or not _ARXIV_ID_RE.fullmatch(raw):
        return None
    return re.sub(r"v\d+$", "", raw)


def paper_links(paper: Paper) -> PaperLinks:
    arxiv = arxiv_id_of(paper)
    pdf = hf = None
    if arxiv is not None:
        quoted = quote(arxiv, safe="/.")
        pdf = f"https://arxiv.org/pdf/{quoted}"
        hf = f"https://huggingface.co/papers/{quoted}" if "/" not in arxiv else None
    code = None
    match = _CODE_RE.search(paper.abstract or "")
    if match is not None:
        code = http_url(match.group().rstrip("."))
    return PaperLinks(pdf=pdf, huggingface=hf, code=code)
