"""What delivery by Celery workers keeps in the database (part of :class:`Store`).

The broker is only a trigger: which issues are due, which were handed to the broker and when,
and who is sending which one all live here (``issues.queued_at``, the issue states, and the
per-issue locks of :mod:`newsletter.store.lock`), so a lost, repeated or late task changes
nothing. The scheduler also publishes the delivery settings here for the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import defer

from newsletter.domain import IssueRecord, IssueState
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.issues import _records
from newsletter.store.schema import DeliverySettingsRow, IssueRow

#: States of an issue waiting for a worker: queued when ``queued_at`` is set.
_WAITING = (IssueState.PLANNED.value, IssueState.RENDERED.value)
_PENDING = (*_WAITING, IssueState.SENDING.value)


@dataclass(frozen=True)
class ToEnqueue:
    """The due issues a pass hands to the broker: ``fresh`` ones no task was sent for (new,
    due again after a backoff, retried by the operator), and ``stale`` ones whose task went
    to the broker before the requeue cutoff and that are still not done (the broker may have
    lost it: restarted without persistence, a task acked by a worker that then died)."""

    fresh: tuple[int, ...]
    stale: tuple[int, ...]


@dataclass(frozen=True)
class QueueCounts:
    """Issues handed to the workers and not done: ``queued`` (in the broker or a worker's
    prefetch), ``sending`` (claimed by a worker, or left by one that died)."""

    queued: int
    sending: int


@dataclass(frozen=True)
class PublishedSettings:
    """The delivery settings as the scheduler published them (JSON text) and when."""

    settings: str
    updated_at: datetime


class QueueQueries(StoreBase):
    """Reads and writes of queue mode: by issue id, in sets."""

    def issue_by_id(self, issue_id: int) -> IssueRecord | None:
        """One issue as a worker reads it before claiming it; None if it no longer exists
        (retention deleted it)."""
        with self._read() as s:
            row = s.scalar(
                select(IssueRow)
                .options(defer(IssueRow.html), defer(IssueRow.message))
                .where(IssueRow.id == issue_id)
            )
            return _records(s, [row])[0] if row else None

    def issues_to_enqueue(self, now: datetime, *, requeue_before: datetime) -> ToEnqueue:
        """The pending issues that are due at ``now`` (no retry delay ahead) and have no task
        in the queue, or one handed over before ``requeue_before``; in id order. One query."""
        due = or_(IssueRow.next_retry_at.is_(None), IssueRow.next_retry_at <= now)
        query = (
            select(IssueRow.id, IssueRow.queued_at)
            .where(
                IssueRow.state.in_(_PENDING),
                due,
                or_(IssueRow.queued_at.is_(None), IssueRow.queued_at < requeue_before),
            )
            .order_by(IssueRow.id)
        )
        fresh: list[int] = []
        stale: list[int] = []
        with self._read() as s:
            for issue_id, queued_at in s.execute(query):
                (fresh if queued_at is None else stale).append(issue_id)
        return ToEnqueue(tuple(fresh), tuple(stale))

    def mark_queued(self, issue_ids: Sequence[int], at: datetime) -> None:
        """Note that a task for each of these issues is now in the broker (one transaction).
        Only issues still pending: one that a fast worker finished in the meantime keeps
        ``queued_at`` empty."""
        with self._session() as s:
            for batch in chunks(list(issue_ids), BATCH):
                s.execute(
                    update(IssueRow)
                    .where(IssueRow.id.in_(batch), IssueRow.state.in_(_PENDING))
                    .values(queued_at=at)
                    .execution_options(synchronize_session=False)
                )

    def unmark_queued(self, issue_ids: Sequence[int], at: datetime) -> None:
        """Undo :meth:`mark_queued` of ``at`` for these issues: the broker did not take
        their tasks (an issue a worker has touched since keeps what the worker wrote)."""
        with self._session() as s:
            for batch in chunks(list(issue_ids), BATCH):
                s.execute(
                    update(IssueRow)
                    .where(IssueRow.id.in_(batch), IssueRow.queued_at == at)
                    .values(queued_at=None)
                    .execution_options(synchronize_session=False)
                )

    def queue_counts(self) -> QueueCounts:
        """How many issues wait in the queue and how many are being sent. One query."""
        with self._read() as s:
            queued, sending = s.execute(
                select(
                    func.count().filter(
                        IssueRow.state.in_(_WAITING), IssueRow.queued_at.is_not(None)
                    ),
                    func.count().filter(IssueRow.state == IssueState.SENDING.value),
                ).where(IssueRow.state.in_(_PENDING))
            ).one()
        return QueueCounts(int(queued), int(sending))

    def publish_delivery_settings(self, settings: str, now: datetime) -> bool:
        """Store the delivery settings the workers use; True if they changed."""
        with self._session() as s:
            row = s.get(DeliverySettingsRow, 1)
            if row is not None and row.settings == settings:
                return False
            if row is None:
                s.add(DeliverySettingsRow(id=1, settings=settings, updated_at=now))
            else:
                row.settings, row.updated_at = settings, now
            return True

    def delivery_settings(self) -> PublishedSettings | None:
        """The delivery settings last published by the scheduler, or None (never)."""
        with self._read() as s:
            row = s.get(DeliverySettingsRow, 1)
            return PublishedSettings(row.settings, row.updated_at) if row else None
