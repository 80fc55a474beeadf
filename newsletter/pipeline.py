"""The stages after ingest: plan (rank) → render → deliver (feeds: :mod:`newsletter.feed_files`).

Each stage reads and writes storage only and takes the few values it uses, not the whole
settings: :class:`newsletter.app.Newsletter` wires them. A crash between two stages loses
nothing: the next run picks up every issue that is planned, rendered or sending and finishes
it. An issue's Message-ID is derived from (subscriber, slot), so the one message that may have
been in flight at a crash is re-sent with the same id.

Planning is one function for the subscribers due at one daemon tick or all of them (``run
--once``, catch-up): its number of SQL statements does not grow with the number of
subscribers beyond the insert batches (``tests/test_planning.py`` counts them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from newsletter.bounces import record_refusal
from newsletter.deliver import Envelope, Mailer, MailerUnavailable, OutcomeUnknown
from newsletter.domain import (
    IssueContent,
    IssueRecord,
    IssueState,
    Judgment,
    Paper,
    Profile,
    QuietSpell,
    RenderedIssue,
    ScoredPaper,
    SiteInfo,
    Subscriber,
    SubscriberStatus,
)
from newsletter.errors import DeliveryError, NewsletterError, ProfileError
from newsletter.smtp import RecipientRefused
from newsletter.store import PENDING_STATES, IssueOutcome, IssuePlan, Store

if TYPE_CHECKING:  # rendering pulls in premailer and lxml, ranking scipy: imported where used
    from newsletter.rank import Adjustments, RankSettings
    from newsletter.render import EmailRenderer
    from newsletter.render_pool import RenderWorkers
    from newsletter.semantic import Embedder

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=5)


# ---------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Selection:
    """One subscriber's ranked candidates and the profile they were ranked by."""

    papers: tuple[ScoredPaper, ...]
    profile: Profile


@dataclass(frozen=True)
class PlanResult:
    """What planning did: issues created, subscribers with nothing to send, slots skipped
    because they had their issue already."""

    planned: int = 0
    empty: int = 0
    already: int = 0


def select_papers(
    store: Store,
    subscribers: Sequence[Subscriber],
    now: datetime,
    *,
    window_days: int,
    rank_settings: RankSettings,
    embedder: Embedder | None = None,
) -> dict[int, Selection]:
    """Rank every subscriber's candidates in one vectorized batch.

    Candidates: papers first seen within ``window_days`` before ``now`` that are in none of
    the subscriber's issues yet, sent or pending (a paper belongs to at most one issue per
    subscriber). A subscriber whose stored profile no longer parses is logged and left out;
    the others still get their issue. The judgments of the subscribers who gave any
    ("more / less like this") add to their scores (:mod:`newsletter.learn`), and a paper the
    subscriber judged is no candidate: they have seen it. With an ``embedder`` (``[semantic]``
    enabled) the keyword ranking is fused with semantic similarity (:mod:`newsletter.semantic`).
    """
    from newsletter.profile import parse_profile
    from newsletter.rank import RankRequest, rank_papers

    since = now - timedelta(days=window_days)
    papers = store.papers(seen_since=since, seen_until=now)
    paper_ids = frozenset(p.id for p in papers)
    assigned = store.assigned_paper_ids([s.id for s in subscribers], seen_since=since)
    judgments = store.judgments([s.id for s in subscribers])
    adjust = _feedback_adjustments(store, judgments, papers, paper_ids)
    requests, kept = [], []
    for sub in subscribers:
        try:
            profile = parse_profile(sub.profile, who=f"subscriber {sub.email}", strict=False)
        except ProfileError as exc:
            log.error("skipped %s: %s", sub.email, exc)
            continue
        requests.append(
            RankRequest(
                profile=profile,
                max_papers=sub.max_papers,
                min_score=sub.min_score,
                eligible=paper_ids - assigned[sub.id] - judgments.get(sub.id, {}).keys(),
                adjust=adjust.get(sub.id),
            )
        )
        kept.append((sub, profile))
    semantic = None
    if embedder is not None and requests and papers:
        from newsletter.semantic import semantic_scores

        try:
            semantic = semantic_scores(store, embedder, papers, [r.profile for r in requests])
        except NewsletterError as exc:  # the model went missing: issues still go out
            log.error("semantic matching unavailable, ranking by keywords only: %s", exc)
    ranked = rank_papers(papers, requests, rank_settings, semantic)
    return {
        sub.id: Selection(tuple(selected), profile)
        for (sub, profile), selected in zip(kept, ranked, strict=True)
    }


def _feedback_adjustments(
    store: Store,
    judgments: Mapping[int, Mapping[int, Judgment]],
    papers: Sequence[Paper],
    paper_ids: frozenset[int],
) -> dict[int, Adjustments]:
    """Per subscriber with judgments (the chunk's, read once), the additions their feedback
    makes to the scores: one read of the judged papers that are no candidates (to train on),
    and no model at all (nor scikit-learn import) when nobody in the chunk judged."""
    if not judgments or not papers:
        return {}
    from newsletter.learn import feedback_adjustments

    judged_ids = {pid for marks in judgments.values() for pid in marks}
    judged = store.papers_by_id(judged_ids - paper_ids) if judged_ids - paper_ids else {}
    return feedback_adjustments(papers, judged, judgments)


def plan_issues(
    store: Store,
    due: Sequence[tuple[Subscriber, date]],
    now: datetime,
    *,
    window_days: int,
    rank_settings: RankSettings,
    embedder: Embedder | None = None,
) -> PlanResult:
    """Create the issue of each (subscriber, slot) in ``due`` that has none yet.

    The one planning function: ``run --once`` passes every active subscriber's current slot,
    a daemon tick those of everyone due that minute, catch-up the missed ones. A subscriber
    with nothing at or above their min score gets no issue (unless they asked for empty
    issues).
    """
    taken = store.slots_with_issues((sub.id, slot) for sub, slot in due)
    todo = [(sub, slot) for sub, slot in due if (sub.id, slot) not in taken]
    if not todo:
        return PlanResult(already=len(due))
    selections = select_papers(
        store,
        [sub for sub, _ in todo],
        now,
        window_days=window_days,
        rank_settings=rank_settings,
        embedder=embedder,
    )
    plans, empty = [], 0
    for sub, slot in todo:
        selection = selections.get(sub.id)
        if selection is None:
            continue
        if not selection.papers and not sub.send_when_empty:
            empty += 1
            log.info("nothing new for %s at or above min score %.2f", sub.email, sub.min_score)
            continue
        plans.append(IssuePlan(sub.id, slot, selection.papers))
    planned = store.plan_issues(plans, now)
    return PlanResult(planned=planned, empty=empty, already=len(taken))


# ---------------------------------------------------------------------- deliver


@dataclass
class Delivery:
    """What :func:`deliver_pending` did: the issues sent, those that failed for good or whose
    outcome is unknown in this pass, and why it stopped early, if it did. In queue mode
    (:func:`newsletter.workers.enqueue.enqueue_due`) the issues handed to the workers instead,
    and how many of them were handed over again because their task was lost."""

    delivered: list[dict[str, object]] = field(default_factory=list)
    failed: list[dict[str, object]] = field(default_factory=list)
    stopped: str = ""
    queued: int = 0
    requeued: int = 0


def issue_content(store: Store, issue: IssueRecord, sub: Subscriber) -> IssueContent:
    """What the renderer needs for a planned issue: its papers in order and the profile, and
    for an empty issue (``send_when_empty``) why it is empty."""
    papers = store.issue_papers(issue.id)
    quiet = None if papers else store.quiet_spells([issue.id]).get(issue.id)
    return _content(issue, sub, papers, quiet)


def _content(
    issue: IssueRecord,
    sub: Subscriber,
    papers: Sequence[ScoredPaper],
    quiet: QuietSpell | None = None,
) -> IssueContent:
    from newsletter.profile import parse_profile

    return IssueContent(
        subscriber=sub,
        slot_date=issue.slot_date,
        papers=tuple(papers),
        profile=parse_profile(sub.profile, who=f"subscriber {sub.email}", strict=False),
        created_at=issue.created_at,
        quiet=quiet,
    )


#: Issues rendered, claimed and committed together (setting ``delivery_batch_size``).
DEFAULT_BATCH_SIZE = 100
#: Sent messages are committed at least this often, whatever the batch size: what a crash
#: can make arrive twice is what went out since the last commit (docs/ARCHITECTURE.md).
COMMIT_SECONDS = 2.0


@dataclass(frozen=True)
class Rendered:
    """One due issue as the render-ahead worker hands it over: its message, or the error
    that kept it from having one."""

    issue: IssueRecord
    sub: Subscriber
    rendered: RenderedIssue | None
    error: Exception | None = None


def _render_batch(
    store: Store,
    renderer: EmailRenderer,
    due: Sequence[tuple[IssueRecord, Subscriber]],
    stop: threading.Event,
    workers: _Workers | None = None,
) -> list[Rendered]:
    """Render one batch: its papers in one query (and, for its empty issues, why they are
    empty: :meth:`~newsletter.store.Store.quiet_spells`), then each message in memory.

    Runs in the render-ahead thread while the previous batch is being sent: rendering is
    CPU work and SMTP mostly waiting for replies, so the two overlap; with ``workers`` (once
    they have started) the rendering itself runs in worker processes, on other cores.
    Nothing is stored: a retry renders again, with the same Message-ID and Date (both
    derived from the issue). Stops
    early once ``stop`` is set (the pass ended), so shutting down waits for one message
    (in-process) or one batch (workers) at most.
    """
    papers = store.issues_papers([issue.id for issue, _ in due])
    empty = [issue.id for issue, _ in due if not papers[issue.id]]
    quiet = store.quiet_spells(empty) if empty else {}
    pool = workers.pool if workers is not None else None
    if pool is not None and pool.ready and not stop.is_set():
        from newsletter.render_pool import RenderPoolBroken

        contents = [
            _content(issue, sub, papers[issue.id], quiet.get(issue.id)) for issue, sub in due
        ]
        try:
            results = pool.render(contents)
        except RenderPoolBroken as exc:
            log.error("%s; rendering the rest in this process", exc)
            pool.close()
            workers.pool = None  # type: ignore[union-attr]
        else:
            return [
                Rendered(issue, sub, None, result)
                if isinstance(result, Exception)
                else Rendered(issue, sub, result)
                for (issue, sub), result in zip(due, results, strict=True)
            ]
    out: list[Rendered] = []
    for issue, sub in due:
        if stop.is_set():
            break
        try:
            rendered = renderer.render(_content(issue, sub, papers[issue.id], quiet.get(issue.id)))
        except Exception as exc:  # noqa: BLE001 - a rendering failure counts for its issue only
            out.append(Rendered(issue, sub, None, exc))
        else:
            out.append(Rendered(issue, sub, rendered))
    return out


@dataclass
class _Workers:
    """The render processes of one delivery pass; ``pool`` is dropped if a worker dies."""

    pool: RenderWorkers | None


def deliver_pending(
    store: Store,
    renderer: EmailRenderer,
    mailer: Mailer,
    *,
    site: SiteInfo,
    now: datetime,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    render_processes: int = 0,
) -> Delivery:
    """Render and send every issue that is planned, rendered or was in flight at a crash.

    In batches of ``batch_size``: a worker thread renders the next batch while this one is
    sent (in ``render_processes`` worker processes when the pass has at least
    :data:`~newsletter.render_pool.MIN_ISSUES_FOR_PROCESSES` due issues); each batch is
    claimed in one transaction (``sending``, attempt counted), its
    messages are sent from memory, and their outcomes (sent with the sent log, failed,
    unknown) are committed in one transaction at the end of the batch, or earlier once
    :data:`COMMIT_SECONDS` have passed. A crash re-sends only what went out since the last
    commit, with the same Message-IDs.

    An issue of someone who is no longer active is marked failed with that reason (their
    papers stay assigned to it, so a later re-subscription never receives them twice).
    When the mailer reports that nothing can go out (:class:`MailerUnavailable`: the SMTP
    server is down or refuses our session), delivery stops for this run with one log line and
    every remaining issue stays pending, its attempts untouched, for the next run. A stop
    request (SIGTERM) is honoured between two messages, the same way.
    """
    pending = store.issues(states=PENDING_STATES)
    subscribers = store.subscribers_by_id({issue.subscriber_id for issue in pending})
    gone: list[IssueOutcome] = []
    due: list[tuple[IssueRecord, Subscriber]] = []
    for issue in pending:
        sub = subscribers[issue.subscriber_id]
        if sub.status is not SubscriberStatus.ACTIVE:
            gone.append(not_active_outcome(issue, sub))
        elif issue.next_retry_at is None or issue.next_retry_at <= now:
            due.append((issue, sub))
    store.record_outcomes(gone, sent_at=now)
    sender = BatchSender(store, mailer, site, now, len(due), progress, should_stop)
    batches = [due[start : start + batch_size] for start in range(0, len(due), batch_size)]
    stop = threading.Event()
    workers = _Workers(None)
    if render_processes > 0:
        from newsletter.render_pool import MIN_ISSUES_FOR_PROCESSES, RenderWorkers

        if len(due) >= MIN_ISSUES_FOR_PROCESSES:
            try:
                workers.pool = RenderWorkers(renderer, render_processes)
            except Exception as exc:  # noqa: BLE001 - rendering in-process still works
                log.error("cannot start the rendering workers (%s); rendering in-process", exc)
    with _closing(workers), ThreadPoolExecutor(1, thread_name_prefix="render-ahead") as pool:
        try:
            ahead = [
                pool.submit(_render_batch, store, renderer, b, stop, workers) for b in batches[:1]
            ]
            for number in range(len(batches)):
                rendered = ahead.pop().result()
                if number + 1 < len(batches):
                    ahead.append(
                        pool.submit(
                            _render_batch, store, renderer, batches[number + 1], stop, workers
                        )
                    )
                if not sender.send_batch(rendered):
                    break
        finally:
            stop.set()
    return sender.result


def not_active_outcome(issue: IssueRecord, sub: Subscriber) -> IssueOutcome:
    """The outcome of a pending issue whose subscriber is no longer active: failed, with
    why (logged)."""
    reply = f"not sent: {sub.email} is {sub.status.value}"
    log.info("issue %d not sent: %s is %s", issue.id, sub.email, sub.status.value)
    return IssueOutcome(issue, IssueState.FAILED, issue.attempts, reply)


@contextlib.contextmanager
def _closing(workers: _Workers) -> Iterator[None]:
    """Stop the render processes after the render-ahead thread is done with them."""
    try:
        yield
    finally:
        if workers.pool is not None:
            workers.pool.close()


class BatchSender:
    """Claims, sends and commits the batches of one delivery pass, and keeps what it did.

    Outcomes wait in memory until :meth:`_save` writes them in one transaction: at the end
    of each batch, every :data:`COMMIT_SECONDS`, and before the pass stops early. Until then
    a sent issue is still ``sending`` in the database, which is what makes a crash re-send
    it (same Message-ID) rather than lose it.

    With a mailer of ``parallel_sessions`` > 1 (``smtp.connections``) a batch is sent from
    that many threads (:meth:`_send_parallel`); the threads only call the mailer, and every
    outcome is noted, committed and logged by this object in the pass's own thread, so the
    bookkeeping is the same as for one message at a time.
    """

    def __init__(
        self,
        store: Store,
        mailer: Mailer,
        site: SiteInfo,
        now: datetime,
        due: int,
        progress: Callable[[str], None] | None,
        should_stop: Callable[[], bool],
        *,
        hand_back_until: datetime | None = None,
    ) -> None:
        self.store, self.mailer, self.site, self.now = store, mailer, site, now
        # When an issue handed back for an outage is due again (None: at once, for the next
        # run; workers wait, so that a queue of tasks does not hammer a server that is down).
        self.hand_back_until = hand_back_until
        self.left = due  # due issues not handled yet, for the log line when stopping early
        self.progress, self.should_stop = progress, should_stop
        self.result = Delivery()
        self._unsaved: list[IssueOutcome] = []
        self._saved_at = time.monotonic()

    def send_batch(self, batch: Sequence[Rendered]) -> bool:
        """Claim the rendered issues of one batch, send them, save the outcomes; False when
        delivery stops for this pass (stop request, or nothing can be sent now).

        A rendering failure counts an attempt like a failed send (so an issue that cannot be
        rendered ends failed). Issues another run claimed first are skipped. Issues claimed
        but never tried before a stop go back exactly as they were read, attempt uncounted.
        """
        if self.should_stop():  # SIGTERM: the message in flight is done; the rest stay pending
            log.info("stopping: %d issue(s) left pending", self.left)
            return False
        ready = []
        for item in batch:
            if item.rendered is None:
                assert item.error is not None
                self._failed(item, item.error)
                self.left -= 1
            else:
                ready.append(item)
        claimed = self.store.claim_issues([item.issue for item in ready])
        mine = [item for item in ready if item.issue.id in claimed]
        self.left -= len(ready) - len(mine)
        return self.send_claimed(mine)

    def send_claimed(self, mine: Sequence[Rendered]) -> bool:
        """Send issues this pass claimed (their ``issue`` as read before the claim), note and
        save their outcomes; False when delivery stops for this pass."""
        sessions = _parallel_sessions(self.mailer)
        if sessions > 1 and len(mine) > 1:
            return self._send_parallel(mine, sessions)
        for position, item in enumerate(mine):
            if position and self.should_stop():
                log.info("stopping: %d issue(s) left pending", self.left)
                self._unsaved.extend(IssueOutcome.unchanged(i.issue) for i in mine[position:])
                self._save()
                return False
            if not self._send(item):
                self._unsaved.extend(IssueOutcome.unchanged(i.issue) for i in mine[position + 1 :])
                self._save()
                return False
            self.left -= 1
            if time.monotonic() - self._saved_at >= COMMIT_SECONDS:
                self._save()
        self._save()
        return True

    def _send(self, item: Rendered) -> bool:
        """Send one claimed issue and note its outcome; False if nothing can be sent now.

        :class:`MailerUnavailable` hands the issue back (``rendered``, attempt not counted):
        an outage says nothing about this issue, and counting it would fail whichever issues
        happened to be first in line after a few outages. A send whose final reply never came
        (:class:`OutcomeUnknown`) is ``unknown`` and not retried.
        """
        assert item.rendered is not None
        try:
            where = self.mailer.send(self._envelope(item), item.rendered.message)
        except Exception as exc:  # noqa: BLE001 - sorted by _note; one bad issue never stops all
            return self._note(item, exc)
        return self._note(item, where)

    def _envelope(self, item: Rendered) -> Envelope:
        assert item.rendered is not None
        return Envelope(
            sender=self.site.envelope_sender(item.sub),
            recipient=item.sub.email,
            message_id=item.rendered.message_id,
            name_hint=_file_label(item.issue, item.sub),
        )

    def _note(self, item: Rendered, result: str | Exception) -> bool:
        """Note what one send gave (the server's reply, or the error it raised); False if it
        says nothing can be sent now (see :meth:`_send`)."""
        issue, sub = item.issue, item.sub
        if isinstance(result, MailerUnavailable):
            reply = f"not sent yet: {result}"
            handed_back = _outcome(
                item, IssueState.RENDERED, issue.attempts, reply, self.hand_back_until
            )
            self._unsaved.append(handed_back)
            if self.result.stopped:  # another session of this pass already said so
                log.info("issue %d for %s handed back: %s", issue.id, sub.email, result)
                return False
            log.error(
                "%s; delivery stopped, %d issue(s) left pending for the next run",
                result,
                self.left,
            )
            self.result.stopped = str(result)
            return False
        if isinstance(result, OutcomeUnknown):
            outcome = _outcome(item, IssueState.UNKNOWN, issue.attempts + 1, str(result))
            self._unsaved.append(outcome)
            log.error(
                "issue %d for %s: %s; not re-sent unless retried (`newsletter retry`)",
                issue.id,
                sub.email,
                result,
            )
            self._report_failed(item, outcome)
        elif isinstance(result, Exception):
            self._failed(item, result)
        else:
            where = result
            self._unsaved.append(_outcome(item, IssueState.SENT, issue.attempts + 1, where))
            n = len(issue.paper_ids)
            log.info("sent issue %d to %s (%d papers): %s", issue.id, sub.email, n, where)
            slot = issue.slot_date.isoformat()
            self.result.delivered.append(
                {"email": sub.email, "slot": slot, "papers": n, "where": where}
            )
            if self.progress:
                self.progress(f"sent {sub.email}: {n} papers -> {where}")
        return True

    def _send_parallel(self, mine: Sequence[Rendered], sessions: int) -> bool:
        """Send the claimed issues of a batch from ``sessions`` threads, as :meth:`send_batch`
        sends them one by one: False when delivery stops for this pass.

        Worker threads only call the mailer; this thread hands out the messages, notes each
        outcome as its send finishes, and commits every :data:`COMMIT_SECONDS` and at the
        end, so what a crash can re-send is still what went out since the last commit (at
        most ``sessions`` messages more than sequentially: those in flight). A stop request
        is asked before each message after the first; once it is set, or once any session
        reports :class:`MailerUnavailable`, no new message is handed out, the ones in flight
        are finished and noted, and the issues never tried go back exactly as they were read.
        An exception that is not an ``Exception`` (a crash) is raised here after the sends in
        flight end, leaving their issues ``sending`` like any crash.
        """
        from concurrent.futures import FIRST_COMPLETED, Future, wait

        queue = list(reversed(mine))  # popped from the end: batch order
        flying: dict[Future[str], tuple[int, Rendered]] = {}
        stop_request = unavailable = False
        with ThreadPoolExecutor(min(sessions, len(mine)), thread_name_prefix="smtp-send") as pool:
            while queue or flying:
                while queue and not (stop_request or unavailable) and len(flying) < sessions:
                    if len(queue) < len(mine) and self.should_stop():
                        stop_request = True
                        break
                    item = queue.pop()
                    assert item.rendered is not None
                    future = pool.submit(
                        self.mailer.send, self._envelope(item), item.rendered.message
                    )
                    flying[future] = (len(mine) - len(queue), item)
                if not flying:
                    break
                done, _ = wait(flying, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: flying[f][0]):
                    _, item = flying.pop(future)
                    error = future.exception()
                    if error is not None and not isinstance(error, Exception):
                        raise error  # a crash: nothing more is noted (see above)
                    if self._note(item, future.result() if error is None else error):
                        self.left -= 1
                    else:
                        unavailable = True
                if time.monotonic() - self._saved_at >= COMMIT_SECONDS:
                    self._save()
        if stop_request and not unavailable:
            log.info("stopping: %d issue(s) left pending", self.left)
        self._unsaved.extend(IssueOutcome.unchanged(item.issue) for item in reversed(queue))
        self._save()
        return not (stop_request or unavailable)

    def note_render_failure(self, item: Rendered) -> None:
        """Record that a claimed issue could not be rendered (an attempt, as for a failed
        send)."""
        assert item.error is not None
        self._failed(item, item.error)
        self._save()

    def _failed(self, item: Rendered, exc: Exception) -> None:
        """Note a failed rendering or send: retried after a doubling backoff, at most
        :data:`MAX_ATTEMPTS` attempts, unless the error is permanent for this message."""
        issue, sub, rendered = item.issue, item.sub, item.rendered
        attempts = issue.attempts + 1  # the claim's, or (rendering) the one the claim never made
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        retry = not permanent and attempts < MAX_ATTEMPTS
        retry_at = self.now + RETRY_BASE * 2 ** (attempts - 1) if retry else None
        reason = str(exc) if isinstance(exc, NewsletterError) else f"{type(exc).__name__}: {exc}"
        # Due again: "rendered" once it was tried (it has its Message-ID), else "planned".
        tried = rendered is not None or issue.message_id is not None
        state = IssueState.RENDERED if tried else IssueState.PLANNED
        outcome = _outcome(item, state if retry else IssueState.FAILED, attempts, reason, retry_at)
        self._unsaved.append(outcome)
        if permanent and isinstance(exc, RecipientRefused):  # 5xx to RCPT: a hard bounce
            message_id = rendered.message_id if rendered else issue.message_id
            record_refusal(self.store, sub, exc.reply, message_id, self.now)
        if retry_at:
            log.warning("issue %d for %s: %s; retry at %s", issue.id, sub.email, reason, retry_at)
            return
        log.error("issue %d for %s failed: %s", issue.id, sub.email, reason)
        self._report_failed(item, outcome)

    def _report_failed(self, item: Rendered, outcome: IssueOutcome) -> None:
        self.result.failed.append(
            {
                "email": item.sub.email,
                "slot": item.issue.slot_date.isoformat(),
                "state": outcome.state.value,
                "reason": outcome.reply or "",
            }
        )

    def _save(self) -> None:
        """Commit the outcomes noted so far (one transaction) and restart the commit clock."""
        self.store.record_outcomes(self._unsaved, sent_at=self.now)
        self._unsaved = []
        self._saved_at = time.monotonic()


def _parallel_sessions(mailer: Mailer) -> int:
    """How many messages ``mailer`` may have in flight: its ``parallel_sessions`` (an SMTP
    pool), else 1 (any mailer that does not declare it is one channel)."""
    sessions = getattr(mailer, "parallel_sessions", 1)
    return sessions if isinstance(sessions, int) and sessions > 1 else 1


def _outcome(
    item: Rendered,
    state: IssueState,
    attempts: int,
    reply: str,
    next_retry_at: datetime | None = None,
) -> IssueOutcome:
    """An issue's outcome, with the Message-ID and subject of the message it was sent as
    (kept from the issue when rendering failed)."""
    return IssueOutcome(
        item.issue,
        state,
        attempts,
        reply,
        next_retry_at,
        message_id=item.rendered.message_id if item.rendered else None,
        subject=item.rendered.subject if item.rendered else None,
    )


def _file_label(issue: IssueRecord, sub: Subscriber) -> str:
    """Outbox file name: one per (slot, subscriber), so a re-send replaces, never adds.

    Only a short prefix of the address: a valid address can be longer than a file name may be.
    """
    return f"{issue.slot_date.isoformat()}_{sub.id:05d}_{sub.email.split('@')[0][:32]}"
