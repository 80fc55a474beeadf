"""Digest files and papers: recording ingests, merging the same paper across formats, reads."""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, aliased

from newsletter.domain import (
    DigestRecord,
    DigestState,
    FeedItem,
    FeedVersion,
    FeedWindow,
    Paper,
    ParsedPaper,
    QuietSpell,
)
from newsletter.errors import DataRejected, StorageError
from newsletter.store import rows
from newsletter.store.embeddings import forget_embeddings
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import DigestFileRow, IssueRow, PaperRow, SubscriberRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyedPaper:
    """A parsed paper with its identity keys, ready to store."""

    key: str  # "arxiv:<id>" or "title:<title key>"
    paper: ParsedPaper
    title_key: str = ""  # normalized title, to find the same paper arriving in another format


class _PaperIndex:
    """Stored papers by key, arXiv id and title key: how an incoming entry finds its paper.

    The same paper arrives as a text scrape (no arXiv id: keyed by title) and as JSON or an
    arXiv feed (keyed by arXiv id). It is one paper when the key matches, or the arXiv id
    matches, or the title key matches and the arXiv ids do not contradict each other.
    """

    def __init__(self) -> None:
        self.by_key: dict[str, PaperRow] = {}
        self.by_arxiv: dict[str, PaperRow] = {}
        self.by_title: dict[str, PaperRow] = {}

    def add(self, row: PaperRow) -> None:
        self.by_key[row.key] = row
        if row.arxiv_id:
            self.by_arxiv[row.arxiv_id] = row
        self.by_title.setdefault(row.title_key, row)

    def find(self, kp: KeyedPaper) -> PaperRow | None:
        arxiv = kp.paper.arxiv_id
        row = self.by_key.get(kp.key) or (self.by_arxiv.get(arxiv) if arxiv else None)
        if row is not None:
            return row
        row = self.by_title.get(kp.title_key) if kp.title_key else None
        if row is not None and (row.arxiv_id is None or arxiv is None or row.arxiv_id == arxiv):
            return row
        return None


@dataclass(frozen=True)
class MergeCounts:
    new: int
    merged: int


class DigestKnown(StorageError):
    """The same bytes were recorded by another process between our look-up and our write:
    nothing to do (``record`` is theirs)."""

    def __init__(self, record: DigestRecord) -> None:
        super().__init__(f"{record.path}: already recorded (same bytes)")
        self.record = record


class PaperQueries(StoreBase):
    """Digest files and papers (part of :class:`newsletter.store.Store`)."""

    # ------------------------------------------------------------------ digests

    def find_digest(self, content_hash: str) -> DigestRecord | None:
        with self._read() as s:
            row = s.scalar(select(DigestFileRow).where(DigestFileRow.content_hash == content_hash))
            return rows.digest(row) if row else None

    def record_digest(
        self,
        *,
        path: str,
        content_hash: str,
        size: int,
        seen_at: datetime,
        format: str | None = None,
        papers: Sequence[KeyedPaper] = (),
        digest_date: date | None = None,
        reason: str | None = None,
    ) -> DigestRecord:
        """Store an ingested file and its papers, or a quarantined one, in one transaction.

        If another process stored one of the same papers (or the same file) in the meantime,
        the unique constraints refuse our insert; the transaction is retried once, and then
        finds those rows and merges into them.
        """
        for attempt in (1, 2):
            try:
                return self._record_digest(
                    path=path,
                    content_hash=content_hash,
                    size=size,
                    seen_at=seen_at,
                    format=format,
                    papers=papers,
                    digest_date=digest_date,
                    reason=reason,
                )
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("concurrent insert while storing %s; retrying", path)
            except (DataError, OverflowError) as exc:
                # A value the columns cannot hold: the file's fault, not the database's.
                detail = getattr(exc, "orig", None) or exc
                raise DataRejected(f"the database refused a value ({detail})") from None
        raise AssertionError("unreachable")

    def _record_digest(
        self,
        *,
        path: str,
        content_hash: str,
        size: int,
        seen_at: datetime,
        format: str | None,
        papers: Sequence[KeyedPaper],
        digest_date: date | None,
        reason: str | None,
    ) -> DigestRecord:
        with self._session() as s:
            known = s.scalar(
                select(DigestFileRow).where(DigestFileRow.content_hash == content_hash)
            )
            if known is not None:  # another process recorded the same bytes meanwhile
                raise DigestKnown(rows.digest(known))
            counts = MergeCounts(0, 0)
            if reason is None:
                counts = self._merge_papers(s, papers, seen_at)
            row = DigestFileRow(
                content_hash=content_hash,
                path=path,
                size=size,
                state=(DigestState.QUARANTINED if reason else DigestState.INGESTED).value,
                format=format,
                reason=reason,
                entries=len(papers),
                papers_new=counts.new,
                papers_merged=counts.merged,
                digest_date=digest_date,
                seen_at=seen_at,
            )
            s.add(row)
            s.flush()
            return rows.digest(row)

    def list_digests(self, state: DigestState | None = None) -> list[DigestRecord]:
        with self._read() as s:
            query = select(DigestFileRow).order_by(DigestFileRow.seen_at, DigestFileRow.id)
            if state:
                query = query.where(DigestFileRow.state == state.value)
            return [rows.digest(r) for r in s.scalars(query)]

    # ------------------------------------------------------------------ papers

    def _merge_papers(
        self, s: Session, papers: Sequence[KeyedPaper], seen_at: datetime
    ) -> MergeCounts:
        """Insert unseen papers; merge known ones keeping the richer value of each field, and
        the title and abstract of an entry naming its arXiv version (``rows.merged``): a new
        version of a stored paper updates it and stays the same paper (same first sighting,
        never a candidate again for those who got it).

        Counts are per distinct paper: ``new`` papers created by this file, ``merged`` papers
        that were stored before it. A paper listed twice in one file is one paper.
        """
        index = _PaperIndex()
        wanted = (
            (PaperRow.key, {kp.key for kp in papers}),
            (PaperRow.arxiv_id, {kp.paper.arxiv_id for kp in papers if kp.paper.arxiv_id}),
            (PaperRow.title_key, {kp.title_key for kp in papers if kp.title_key}),
        )
        for column, values in wanted:
            for chunk in chunks(sorted(values), BATCH):
                for found in s.scalars(select(PaperRow).where(column.in_(chunk))):
                    index.add(found)
        created: set[int] = set()
        merged: set[int] = set()
        retext: set[int] = set()  # stored papers whose text changed: embedded again
        versions: dict[int, int] = {}  # id(row) -> the highest arXiv version read in this file
        for kp in papers:
            row = index.find(kp)
            if row is None:
                row = PaperRow(
                    key=kp.key,
                    title_key=kp.title_key,
                    first_seen_at=seen_at,
                    updated_at=seen_at,
                    **rows.paper_values(kp.paper),
                )
                s.add(row)
                created.add(id(row))
            else:
                current = rows.parsed_from_row(row)
                after = rows.merged(current, kp.paper, newer_than=versions.get(id(row)))
                if after != current:
                    for name, value in rows.paper_values(after).items():
                        setattr(row, name, value)
                    row.updated_at = seen_at
                    if after.title != current.title and kp.title_key:
                        row.title_key = kp.title_key  # a renamed version: found by its new title
                    changed = (after.title, after.abstract) != (current.title, current.abstract)
                    if changed and row.id is not None:
                        retext.add(row.id)
                if id(row) not in created:
                    merged.add(id(row))
            if kp.paper.arxiv_version is not None:
                versions[id(row)] = max(versions.get(id(row), 0), kp.paper.arxiv_version)
            index.add(row)
        s.flush()
        if retext:
            forget_embeddings(s, retext)
        return MergeCounts(len(created), len(merged))

    def count_papers(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.count()).select_from(PaperRow)) or 0)

    def papers(
        self, *, seen_since: datetime | None = None, seen_until: datetime | None = None
    ) -> list[Paper]:
        with self._read() as s:
            query = select(PaperRow).order_by(PaperRow.id)
            if seen_since is not None:
                query = query.where(PaperRow.first_seen_at >= seen_since)
            if seen_until is not None:
                query = query.where(PaperRow.first_seen_at <= seen_until)
            return [rows.paper(r) for r in s.scalars(query)]

    def papers_by_id(self, ids: Iterable[int]) -> dict[int, Paper]:
        with self._read() as s:
            out: dict[int, Paper] = {}
            for chunk in chunks(list(ids), BATCH):
                for r in s.scalars(select(PaperRow).where(PaperRow.id.in_(chunk))):
                    out[r.id] = rows.paper(r)
            return out

    # ------------------------------------------------------------------ empty issues

    def quiet_spells(self, issue_ids: Sequence[int]) -> dict[int, QuietSpell]:
        """Why these issues (planned without papers) are empty: per issue, how many papers
        were first seen after the subscriber's previous issue was planned (the latest issue of
        an earlier slot), or, before their first issue, since they signed up, up to this
        issue's planning. Two queries per :data:`BATCH` issues, then one over the papers'
        distinct first sightings (one per ingest, so few) counted here."""
        earlier = aliased(IssueRow)
        previous = (
            select(func.max(earlier.created_at))
            .where(
                earlier.subscriber_id == IssueRow.subscriber_id,
                earlier.slot_date < IssueRow.slot_date,
            )
            .correlate(IssueRow)
            .scalar_subquery()
        )
        bounds: dict[int, tuple[datetime | None, datetime, datetime]] = {}
        with self._read() as s:
            for chunk in chunks(list(issue_ids), BATCH):
                found = s.execute(
                    select(IssueRow.id, previous, SubscriberRow.created_at, IssueRow.created_at)
                    .join(SubscriberRow, SubscriberRow.id == IssueRow.subscriber_id)
                    .where(IssueRow.id.in_(chunk))
                )
                for issue_id, since, joined, until in found:
                    bounds[issue_id] = (since, joined, until)
            if not bounds:
                return {}
            lowest = min(since or joined for since, joined, _ in bounds.values())
            highest = max(until for _, _, until in bounds.values())
            sightings = s.execute(
                select(PaperRow.first_seen_at, func.count())
                .where(PaperRow.first_seen_at >= lowest, PaperRow.first_seen_at <= highest)
                .group_by(PaperRow.first_seen_at)
                .order_by(PaperRow.first_seen_at)
            ).all()
        times = [seen for seen, _ in sightings]
        before = [0, *accumulate(int(n) for _, n in sightings)]  # papers seen before times[i]
        out: dict[int, QuietSpell] = {}
        for issue_id, (last, joined, until) in bounds.items():
            # After the previous issue's planning (its own candidates included those seen at
            # that instant); from the sign-up on, the sign-up's instant included.
            start = bisect_right(times, last) if last else bisect_left(times, joined)
            end = bisect_right(times, until)
            out[issue_id] = QuietSpell(
                new_papers=max(before[end] - before[start], 0), since_issue=last
            )
        return out

    # ------------------------------------------------------------------ feeds

    def global_feed_items(self, window: FeedWindow | None = None) -> list[FeedItem]:
        """The papers first seen in the window (None: every paper), newest first, each dated
        the moment it was first seen. One query with a LIMIT on the ``first_seen_at`` index:
        the cost follows the window, not the number of stored papers."""
        query = select(PaperRow).order_by(PaperRow.first_seen_at.desc(), PaperRow.id)
        if window is not None:
            query = query.where(PaperRow.first_seen_at >= window.since).limit(window.limit)
        with self._read() as s:
            return [
                FeedItem(paper=p, when=p.first_seen_at)
                for p in (rows.paper(r) for r in s.scalars(query))
            ]

    def global_feed_version(self, window: FeedWindow) -> FeedVersion:
        """The global feed's validator: one aggregate over the window's index range."""
        with self._read() as s:
            count, oldest, newest, updated = s.execute(
                select(
                    func.count(),
                    func.min(PaperRow.first_seen_at),
                    func.max(PaperRow.first_seen_at),
                    func.max(PaperRow.updated_at),
                ).where(PaperRow.first_seen_at >= window.since)
            ).one()
        return FeedVersion(int(count or 0), oldest, newest, updated)

    # ------------------------------------------------------------------ day pages

    def papers_first_seen_on(
        self, day: date, *, offset: int = 0, limit: int | None = None
    ) -> list[Paper]:
        """Papers whose first sighting falls on this UTC date, most upvoted first (then by
        id): one page of them (``offset``/``limit``) sorted and cut in SQL, so a day page
        never loads the whole day."""
        with self._read() as s:
            query = (
                select(PaperRow)
                .where(*_first_seen_on(day))
                .order_by(func.coalesce(PaperRow.upvotes, 0).desc(), PaperRow.id)
                .offset(offset)
            )
            if limit is not None:
                query = query.limit(limit)
            return [rows.paper(r) for r in s.scalars(query)]

    def count_papers_first_seen_on(self, day: date) -> int:
        with self._read() as s:
            found = s.scalar(select(func.count()).select_from(PaperRow).where(*_first_seen_on(day)))
            return int(found or 0)

    def recent_days(self, limit: int = 14) -> list[tuple[date, int]]:
        """The latest ``limit`` UTC dates on which new papers were first seen, with their counts.

        Grouped on distinct ``first_seen_at`` values (one per ingest, so few) and bucketed by date
        here: date arithmetic in SQL differs between SQLite and PostgreSQL.
        """
        with self._read() as s:
            found = s.execute(
                select(PaperRow.first_seen_at, func.count())
                .group_by(PaperRow.first_seen_at)
                .order_by(PaperRow.first_seen_at.desc())
                .limit(5000)
            ).all()
        days: dict[date, int] = {}
        for seen_at, count in found:
            day = seen_at.astimezone(UTC).date()
            if day not in days and len(days) >= limit:
                break
            days[day] = days.get(day, 0) + int(count)
        return list(days.items())


def _first_seen_on(day: date) -> tuple[ColumnElement[bool], ...]:
    """Papers first seen on this UTC date: [day, next day) on the ``first_seen_at`` index."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (PaperRow.first_seen_at >= start, PaperRow.first_seen_at < start + timedelta(1))
