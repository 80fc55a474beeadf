"""Storage: the only module that talks to SQLAlchemy.

Every public method opens one short session (one unit of work), commits or rolls back, and
returns frozen dataclasses from :mod:`newsletter.domain`, never ORM rows. SQLite (WAL,
busy_timeout, foreign keys on) is the embedded default; PostgreSQL (psycopg 3) is selected by
URL. Inserts that may repeat use the dialect's ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.domain import (
    DigestRecord,
    FeedItem,
    IssueRecord,
    IssueState,
    Paper,
    ParsedPaper,
    ScoredPaper,
    Subscriber,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.errors import DataRejected, StorageError
from newsletter.store import rows
from newsletter.store.schema import (
    DigestFileRow,
    IssuePaperRow,
    IssueRow,
    PaperRow,
    SentLogRow,
    SubscriberRow,
)

log = logging.getLogger(__name__)

__all__ = ["Store", "KeyedPaper", "MergeCounts", "new_token"]


def new_token() -> str:
    """A URL-safe secret of 192 bits (unsubscribe links, private feeds, web view)."""
    return secrets.token_urlsafe(24)


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


def normalize_url(url: str) -> str:
    """Turn ``postgresql://`` into ``postgresql+psycopg://`` so psycopg 3 is the driver."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class Store:
    def __init__(self, url: str) -> None:
        url = normalize_url(url)
        parsed = make_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ lifecycle

    def migrate(self, revision: str = "head") -> str:
        """Apply Alembic migrations up to ``revision``; return the resulting revision."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        import newsletter.migrations as migrations

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
        try:
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    # Alembic's batch mode copies and drops tables; SQLite would refuse the drop
                    # of a table other tables reference. The pragma only works outside a
                    # transaction, hence on the raw connection before SQLAlchemy begins one.
                    _raw_sqlite(conn).execute("PRAGMA foreign_keys=OFF")
                try:
                    with conn.begin():
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, revision)
                finally:
                    if self.dialect == "sqlite":
                        _raw_sqlite(conn).execute("PRAGMA foreign_keys=ON")
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise StorageError(
                f"cannot open database {self.engine.url.render_as_string(hide_password=True)}: "
                f"{exc.orig}. Check database_url / NEWSLETTER_DATABASE_URL."
            ) from None
        return current or ""

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # ------------------------------------------------------------------ digests

    def find_digest(self, content_hash: str) -> DigestRecord | None:
        with self._session() as s:
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
            counts = MergeCounts(0, 0)
            if reason is None:
                counts = self._merge_papers(s, papers, seen_at)
            row = DigestFileRow(
                content_hash=content_hash,
                path=path,
                size=size,
                state="quarantined" if reason else "ingested",
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

    def list_digests(self, state: str | None = None) -> list[DigestRecord]:
        with self._session() as s:
            query = select(DigestFileRow).order_by(DigestFileRow.seen_at, DigestFileRow.id)
            if state:
                query = query.where(DigestFileRow.state == state)
            return [rows.digest(r) for r in s.scalars(query)]

    # ------------------------------------------------------------------ papers

    def _merge_papers(
        self, s: Session, papers: Sequence[KeyedPaper], seen_at: datetime
    ) -> MergeCounts:
        """Insert unseen papers; merge known ones keeping the richer value of each field.

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
            for chunk in _chunks(sorted(values), 500):
                for found in s.scalars(select(PaperRow).where(column.in_(chunk))):
                    index.add(found)
        created: set[int] = set()
        merged: set[int] = set()
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
                richer = rows.richer(current, kp.paper)
                if richer != current:
                    for name, value in rows.paper_values(richer).items():
                        setattr(row, name, value)
                    row.updated_at = seen_at
                if id(row) not in created:
                    merged.add(id(row))
            index.add(row)
        s.flush()
        return MergeCounts(len(created), len(merged))

    def count_papers(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count()).select_from(PaperRow)) or 0)

    def papers(
        self, *, seen_since: datetime | None = None, seen_until: datetime | None = None
    ) -> list[Paper]:
        with self._session() as s:
            query = select(PaperRow).order_by(PaperRow.id)
            if seen_since is not None:
                query = query.where(PaperRow.first_seen_at >= seen_since)
            if seen_until is not None:
                query = query.where(PaperRow.first_seen_at <= seen_until)
            return [rows.paper(r) for r in s.scalars(query)]

    def papers_by_id(self, ids: Iterable[int]) -> dict[int, Paper]:
        with self._session() as s:
            out: dict[int, Paper] = {}
            for chunk in _chunks(list(ids), 500):
                for r in s.scalars(select(PaperRow).where(PaperRow.id.in_(chunk))):
                    out[r.id] = rows.paper(r)
            return out

    # ------------------------------------------------------------------ subscribers

    def upsert_subscriber(
        self,
        spec: SubscriberSpec,
        *,
        source: str,
        now: datetime,
        update: bool = True,
        status: SubscriberStatus = SubscriberStatus.ACTIVE,
    ) -> tuple[Subscriber, bool]:
        """Insert a subscriber, or update the settings of an existing one (never its status:
        an unsubscribe must stick whatever the config file says). Returns (subscriber, created)."""
        with self._session() as s:
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.email == spec.email))
            created = row is None
            if row is None:
                row = SubscriberRow(
                    email=spec.email,
                    status=status.value,
                    token=new_token(),
                    feed_token=new_token(),
                    source=source,
                    created_at=now,
                )
                s.add(row)
            elif not update:
                return rows.subscriber(row), False
            changed = rows.apply_spec(row, spec)
            if created or changed:
                row.updated_at = now
            s.flush()
            return rows.subscriber(row), created

    def subscriber(self, email: str) -> Subscriber | None:
        with self._session() as s:
            row = s.scalar(select(SubscriberRow).where(SubscriberRow.email == email.lower()))
            return rows.subscriber(row) if row else None

    def subscribers(self, status: SubscriberStatus | None = None) -> list[Subscriber]:
        with self._session() as s:
            query = select(SubscriberRow).order_by(SubscriberRow.id)
            if status is not None:
                query = query.where(SubscriberRow.status == status.value)
            return [rows.subscriber(r) for r in s.scalars(query)]

    def set_subscriber_status(self, email: str, status: SubscriberStatus, now: datetime) -> bool:
        with self._session() as s:
            result = s.execute(
                update(SubscriberRow)
                .where(SubscriberRow.email == email.lower())
                .values(status=status.value, updated_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ issues

    def sent_paper_ids(self, subscriber_id: int) -> set[int]:
        with self._session() as s:
            return set(
                s.scalars(
                    select(SentLogRow.paper_id).where(SentLogRow.subscriber_id == subscriber_id)
                )
            )

    def assigned_paper_ids(self, subscriber_id: int) -> set[int]:
        """Papers already in any issue of this subscriber, sent or not yet.

        A paper belongs to at most one issue per subscriber: a planned issue that has not gone
        out yet (a crash, a retry pending) still owns its papers, so the next slot cannot
        plan them a second time.
        """
        with self._session() as s:
            return set(
                s.scalars(
                    select(IssuePaperRow.paper_id)
                    .join(IssueRow, IssueRow.id == IssuePaperRow.issue_id)
                    .where(IssueRow.subscriber_id == subscriber_id)
                )
            )

    def issue(self, subscriber_id: int, slot_date: date) -> IssueRecord | None:
        with self._session() as s:
            row = s.scalar(
                select(IssueRow).where(
                    IssueRow.subscriber_id == subscriber_id, IssueRow.slot_date == slot_date
                )
            )
            return rows.issue(s, row) if row else None

    def issues(self, *, states: Sequence[IssueState] | None = None) -> list[IssueRecord]:
        with self._session() as s:
            query = select(IssueRow).order_by(IssueRow.id)
            if states:
                query = query.where(IssueRow.state.in_([st.value for st in states]))
            return [rows.issue(s, r) for r in s.scalars(query)]

    def plan_issue(
        self, subscriber_id: int, slot_date: date, papers: Sequence[ScoredPaper], now: datetime
    ) -> IssueRecord | None:
        """Create the slot's issue in state planned; None if the slot already has one."""
        with self._session() as s:
            result = s.execute(
                self._insert(IssueRow)
                .values(
                    subscriber_id=subscriber_id,
                    slot_date=slot_date,
                    state=IssueState.PLANNED.value,
                    attempts=0,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["subscriber_id", "slot_date"])
                .returning(IssueRow.id)
            )
            issue_id = result.scalar()
            if issue_id is None:
                return None
            for position, sp in enumerate(papers, start=1):
                s.add(
                    IssuePaperRow(
                        issue_id=issue_id,
                        paper_id=sp.paper.id,
                        position=position,
                        score=sp.score,
                        reasons=json.dumps([[r.term, r.where, r.contribution] for r in sp.reasons]),
                    )
                )
            s.flush()
            row = s.get(IssueRow, issue_id)
            assert row is not None
            return rows.issue(s, row)

    def issue_papers(self, issue_id: int) -> list[ScoredPaper]:
        with self._session() as s:
            found = s.execute(
                select(IssuePaperRow, PaperRow)
                .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                .where(IssuePaperRow.issue_id == issue_id)
                .order_by(IssuePaperRow.position)
            ).all()
            return [
                ScoredPaper(paper=rows.paper(p), score=ip.score, reasons=rows.reasons(ip.reasons))
                for ip, p in found
            ]

    def mark_rendered(
        self, issue_id: int, *, subject: str, html: str, message: bytes, message_id: str
    ) -> bool:
        """Store the rendered message; False if the issue was no longer planned (taken)."""
        with self._session() as s:
            result = s.execute(
                update(IssueRow)
                .where(IssueRow.id == issue_id, IssueRow.state == IssueState.PLANNED.value)
                .values(
                    subject=subject,
                    html=html,
                    message=message,
                    message_id=message_id,
                    state=IssueState.RENDERED.value,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def rendered_message(self, issue_id: int) -> bytes | None:
        with self._session() as s:
            return s.scalar(select(IssueRow.message).where(IssueRow.id == issue_id))

    def claim_for_sending(self, issue: IssueRecord) -> bool:
        """Move the issue to ``sending`` and count the attempt, if nobody else did.

        Optimistic: the update only matches the state and attempt count we read, so of two
        overlapping runs that read the same issue exactly one claims it; the other skips it.
        """
        with self._session() as s:
            result = s.execute(
                update(IssueRow)
                .where(
                    IssueRow.id == issue.id,
                    IssueRow.attempts == issue.attempts,
                    IssueRow.state.in_([IssueState.RENDERED.value, IssueState.SENDING.value]),
                )
                .values(state=IssueState.SENDING.value, attempts=IssueRow.attempts + 1)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def mark_sent(self, issue_id: int, *, sent_at: datetime, reply: str | None = None) -> None:
        """Mark sent and write the sent log in the same transaction."""
        with self._session() as s:
            row = s.get(IssueRow, issue_id)
            assert row is not None
            row.state, row.sent_at, row.last_reply = IssueState.SENT.value, sent_at, reply
            row.next_retry_at = None
            paper_ids = s.scalars(
                select(IssuePaperRow.paper_id).where(IssuePaperRow.issue_id == issue_id)
            ).all()
            if paper_ids:
                s.execute(
                    self._insert(SentLogRow)
                    .values(
                        [
                            {
                                "subscriber_id": row.subscriber_id,
                                "paper_id": pid,
                                "issue_id": issue_id,
                                "sent_at": sent_at,
                            }
                            for pid in paper_ids
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["subscriber_id", "paper_id"])
                )

    def mark_failed(
        self, issue_id: int, *, reply: str, next_retry_at: datetime | None = None
    ) -> None:
        """Record a failure. With ``next_retry_at`` the issue stays due (planned if it was
        never rendered, else rendered) and is retried then; without, it is failed for good."""
        with self._session() as s:
            row = s.get(IssueRow, issue_id)
            assert row is not None
            row.last_reply = reply
            row.next_retry_at = next_retry_at
            if next_retry_at is None:
                row.state = IssueState.FAILED.value
            else:
                row.state = (
                    IssueState.PLANNED if row.message is None else IssueState.RENDERED
                ).value

    def release_claim(self, issue_id: int, *, reply: str) -> bool:
        """Hand back an issue we claimed but could not even try to send (mail server down).

        Back to ``rendered`` with the attempt uncounted and no retry delay, so it goes out as
        soon as the server is back; ``reply`` says why it is still waiting. False if the issue
        was not ``sending`` (nothing to release).
        """
        with self._session() as s:
            result = s.execute(
                update(IssueRow)
                .where(IssueRow.id == issue_id, IssueRow.state == IssueState.SENDING.value)
                .values(
                    state=IssueState.RENDERED.value,
                    attempts=func.max(IssueRow.attempts - 1, 0)
                    if self.dialect == "sqlite"
                    else func.greatest(IssueRow.attempts - 1, 0),
                    last_reply=reply,
                    next_retry_at=None,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def requeue_failed(self, email: str | None = None) -> list[tuple[str, date]]:
        """Put failed issues of active subscribers back in line: ``newsletter retry``.

        Each goes back to ``rendered`` (or ``planned`` if it never was), attempts reset and no
        retry delay, so the next run sends it. ``last_reply`` is kept until that try replaces
        it: it is the reason the operator is retrying. Issues of people who left stay failed.
        Returns (email, slot date) of every requeued issue.
        """
        with self._session() as s:
            query = (
                select(IssueRow, SubscriberRow.email)
                .join(SubscriberRow, SubscriberRow.id == IssueRow.subscriber_id)
                .where(
                    IssueRow.state == IssueState.FAILED.value,
                    SubscriberRow.status == SubscriberStatus.ACTIVE.value,
                )
                .order_by(IssueRow.id)
            )
            if email is not None:
                query = query.where(SubscriberRow.email == email.lower())
            requeued = []
            for row, address in s.execute(query).all():
                row.state = (
                    IssueState.PLANNED if row.message is None else IssueState.RENDERED
                ).value
                row.attempts = 0
                row.next_retry_at = None
                requeued.append((address, row.slot_date))
            return requeued

    def sent_log(self) -> list[tuple[int, int, int]]:
        """Every (subscriber id, paper id, issue id) of the sent log: audits and tests."""
        with self._session() as s:
            found = s.execute(
                select(SentLogRow.subscriber_id, SentLogRow.paper_id, SentLogRow.issue_id).order_by(
                    SentLogRow.subscriber_id, SentLogRow.paper_id
                )
            ).all()
            return [(a, b, c) for a, b, c in found]

    # ------------------------------------------------------------------ feeds

    def global_feed_items(self) -> list[FeedItem]:
        """Every paper, dated the moment it was first seen."""
        return [FeedItem(paper=p, when=p.first_seen_at) for p in self.papers()]

    def subscriber_feed_items(self, subscriber_id: int) -> list[FeedItem]:
        """The papers of this subscriber's sent issues, dated when the issue was sent."""
        with self._session() as s:
            found = s.execute(
                select(IssuePaperRow, PaperRow, IssueRow.sent_at)
                .join(IssueRow, IssueRow.id == IssuePaperRow.issue_id)
                .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                .where(
                    IssueRow.subscriber_id == subscriber_id,
                    IssueRow.state == IssueState.SENT.value,
                )
                .order_by(IssueRow.slot_date, IssuePaperRow.position)
            ).all()
            return [
                FeedItem(
                    paper=rows.paper(p),
                    when=sent_at,
                    reasons=rows.reasons(ip.reasons),
                    score=ip.score,
                )
                for ip, p, sent_at in found
                if sent_at is not None
            ]


# ---------------------------------------------------------------------- helpers


def _raw_sqlite(conn: Any) -> Any:
    return conn.connection.dbapi_connection


def _sqlite_begin(conn: Any) -> None:
    """Emit BEGIN ourselves: pysqlite's own transaction handling skips DDL, which would leave a
    failed migration half-applied (SQLAlchemy's documented recipe for SQLite)."""
    conn.exec_driver_sql("BEGIN")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # autocommit at the driver: transactions are ours
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
