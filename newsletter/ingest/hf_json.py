"""Parser for Hugging Face daily-papers API dumps (JSON).

The API returns a list. Each item is either a daily-papers record wrapping the paper::

    {"paper": {"id": "2509.04664", "title": …, "summary": …, "authors": [{"name": …}],
               "publishedAt": "2025-09-04T17:59:51.000Z", "upvotes": 12},
     "publishedAt": …, "title": …, "numComments": 3}

or the inner paper object itself. Items that are not papers (no title) are skipped with a
note naming their index; a file with no paper at all is a parse error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from newsletter.domain import ParsedDigest, ParsedPaper
from newsletter.errors import ParseError
from newsletter.ingest.identity import arxiv_version, normalize_arxiv_id
from newsletter.ingest.text import squash_spaces
from newsletter.limits import (
    MAX_ABSTRACT_CHARS,
    MAX_AUTHOR_NAME_CHARS,
    MAX_AUTHORS,
    MAX_TITLE_CHARS,
)

FORMAT = "hf-json"
MAX_COUNT = 2**31 - 1  # what the database's integer columns hold
# JSON, not a text scrape whose first title starts with a bracket ("[Re] Reproducing …").
_JSON_START = re.compile(r'\s*(?:\[\s*(?:[\[{"\]\d-]|true|false|null)|\{\s*["}])')


def sniff(text: str) -> bool:
    return bool(_JSON_START.match(text))


def parse(text: str, *, name: str, today: date) -> ParsedDigest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"{name}, line {exc.lineno}, column {exc.colno}: invalid or truncated JSON "
            f"({exc.msg}); was the file still being written?"
        ) from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, a number too long
        raise ParseError(f"{name}: JSON this reader refuses ({exc})") from None
    if isinstance(data, Mapping):
        # Some dumps wrap the list: {"papers": [...]} / {"data": [...]}; a single paper also.
        wrapped = next(
            (data[k] for k in ("papers", "data", "items") if isinstance(data.get(k), list)), None
        )
        data = wrapped if wrapped is not None else [data]
    if not isinstance(data, list):
        raise ParseError(f"{name}: JSON of type {type(data).__name__}, expected a list of papers")
    papers: list[ParsedPaper] = []
    skipped: list[str] = []
    for index, item in enumerate(data):
        paper = _paper(item)
        if paper is None:
            skipped.append(f"{name}: item {index}: no paper title, skipped")
        else:
            papers.append(paper)
    if not papers:
        raise ParseError(
            f"{name}: no paper found in {len(data)} JSON item(s) (expected objects with "
            '"title" and "summary", or {"paper": {...}})'
        )
    return ParsedDigest(format=FORMAT, papers=tuple(papers), skipped=tuple(skipped))


def _paper(item: Any) -> ParsedPaper | None:
    if not isinstance(item, Mapping):
        return None
    inner = item.get("paper")
    paper: Mapping[str, Any] = inner if isinstance(inner, Mapping) else item
    title = _text(paper.get("title")) or _text(item.get("title"))
    if not title:
        return None
    raw_id = _text(paper.get("id"))
    arxiv_id = normalize_arxiv_id(raw_id) if raw_id else None
    version = arxiv_version(raw_id) if arxiv_id else None  # "2509.04664v2": rarely given
    raw_authors = paper.get("authors")
    names = (
        _text(a.get("name")) if isinstance(a, Mapping) else _text(a)
        for a in (raw_authors if isinstance(raw_authors, list) else [])
    )
    authors = [squash_spaces(name, MAX_AUTHOR_NAME_CHARS) for name in names if name]
    summary = _text(paper.get("summary")) or _text(item.get("summary"))
    # Values are kept one character past each limit: newsletter.ingest cuts them and says so.
    return ParsedPaper(
        title=squash_spaces(title, MAX_TITLE_CHARS),
        abstract=squash_spaces(summary, MAX_ABSTRACT_CHARS),
        authors=tuple(authors[: MAX_AUTHORS + 1]),
        author_count=len(authors) or None,
        published=_date(paper.get("publishedAt")) or _date(item.get("publishedAt")),
        upvotes=_int(paper.get("upvotes")) if "upvotes" in paper else _int(item.get("upvotes")),
        arxiv_id=arxiv_id,
        arxiv_version=version,
        url=f"https://arxiv.org/abs/{arxiv_id}" if arxiv_id else None,
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    """A count as the store can hold it: non-negative, finite, at most MAX_COUNT."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if 0 <= value <= MAX_COUNT else None


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date()
    except ValueError:
        return None
