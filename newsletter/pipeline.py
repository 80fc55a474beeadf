"""The main job, stage by stage: ingest → sync subscribers → plan → render → deliver → feeds.

Each step reads and writes storage only, so any step can run alone (the CLI exposes them) and
a crash between two steps loses nothing: the next run picks up every issue that is planned,
rendered or sending and finishes it. An issue's Message-ID is derived from (subscriber, slot),
so the one message that may have been in flight at a crash is re-sent with the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from newsletter.config import Settings
from newsletter.deliver import Envelope, Mailer, MailerUnavailable, OutboxMailer
from newsletter.domain import (
    IssueContent,
    IssueRecord,
    IssueState,
    Profile,
    ScoredPaper,
    Subscriber,
    SubscriberStatus,
)
from newsletter.errors import DeliveryError, NewsletterError, ProfileError
from newsletter.ingest import FileReport, InboxScanner, ingest_paths
from newsletter.store import Store
from newsletter.subscribers import Defaults, load_config_file

if TYPE_CHECKING:  # rendering pulls in premailer and lxml: imported where used, not at start
    from newsletter.render import EmailRenderer

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one run did; printed for humans, or as JSON with ``--json``."""

    files_ingested: int = 0
    files_unchanged: int = 0
    files_quarantined: int = 0
    files_waiting: int = 0
    papers_new: int = 0
    papers_total: int = 0
    subscribers_synced: int = 0
    subscriber_errors: list[str] = field(default_factory=list)
    issues_delivered: int = 0
    issues_empty: int = 0
    issues_failed: int = 0
    issues_pending: int = 0
    delivery_stopped: str = ""  # why delivery stopped early (mail server unavailable), if it did
    quarantined: list[str] = field(default_factory=list)
    delivered: list[dict[str, object]] = field(default_factory=list)
    outbox_dir: str = ""
    feeds_dir: str = ""
    feeds_written: int = 0


def open_store(settings: Settings) -> Store:
    """Open the database and apply migrations (first run creates the schema)."""
    store = Store(settings.database_url)
    store.migrate()
    return store


def make_mailer(settings: Settings) -> Mailer:
    """The configured mailer: the outbox folder (default) or an SMTP server."""
    if settings.mailer == "smtp":
        from newsletter.smtp import SmtpMailer

        return SmtpMailer.from_settings(settings)
    return OutboxMailer(settings.outbox_dir)


def defaults_from(settings: Settings) -> Defaults:
    return Defaults(
        timezone=settings.timezone,
        max_papers=settings.ranking.default_max_papers,
        min_score=settings.ranking.default_min_score,
    )


def sync_subscribers(store: Store, settings: Settings, now: datetime) -> tuple[int, list[str]]:
    """Upsert the subscribers of ``subscribers_file``; returns (count synced, errors)."""
    path = settings.subscribers_file
    if path is None or not path.exists():
        return 0, []
    result = load_config_file(path, defaults_from(settings))
    for error in result.errors:
        log.error("skipped subscriber: %s", error)
    for spec in result.specs:
        store.upsert_subscriber(spec, source="config", now=now)
    return len(result.specs), list(result.errors)


def slot_date_for(subscriber: Subscriber, now: datetime) -> date:
    """The slot a run at ``now`` serves: the subscriber's local calendar date."""
    return now.astimezone(ZoneInfo(subscriber.timezone)).date()


def is_send_day(subscriber: Subscriber, now: datetime) -> bool:
    """Daily subscribers every day; weekly ones on their chosen local weekdays only."""
    return (
        not subscriber.weekdays or slot_date_for(subscriber, now).weekday() in subscriber.weekdays
    )


def select_papers(
    store: Store, settings: Settings, subscribers: Sequence[Subscriber], now: datetime
) -> dict[int, tuple[tuple[ScoredPaper, ...], Profile]]:
    """Rank every subscriber's candidates in one vectorized batch.

    Candidates: papers first seen within ``candidate_window_days`` before ``now`` and not in
    the subscriber's sent log. A subscriber whose stored profile no longer parses is logged
    and left out; the others still get their issue.
    """
    from newsletter.profile import parse_profile
    from newsletter.rank import RankRequest, RankSettings, rank_papers

    papers = store.papers(
        seen_since=now - timedelta(days=settings.candidate_window_days), seen_until=now
    )
    paper_ids = frozenset(p.id for p in papers)
    requests, kept = [], []
    for sub in subscribers:
        try:
            profile = parse_profile(sub.profile, who=f"subscriber {sub.email}")
        except ProfileError as exc:
            log.error("skipped %s: %s", sub.email, exc)
            continue
        eligible = paper_ids - store.assigned_paper_ids(sub.id)
        requests.append(
            RankRequest(
                profile=profile,
                max_papers=sub.max_papers,
                min_score=sub.min_score,
                eligible=eligible,
            )
        )
        kept.append((sub, profile))
    r = settings.ranking
    ranked = rank_papers(papers, requests, RankSettings(title_boost=r.title_boost, k1=r.k1, b=r.b))
    return {sub.id: (sel, profile) for (sub, profile), sel in zip(kept, ranked, strict=True)}


def plan_issues(
    store: Store, settings: Settings, now: datetime, *, only: Subscriber | None = None
) -> tuple[int, int]:
    """Create this slot's issue for every active subscriber who has none yet.

    Returns (issues planned, subscribers with nothing to send).
    """
    active = [only] if only else store.subscribers(SubscriberStatus.ACTIVE)
    due = [
        s
        for s in active
        if is_send_day(s, now) and store.issue(s.id, slot_date_for(s, now)) is None
    ]
    selections = select_papers(store, settings, due, now)
    planned = empty = 0
    for sub in due:
        if sub.id not in selections:
            continue
        papers, _profile = selections[sub.id]
        if not papers and not sub.send_when_empty:
            empty += 1
            log.info("nothing new for %s at or above min score %.2f", sub.email, sub.min_score)
            continue
        if store.plan_issue(sub.id, slot_date_for(sub, now), papers, now) is not None:
            planned += 1
    return planned, empty


def plan_slot(
    store: Store, settings: Settings, sub: Subscriber, slot_date: date, now: datetime
) -> bool:
    """Plan one subscriber's issue for ``slot_date`` (the daemon's send job); False if the
    slot already has its issue or there is nothing to send."""
    if store.issue(sub.id, slot_date) is not None:
        return False
    selection = select_papers(store, settings, [sub], now).get(sub.id)
    if selection is None:
        return False
    papers, _profile = selection
    if not papers and not sub.send_when_empty:
        log.info("nothing new for %s at or above min score %.2f", sub.email, sub.min_score)
        return False
    return store.plan_issue(sub.id, slot_date, papers, now) is not None


def _content(store: Store, issue: IssueRecord, sub: Subscriber) -> IssueContent:
    from newsletter.profile import parse_profile

    return IssueContent(
        subscriber=sub,
        slot_date=issue.slot_date,
        papers=tuple(store.issue_papers(issue.id)),
        profile=parse_profile(sub.profile, who=f"subscriber {sub.email}"),
        created_at=issue.created_at,
    )


@dataclass
class Delivery:
    """What :func:`deliver_pending` did: the issues sent, and why it stopped early, if it did."""

    delivered: list[dict[str, object]] = field(default_factory=list)
    stopped: str = ""


PENDING_STATES = (IssueState.PLANNED, IssueState.RENDERED, IssueState.SENDING)


def deliver_pending(
    store: Store,
    settings: Settings,
    mailer: Mailer,
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
    from newsletter.render import EmailRenderer

    renderer = EmailRenderer(settings.templates_dir, settings.site)
    subscribers = {s.id: s for s in store.subscribers()}
    result = Delivery()
    delivered = result.delivered
    pending = store.issues(states=PENDING_STATES)
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
            where = _deliver_one(store, settings, renderer, mailer, issue, sub, now)
        except MailerUnavailable as exc:
            left = len(pending) - position
            log.error("%s; delivery stopped, %d issue(s) left pending for the next run", exc, left)
            result.stopped = str(exc)
            break
        if where is None:
            continue
        n = len(issue.paper_ids)
        log.info("sent issue %d to %s (%d papers): %s", issue.id, sub.email, n, where)
        delivered.append(
            {"email": sub.email, "slot": issue.slot_date.isoformat(), "papers": n, "where": where}
        )
        if progress:
            progress(f"sent {sub.email}: {n} papers -> {where}")
    return result


MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=5)


def _deliver_one(
    store: Store,
    settings: Settings,
    renderer: EmailRenderer,
    mailer: Mailer,
    issue: IssueRecord,
    sub: Subscriber,
    now: datetime,
) -> str | None:
    """Render (if needed), claim and send one issue; None when it was not sent now.

    Raises :class:`MailerUnavailable` after handing the claimed issue back (``rendered``, its
    attempt not counted): an outage says nothing about this issue, and counting it would fail
    whichever issues happened to be first in line after a few outages.
    """
    try:
        if issue.state is IssueState.PLANNED:
            rendered = renderer.render(_content(store, issue, sub))
            if not store.mark_rendered(
                issue.id,
                subject=rendered.subject,
                html=rendered.html,
                message=rendered.message,
                message_id=rendered.message_id,
            ):
                return None  # another run got there first
        if not store.claim_for_sending(issue):
            return None
        message = store.rendered_message(issue.id)
        assert message is not None
        envelope = Envelope(
            sender=settings.mail.from_address,
            recipient=sub.email,
            message_id=settings.site.message_id(sub, issue.slot_date),
            name_hint=_file_label(issue, sub),
        )
        where = mailer.send(envelope, message)
    except MailerUnavailable as exc:
        store.release_claim(issue.id, reply=f"not sent yet: {exc}")
        raise
    except Exception as exc:  # noqa: BLE001 - one bad issue must never stop the others
        attempts = issue.attempts + 1
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        retry = not permanent and attempts < MAX_ATTEMPTS
        retry_at = now + RETRY_BASE * 2 ** (attempts - 1) if retry else None
        reason = str(exc) if isinstance(exc, NewsletterError) else f"{type(exc).__name__}: {exc}"
        store.mark_failed(issue.id, reply=reason, next_retry_at=retry_at)
        if retry_at:
            log.warning("issue %d for %s: %s; retry at %s", issue.id, sub.email, reason, retry_at)
        else:
            log.error("issue %d for %s failed: %s", issue.id, sub.email, reason)
        return None
    store.mark_sent(issue.id, sent_at=now, reply=where)
    return where


def _file_label(issue: IssueRecord, sub: Subscriber) -> str:
    """Outbox file name: one per (slot, subscriber), so a re-send replaces, never adds.

    Only a short prefix of the address: a valid address can be longer than a file name may be.
    """
    return f"{issue.slot_date.isoformat()}_{sub.id:05d}_{sub.email.split('@')[0][:32]}"


def write_all_feeds(store: Store, settings: Settings) -> int:
    """The global feed and one private pair per active subscriber; returns files changed.

    The private feeds of people who are no longer active are removed: an unsubscribe also
    ends their feed.
    """
    from newsletter.feeds import write_feeds

    site, directory, templates = settings.site, settings.feeds_dir, settings.templates_dir
    count = len(
        write_feeds(
            store.global_feed_items(),
            site=site,
            subscriber=None,
            directory=directory,
            templates_dir=templates,
        )
    )
    for sub in store.subscribers():
        if sub.status is SubscriberStatus.ACTIVE:
            count += len(
                write_feeds(
                    store.subscriber_feed_items(sub.id),
                    site=site,
                    subscriber=sub,
                    directory=directory,
                    templates_dir=templates,
                )
            )
            continue
        for kind in ("atom", "rss"):
            stale = directory / f"{sub.feed_token}.{kind}"
            if stale.exists():
                stale.unlink()
                count += 1
    return count


def run_once(
    settings: Settings,
    *,
    now: datetime,
    mailer: Mailer | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """The whole job once: what ``newsletter run --once`` does."""
    store = open_store(settings)
    try:
        summary = RunSummary(
            outbox_dir=str(settings.outbox_dir.resolve()),
            feeds_dir=str(settings.feeds_dir.resolve()),
        )
        reports = ingest_paths(
            store,
            [settings.inbox],
            now=now,
            max_bytes=settings.max_digest_bytes,
            progress=_file_progress(progress),
            scanner=InboxScanner(settings.inbox_settle_seconds),
        )
        _count_files(summary, reports)
        summary.subscribers_synced, summary.subscriber_errors = sync_subscribers(
            store, settings, now
        )
        _planned, summary.issues_empty = plan_issues(store, settings, now)
        own_mailer = mailer is None
        active_mailer = make_mailer(settings) if mailer is None else mailer
        try:
            delivery = deliver_pending(store, settings, active_mailer, now, progress)
        finally:
            if own_mailer:  # a caller's mailer is the caller's to close
                active_mailer.close()
        summary.delivered, summary.delivery_stopped = delivery.delivered, delivery.stopped
        summary.issues_delivered = len(summary.delivered)
        summary.issues_failed = len(store.issues(states=[IssueState.FAILED]))
        summary.issues_pending = len(store.issues(states=PENDING_STATES))
        summary.feeds_written = write_all_feeds(store, settings)
        summary.papers_total = store.count_papers()
        return summary
    finally:
        store.close()


def _count_files(summary: RunSummary, reports: Sequence[FileReport]) -> None:
    for report in reports:
        if report.status == "ingested":
            summary.files_ingested += 1
            summary.papers_new += report.papers_new
        elif report.status == "quarantined":
            summary.files_quarantined += 1
            summary.quarantined.append(report.reason or report.path)
        elif report.status == "waiting":
            summary.files_waiting += 1
        else:
            summary.files_unchanged += 1


def _file_progress(
    progress: Callable[[str], None] | None,
) -> Callable[[FileReport], None] | None:
    if progress is None:
        return None

    def report(r: FileReport) -> None:
        if r.status == "ingested":
            progress(f"ingested {r.path}: {r.entries} entries, {r.papers_new} new")
        elif r.status in ("quarantined", "waiting"):
            progress(f"{r.status}: {r.reason}")

    return report


def preview(settings: Settings, email: str, now: datetime, out_dir: Path) -> Path:
    """Render a subscriber's next issue to an HTML file; deliver and record nothing."""
    from newsletter.render import EmailRenderer

    store = open_store(settings)
    try:
        sync_subscribers(store, settings, now)
        sub = store.subscriber(email)
        if sub is None:
            raise NewsletterError(
                f"no subscriber {email!r}: see `newsletter subscriber list`, or add one"
            )
        papers, profile = select_papers(store, settings, [sub], now)[sub.id]
        content = IssueContent(
            subscriber=sub,
            slot_date=slot_date_for(sub, now),
            papers=papers,
            profile=profile,
            created_at=now,
        )
        rendered = EmailRenderer(settings.templates_dir, settings.site).render(content)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"preview_{content.slot_date.isoformat()}_{sub.id:05d}.html"
        path.write_text(rendered.html, encoding="utf-8")
        return path
    finally:
        store.close()
