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

That grammar fits any text with an even number of lines, so a file is read as a digest only
on evidence (meeting notes and shopping lists are quarantined, not published). Any one of:

1. the page's own text: a line ``Get trending papers in your email inbox!`` (or ``… once a
   day!``), ``Subscribe`` (alone or glued to the first title), ``Daily Papers`` or ``byAK and
   the research community`` (a lone ``new`` is too common to count);
2. a page date: the first line is a date such as ``Mar 12``;
3. paper metadata: an author line ``• N authors``;
4. failing those, every title/abstract pair reads as a paper: the title is not a sentence or
   a list item (it does not end with ``.``, ``,`` or ``;``), and either the abstract looks
   like one on its own (at least 100 characters and 15 words), or it is a sentence (ending
   with ``.``, ``!`` or ``?``) under a Title Case title of two or more words (every word of
   five or more letters has a capital, as in most Daily Papers titles: ``Meeting notes`` is
   not one).

A file without evidence is quarantined with a reason that names the first pair that does not
read as a paper. A one-line file keeps the reason "has no abstract (the file may be
truncated)": there is no pair to judge, and a cut-off download is the likely cause.
"""

from __future__ import annotations

import re
from datetime import date
from itertools import islice

from newsletter.domain import ParsedDigest, ParsedPaper
from newsletter.errors import ParseError
from newsletter.ingest import dates
from newsletter.limits import MAX_TITLE_CHARS

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
# Boilerplate that is evidence of a Daily Papers page ("new" alone is in too many texts).
PAGE_TEXT = BOILERPLATE - {"new"}
_AUTHORS = re.compile(r"^•\s*(\d{1,9})\s+authors?$")  # 9 digits: fits the store's integers
_DOT = "·"
# Evidence rule 4 (module docstring): what a lone title/abstract pair must look like.
ABSTRACT_MIN_CHARS = 100
ABSTRACT_MIN_WORDS = 15
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
_NOT_A_TITLE_END = (".", ",", ";")
TITLE_CASE_MIN_LETTERS = 5  # shorter words ("with", "for", "via") stay lower case in titles
QUOTED_CHARS = 60  # how much of a line a quarantine reason quotes


def sniff(text: str) -> bool:
    """Any text that is not markup. JSON is sniffed before this parser, so a title that
    starts with a bracket ("[Re] Reproducing …") still reads as a title.

    Being the last parser, this one says yes to the rest so that ``parse`` can give the
    precise reason: the evidence rule (module docstring) is applied there, not here."""
    head = text.lstrip()[:1]
    return bool(head) and head != "<"


def _lines(text: str) -> tuple[list[tuple[int, str]], bool]:
    """The non-blank lines without boilerplate, and whether the page's own text was seen."""
    lines: list[tuple[int, str]] = []
    page_text = False
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if _glued_to_subscribe(line):
            line = line[len("Subscribe") :].strip()
            page_text = True
        if line in BOILERPLATE:
            page_text = page_text or line in PAGE_TEXT
            continue
        lines.append((number, line))
    return lines, page_text


def parse(text: str, *, name: str, today: date) -> ParsedDigest:
    """Parse one scrape. ``today`` resolves year-less dates when the page has no own date.

    Raises ParseError for a text that is not a digest by the evidence rule (module docstring)
    or that breaks the grammar; a text without evidence is judged before its grammar error
    is reported, so notes with an odd number of lines are "not a digest", not "truncated".
    """
    lines, page_text = _lines(text)
    digest_date: date | None = None
    dated = False
    if lines and (m := dates.DATE_LINE.match(lines[0][1])) and not m["upvotes"]:
        dated = True
        digest_date = dates.resolve(dates.MONTHS[m["mon"]], int(m["day"]), _int(m["year"]), today)
        lines = lines[1:]
    papers, error = _papers(lines, name=name, reference=digest_date or today)
    if not (page_text or dated or any(_AUTHORS.match(line) for _, line in lines)):
        for paper in papers:
            if not _reads_as_paper(paper.title, paper.abstract):
                raise ParseError(
                    f"{name}, line {paper.line}: not a Hugging Face Daily Papers digest: no "
                    f"page header, page date or author line, and {_quote(paper.title)} then "
                    f"{_quote(paper.abstract)} do not read as a paper title and its abstract"
                )
    if error is not None:
        raise error
    if not papers:
        raise ParseError(f"{name}: no paper found (expected lines of title, then abstract)")
    return ParsedDigest(format=FORMAT, papers=tuple(papers), digest_date=digest_date)


def _papers(
    lines: list[tuple[int, str]], *, name: str, reference: date
) -> tuple[list[ParsedPaper], ParseError | None]:
    """The papers up to the first grammar error, and that error (None if there is none)."""
    papers: list[ParsedPaper] = []
    i = 0
    while i < len(lines):
        number, title = lines[i]
        if len(title) > MAX_TITLE_CHARS or _is_meta(title):
            return papers, ParseError(
                f"{name}, line {number}: expected a paper title, found "
                f"{_describe(title)}; is a title or an abstract missing just before it?"
            )
        if i + 1 >= len(lines):
            return papers, ParseError(
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
    return papers, None


def _reads_as_paper(title: str, abstract: str) -> bool:
    """Evidence rule 4 (module docstring): does this pair read as a paper on its own?"""
    if title.endswith(_NOT_A_TITLE_END):
        return False
    # Count words only up to the minimum: a 47 MB abstract must not become a list of words.
    words = islice(_WORD.finditer(abstract), ABSTRACT_MIN_WORDS)
    if len(abstract) >= ABSTRACT_MIN_CHARS and sum(1 for _ in words) >= ABSTRACT_MIN_WORDS:
        return True
    return bool(_SENTENCE_END.search(abstract)) and _title_case(title)


def _title_case(title: str) -> bool:
    """Two or more words, and every word of five or more letters has a capital (``Notes``,
    ``mPLUG-DocOwl``; not ``notes``)."""
    words = title.split()
    return len(words) >= 2 and all(
        any(ch.isupper() for ch in word)
        for word in words
        if sum(ch.isalpha() for ch in word) >= TITLE_CASE_MIN_LETTERS
    )


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


def _quote(line: str) -> str:
    """A line as a reason quotes it: at most QUOTED_CHARS characters, control characters
    escaped (repr), so the reason stays one short line."""
    return repr(line if len(line) <= QUOTED_CHARS else line[: QUOTED_CHARS - 1] + "…")


def _int(value: str | None) -> int | None:
    return int(value) if value else None
