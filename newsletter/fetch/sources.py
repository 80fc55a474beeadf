"""The kinds of source ``newsletter fetch`` knows, and the URL each asks for.

A source (a ``[[source]]`` table, :class:`newsletter.config.SourceSettings`) names a kind and a
base URL; this module turns them into the URL of one request and the file name of what it
brought. No I/O here: pure functions, so the URLs are tested without a network.

* ``hf_daily``: the Hugging Face daily papers API, one date a request
  (``https://huggingface.co/api/daily_papers?date=2026-11-26``): a JSON list;
* ``arxiv_rss``: arXiv's announcement feed of some categories
  (``https://rss.arxiv.org/rss/cs.CL+cs.LG``): RSS 2.0, empty on days without announcements;
* ``arxiv_api``: the arXiv API's newest submissions matching a query
  (``http://export.arxiv.org/api/query?search_query=…&sortBy=submittedDate&…``): Atom; the
  API's terms ask for 3 seconds between requests (:data:`ARXIV_API_SPACING_SECONDS`);
* ``url``: any URL that answers in a format the inbox reads, fetched as given.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import date
from urllib.parse import quote, urlencode, urlsplit

#: The arXiv API's terms of use: no more than one request every three seconds.
ARXIV_API_SPACING_SECONDS = 3.0
#: Results asked of the arXiv API per request (its own default is 10).
ARXIV_API_MAX_RESULTS = 100


class SourceKind(enum.StrEnum):
    HF_DAILY = "hf_daily"
    ARXIV_RSS = "arxiv_rss"
    ARXIV_API = "arxiv_api"
    URL = "url"


DEFAULT_URLS: dict[SourceKind, str | None] = {
    SourceKind.HF_DAILY: "https://huggingface.co/api/daily_papers",
    SourceKind.ARXIV_RSS: "https://rss.arxiv.org/rss",
    SourceKind.ARXIV_API: "http://export.arxiv.org/api/query",
    SourceKind.URL: None,  # a url source must give its URL
}

#: The file extension of what each kind brings (cosmetic: the inbox detects the format by
#: content); a ``url`` source's is taken from the answer's Content-Type.
EXTENSIONS: dict[SourceKind, str] = {
    SourceKind.HF_DAILY: "json",
    SourceKind.ARXIV_RSS: "rss",
    SourceKind.ARXIV_API: "atom",
}


def request_url(
    kind: SourceKind,
    base_url: str,
    *,
    day: date,
    categories: str | None = None,
    query: str | None = None,
    max_results: int = ARXIV_API_MAX_RESULTS,
) -> str:
    """The URL of one request of a source of ``kind`` at ``base_url``, for ``day``."""
    if kind is SourceKind.HF_DAILY:
        return _with_query(base_url, {"date": day.isoformat()})
    if kind is SourceKind.ARXIV_RSS:
        # "cs.CL+cs.LG": arXiv joins categories with a literal plus in the path.
        return base_url.rstrip("/") + "/" + quote(categories or "", safe="+.-_")
    if kind is SourceKind.ARXIV_API:
        return _with_query(
            base_url,
            {
                "search_query": query or "",
                "sortBy": "submittedDate",
                "sortOrder": "descending",
                "start": "0",
                "max_results": str(max_results),
            },
        )
    return base_url


def _with_query(base_url: str, params: dict[str, str]) -> str:
    joiner = "&" if urlsplit(base_url).query else "?"
    return base_url + joiner + urlencode(params)


def extension(kind: SourceKind, content_type: str | None) -> str:
    """The extension of the inbox file for an answer of ``content_type``."""
    if kind in EXTENSIONS:
        return EXTENSIONS[kind]
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.endswith("json"):
        return "json"
    if media.endswith("xml") or "rss" in media or "atom" in media:
        return "xml"
    return "txt"


def inbox_name(name: str, day: date, body: bytes, ext: str) -> str:
    """``<name>-<date>-<short hash>.<ext>``: the same bytes get the same name."""
    short = hashlib.sha256(body).hexdigest()[:12]
    return f"{name}-{day.isoformat()}-{short}.{ext}"
