"""Ingest: digest files in, papers stored once.

A file is identified by the SHA-256 of its bytes, so dropping the same bytes again is a no-op
and an edited file is read again (its known papers merge, its new ones are added). A file
that cannot be read is *quarantined*: recorded in the database with a one-line reason and left
where it is on disk, untouched (see docs/ARCHITECTURE.md: nothing a user gave us is lost, and
the operator fixes or removes it). One bad file never stops the others.

Format detection is by content, not file name: each parser module has ``sniff(text)`` and
``parse(text, name=, today=)``; the first that sniffs yes parses.

Only regular files are read, never through a symbolic link, and names are shown escaped
(``newsletter/ingest/files.py``): anything else in the inbox is *skipped* (reported, not
recorded). Every parsed paper then passes :func:`within_limits`, the one place where fields
over ``newsletter.limits`` are cut and links that are not http(s) are dropped, each with a
note in the file's report.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

from newsletter.domain import DigestRecord, IngestStatus, ParsedDigest, ParsedPaper
from newsletter.errors import DataRejected, ParseError
from newsletter.ingest import arxiv_feed, hf_json, hf_text, html_page
from newsletter.ingest.files import (
    NotRegularFile,
    SpecialFile,
    name_problem,
    printable_path,
)
from newsletter.ingest.files import read_regular_file as read_regular_file  # tests spy on it
from newsletter.ingest.identity import paper_key, title_key
from newsletter.ingest.text import clean_text, decode, looks_binary
from newsletter.limits import (
    MAX_ABSTRACT_CHARS,
    MAX_AUTHOR_NAME_CHARS,
    MAX_AUTHORS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    http_url,
)
from newsletter.store import DigestKnown, KeyedPaper, Store

log = logging.getLogger(__name__)

Parser = Callable[..., ParsedDigest]
# Order matters: the first parser whose sniff() says yes parses. HTML is recognized before
# the XML feeds (both start with "<"), and the text scrape comes last: it takes any text that
# is not JSON or markup.
PARSERS: tuple[tuple[str, Callable[[str], bool], Parser], ...] = (
    (hf_json.FORMAT, hf_json.sniff, hf_json.parse),
    (html_page.FORMAT, html_page.sniff, html_page.parse),
    (arxiv_feed.FORMAT, arxiv_feed.sniff, arxiv_feed.parse),
    (hf_text.FORMAT, hf_text.sniff, hf_text.parse),
)
QUOTED_TITLE_CHARS = 60  # how much of a title a note quotes to say which paper it is about
# Files a producer is still writing, by the conventions of common tools: skipped until renamed.
TEMP_SUFFIXES = frozenset({".part", ".partial", ".tmp", ".temp", ".crdownload", ".download"})


@dataclass(frozen=True)
class FileReport:
    """What ingest did with one file."""

    path: str
    status: IngestStatus
    format: str | None = None
    entries: int = 0
    papers_new: int = 0
    papers_merged: int = 0
    reason: str | None = None
    skipped: tuple[str, ...] = ()  # entries of an ingested file that were not papers
    recorded: bool = True  # False when the file could not even be read: retried next scan
    notes: tuple[str, ...] = ()  # fields of an ingested file cut to a limit, links dropped


def parse_bytes(data: bytes, *, name: str, today: date) -> ParsedDigest:
    """Decode and parse one file's bytes; raise ParseError with a reason naming the file."""
    if not data:
        raise ParseError(f"{name}: the file is empty")
    if looks_binary(data):
        raise ParseError(f"{name}: binary data, not a text digest")
    text, _encoding = decode(data)
    text = clean_text(text)
    for _format, sniff, parse in PARSERS:
        if sniff(text):
            return parse(text, name=name, today=today)
    if not text.strip():
        raise ParseError(f"{name}: the file holds only white space")
    raise ParseError(
        f"{name}: not a digest format this version reads (Hugging Face Daily Papers text or "
        "JSON, arXiv Atom or RSS)"
    )


def digest_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their entries, sorted by name.

    Every entry is a candidate whatever its name (the format is detected from the content),
    except hidden files and temporary names (``.part``, ``.tmp``, ``~``…) that producers use
    while writing, and sub-folders (not recursed into). Symbolic links, FIFOs, sockets and
    devices are listed too, unopened, so that ingest reports them as skipped rather than
    leaving the operator to wonder why a file was ignored. A folder given as a path (the
    inbox itself) is followed even if it is a link: that is configuration, not inbox content.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if not _is_temp(p) and not _is_dir(p))
        else:
            found.append(path)
    return found


def _is_dir(path: Path) -> bool:
    """A real sub-folder (not a link to one); False when the entry vanished meanwhile."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def inbox_problem(inbox: Path) -> str | None:
    """Why the inbox folder cannot be scanned (missing, not a folder, unreadable), or None.

    A scan of such an inbox finds no file and says nothing, so a typo in ``inbox`` would
    look like a quiet day for ever: the daemon refuses to start on it and every run summary
    carries it as a warning.
    """
    shown = inbox.resolve()
    fix = "or set inbox (NEWSLETTER_INBOX) to the folder digest files are dropped in"
    if not inbox.exists():
        return f"inbox {shown} does not exist: create it, {fix}"
    if not inbox.is_dir():
        return f"inbox {shown} is not a folder: {fix}"
    try:
        with os.scandir(inbox) as entries:
            next(entries, None)
    except OSError as exc:
        return f"inbox {shown} cannot be read ({exc.strerror or exc}): fix its permissions, {fix}"
    return None


def _is_temp(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.endswith("~") or path.suffix.lower() in TEMP_SUFFIXES


class InboxScanner:
    """Holds back files that are still being written.

    A file is ready when its size and modification time are the same in two consecutive
    scans. The daemon keeps one scanner for its lifetime, so its scans N seconds apart are the
    two scans; ``run --once`` scans twice, ``settle_seconds`` apart, but skips the pause when
    every file is older than that (a file untouched for longer would show the same in both).

    Entries that are not regular files (links, FIFOs, …) are never read, so there is nothing
    to wait for: they are ready at once, and once reported as skipped they are, like files
    already read, not reported again while they stay the same (the daemon logs them once,
    not every scan).
    """

    def __init__(self, settle_seconds: float = 1.0) -> None:
        self.settle_seconds = settle_seconds
        self._last: dict[Path, tuple[int, int]] = {}
        self._handled: dict[Path, tuple[int, int]] = {}  # files read in an earlier scan
        self._special: set[Path] = set()  # entries of the last scan that are not regular files

    def handled(self, path: Path) -> None:
        """Remember ``path`` as read: unchanged, it is not even hashed again by later scans."""
        if path in self._last:
            self._handled[path] = self._last[path]

    def is_handled(self, path: Path) -> bool:
        return path in self._handled and self._handled[path] == self._last.get(path)

    def scan(self, paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
        """Return (ready, still being written) among the files under ``paths``."""
        ready: list[Path] = []
        waiting: list[Path] = []
        current: dict[Path, tuple[int, int]] = {}
        self._special = set()
        for path in digest_files(paths):
            try:
                st = os.lstat(path)  # never follows a link
            except OSError:
                continue  # vanished between listing and stat: a rename in progress
            signature = (st.st_size, st.st_mtime_ns)
            current[path] = signature
            if not stat.S_ISREG(st.st_mode):
                self._special.add(path)
                ready.append(path)  # never read: nothing to wait for
                continue
            (ready if self._last.get(path) == signature else waiting).append(path)
        self._last = current
        return ready, waiting

    def scan_settled(
        self, paths: Sequence[Path], *, wall_clock_ns: int
    ) -> tuple[list[Path], list[Path]]:
        """Two scans in one call (for ``run --once``): pause only if some file is young."""
        self.scan(paths)
        young = any(
            wall_clock_ns - mtime < self.settle_seconds * 1e9
            for path, (_, mtime) in self._last.items()
            if path not in self._special
        )
        if young and self.settle_seconds > 0:
            time.sleep(self.settle_seconds)
        return self.scan(paths)


def ingest_paths(
    store: Store,
    paths: Sequence[Path],
    *,
    now: datetime,
    max_bytes: int,
    progress: Callable[[FileReport], None] | None = None,
    scanner: InboxScanner | None = None,
    two_scans: bool = True,
) -> list[FileReport]:
    """Ingest every digest file under ``paths``; one report per file, in order.

    With a scanner, files still being written are reported as ``waiting`` and left for the
    next scan; without one (``newsletter ingest`` by hand) every file is read now. The daemon
    passes ``two_scans=False``: its scans, minutes apart, are the two scans.
    """
    waiting: list[Path] = []
    if scanner is None:
        ready = digest_files(paths)
    else:
        ready, waiting = (
            scanner.scan_settled(paths, wall_clock_ns=time.time_ns())
            if two_scans
            else scanner.scan(paths)
        )
    reports: list[FileReport] = []
    for path in waiting:
        shown = printable_path(path)
        reason = f"{shown}: still being written (size or time changed); retried next scan"
        reports.append(FileReport(path=shown, status=IngestStatus.WAITING, reason=reason))
        if progress:
            progress(reports[-1])
    for path in ready:
        if scanner is not None and scanner.is_handled(path):
            continue
        reports.append(ingest_file(store, path, now=now, max_bytes=max_bytes))
        if scanner is not None and (
            reports[-1].recorded or reports[-1].status is IngestStatus.SKIPPED
        ):
            scanner.handled(path)
        if progress:
            progress(reports[-1])
    return reports


def ingest_file(store: Store, path: Path, *, now: datetime, max_bytes: int) -> FileReport:
    """Ingest one file; whatever is wrong with it is recorded as its quarantine reason.

    Only a database that cannot be reached stops the run (OperationalError propagates): then
    nothing is recorded and the file is simply read again next time.

    An entry that is not a regular file is *skipped*: reported, never opened, not recorded.
    A file whose name is not valid UTF-8 or holds control characters is quarantined unread
    under its escaped name, keyed by that name and its size rather than its bytes: renaming
    it is the cure, and the renamed file must then be read, not found "unchanged".
    """
    name = printable_path(path)  # what reports, logs and the database show
    try:
        st = os.lstat(path)
        if (kind := SpecialFile.of(st.st_mode)) is not None:
            return _skipped(name, kind)
        size = st.st_size
        bad_name = name_problem(path)
        # Never read a huge file into memory just to reject it, nor a file we will not parse.
        data = b"" if size > max_bytes or bad_name else read_regular_file(path, max_bytes)
    except NotRegularFile as exc:  # swapped for a link or a FIFO after the lstat
        return _skipped(name, exc.kind)
    except OSError as exc:  # not recorded: a permission fix or a retry may cure it
        return FileReport(
            path=name,
            status=IngestStatus.QUARANTINED,
            reason=f"{name}: cannot read: {exc.strerror or exc}",
            recorded=False,
        )
    if len(data) > max_bytes:  # grew past the limit after the lstat
        size, data = len(data), b""
    key = f"{'name' if bad_name else 'size'}:{size}:{name}"  # for bytes that were not read
    content_hash = hashlib.sha256(data if data else key.encode()).hexdigest()
    known = store.find_digest(content_hash)

    def unchanged(known: DigestRecord) -> FileReport:
        return FileReport(
            path=name, status=IngestStatus.UNCHANGED, format=known.format, reason=known.reason
        )

    if known is not None:
        return unchanged(known)

    def quarantine(reason: str) -> FileReport:
        try:
            store.record_digest(
                path=name, content_hash=content_hash, size=size, seen_at=now, reason=reason
            )
        except DigestKnown as exc:  # an overlapping run got there first
            return unchanged(exc.record)
        log.warning("quarantined %s", reason)
        return FileReport(path=name, status=IngestStatus.QUARANTINED, reason=reason)

    if bad_name:
        return quarantine(
            f"{name}: the file name {bad_name} (shown escaped); not read: rename the file "
            "and it is read on the next scan"
        )
    if size > max_bytes:
        return quarantine(
            f"{name}: {size} bytes is over the {max_bytes}-byte limit; split the file "
            "or raise max_digest_bytes"
        )
    try:
        digest = parse_bytes(data, name=name, today=now.date())
    except ParseError as exc:
        return quarantine(str(exc))
    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the other files
        log.exception("internal error while parsing %s", name)
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the message holds
        return quarantine(
            f"{name}: internal error while parsing ({type(exc).__name__}: {detail}); "
            "please report it with the file"
        )
    papers, notes = within_limits(digest.papers, name=name)
    keyed = [KeyedPaper(key=paper_key(p), paper=p, title_key=title_key(p.title)) for p in papers]
    try:
        record = store.record_digest(
            path=name,
            content_hash=content_hash,
            size=size,
            seen_at=now,
            format=digest.format,
            papers=keyed,
            digest_date=digest.digest_date,
        )
    except DigestKnown as exc:  # an overlapping run got there first
        return unchanged(exc.record)
    except DataRejected as exc:
        return quarantine(f"{name}: {exc}")
    log.info(
        "ingested %s: %d entries, %d new papers, %d merged (%s)",
        name,
        record.entries,
        record.papers_new,
        record.papers_merged,
        digest.format,
    )
    for note in (*digest.skipped, *notes):
        log.warning("%s", note)
    return FileReport(
        path=name,
        skipped=digest.skipped,
        status=IngestStatus.INGESTED,
        format=digest.format,
        entries=record.entries,
        papers_new=record.papers_new,
        papers_merged=record.papers_merged,
        notes=notes,
    )


def _skipped(name: str, kind: SpecialFile) -> FileReport:
    """The report of an entry that is not a regular file: never opened, not recorded."""
    reason = kind.skip_reason(name)
    log.warning("skipped %s", reason)
    return FileReport(path=name, status=IngestStatus.SKIPPED, reason=reason, recorded=False)


def within_limits(
    papers: Sequence[ParsedPaper], *, name: str
) -> tuple[list[ParsedPaper], tuple[str, ...]]:
    """Papers with every field within ``newsletter.limits``, and one note per change.

    The one place where limits meet digest data, whatever the format: a title, an abstract or
    an author name over its limit is cut (ending in "…"), an author list keeps its first
    MAX_AUTHORS names (``author_count`` keeps the full count), and a link that is not an
    absolute http(s) URL (``javascript:``, ``data:``, relative) is dropped, so that it never
    becomes a link in an email, a feed or a web page. Parsers keep values at most one
    character past a limit (``text.squash_spaces``), so a 47 MB abstract costs memory in
    proportion to its file, not millions of word objects, and is cut here, not stored.
    """
    kept: list[ParsedPaper] = []
    notes: list[str] = []
    for paper in papers:
        title, abstract, authors = paper.title, paper.abstract, paper.authors
        author_count, url = paper.author_count, http_url(paper.url)
        found: list[str] = []
        if len(title) > MAX_TITLE_CHARS:
            title = _cut(title, MAX_TITLE_CHARS)
            found.append(f"title cut to {MAX_TITLE_CHARS:,} characters")
        if len(abstract) > MAX_ABSTRACT_CHARS:
            abstract = _cut(abstract, MAX_ABSTRACT_CHARS)
            found.append(f"abstract cut to {MAX_ABSTRACT_CHARS:,} characters")
        if len(authors) > MAX_AUTHORS:
            author_count = max(author_count or 0, len(authors))
            authors = authors[:MAX_AUTHORS]
            found.append(f"author list cut to the first {MAX_AUTHORS:,} of {author_count:,} names")
        if long_names := sum(len(author) > MAX_AUTHOR_NAME_CHARS for author in authors):
            authors = tuple(_cut(author, MAX_AUTHOR_NAME_CHARS) for author in authors)
            found.append(f"{long_names} author name(s) cut to {MAX_AUTHOR_NAME_CHARS:,} characters")
        if paper.url and url is None:
            found.append(
                f"link dropped (not an absolute http or https URL of at most "
                f"{MAX_URL_CHARS:,} characters)"
            )
        if found:
            quoted = _cut(title, QUOTED_TITLE_CHARS)
            where = f"line {paper.line}" if paper.line else f"paper {quoted!r}"
            notes.extend(f"{name}, {where}: {what}" for what in found)
        if (title, abstract, authors, author_count, url) != (
            paper.title,
            paper.abstract,
            paper.authors,
            paper.author_count,
            paper.url,
        ):
            paper = replace(
                paper,
                title=title,
                abstract=abstract,
                authors=authors,
                author_count=author_count,
                url=url,
            )
        kept.append(paper)
    return kept, tuple(notes)


def _cut(value: str, limit: int) -> str:
    """``value`` if it fits in ``limit`` characters, else cut to them, the last one an
    ellipsis that shows the cut."""
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"
