"""Issues: planning many at once, the delivery state machine, the sent log, private feeds."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, delete, func, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, Session, defer

from newsletter.domain import (
    FeedItem,
    FeedVersion,
    FeedWindow,
    IssueRecord,
    IssueState,
    Paper,
    ScoredPaper,
    SubscriberStatus,
)
from newsletter.store import rows
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import IssuePaperRow, IssueRow, PaperRow, SentLogRow, SubscriberRow

#: The states of an issue that still has to go out: what a run or the daemon delivers.
PENDING_STATES = (IssueState.PLANNED, IssueState.RENDERED, IssueState.SENDING)

#: Planning at least this many issues in one call refreshes PostgreSQL's statistics of the
#: issue tables (see :meth:`IssueQueries._analyze_issues`).
ANALYZE_AFTER = 2000
#: Issues that retention deletes whole once their slot is past the window: never sent, and
#: no longer retried by anything but an operator's ``newsletter retry``.
_DELETED_STATES = (IssueState.FAILED.value, IssueState.UNKNOWN.value)
#: Issues whose papers retention deletes: those above, and sent ones (whose row stays).
_PRUNED_STATES = (IssueState.SENT.value, *_DELETED_STATES)


@dataclass(frozen=True)
class IssuePlan:
    """One slot's issue to create: who, which slot, which papers in which order."""

    subscriber_id: int
    slot_date: date
    papers: tuple[ScoredPaper, ...]


@dataclass(frozen=True)
class IssueOutcome:
    """Where one pass left one issue, stored with many others in one transaction by
    :meth:`IssueQueries.record_outcomes`: delivery commits a batch of these, not a
    transaction per message.

    ``issue`` is the record as read before the claim (its id, subscriber, papers, and the
    values kept when ``message_id``/``subject`` are None); the other fields are what to store.
    ``state`` SENT also writes the sent log of ``issue.paper_ids``.
    """

    issue: IssueRecord
    state: IssueState
    attempts: int
    reply: str | None
    next_retry_at: datetime | None = None
    message_id: str | None = None
    subject: str | None = None

    @classmethod
    def unchanged(cls, issue: IssueRecord) -> IssueOutcome:
        """Claimed but never tried (the run stopped first): back exactly as it was read,
        state and attempt count included, so the claim leaves no trace."""
        return cls(issue, issue.state, issue.attempts, issue.last_reply, issue.next_retry_at)


@dataclass(frozen=True)
class IssueCounts:
    pending: int
    failed: int
    unknown: int = 0


@dataclass(frozen=True)
class SentIssue:
    """A sent issue as the archive re-renders it: the values the email was rendered from
    that belong to the issue (the subscriber and site are read as they are now)."""

    slot_date: date
    created_at: datetime
    papers: tuple[ScoredPaper, ...]


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`IssueQueries.prune_issues` deleted: issue-paper rows, and whole issues
    (failed or unknown ones)."""

    issue_papers: int = 0
    issues: int = 0


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
        number of subscribers: beyond one ``IN`` list it reads the assignments in the window
        of the range of ids asked for (planning asks by chunks of consecutive ids) and keeps
        the subscribers asked for.
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
        query = query.where(_subscribers_among(IssueRow.subscriber_id, wanted))
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
                query = query.where(_subscribers_among(IssueRow.subscriber_id, ids))
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

    def sent_issue(self, subscriber_id: int, slot_date: date) -> SentIssue | None:
        """What the archive re-renders a sent issue from: when it was planned (the email's
        date line) and its papers in order with the scores and reasons they were sent with.

        None unless that slot's issue was sent. A sent issue keeps no HTML or message bytes
        (see :meth:`mark_sent`); past :meth:`prune_issues` it keeps no papers either, and
        the archive has nothing to show. Two queries.
        """
        with self._read() as s:
            found = s.execute(
                select(IssueRow.id, IssueRow.created_at).where(
                    IssueRow.subscriber_id == subscriber_id,
                    IssueRow.slot_date == slot_date,
                    IssueRow.state == IssueState.SENT.value,
                )
            ).first()
            if found is None:
                return None
            issue_id, created_at = found
            papers = s.execute(
                select(IssuePaperRow, PaperRow)
                .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                .where(IssuePaperRow.issue_id == issue_id)
                .order_by(IssuePaperRow.position)
            ).all()
            if not papers and s.scalar(
                select(func.count()).select_from(SentLogRow).where(SentLogRow.issue_id == issue_id)
            ):
                return None  # pruned: the papers are gone, only the sent log remains
            return SentIssue(
                slot_date=slot_date,
                created_at=created_at,
                papers=tuple(
                    ScoredPaper(
                        paper=rows.paper(p), score=ip.score, reasons=rows.reasons(ip.reasons)
                    )
                    for ip, p in papers
                ),
            )

    def prune_issues(self, before: date) -> PruneResult:
        """Retention: forget issues whose slot is before ``before``, except the sent log.

        The sent log is the ``sent_log`` rows (which paper went to whom, in which issue,
        when) and each sent issue's own row (slot, state, Message-ID, sent time, the server's
        reply): both stay forever, so ``status`` and audits keep the delivery history and
        the (subscriber, slot) key still refuses a second issue for that slot. What goes:
        the issue-paper rows of those sent issues (their archive page and private feed
        entries), and failed or unknown issues entirely (rows, papers and the message bytes
        kept for a retry). Issues still pending are left to the pipeline. Planning is not
        affected as long as ``before`` is older than the candidate window: it excludes the
        papers of a subscriber's issues only among papers first seen within that window
        (the caller, :meth:`newsletter.app.Newsletter.apply_retention`, guarantees it).
        Two statements in one transaction, found by the index on the slot date.
        """
        old = (IssueRow.slot_date < before) & IssueRow.state.in_(_PRUNED_STATES)
        gone = (IssueRow.slot_date < before) & IssueRow.state.in_(_DELETED_STATES)
        with self._session() as s:
            # synchronize_session=False: no session objects to update, and without it the
            # ORM would fetch every deleted key back (RETURNING) only to look for them.
            papers = s.execute(
                delete(IssuePaperRow)
                .where(IssuePaperRow.issue_id.in_(select(IssueRow.id).where(old)))
                .execution_options(synchronize_session=False)
            )
            issues = s.execute(
                delete(IssueRow).where(gone).execution_options(synchronize_session=False)
            )
            return PruneResult(
                issue_papers=int(papers.rowcount),  # type: ignore[attr-defined]
                issues=int(issues.rowcount),  # type: ignore[attr-defined]
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
            table = IssueRow.__table__.c
            # One cached statement over the batch (SQLAlchemy's "insertmanyvalues": a
            # multi-row INSERT … RETURNING per BATCH rows); a ``VALUES`` list written out
            # here was compiled again for every batch.
            insert_issues = (
                self._insert(IssueRow.__table__)
                .on_conflict_do_nothing(index_elements=["subscriber_id", "slot_date"])
                .returning(table.id, table.subscriber_id, table.slot_date)
                .execution_options(insertmanyvalues_page_size=BATCH)
            )
            for batch in chunks(plans, BATCH):
                result = s.connection().execute(
                    insert_issues,
                    [
                        {
                            "subscriber_id": plan.subscriber_id,
                            "slot_date": plan.slot_date,
                            "state": IssueState.PLANNED.value,
                            "attempts": 0,
                            "created_at": now,
                        }
                        for plan in batch
                    ],
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
                if papers:  # Core executemany: no ORM bookkeeping per row
                    s.connection().execute(self._insert(IssuePaperRow.__table__), papers)
                created += len(issue_ids)
        if created >= ANALYZE_AFTER and self.dialect == "postgresql":
            self._analyze_issues()
        return created

    def _analyze_issues(self) -> None:
        """Refresh PostgreSQL's statistics of the issue tables after a bulk insert.

        Without them (autovacuum lags behind a big first plan) the planner takes a table of
        100,000 issues for an empty one and answers the per-issue and per-subscriber lookups
        (assigned papers, an issue's papers) with sequential scans of ``issue_papers``: tens of
        thousands of them in one delivery run. ANALYZE samples a fixed number of rows, so it
        costs about the same at any size.
        """
        with self.engine.connect() as conn:
            conn.execute(text("ANALYZE issues, issue_papers"))
            conn.commit()

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

    def issues_papers(self, issue_ids: Sequence[int]) -> dict[int, list[ScoredPaper]]:
        """:meth:`issue_papers` of many issues: one query per :data:`BATCH` issues, each paper
        converted once however many issues hold it (delivery renders a batch at a time)."""
        found: dict[int, list[ScoredPaper]] = {issue_id: [] for issue_id in issue_ids}
        papers: dict[int, Paper] = {}
        with self._read() as s:
            for batch in chunks(list(found), BATCH):
                for ip, p in s.execute(
                    select(IssuePaperRow, PaperRow)
                    .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                    .where(IssuePaperRow.issue_id.in_(batch))
                    .order_by(IssuePaperRow.issue_id, IssuePaperRow.position)
                ):
                    paper = papers.get(p.id) or papers.setdefault(p.id, rows.paper(p))
                    found[ip.issue_id].append(
                        ScoredPaper(paper=paper, score=ip.score, reasons=rows.reasons(ip.reasons))
                    )
        return found

    def claim_issues(self, issues: Sequence[IssueRecord]) -> set[int]:
        """Move these issues to ``sending`` and count an attempt each, if nobody else did;
        returns the ids claimed.

        Optimistic: an issue is claimed only if it is still pending with the attempt count we
        read, so of two overlapping runs that read the same issue exactly one claims it (the
        send lock is the first line of defence; this is the second). One transaction, one
        ``UPDATE … RETURNING`` per attempt count present (usually one) and :data:`BATCH` ids.
        """
        by_attempts: dict[int, list[int]] = {}
        for issue in issues:
            by_attempts.setdefault(issue.attempts, []).append(issue.id)
        claimed: set[int] = set()
        with self._session() as s:
            for attempts, ids in sorted(by_attempts.items()):
                for batch in chunks(ids, BATCH):
                    claimed.update(
                        s.scalars(
                            update(IssueRow)
                            .where(
                                IssueRow.id.in_(batch),
                                IssueRow.attempts == attempts,
                                IssueRow.state.in_([st.value for st in PENDING_STATES]),
                            )
                            .values(state=IssueState.SENDING.value, attempts=attempts + 1)
                            .returning(IssueRow.id)
                            .execution_options(synchronize_session=False)
                        )
                    )
        return claimed

    def record_outcomes(self, outcomes: Sequence[IssueOutcome], *, sent_at: datetime) -> None:
        """Store where a pass left these issues, and the sent log of those sent, in one
        transaction: one batched ``UPDATE`` by primary key, then the sent log in one
        ``executemany`` of a cached insert.

        No issue keeps the message bytes or the HTML: a retry renders again (same Message-ID
        and Date, both derived from the issue), and the archive re-renders sent issues.
        """
        if not outcomes:
            return
        sent_log = [
            {
                "subscriber_id": o.issue.subscriber_id,
                "paper_id": paper_id,
                "issue_id": o.issue.id,
                "sent_at": sent_at,
            }
            for o in outcomes
            if o.state is IssueState.SENT
            for paper_id in o.issue.paper_ids
        ]
        with self._session() as s:
            s.execute(
                update(IssueRow).execution_options(synchronize_session=False),
                [
                    {
                        "id": o.issue.id,
                        "state": o.state.value,
                        "attempts": o.attempts,
                        "last_reply": o.reply,
                        "next_retry_at": o.next_retry_at,
                        "sent_at": sent_at if o.state is IssueState.SENT else o.issue.sent_at,
                        "message_id": o.message_id or o.issue.message_id,
                        "subject": o.subject or o.issue.subject,
                        "html": None,
                        "message": None,
                        "queued_at": None,  # no task left for it in the workers' queue
                    }
                    for o in outcomes
                ],
            )
            if sent_log:
                # One cached statement run over all rows (executemany; on PostgreSQL batched
                # into multi-row inserts of 1,000 by SQLAlchemy): a multi-row ``VALUES``
                # written out here was compiled again for every batch, 0.1 ms per row.
                s.connection().execute(
                    self._insert(SentLogRow.__table__).on_conflict_do_nothing(
                        index_elements=["subscriber_id", "paper_id"]
                    ),
                    sent_log,
                )

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
        """:meth:`claim_issues` for one issue: True if this call claimed it."""
        return issue.id in self.claim_issues([issue])

    def mark_sent(self, issue_id: int, *, sent_at: datetime, reply: str | None = None) -> None:
        """Mark sent and write the sent log in the same transaction."""
        with self._session() as s:
            row = s.get(IssueRow, issue_id)
            assert row is not None
            row.state, row.sent_at, row.last_reply = IssueState.SENT.value, sent_at, reply
            row.next_retry_at = None
            row.html = None  # the archive re-renders it from the issue's papers (sent_issue)
            row.message = None  # a retry renders again; nothing re-sends stored bytes
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
        never tried, i.e. has no Message-ID stored, else rendered) and is retried then;
        without, it is failed for good.
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
                    IssueState.PLANNED if row.message_id is None else IssueState.RENDERED
                ).value

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
                    IssueState.PLANNED if row.message_id is None else IssueState.RENDERED
                ).value
                row.attempts = 0
                row.next_retry_at = None
                row.queued_at = None
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

    def subscriber_feed_items(
        self, subscriber_id: int, window: FeedWindow | None = None
    ) -> list[FeedItem]:
        """The papers of this subscriber's issues sent in the window (None: all of them),
        newest first, dated when the issue was sent, an issue's papers in its order: one
        bounded query."""
        return self.subscribers_feed_items([subscriber_id], window).get(subscriber_id, [])

    def subscribers_feed_items(
        self, subscriber_ids: Iterable[int], window: FeedWindow | None = None
    ) -> dict[int, list[FeedItem]]:
        """:meth:`subscriber_feed_items` of many subscribers, one query per batch of them:
        what a feed run rebuilds. A paper in many feeds becomes one :class:`Paper`."""
        out: dict[int, list[FeedItem]] = {}
        papers: dict[int, Paper] = {}
        with self._read() as s:
            for chunk in chunks(sorted(set(subscriber_ids)), BATCH):
                query = (
                    select(IssueRow.subscriber_id, IssuePaperRow, PaperRow, IssueRow.sent_at)
                    .join(IssueRow, IssueRow.id == IssuePaperRow.issue_id)
                    .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                    .where(
                        IssueRow.subscriber_id.in_(chunk),
                        IssueRow.state == IssueState.SENT.value,
                        IssueRow.sent_at.is_not(None),
                    )
                    # an issue's papers in the issue's order: the feed dates them by it
                    .order_by(
                        IssueRow.subscriber_id,
                        IssueRow.sent_at.desc(),
                        IssueRow.slot_date.desc(),
                        IssuePaperRow.position,
                    )
                )
                if window is not None:
                    query = query.where(IssueRow.sent_at >= window.since)
                    if len(chunk) == 1:
                        query = query.limit(window.limit)
                for sub_id, ip, p, sent_at in s.execute(query):
                    items = out.setdefault(sub_id, [])
                    if sent_at is None or (window is not None and len(items) >= window.limit):
                        continue
                    paper = papers.get(p.id)
                    if paper is None:
                        paper = papers[p.id] = rows.paper(p)
                    items.append(
                        FeedItem(
                            paper=paper,
                            when=sent_at,
                            reasons=rows.reasons(ip.reasons),
                            score=ip.score,
                        )
                    )
        return out

    def subscriber_feed_version(self, subscriber_id: int, window: FeedWindow) -> FeedVersion:
        """A private feed's validator: its entries counted and dated, and the newest update of
        their papers, in one aggregate over this subscriber's issues in the window."""
        with self._read() as s:
            count, oldest, newest, updated = s.execute(
                select(
                    func.count(),
                    func.min(IssueRow.sent_at),
                    func.max(IssueRow.sent_at),
                    func.max(PaperRow.updated_at),
                )
                .select_from(IssuePaperRow)
                .join(IssueRow, IssueRow.id == IssuePaperRow.issue_id)
                .join(PaperRow, PaperRow.id == IssuePaperRow.paper_id)
                .where(
                    IssueRow.subscriber_id == subscriber_id,
                    IssueRow.state == IssueState.SENT.value,
                    IssueRow.sent_at >= window.since,
                )
            ).one()
        return FeedVersion(int(count or 0), oldest, newest, updated)

    def subscriber_feed_versions(self, window: FeedWindow) -> dict[int, FeedVersion]:
        """Per subscriber with an issue sent in the window: its issues counted and dated, in
        one grouped query on the ``sent_at`` index (issues only, no paper is read). A feed run
        rebuilds the private feeds whose version changed since it last wrote them."""
        with self._read() as s:
            found = s.execute(
                select(
                    IssueRow.subscriber_id,
                    func.count(),
                    func.min(IssueRow.sent_at),
                    func.max(IssueRow.sent_at),
                )
                .where(
                    IssueRow.sent_at >= window.since,
                    IssueRow.state == IssueState.SENT.value,
                )
                .group_by(IssueRow.subscriber_id)
            ).all()
        return {sub_id: FeedVersion(int(n), lo, hi) for sub_id, n, lo, hi in found}


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


def _subscribers_among(
    column: InstrumentedAttribute[int], ids: Collection[int]
) -> ColumnElement[bool]:
    """A condition that holds for every id in ``ids``: an ``IN`` list up to :data:`BATCH`
    ids, else their range (``BETWEEN``; the caller drops the others). Reading every row
    instead made planning 100,000 subscribers in chunks quadratic: each chunk read the
    issues of all the chunks before it (82 s of database time against 4 s at 10,000)."""
    if len(ids) <= BATCH:
        return column.in_(sorted(ids))
    return column.between(min(ids), max(ids))
