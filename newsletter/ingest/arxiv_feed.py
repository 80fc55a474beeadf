"""Parser for arXiv feeds: the API's Atom export and the RSS 2.0 listing feeds.

feedparser does the XML; this module maps entries to papers: the arXiv id (version stripped)
from the entry id, guid or link, and the version it names (from those, or from the RSS
description's ``arXiv:2509.04664v2`` prefix; the store keeps the text of the latest version it
reads); title; abstract (RSS descriptions start with ``arXiv:2509.04664v1 Announce Type: new
Abstract:``, which is removed); authors (Atom ``<author>`` elements, or RSS ``dc:creator`` as
one comma-separated string); published date; link. The feed's own date is the digest date. A
paper cross-listed in several categories is one entry per listing, the same id: one paper.
"""

from __future__ import annotations

import io
import re
import time
from datetime import date
from typing import Any

import feedparser

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

FORMAT = "arxiv-feed"
_ROOT = re.compile(r"<(?:feed|rss|rdf:RDF)\b", re.I)
_ARXIV_IN = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf)/|oai:arXiv\.org:|^arXiv:|^)"
    r"(\d{4}\.\d{4,5}(?:v\d+)?|[a-z\-]{1,16}(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?)",
    re.I,
)
_RSS_PREFIX = re.compile(r"^\s*arXiv:\S+\s+Announce Type:\s*\S+\s*(?:Abstract:\s*)?", re.I)
_RSS_VERSION = re.compile(r"\s*arXiv:(\S+)\s+Announce Type:", re.I)
_AUTHOR_SPLIT = re.compile(r"\s*,\s*|\s+and\s+")


def sniff(text: str) -> bool:
    head = text.lstrip()[:4096]
    return head.startswith("<") and bool(_ROOT.search(head))


def parse(text: str, *, name: str, today: date) -> ParsedDigest:
    # A stream, never a str: feedparser treats a string that looks like a URL or a path as a
    # location and fetches or opens it, which a digest file must never make us do.
    feed: Any = feedparser.parse(io.BytesIO(text.encode("utf-8")))
    entries = list(feed.entries)
    if feed.bozo and not entries:
        raise ParseError(
            f"{name}: not a well-formed feed ({feed.get('bozo_exception')}); "
            "was the file truncated?"
        )
    papers: list[ParsedPaper] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        title = squash_spaces(str(entry.get("title") or ""), MAX_TITLE_CHARS)
        if not title:
            skipped.append(f"{name}: entry {index}: no title, skipped")
            continue
        papers.append(_paper(entry, title))
    if not papers:
        raise ParseError(f"{name}: the feed has no paper entries")
    return ParsedDigest(
        format=FORMAT,
        papers=tuple(papers),
        digest_date=_date(_raw(feed.feed, "updated_parsed") or _raw(feed.feed, "published_parsed")),
        skipped=tuple(skipped),
    )


def _paper(entry: Any, title: str) -> ParsedPaper:
    arxiv_id = version = None
    for candidate in (entry.get("id"), entry.get("guid"), entry.get("link")):
        match = _ARXIV_IN.search(str(candidate or ""))
        if match and (arxiv_id := normalize_arxiv_id(match.group(1))):
            version = arxiv_version(match.group(1))
            break
    summary = str(entry.get("summary") or "")
    if version is None and arxiv_id:  # RSS: the version is in "arXiv:2509.04664v2 Announce…"
        prefix = _RSS_VERSION.match(summary)
        if prefix and normalize_arxiv_id(prefix.group(1)) == arxiv_id:
            version = arxiv_version(prefix.group(1))
    summary = squash_spaces(_RSS_PREFIX.sub("", summary, count=1), MAX_ABSTRACT_CHARS)
    authors = _authors(entry)
    # Values are kept one character past each limit: newsletter.ingest cuts them and says so;
    # a link that is not http(s) is dropped there too.
    return ParsedPaper(
        title=title,
        abstract=summary,
        authors=authors[: MAX_AUTHORS + 1],
        author_count=len(authors) or None,
        published=_date(_raw(entry, "published_parsed") or _raw(entry, "updated_parsed")),
        arxiv_id=arxiv_id,
        arxiv_version=version,
        url=f"https://arxiv.org/abs/{arxiv_id}"
        if arxiv_id
        else (str(entry.get("link") or "") or None),
    )


def _raw(mapping: Any, key: str) -> Any:
    """dict.get, bypassing feedparser's deprecated key aliases (and their warnings)."""
    return dict.get(mapping, key)


def _authors(entry: Any) -> tuple[str, ...]:
    names = [str(a.get("name") or "").strip() for a in entry.get("authors") or []]
    names = [n for n in names if n]
    if len(names) == 1 and "," in names[0]:  # RSS dc:creator: "A. One, B. Two, C. Three"
        names = [n for n in _AUTHOR_SPLIT.split(names[0]) if n]
    return tuple(squash_spaces(name, MAX_AUTHOR_NAME_CHARS) for name in names)


def _date(parsed: time.struct_time | None) -> date | None:
    if not parsed:
        return None
    try:
        return date(parsed.tm_year, parsed.tm_mon, parsed.tm_mday)
    except ValueError:
        return None
