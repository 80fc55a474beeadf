"""Ingest: digest files in, papers stored once.

A file is identified by the SHA-256 of its bytes, so dropping the same bytes again is a no-op
and an edited file is read again (its known papers merge, its new ones are added). A file
that cannot be read is *quarantined*: recorded in the database with a one-line reason and left
where it is on disk, untouched (see docs/ARCHITECTURE.md: nothing a user gave us is lost, and
the operator fixes or removes it). One bad file never stops the others.

Format detection is by content, not file name: each parser module has ``sniff(text)`` and
``parse(text, name=, today=)``; the first that sniffs yes parses.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from newsletter.domain import DigestRecord, IngestStatus, ParsedDigest
from newsletter.errors import DataRejected, ParseError
from newsletter.ingest import arxiv_feed, hf_json, hf_text, html_page
from newsletter.ingest.identity import paper_key, title_key
from newsletter.ingest.text import clean_text, decode, looks_binary
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
    """Expand folders into their files, sorted by name.

    Every regular file is a candidate whatever its name (the format is detected from the
    content), except hidden files and temporary names (``.part``, ``.tmp``, ``~``…) that
    producers use while writing.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if p.is_file() and not _is_temp(p))
        else:
            found.append(path)
    return found


def _is_temp(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.endswith("~") or path.suffix.lower() in TEMP_SUFFIXES


class InboxScanner:
    """Holds back files that are still being written.

    A file is ready when its size and modification time are the same in two consecutive
    scans. The daemon keeps one scanner for its lifetime, so its scans N seconds apart are the
    two scans; ``run --once`` scans twice, ``settle_seconds`` apart, but skips the pause when
    every file is older than that (a file untouched for longer would show the same in both).
    """

    def __init__(self, settle_seconds: float = 1.0) -> None:
        self.settle_seconds = settle_seconds
        self._last: dict[Path, tuple[int, int]] = {}
        self._handled: dict[Path, tuple[int, int]] = {}  # files read in an earlier scan

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
        for path in digest_files(paths):
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat: a rename in progress
            signature = (st.st_size, st.st_mtime_ns)
            current[path] = signature
            (ready if self._last.get(path) == signature else waiting).append(path)
        self._last = current
        return ready, waiting

    def scan_settled(
        self, paths: Sequence[Path], *, wall_clock_ns: int
    ) -> tuple[list[Path], list[Path]]:
        """Two scans in one call (for ``run --once``): pause only if some file is young."""
        self.scan(paths)
        young = any(
            wall_clock_ns - mtime < self.settle_seconds * 1e9 for _, mtime in self._last.values()
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
        reason = f"{path}: still being written (size or time changed); retried next scan"
        reports.append(FileReport(path=str(path), status=IngestStatus.WAITING, reason=reason))
        if progress:
            progress(reports[-1])
    for path in ready:
        if scanner is not None and scanner.is_handled(path):
            continue
        reports.append(ingest_file(store, path, now=now, max_bytes=max_bytes))
        if scanner is not None and reports[-1].recorded:
            scanner.handled(path)
        if progress:
            progress(reports[-1])
    return reports


def ingest_file(store: Store, path: Path, *, now: datetime, max_bytes: int) -> FileReport:
    """Ingest one file; whatever is wrong with it is recorded as its quarantine reason.

    Only a database that cannot be reached stops the run (OperationalError propagates): then
    nothing is recorded and the file is simply read again next time.
    """
    name = str(path)
    try:
        size = path.stat().st_size
        # Never read a huge file into memory just to reject it.
        data = b"" if size > max_bytes else path.read_bytes()
    except OSError as exc:  # not recorded: a permission fix or a retry may cure it
        return FileReport(
            path=name,
            status=IngestStatus.QUARANTINED,
            reason=f"{name}: cannot read: {exc}",
            recorded=False,
        )
    content_hash = hashlib.sha256(data if data else f"size:{size}:{name}".encode()).hexdigest()
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
        return quarantine(
            f"{name}: internal error while parsing ({type(exc).__name__}: {exc}); "
            "please report it with the file"
        )
    keyed = [
        KeyedPaper(key=paper_key(p), paper=p, title_key=title_key(p.title)) for p in digest.papers
    ]
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
    for note in digest.skipped:
        log.warning("%s", note)
    return FileReport(
        path=name,
        skipped=digest.skipped,
        status=IngestStatus.INGESTED,
        format=digest.format,
        entries=record.entries,
        papers_new=record.papers_new,
        papers_merged=record.papers_merged,
    )
