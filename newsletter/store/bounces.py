"""Bounces and complaints: the processed reports, the soft-bounce count, suppression.

One row per processed report (``bounces``, its ``report_id`` unique: a report read twice
counts once) and, on the subscriber, why and when it was suppressed. The policy (what
suppresses) is :mod:`newsletter.bounces`'s; :meth:`BounceQueries.record_bounce` applies it in
the transaction that records the report, so two runs reading the same mailbox at once cannot
count a report twice or miss a threshold.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from newsletter.domain import Subscriber, SubscriberStatus
from newsletter.store import rows
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import BounceRow, IssueRow, SubscriberRow


class BounceKind(enum.StrEnum):
    """What a report says of one delivery (stored as its value)."""

    HARD = "hard"  # a permanent failure (5.x.x, or a 5xx reply to RCPT TO)
    SOFT = "soft"  # a transient failure (4.x.x): delayed, or given up for now
    COMPLAINT = "complaint"  # a feedback-loop report: the reader marked it as spam


class MatchedBy(enum.StrEnum):
    """How a report was tied to its subscriber (stored as its value)."""

    VERP = "verp"  # the bounce address's token (mail.bounce_address)
    MESSAGE_ID = "message-id"  # the returned issue's Message-ID
    RECIPIENT = "recipient"  # Final-Recipient / Original-Rcpt-To, by address
    SMTP = "smtp"  # our own SMTP server refused the recipient (no report)


@dataclass(frozen=True)
class BounceEvent:
    """One bounce or complaint, matched to its subscriber, ready to record."""

    report_id: str  # the report's own Message-ID ("rcpt:<issue Message-ID>" for SMTP)
    subscriber_id: int
    kind: BounceKind
    status: str | None  # enhanced status code, e.g. "5.1.1"
    detail: str  # the diagnostic or feedback type, for the suppression reason
    original_message_id: str | None
    matched_by: MatchedBy
    received_at: datetime  # timezone-aware


@dataclass(frozen=True)
class BounceOutcome:
    """What recording one event did: ``duplicate`` (already processed, nothing changed),
    ``soft_count`` (the subscriber's soft bounces in the window, this one included),
    ``suppressed`` (the reason, when this event suppressed the subscriber)."""

    duplicate: bool
    soft_count: int = 0
    suppressed: str | None = None


@dataclass(frozen=True)
class Suppression:
    reason: str
    at: datetime


class BounceQueries(StoreBase):
    """Bounces, complaints and suppression (part of :class:`newsletter.store.Store`)."""

    def known_reports(self, report_ids: Iterable[str]) -> set[str]:
        """Which of these report ids were processed already."""
        ids = sorted(set(report_ids))
        found: set[str] = set()
        with self._read() as s:
            for chunk in chunks(ids, BATCH):
                found.update(
                    s.scalars(select(BounceRow.report_id).where(BounceRow.report_id.in_(chunk)))
                )
        return found

    def subscriber_by_message_id(self, message_id: str) -> Subscriber | None:
        """The subscriber an issue with this Message-ID (``<...>``) was sent to."""
        with self._read() as s:
            row = s.scalar(
                select(SubscriberRow)
                .join(IssueRow, IssueRow.subscriber_id == SubscriberRow.id)
                .where(IssueRow.message_id == message_id)
                .limit(1)
            )
            return rows.subscriber(row) if row else None

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self._read() as s:
            row = s.get(SubscriberRow, subscriber_id)
            return rows.subscriber(row) if row else None

    def record_bounce(
        self,
        event: BounceEvent,
        decide: Callable[[int], str | None],
        *,
        soft_since: datetime,
        now: datetime,
    ) -> BounceOutcome:
        """Record one event and apply the policy, in one transaction.

        ``decide(soft_count)`` is the policy: the suppression reason, or None. A report seen
        before changes nothing. A subscriber suppressed already keeps its first reason; an
        active one becomes ``suppressed``; an unsubscribed one stays unsubscribed but is
        marked, so that a resubscribe from the web cannot make it active again.
        """
        with self._session() as s:
            inserted = s.execute(
                self._insert(BounceRow.__table__)
                .values(
                    report_id=event.report_id[:255],
                    subscriber_id=event.subscriber_id,
                    kind=event.kind.value,
                    status=event.status,
                    detail=event.detail,
                    original_message_id=(event.original_message_id or None)
                    and event.original_message_id[:255],
                    matched_by=event.matched_by.value,
                    received_at=event.received_at,
                )
                .on_conflict_do_nothing(index_elements=["report_id"])
                .returning(BounceRow.__table__.c.id)
            )
            if inserted.scalar() is None:  # the report was processed before
                return BounceOutcome(duplicate=True)
            soft = s.scalar(
                select(
                    func.count(
                        func.distinct(
                            func.coalesce(BounceRow.original_message_id, BounceRow.report_id)
                        )
                    )
                ).where(
                    BounceRow.subscriber_id == event.subscriber_id,
                    BounceRow.kind == BounceKind.SOFT.value,
                    BounceRow.received_at >= soft_since,
                )
            )
            soft_count = int(soft or 0)
            reason = decide(soft_count)
            if reason is None:
                return BounceOutcome(duplicate=False, soft_count=soft_count)
            row = s.get(SubscriberRow, event.subscriber_id)
            if row is None or row.suppressed_reason is not None:
                return BounceOutcome(duplicate=False, soft_count=soft_count)
            row.suppressed_reason = reason[:1000]
            row.suppressed_at = now
            if row.status == SubscriberStatus.ACTIVE.value:
                row.status = SubscriberStatus.SUPPRESSED.value
            row.updated_at = now
            return BounceOutcome(duplicate=False, soft_count=soft_count, suppressed=reason)

    def suppressions(self, ids: Iterable[int] | None = None) -> dict[int, Suppression]:
        """Why and since when subscribers are suppressed, by id (all of them, or these)."""
        query = select(
            SubscriberRow.id, SubscriberRow.suppressed_reason, SubscriberRow.suppressed_at
        ).where(SubscriberRow.suppressed_reason.is_not(None))
        found: dict[int, Suppression] = {}
        with self._read() as s:
            if ids is None:
                batches: Iterable[object] = [query]
            else:
                batches = [
                    query.where(SubscriberRow.id.in_(chunk))
                    for chunk in chunks(sorted(set(ids)), BATCH)
                ]
            for q in batches:
                for sid, reason, at in s.execute(q):  # type: ignore[call-overload]
                    found[sid] = Suppression(reason, at)
        return found

    def clear_suppression(self, subscriber_id: int, now: datetime) -> bool:
        """The operator's decision (``subscriber add``): forget the suppression (the bounce
        history stays). Does not change the status; the caller sets it."""
        with self._session() as s:
            result = s.execute(
                update(SubscriberRow)
                .where(
                    SubscriberRow.id == subscriber_id,
                    SubscriberRow.suppressed_reason.is_not(None),
                )
                .values(suppressed_reason=None, suppressed_at=None, updated_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
