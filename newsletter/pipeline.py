"""The stages after ingest: plan (rank) → render → deliver, and feeds.

Each stage reads and writes storage only and takes the few values it uses, not the whole
settings: :class:`newsletter.app.Newsletter` wires them. A crash between two stages loses
nothing: the next run picks up every issue that is planned, rendered or sending and finishes
it. An issue's Message-ID is derived from (subscriber, slot), so the one message that may have
been in flight at a crash is re-sent with the same id.

Planning is one function for one subscriber (a daemon send job) or all of them (``run
--once``, catch-up): its number of SQL statements does not grow with the number of
subscribers beyond the insert batches (``tests/test_planning.py`` counts them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.deliver import Envelope, Mailer, MailerUnavailable, OutcomeUnknown
from newsletter.domain import (
    IssueContent,
    IssueRecord,
    IssueState,
    Profile,
    ScoredPaper,
    SiteInfo,
    Subscriber,
    SubscriberStatus,
)
from newsletter.errors import DeliveryError, NewsletterError, ProfileError
from newsletter.store import PENDING_STATES, IssuePlan, Store

if TYPE_CHECKING:  # rendering pulls in premailer and lxml, ranking scipy: imported where used
    from newsletter.rank import RankSettings
    from newsletter.render import EmailRenderer

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
) -> dict[int, Selection]:
    """Rank every subscriber's candidates in one vectorized batch.

    Candidates: papers first seen within ``window_days`` before ``now`` that are in none of
    the subscriber's issues yet, sent or pending (a paper belongs to at most one issue per
    subscriber). A subscriber whose stored profile no longer parses is logged and left out;
    the others still get their issue.
    """
    from newsletter.profile import parse_profile
    from newsletter.rank import RankRequest, rank_papers

    since = now - timedelta(days=window_days)
    papers = store.papers(seen_since=since, seen_until=now)
    paper_ids = frozenset(p.id for p in papers)
    assigned = store.assigned_paper_ids([s.id for s in subscribers], seen_since=since)
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
                eligible=paper_ids - assigned[sub.id],
            )
        )
        kept.append((sub, profile))
    ranked = rank_papers(papers, requests, rank_settings)
    return {
        sub.id: Selection(tuple(selected), profile)
        for (sub, profile), selected in zip(kept, ranked, strict=True)
    }


def plan_issues(
    store: Store,
    due: Sequence[tuple[Subscriber, date]],
    now: datetime,
    *,
    window_days: int,
    rank_settings: RankSettings,
) -> PlanResult:
    """Create the issue of each (subscriber, slot) in ``due`` that has none yet.

    The one planning function: ``run --once`` passes every active subscriber's current slot,
    a daemon send job one subscriber's, catch-up the missed ones. A subscriber with nothing
    at or above their min score gets no issue (unless they asked for empty issues).
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
    outcome is unknown in this pass, and why it stopped early, if it did."""

    delivered: list[dict[str, object]] = field(default_factory=list)
    failed: list[dict[str, object]] = field(default_factory=list)
    stopped: str = ""


def issue_content(store: Store, issue: IssueRecord, sub: Subscriber) -> IssueContent:
    """What the renderer needs for a planned issue: its papers in order and the profile."""
    from newsletter.profile import parse_profile

    return IssueContent(
        subscriber=sub,
        slot_date=issue.slot_date,
        papers=tuple(store.issue_papers(issue.id)),
        profile=parse_profile(sub.profile, who=f"subscriber {sub.email}", strict=False),
        created_at=issue.created_at,
    )


def deliver_pending(
    store: Store,
    renderer: EmailRenderer,
    mailer: Mailer,
    *,
    site: SiteInfo,
    now: datetime,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Delivery:
    """Render and send every issue that is planned, rendered or was in flight at a crash.

    An issue of someone who is no longer active is marked failed with that reason (their
    papers stay assigned to it, so a later re-subscription never receives them twice).
    When the mailer reports that nothing can go out (:class:`MailerUnavailable`: the SMTP
    server is down or refuses our session), delivery stops for this run with one log line and
    every remaining issue stays pending, its attempts untouched, for the next run.
    """
    result = Delivery()
    pending = store.issues(states=PENDING_STATES)
    subscribers = store.subscribers_by_id({issue.subscriber_id for issue in pending})
    for position, issue in enumerate(pending):
        if should_stop():  # SIGTERM: the message in flight is done; the rest stay pending
            log.info("stopping: %d issue(s) left pending", len(pending) - position)
            break
        sub = subscribers[issue.subscriber_id]
        if sub.status is not SubscriberStatus.ACTIVE:
            store.mark_failed(issue.id, reply=f"not sent: {sub.email} is {sub.status.value}")
            log.info("issue %d not sent: %s is %s", issue.id, sub.email, sub.status.value)
            continue
        if issue.next_retry_at and issue.next_retry_at > now:
            continue
        try:
            outcome = _deliver_one(store, renderer, mailer, site, issue, sub, now)
        except MailerUnavailable as exc:
            left = len(pending) - position
            log.error("%s; delivery stopped, %d issue(s) left pending for the next run", exc, left)
            result.stopped = str(exc)
            break
        if isinstance(outcome, _NotSent):
            if outcome.state in (IssueState.FAILED, IssueState.UNKNOWN):
                result.failed.append(
                    {
                        "email": sub.email,
                        "slot": issue.slot_date.isoformat(),
                        "state": outcome.state.value,
                        "reason": outcome.reason,
                    }
                )
            continue
        where = outcome
        n = len(issue.paper_ids)
        log.info("sent issue %d to %s (%d papers): %s", issue.id, sub.email, n, where)
        result.delivered.append(
            {"email": sub.email, "slot": issue.slot_date.isoformat(), "papers": n, "where": where}
        )
        if progress:
            progress(f"sent {sub.email}: {n} papers -> {where}")
    return result


@dataclass(frozen=True)
class _NotSent:
    """Why an issue did not go out now: ``state`` is where it was left (None: another run
    had it), ``reason`` the error."""

    state: IssueState | None
    reason: str = ""


def _deliver_one(
    store: Store,
    renderer: EmailRenderer,
    mailer: Mailer,
    site: SiteInfo,
    issue: IssueRecord,
    sub: Subscriber,
    now: datetime,
) -> str | _NotSent:
    """Render (if needed), claim and send one issue; where it went, or why it did not.

    Raises :class:`MailerUnavailable` after handing the claimed issue back (``rendered``, its
    attempt not counted): an outage says nothing about this issue, and counting it would fail
    whichever issues happened to be first in line after a few outages. A rendering failure
    counts an attempt like a failed send, so an issue that cannot be rendered ends failed.
    A send whose final reply never came (:class:`OutcomeUnknown`) is not retried.
    """
    claimed = False
    try:
        if issue.state is IssueState.PLANNED:
            rendered = renderer.render(issue_content(store, issue, sub))
            if not store.mark_rendered(
                issue.id,
                subject=rendered.subject,
                html=rendered.html,
                message=rendered.message,
                message_id=rendered.message_id,
            ):
                return _NotSent(None)  # another run got there first
        if not store.claim_for_sending(issue):
            return _NotSent(None)
        claimed = True
        message = store.rendered_message(issue.id)
        assert message is not None
        envelope = Envelope(
            sender=site.from_address,
            recipient=sub.email,
            message_id=site.message_id(sub, issue.slot_date),
            name_hint=_file_label(issue, sub),
        )
        where = mailer.send(envelope, message)
    except MailerUnavailable as exc:
        if claimed:
            store.release_claim(issue.id, reply=f"not sent yet: {exc}")
        raise
    except OutcomeUnknown as exc:
        store.mark_unknown(issue.id, reply=str(exc))
        log.error(
            "issue %d for %s: %s; not re-sent unless retried (`newsletter retry`)",
            issue.id,
            sub.email,
            exc,
        )
        return _NotSent(IssueState.UNKNOWN, str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad issue must never stop the others
        attempts = issue.attempts + 1
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        retry = not permanent and attempts < MAX_ATTEMPTS
        retry_at = now + RETRY_BASE * 2 ** (attempts - 1) if retry else None
        reason = str(exc) if isinstance(exc, NewsletterError) else f"{type(exc).__name__}: {exc}"
        store.mark_failed(issue.id, reply=reason, next_retry_at=retry_at, count_attempt=not claimed)
        if retry_at:
            log.warning("issue %d for %s: %s; retry at %s", issue.id, sub.email, reason, retry_at)
            return _NotSent(IssueState.PLANNED, reason)
        log.error("issue %d for %s failed: %s", issue.id, sub.email, reason)
        return _NotSent(IssueState.FAILED, reason)
    store.mark_sent(issue.id, sent_at=now, reply=where)
    return where


def _file_label(issue: IssueRecord, sub: Subscriber) -> str:
    """Outbox file name: one per (slot, subscriber), so a re-send replaces, never adds.

    Only a short prefix of the address: a valid address can be longer than a file name may be.
    """
    return f"{issue.slot_date.isoformat()}_{sub.id:05d}_{sub.email.split('@')[0][:32]}"


# ---------------------------------------------------------------------- feeds


def write_all_feeds(
    store: Store, *, site: SiteInfo, directory: Path, templates_dir: Path | None
) -> int:
    """The global feed and one private pair per active subscriber; returns files changed.

    The private feeds of people who are no longer active are removed: an unsubscribe also
    ends their feed.
    """
    from newsletter.feeds import write_feeds

    count = len(
        write_feeds(
            store.global_feed_items(),
            site=site,
            subscriber=None,
            directory=directory,
            templates_dir=templates_dir,
        )
    )
    for sub in store.subscribers_by_id().values():
        if sub.status is SubscriberStatus.ACTIVE:
            count += len(
                write_feeds(
                    store.subscriber_feed_items(sub.id),
                    site=site,
                    subscriber=sub,
                    directory=directory,
                    templates_dir=templates_dir,
                )
            )
            continue
        for kind in ("atom", "rss"):
            stale = directory / f"{sub.feed_token}.{kind}"
            if stale.exists():
                stale.unlink()
                count += 1
    return count
