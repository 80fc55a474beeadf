"""Tables. Only :mod:`newsletter.store` imports this module.

Every change to these classes needs an Alembic migration in ``newsletter/migrations``;
``tests/test_store.py`` checks that the migrated schema matches these models.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in, UTC-aware datetimes out, on every backend.

    SQLite has no timezone type and hands back naive values; PostgreSQL's timestamptz
    returns them in the session's zone. Normalizing here means no caller ever compares a
    naive datetime with an aware one.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"naive or non-datetime value stored: {value!r}")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DigestFileRow(Base):
    """One digest file as seen by ingest, identified by the hash of its bytes."""

    __tablename__ = "digest_files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # ingested | quarantined
    format: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    papers_new: Mapped[int] = mapped_column(Integer, default=0)
    papers_merged: Mapped[int] = mapped_column(Integer, default=0)
    digest_date: Mapped[date | None] = mapped_column(Date)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PaperRow(Base):
    __tablename__ = "papers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)  # identity at first sighting
    title_key: Mapped[str] = mapped_column(String(512), index=True)  # to match across formats
    arxiv_id: Mapped[str | None] = mapped_column(String(32), index=True)
    title: Mapped[str] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text, default="")
    authors: Mapped[str] = mapped_column(Text, default="")  # JSON list of names
    author_count: Mapped[int | None] = mapped_column(Integer)
    published: Mapped[date | None] = mapped_column(Date)
    upvotes: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SubscriberRow(Base):
    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    timezone: Mapped[str] = mapped_column(String(64))
    send_at: Mapped[str] = mapped_column(String(5))  # HH:MM local time
    weekdays: Mapped[str] = mapped_column(String(32), default="")  # "0,3"; empty = daily
    profile: Mapped[str] = mapped_column(Text)
    max_papers: Mapped[int] = mapped_column(Integer)
    min_score: Mapped[float] = mapped_column(Float)
    send_when_empty: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    feed_token: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    source: Mapped[str] = mapped_column(String(16))  # config | cli | csv | web
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The web side finds a subscriber by the SHA-256 of a token, never by the token itself:
    # an index lookup compares bytes with early exit, and a hash an attacker cannot steer
    # makes that timing useless (see newsletter/store/subscribers.py). Kept in step with the
    # tokens by the mapper events below.
    token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    feed_token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    # Double opt-in: only the hash of the emailed confirmation token is stored (single use,
    # cleared on confirmation), and when the last one was sent (at most one an hour).
    confirm_token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Why and when bounces or a complaint suppressed this subscriber (newsletter/bounces.py).
    # Kept after an unsubscribe, so a web resubscribe cannot undo it; cleared only by the
    # operator's `subscriber add`.
    suppressed_reason: Mapped[str | None] = mapped_column(Text)
    suppressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IssueRow(Base):
    """One slot's issue. Its state machine lives here, so a crash never loses or doubles one."""

    __tablename__ = "issues"
    __table_args__ = (UniqueConstraint("subscriber_id", "slot_date"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    # Indexed for retention (newsletter/store/issues.py prune_issues) and slot lookups.
    slot_date: Mapped[date] = mapped_column(Date, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str | None] = mapped_column(Text)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Indexed: a bounce or complaint names the issue by its Message-ID (newsletter/bounces.py).
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    message: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)  # feeds
    # When a task for this issue was last handed to the workers' broker (queue mode); None
    # when none is believed to be in the queue. Cleared when an outcome is recorded.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeliverySettingsRow(Base):
    """The delivery settings the scheduler publishes for the workers (one row, id 1): what a
    worker renders and sends with (site, mail, SMTP without the password), so a worker needs
    only the database URL, the broker URL and the package (newsletter/workers/published.py)."""

    __tablename__ = "delivery_settings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    settings: Mapped[str] = mapped_column(Text)  # JSON
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IssuePaperRow(Base):
    __tablename__ = "issue_papers"
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), primary_key=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    reasons: Mapped[str] = mapped_column(Text)  # JSON list of [term, where, contribution]


class SentLogRow(Base):
    """(subscriber, paper): written in the transaction that marks the issue sent."""

    __tablename__ = "sent_log"
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), primary_key=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id"), primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FeedbackRow(Base):
    """A reader's judgment of one paper ("more / less like this"): one row per (subscriber,
    paper), the latest judgment wins. The primary key leads with the subscriber, so a
    subscriber's judgments (and many subscribers' at once, for a ranker) are one index range.
    Kept for as long as the subscriber's row: retention does not prune it."""

    __tablename__ = "feedback"
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), primary_key=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id"), primary_key=True)
    judgment: Mapped[str] = mapped_column(String(16))  # like | dislike
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PaperEmbeddingRow(Base):
    """A paper's sentence embedding for semantic matching (``[semantic]``, optional): float32
    values, unit length, computed once at ingest by the named model. A paper whose title or
    abstract a later digest improves loses its row (it is embedded again); a row of another
    model is replaced when the configured model changes (``newsletter semantic embed``)."""

    __tablename__ = "paper_embeddings"
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(500))
    dims: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class DaemonStateRow(Base):
    """What the daemon last did, for ``status`` and ``/metrics`` in other processes (one row,
    id 1): who runs it (pid, host, since; ``stopped_at`` once it stopped cleanly), its
    heartbeat (every inbox scan) and the last inbox scan (by the daemon or ``run --once``)."""

    __tablename__ = "daemon_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_scan_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeliveryCounterRow(Base):
    """Cumulative delivery counters of every sending process (``/metrics``): messages sent,
    failed by reason class, and the send-time histogram's buckets, sum and count; each
    pass adds to them in one transaction (``value = value + n``)."""

    __tablename__ = "delivery_counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class BounceRow(Base):
    """One processed bounce or complaint (newsletter/bounces.py): a delivery status
    notification, a feedback-loop report, or a 5xx reply to RCPT TO. ``report_id`` (the
    report's own Message-ID, or ``rcpt:`` and the issue's) is unique, so a report read twice
    counts once."""

    __tablename__ = "bounces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[str] = mapped_column(String(255), unique=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # hard | soft | complaint
    status: Mapped[str | None] = mapped_column(String(16))  # enhanced status code, "5.1.1"
    detail: Mapped[str] = mapped_column(Text, default="")
    # The Message-ID of the issue that bounced, when the report names it: soft bounces of
    # one message (several "delayed" reports) count once.
    original_message_id: Mapped[str | None] = mapped_column(String(255))
    matched_by: Mapped[str] = mapped_column(String(16))  # verp | message-id | recipient | smtp
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SourceHealthRow(Base):
    """One source of ``newsletter fetch`` (newsletter/fetch): its validators for the next
    conditional GET (the ETag and Last-Modified of ``url``'s last answer) and its health for
    ``status``: last success, last error, failures in a row, last time it brought a new
    paper."""

    __tablename__ = "source_health"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(1024))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_new_paper_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StaleAlertRow(Base):
    """The stale-sources alert (one row, id 1): when it was last sent, so that one stale
    spell sends one email (sent again only after a source brought papers since)."""

    __tablename__ = "stale_alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


def token_digest(token: str) -> str:
    """The SHA-256 (hex) under which a secret token is looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@event.listens_for(SubscriberRow, "before_insert")
@event.listens_for(SubscriberRow, "before_update")
def _hash_tokens(_mapper: Mapper[SubscriberRow], _conn: Connection, row: SubscriberRow) -> None:
    """Every ORM write of a subscriber keeps the lookup hashes equal to its tokens, so code
    that creates subscribers (config sync, CLI, CSV, web) needs to know nothing about them."""
    row.token_hash = token_digest(row.token) if row.token else None
    row.feed_token_hash = token_digest(row.feed_token) if row.feed_token else None
