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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from newsletter.domain import ParsedDigest
from newsletter.errors import ParseError
from newsletter.ingest import hf_text
from newsletter.ingest.identity import paper_key
from newsletter.ingest.text import clean_text, decode, looks_binary
from newsletter.store import KeyedPaper, Store

log = logging.getLogger(__name__)

Parser = Callable[..., ParsedDigest]
PARSERS: tuple[tuple[str, Callable[[str], bool], Parser], ...] = (
    (hf_text.FORMAT, hf_text.sniff, hf_text.parse),
)
DIGEST_SUFFIXES = frozenset({".txt", ".json", ".xml", ".atom", ".rss"})


@dataclass(frozen=True)
class FileReport:
    """What ingest did with one file."""

    path: str
    status: str  # "ingested" | "quarantined" | "unchanged"
    format: str | None = None
    entries: int = 0
    papers_new: int = 0
    papers_merged: int = 0
    reason: str | None = None


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
    raise ParseError(f"{name}: not a digest format this version reads (HF Daily Papers text)")


def digest_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their digest files (sorted by name; hidden and temp files skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.iterdir())
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in DIGEST_SUFFIXES
            )
        else:
            found.append(path)
    return found


def ingest_paths(
    store: Store,
    paths: Sequence[Path],
    *,
    now: datetime,
    max_bytes: int,
    progress: Callable[[FileReport], None] | None = None,
) -> list[FileReport]:
    """Ingest every digest file under ``paths``; one report per file, in order."""
    reports = []
    for path in digest_files(paths):
        report = ingest_file(store, path, now=now, max_bytes=max_bytes)
        reports.append(report)
        if progress:
            progress(report)
    return reports


def ingest_file(store: Store, path: Path, *, now: datetime, max_bytes: int) -> FileReport:
    name = str(path)
    try:
        size = path.stat().st_size
        # Never read a huge file into memory just to reject it.
        data = b"" if size > max_bytes else path.read_bytes()
    except OSError as exc:
        return FileReport(path=name, status="quarantined", reason=f"{name}: cannot read: {exc}")
    content_hash = hashlib.sha256(data if data else f"size:{size}:{name}".encode()).hexdigest()
    known = store.find_digest(content_hash)
    if known is not None:
        return FileReport(path=name, status="unchanged", format=known.format, reason=known.reason)
    try:
        if size > max_bytes:
            raise ParseError(
                f"{name}: {size} bytes is over the {max_bytes}-byte limit; split the file "
                "or raise max_digest_bytes"
            )
        digest = parse_bytes(data, name=name, today=now.date())
    except ParseError as exc:
        reason = str(exc)
        store.record_digest(
            path=name, content_hash=content_hash, size=size, seen_at=now, reason=reason
        )
        log.warning("quarantined %s", reason)
        return FileReport(path=name, status="quarantined", reason=reason)
    keyed = [KeyedPaper(key=paper_key(p), paper=p) for p in digest.papers]
    record = store.record_digest(
        path=name,
        content_hash=content_hash,
        size=size,
        seen_at=now,
        format=digest.format,
        papers=keyed,
        digest_date=digest.digest_date,
    )
    log.info(
        "ingested %s: %d entries, %d new papers, %d merged (%s)",
        name,
        record.entries,
        record.papers_new,
        record.papers_merged,
        digest.format,
    )
    return FileReport(
        path=name,
        status="ingested",
        format=digest.format,
        entries=record.entries,
        papers_new=record.papers_new,
        papers_merged=record.papers_merged,
    )
