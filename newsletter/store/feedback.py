"""Readers' judgments of papers ("more / less like this") and muted terms (part of :class:`Store`).

One row per (subscriber, paper) in ``feedback``: a later judgment replaces the earlier one
(an upsert, so two clicks at once leave one row). The reads are in bulk, for a ranker that
learns from them: :meth:`FeedbackQueries.judgments` answers for many subscribers in one query
per :data:`~newsletter.store.engine.BATCH` of them. Judgments are kept as long as the
subscriber's row; retention (``retention.issue_days``) does not prune them.

Muting a term changes the subscriber's profile: :meth:`FeedbackQueries.replace_profile`
writes it only if the profile is still the one the caller read, so a mute and a preferences
save at the same moment cannot undo each other silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from newsletter.domain import Judgment
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import FeedbackRow, PaperRow, SubscriberRow


@dataclass(frozen=True)
class FeedbackEntry:
    """One stored judgment, with the paper's title (for listings)."""

    paper_id: int
    title: str
    judgment: Judgment
    created_at: datetime
    updated_at: datetime


class FeedbackQueries(StoreBase):
    """Judgments per (subscriber, paper), and the profile update behind a muted term."""

    def record_judgment(
        self, subscriber_id: int, paper_id: int, judgment: Judgment, now: datetime
    ) -> bool:
        """Store a judgment (the latest wins: ``created_at`` stays, ``updated_at`` moves).
        False when the subscriber or the paper does not exist (the foreign keys refuse it)."""
        values = {
            "subscriber_id": subscriber_id,
            "paper_id": paper_id,
            "judgment": Judgment(judgment).value,
            "created_at": now,
            "updated_at": now,
        }
        insert = self._insert(FeedbackRow.__table__).values(values)
        upsert = insert.on_conflict_do_update(
            index_elements=["subscriber_id", "paper_id"],
            set_={"judgment": insert.excluded.judgment, "updated_at": insert.excluded.updated_at},
        )
        try:
            with self._session() as s:
                s.execute(upsert)
        except IntegrityError:
            return False
        return True

    def judgments(self, subscriber_ids: Iterable[int]) -> dict[int, dict[int, Judgment]]:
        """subscriber id → paper id → judgment, for every given subscriber that has any: one
        query per :data:`BATCH` subscribers (a ranker's chunk reads them at once)."""
        out: dict[int, dict[int, Judgment]] = {}
        ids = sorted(set(subscriber_ids))
        with self._read() as s:
            for chunk in chunks(ids, BATCH):
                query = select(
                    FeedbackRow.subscriber_id, FeedbackRow.paper_id, FeedbackRow.judgment
                ).where(FeedbackRow.subscriber_id.in_(chunk))
                for sid, pid, judgment in s.execute(query):
                    out.setdefault(sid, {})[pid] = Judgment(judgment)
        return out

    def feedback_entries(self, subscriber_id: int) -> list[FeedbackEntry]:
        """One subscriber's judgments with the papers' titles, latest first."""
        query = (
            select(
                FeedbackRow.paper_id,
                PaperRow.title,
                FeedbackRow.judgment,
                FeedbackRow.created_at,
                FeedbackRow.updated_at,
            )
            .join(PaperRow, PaperRow.id == FeedbackRow.paper_id)
            .where(FeedbackRow.subscriber_id == subscriber_id)
            .order_by(FeedbackRow.updated_at.desc(), FeedbackRow.paper_id)
        )
        with self._read() as s:
            return [
                FeedbackEntry(pid, title, Judgment(judgment), created, updated)
                for pid, title, judgment, created, updated in s.execute(query)
            ]

    def replace_profile(self, subscriber_id: int, old: str, new: str, now: datetime) -> bool:
        """Set the subscriber's profile to ``new`` if it is still ``old``; False otherwise
        (changed in between, or no such subscriber)."""
        with self._session() as s:
            result = s.execute(
                update(SubscriberRow)
                .where(SubscriberRow.id == subscriber_id, SubscriberRow.profile == old)
                .values(profile=new, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
