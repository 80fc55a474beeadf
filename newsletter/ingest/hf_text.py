"""Parser for text scrapes of the Hugging Face "Daily Papers" pages.

Layouts seen in the wild (all five are in ``seeds/``):

* header lines, a page date (``Mar 12``), then per paper: title, blank, abstract, blank;
* the same with a ``Daily Papers`` header line;
* no blank lines at all: title and abstract alternate, and the first title is glued to the
  ``Subscribe`` button text (``SubscribeDeep Clustering via…``);
* per paper: title, abstract, ``  • N authors``, ``·``, and a date line (``Jun 17``,
  ``Oct 4, 2023``) optionally followed by an upvote count (``Sep 5, 2024 4``).

Blank lines carry no meaning here: the parser works on the non-blank lines, which makes all
layouts one grammar: ``title abstract [authors-line dot-line date-line]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

from newsletter.domain import ParsedDigest, ParsedPaper
from newsletter.errors import ParseError
from newsletter.ingest import dates

FORMAT = "hf-text"
BOILERPLATE = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Get trending papers in your email inbox once a day!",
        "Subscribe",
        "Daily Papers",
        "byAK and the research community",
    }
)
_AUTHORS = re.compile(r"^•\s*(\d{1,9})\s+authors?$")  # 9 digits: fits the store's integers
_DOT = "·"
MAX_TITLE_CHARS = 400


def sniff(text: str) -> bool:
    """Any text that is not markup. JSON is sniffed before this parser, so a title that
    starts with a bracket ("[Re] Reproducing …") still reads as a title."""
    head = text.lstrip()[:1]
    return bool(head) and head != "<"


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if _glued_to_subscribe(line):
            line = line[len("Subscribe") :].strip()
        if line in BOILERPLATE:
            continue
        yield number, line


def parse(text: str, *, name: str, today: date) -> ParsedDigest:
    """Parse one scrape. ``today`` resolves year-less dates when the page has no own date."""
    lines = list(_lines(text))
    digest_date: date | None = None
    if lines and (m := dates.DATE_LINE.match(lines[0][1])) and not m["upvotes"]:
        digest_date = dates.resolve(dates.MONTHS[m["mon"]], int(m["day"]), _int(m["year"]), today)
        lines = lines[1:]
    reference = digest_date or today
    papers: list[ParsedPaper] = []
    i = 0
    while i < len(lines):
        number, title = lines[i]
        if len(title) > MAX_TITLE_CHARS or _is_meta(title):
            raise ParseError(
                f"{name}, line {number}: expected a paper title, found "
                f"{_describe(title)}; is a title or an abstract missing just before it?"
            )
        if i + 1 >= len(lines):
            raise ParseError(
                f"{name}, line {number}: the paper {title[:60]!r} has no abstract "
                "(the file may be truncated)"
            )
        abstract = lines[i + 1][1]
        i += 2
        author_count: int | None = None
        published: date | None = None
        upvotes: int | None = None
        if i < len(lines) and (m_auth := _AUTHORS.match(lines[i][1])):
            author_count = int(m_auth[1])
            i += 1
            if i < len(lines) and lines[i][1] == _DOT:
                i += 1
            if i < len(lines) and (m_date := dates.DATE_LINE.match(lines[i][1])):
                published = dates.resolve(
                    dates.MONTHS[m_date["mon"]], int(m_date["day"]), _int(m_date["year"]), reference
                )
                upvotes = _int(m_date["upvotes"])
                i += 1
        papers.append(
            ParsedPaper(
                title=title,
                abstract=abstract,
                author_count=author_count,
                published=published,
                upvotes=upvotes,
                line=number,
            )
        )
    if not papers:
        raise ParseError(f"{name}: no paper found (expected lines of title, then abstract)")
    return ParsedDigest(format=FORMAT, papers=tuple(papers), digest_date=digest_date)


def _glued_to_subscribe(line: str) -> bool:
    """``SubscribeDeep Clustering…`` (button text glued to a title), not ``Subscriber …``."""
    rest = line[len("Subscribe") :]
    return (
        line.startswith("Subscribe") and bool(rest) and not (rest[0].islower() or rest[0].isspace())
    )


def _is_meta(line: str) -> bool:
    return bool(_AUTHORS.match(line)) or line == _DOT


def _describe(line: str) -> str:
    if _is_meta(line):
        return f"the metadata line {line!r}"
    return f"a paragraph of {len(line)} characters"


def _int(value: str | None) -> int | None:
    return int(value) if value else None
