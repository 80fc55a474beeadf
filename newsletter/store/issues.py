"""Issues: planning many at once, the delivery state machine, the sent log, private feeds."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, defer

from newsletter.domain import (
    FeedItem,
    IssueRecord,
    IssueState,
    ScoredPaper,
    SubscriberStatus,
)
from newsletter.store import rows
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import IssuePaperRow, IssueRow, PaperRow, SentLogRow, SubscriberRow

#: The states of an issue that still has to go out: what a run or the daemon delivers.
PENDING_STATES = (IssueState.PLANNED, IssueState.RENDERED, IssueState.SENDING)


@dataclass(frozen=True)
class IssuePlan:
    """One slot's issue to create: who, which slot, which papers in which order."""

    subscriber_id: int
    slot_date: date
    papers: tuple[ScoredPaper, ...]


@dataclass(frozen=True)
class IssueCounts:
    pending: int
    failed: int
    unknown: int = 0


@dataclass(frozen=True)
class LastSent:
    """A subscriber's latest sent issue, as ``status`` shows it."""

    slot_date: date
    sent_at: datetime | None
    last_reply: str | None


class IssueQueries(StoreBase):
    """Issues and the sent log (part of :class:`newsletter.store.Store`)."""

    # ------------------------------------------------------------------ issues

    def sent_paper_ids(self, subscriber_id: int) -> set[int]:
        with self._read() as s:
            return set(
                s.scalars(
                    select(SentLogRow.paper_id).where(SentLogRow.subscriber_id == subscriber_id)
                )
            )

    def assigned_paper_ids(
        self, subscriber_ids: Collection[int], *, seen_since: datetime | None = None
    ) -> dict[int, set[int]]:
        """For each subscriber, the papers already in any of their issues, sent or not yet.

        A paper belongs to at most one issue per subscriber: a planned issue that has not gone
        out yet (a crash, a retry pending) still owns its papers, so the next slot cannot plan
        them a second time. ``seen_since`` limits the answer to papers first seen since then
        (the candidate window: older papers are no candidates anyway). One query whatever the
        number of subscribers: beyond one ``IN`` list it reads every assignment in the window
        and keeps the subscribers asked for.
        """
        wanted = set(subscriber_ids)
        found: dict[int, set[int]] = {sid: set() for sid in wanted}
        if not wanted:
            return found
        query = select(IssueRow.subscriber_id, IssuePaperRow.paper_id).join(
            IssueRow, IssueRow.id == IssuePaperRow.issue_id
        )
        if seen_since is not None:
            query = query.join(PaperRow, PaperRow.id == IssuePaperRow.paper_id).where(
                PaperRow.first_seen_at >= seen_since
            )
        if len(wanted) <= BATCH:
            query = query.where(IssueRow.subscriber_id.in_(sorted(wanted)))
        with self._read() as s:
            for subscriber_id, paper_id in s.execute(query):
                if subscriber_id in found:
                    found[subscriber_id].add(paper_id)
        return found

    def slots_with_issues(self, slots: Iterable[tuple[int, date]]) -> set[tuple[int, date]]:
        """Which of these (subscriber id, slot date) pairs already have their issue.

        Queried by slot date (a run's slots fall on one or two dates across timezones), so
        the number of statements does not grow with the number of subscribers.
        """
        wanted = set(slots)
        ids = {subscriber_id for subscriber_id, _ in wanted}
        found: set[tuple[int, date]] = set()
        with self._read() as s:
            for dates in chunks(sorted({slot for _, slot in wanted}), BATCH):
                query = select(IssueRow.subscriber_id, IssueRow.slot_date).where(
                    IssueRow.slot_date.in_(dates)
                )
                if len(ids) <= BATCH:
                    query = query.where(IssueRow.subscriber_id.in_(sorted(ids)))
                found.update((sid, slot) for sid, slot in s.execute(query) if (sid, slot) in wanted)
        return found

    def issue(self, subscriber_id: int, slot_date: date) -> IssueRecord | None:
        with self._read() as s:
            row = s.scalar(
                select(IssueRow)
                .options(defer(IssueRow.html), defer(IssueRow.message))
                .where(IssueRow.subscriber_id == subscriber_id, IssueRow.slot_date == slot_date)
            )
            return _records(s, [row])[0] if row else None

    def issues(self, *, states: Sequence[IssueState] | None = None) -> list[IssueRecord]:
        """Issues in id order (all, or those in ``states``), without their stored message:
        two queries whatever their number."""
        with self._read() as s:
            query = (
                select(IssueRow)
                .options(defer(IssueRow.html), defer(IssueRow.message))
                .order_by(IssueRow.id)
            )
            if states:
                query = query.where(IssueRow.state.in_([st.value for st in states]))
            return _records(s, list(s.scalars(query)), states)

    def issue_html(self, subscriber_id: int, slot_date: date) -> str | None:
        """The HTML of a delivered issue as it was emailed; None unless that slot's issue
        was sent."""
        with self._read() as s:
            return s.scalar(
                select(IssueRow.html).where(
                    IssueRow.subscriber_id == subscriber_id,
                    IssueRow.slot_date == slot_date,
                    IssueRow.state == IssueState.SENT.value,
                )
            )

    def issue_state_counts(self) -> IssueCounts:
        """How many issues are pending and failed: one grouped query."""
        with self._read() as s:
            counts = dict(
                s.execute(select(IssueRow.state, func.count()).group_by(IssueRow.state)).all()
            )
        return IssueCounts(
            pending=sum(int(counts.get(st.value, 0)) for st in PENDING_STATES),
            failed=int(counts.get(IssueState.FAILED.value, 0)),
            unknown=int(counts.get(IssueState.UNKNOWN.value, 0)),
        )

    def last_sent_issues(self) -> dict[int, LastSent]:
        """Each subscriber's latest sent issue (by slot date): one query."""
        latest = (
            select(IssueRow.subscriber_id, func.max(IssueRow.slot_date).label("slot_date"))
            .where(IssueRow.state == IssueState.SENT.value)
            .group_by(IssueRow.subscriber_id)
            .subquery()
        )
        query = select(
            IssueRow.subscriber_id, IssueRow.slot_date, IssueRow.sent_at, IssueRow.last_reply
        ).join(
            latest,
            (latest.c.subscriber_id == IssueRow.subscriber_id)
            & (latest.c.slot_date == IssueRow.slot_date),
        )
        with self._read() as s:
            return {
                sid: LastSent(slot, sent_at, reply)
                for sid, slot, sent_at, reply in s.execute(query)
            }

    def plan_issues(self, plans: Sequence[IssuePlan], now: datetime) -> int:
        """Create these slots' issues, state planned, in one transaction; returns how many.

        A slot that has its issue already (another run planned it in the meantime) is left
        as it is: the unique (subscriber, slot) key refuses the second one. Two statements
        per :data:`BATCH` plans (the issues, then their papers), whatever their number.
        """
        created = 0
        with self._session() as s:
            for batch in chunks(plans, BATCH):
                result = s.execute(
                    self._insert(IssueRow)
                    .values(
                        [
                            {
                                "subscriber_id": plan.subscriber_id,
                                "slot_date": plan.slot_date,
                                "state": IssueState.PLANNED.value,
                                "attempts": 0,
                                "created_at": now,
                            }
                            for plan in batch
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["subscriber_id", "slot_date"])
                    .returning(IssueRow.id, IssueRow.subscriber_id, IssueRow.slot_date)
                )
                issue_ids = {(sid, slot): issue_id for issue_id, sid, slot in result}
                papers = [
                    {
                        "issue_id": issue_ids[(plan.subscriber_id, plan.slot_date)],
                        "paper_id": sp.paper.id,
                        "position": position,
                        "score": sp.score,
                        "reasons": json.dumps(
                            [[r.term, r.where, r.contribution] for r in sp.reasons]
                        ),
                    }
                    for plan in batch
                    if (plan.subscriber_id, plan.slot_date) in issue_ids
                    for position, sp in enumerate(plan.papers, start=1)
                ]
                if papers:
                    s.execute(self._insert(IssuePaperRow), papers)
                created += len(issue_ids)
        return created

    def plan_issue(
        self, subscriber_id: int, slot_date: date, papers: Sequence[ScoredPaper], now: datetime
    ) -> IssueRecord | None:
        """One slot's issue (:meth:`plan_issues` for one); None if the slot already has one."""
        if not self.plan_issues([IssuePlan(subscriber_id, slot_date, tuple(papers))], now):
            return None
        return self.issue(subscriber_id, slot_date)

    def issue_papers(self, issue_id: int) -> list[ScoredPaper]:
        with self._read() as s:
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
        with self._read() as s:
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
        self,
        issue_id: int,
        *,
        reply: str,
        next_retry_at: datetime | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Record a failure. With ``next_retry_at`` the issue stays due (planned if it was
        never rendered, else rendered) and is retried then; without, it is failed for good.
        ``count_attempt``: the failure came before the claim (rendering), which counts the
        attempt otherwise, so an issue that cannot be rendered ends failed too."""
        with self._session() as s:
            row = s.get(IssueRow, issue_id)
            assert row is not None
            if count_attempt:
                row.attempts += 1
            row.last_reply = reply
            row.next_retry_at = next_retry_at
            if next_retry_at is None:
                row.state = IssueState.FAILED.value
            else:
                row.state = (
                    IssueState.PLANNED if row.message is None else IssueState.RENDERED
                ).value

    def mark_unknown(self, issue_id: int, *, reply: str) -> None:
        """The message went out but its final reply never came: ``unknown``, not re-sent
        unless the operator retries it (``newsletter retry``), since it may have arrived."""
        with self._session() as s:
            s.execute(
                update(IssueRow)
                .where(IssueRow.id == issue_id)
                .values(state=IssueState.UNKNOWN.value, last_reply=reply, next_retry_at=None)
            )

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
        """Put failed issues (and those whose outcome is unknown) of active subscribers back
        in line: ``newsletter retry``.

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
                    IssueRow.state.in_([IssueState.FAILED.value, IssueState.UNKNOWN.value]),
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
        with self._read() as s:
            found = s.execute(
                select(SentLogRow.subscriber_id, SentLogRow.paper_id, SentLogRow.issue_id).order_by(
                    SentLogRow.subscriber_id, SentLogRow.paper_id
                )
            ).all()
            return [(a, b, c) for a, b, c in found]

    def subscriber_feed_items(self, subscriber_id: int) -> list[FeedItem]:
        """The papers of this subscriber's sent issues, dated when the issue was sent."""
        with self._read() as s:
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


def _records(
    s: Session, found: Sequence[IssueRow], states: Sequence[IssueState] | None = None
) -> list[IssueRecord]:
    """Issue rows to records, with every issue's paper ids from one query."""
    paper_ids: dict[int, list[int]] = {r.id: [] for r in found}
    if not paper_ids:
        return []
    query = select(IssuePaperRow.issue_id, IssuePaperRow.paper_id).order_by(
        IssuePaperRow.issue_id, IssuePaperRow.position
    )
    if len(paper_ids) <= BATCH:
        query = query.where(IssuePaperRow.issue_id.in_(list(paper_ids)))
    elif states:
        query = query.join(IssueRow, IssueRow.id == IssuePaperRow.issue_id).where(
            IssueRow.state.in_([st.value for st in states])
        )
    for issue_id, paper_id in s.execute(query):
        if issue_id in paper_ids:
            paper_ids[issue_id].append(paper_id)
    return [rows.issue(r, tuple(paper_ids[r.id])) for r in found]
