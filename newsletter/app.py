"""The application core: one :class:`Newsletter` object offers every use case.

It owns the store (opened and migrated once), the mailer (created on first use, so commands
that send nothing never contact an SMTP server), one email renderer kept for its lifetime
(the inlined templates and per-paper cards are reused across every issue it renders), the
subscriber defaults, the ranking settings and the clock. The CLI, the web app and the daemon
parse their input, call one method and present the result: they hold no session, no query
and no business rule. Lower stages (:mod:`newsletter.pipeline`, :mod:`newsletter.feeds`,
:mod:`newsletter.render`) take the values they use, not the settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from newsletter.accounts import AccountUseCases, ImportResult
from newsletter.config import Settings
from newsletter.deliver import Envelope, Mailer, OutboxMailer
from newsletter.dkim import signing
from newsletter.domain import (
    IngestStatus,
    IssueContent,
    ScoredPaper,
    SiteInfo,
    Subscriber,
    SubscriberSendTime,
    SubscriberSource,
    SubscriberStatus,
)
from newsletter.errors import DataRejected, NewsletterError, SubscriberError
from newsletter.feed_files import write_all_feeds
from newsletter.feedback import FeedbackUseCases
from newsletter.ingest import FileReport, InboxScanner, inbox_problem, ingest_paths
from newsletter.observe import DeliveryMeter
from newsletter.pipeline import (
    Delivery,
    PlanResult,
    deliver_pending,
    plan_issues,
    select_papers,
)
from newsletter.reports import RunSummary, StatusReport, build_status
from newsletter.schedule import SendSchedule, due_slot, last_send_time, slot_of
from newsletter.store import PruneResult, Store
from newsletter.store.lock import AlreadyRunning, DaemonLock, SendLock
from newsletter.subscribers import Defaults, load_config_file, lookup_email

if TYPE_CHECKING:
    from newsletter.rank import RankSettings
    from newsletter.render import EmailRenderer
    from newsletter.semantic import Embedder
    from newsletter.workers.broker import Broker

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Papers an ingest embeds at most (newest first), about two minutes on 2 cores: a backlog
#: (semantic matching switched on over a large store) is ``newsletter semantic embed``'s job,
#: not a scan's.
INGEST_EMBED_LIMIT = 2_000
Progress = Callable[[str], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SyncResult:
    """Subscribers synced from the subscribers file, and one line per entry skipped."""

    synced: int
    errors: tuple[str, ...]


#: The daemon plans a large batch of due slots this many subscribers at a time, checking for
#: a stop request in between: one chunk ranks in about a second, so SIGTERM is honoured
#: within seconds even during a 100,000-subscriber catch-up, and the per-chunk overhead
#: (reading the candidate papers) stays negligible.
PLAN_CHUNK = 2000


@dataclass(frozen=True)
class MissedSlot:
    """A slot whose send time passed while no daemon ran, and whether it is still sent."""

    subscriber: SubscriberSendTime
    slot: date
    due: datetime
    within_grace: bool


class Newsletter(AccountUseCases, FeedbackUseCases):
    """``with Newsletter(settings) as app: app.run_once()``: the use cases over one store.

    ``mailer`` replaces the configured one (the caller's to close); ``clock`` the wall clock
    (replays and tests). Methods that act at a moment take ``now``, defaulting to the clock.
    Safe to share between threads for the web's use (one store engine, the mailer behind a
    lock); one run or daemon drives delivery at a time.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        mailer: Mailer | None = None,
        clock: Clock = utc_now,
        migrate: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # Every message goes through self._mailer: DKIM-signed there when configured.
        signed = None if mailer is None else signing(mailer, settings.mail)
        self.store = Store(settings.database_url)
        try:
            # migrate=False (delivery workers): the database must already be at this
            # version's migration; several processes migrating a shared database at once, or
            # a newer worker migrating it under an older scheduler, would break it.
            self._revision = self.store.migrate() if migrate else self.store.check_revision()
        except BaseException:
            self.store.close()
            raise
        self._mailer = signed
        self._owns_mailer = mailer is None
        self._mailer_lock = threading.Lock()
        self._broker: Broker | None = None  # queue mode: created on first use, like the mailer
        self._pruned_before: date | None = None  # apply_retention's last cutoff
        self.defaults = Defaults(
            timezone=settings.timezone,
            max_papers=settings.ranking.default_max_papers,
            min_score=settings.ranking.default_min_score,
            allow_local_domains=settings.mail.allow_local_domains,
        )

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Newsletter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._mailer_lock:
            if self._mailer is not None and self._owns_mailer:
                self._mailer.close()
                self._mailer = None
            if self._broker is not None:
                self._broker.close()
                self._broker = None
        self.store.close()

    def schema_revision(self) -> str:
        """The migration the database is at (opening it applied every pending one)."""
        return self._revision

    @property
    def site(self) -> SiteInfo:
        return self.settings.site

    @property
    def mailer(self) -> Mailer:
        """The configured mailer (outbox folder or SMTP), created on first use."""
        with self._mailer_lock:
            if self._mailer is None:
                self._mailer = make_mailer(self.settings)
            return self._mailer

    def send_message(self, envelope: Envelope, message: bytes) -> str:
        """Send one message outside the issue pipeline (a confirmation email), serialized: an
        SMTP session is one connection and web handlers run in a thread pool."""
        mailer = self.mailer
        with self._mailer_lock:
            return mailer.send(envelope, message)

    @cached_property
    def renderer(self) -> EmailRenderer:
        from newsletter.render import EmailRenderer

        return EmailRenderer(self.settings.templates_dir, self.site)

    @property
    def render_processes(self) -> int:
        """Render worker processes for a large delivery pass (setting ``render_processes``)."""
        from newsletter.render_pool import default_render_processes

        configured = self.settings.render_processes
        return default_render_processes() if configured is None else configured

    @cached_property
    def rank_settings(self) -> RankSettings:
        from newsletter.rank import RankSettings

        r = self.settings.ranking
        return RankSettings(title_boost=r.title_boost, k1=r.k1, b=r.b, coordination=r.coordination)

    @cached_property
    def embedder(self) -> Embedder | None:
        """The sentence embedding model when ``[semantic]`` is enabled (loaded on first use),
        else None: ranking by keywords only, and nothing of the extra imported."""
        if not self.settings.semantic.enabled:
            return None
        from newsletter.semantic import Embedder

        return Embedder(self.settings.semantic)

    def embed_papers(
        self, *, limit: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Embed the stored papers that have no embedding by the configured model (ingest
        does it for new papers; ``newsletter semantic embed`` after switching the feature or
        the model on). 0 when semantic matching is off."""
        if self.embedder is None:
            return 0
        from newsletter.semantic import embed_missing

        return embed_missing(self.store, self.embedder, limit=limit, progress=progress)

    # ------------------------------------------------------------------ the main job

    def ingest(
        self,
        paths: Sequence[Path] | None = None,
        *,
        now: datetime | None = None,
        scanner: InboxScanner | None = None,
        two_scans: bool = True,
        progress: Callable[[FileReport], None] | None = None,
    ) -> list[FileReport]:
        """Ingest digest files (default: the inbox); one report per file. With semantic
        matching on, the new papers are embedded and stored too."""
        reports = ingest_paths(
            self.store,
            list(paths) if paths is not None else [self.settings.inbox],
            now=self._now(now),
            max_bytes=self.settings.max_digest_bytes,
            progress=progress,
            scanner=scanner,
            two_scans=two_scans,
        )
        if paths is None:  # an inbox scan: its time for `status` and /metrics
            self.store.record_scan(self._now(now))
        # New papers, and stored ones whose text a digest improved (their embedding dropped).
        if self.embedder is not None and any(r.papers_new or r.papers_merged for r in reports):
            try:
                embedded = self.embed_papers(limit=INGEST_EMBED_LIMIT)
            except NewsletterError as exc:  # the papers are stored; ranking goes on by keywords
                log.error("new papers not embedded: %s", exc)
            else:
                missing = self.store.count_to_embed(self.settings.semantic.model)
                log.info("embedded %d papers; %d not yet", embedded, missing)
                if missing:
                    log.warning(
                        "%d stored papers have no embedding (ranked by keywords only): run "
                        "`newsletter semantic embed`",
                        missing,
                    )
        return reports

    def check_semantic(self) -> None:
        """Load the embedding model now when ``[semantic]`` is enabled, so that a missing
        extra or model stops ``run`` and the daemon at start with what to install
        (:class:`~newsletter.semantic.SemanticUnavailable`, a ConfigError)."""
        if self.embedder is not None:
            _ = self.embedder.dims

    def sync_subscribers(self, now: datetime | None = None) -> SyncResult:
        """Upsert the subscribers of ``subscribers_file`` (their status is never changed)."""
        path = self.settings.subscribers_file
        if path is None or not path.exists():
            return SyncResult(0, ())
        result = load_config_file(path, self.defaults)
        errors = list(result.errors)
        moment = self._now(now)
        synced = 0
        for spec in result.specs:
            try:
                self.store.upsert_subscriber(spec, source=SubscriberSource.CONFIG, now=moment)
            except DataRejected as exc:  # a value validation let through: skip this entry only
                errors.append(f"{path}: {exc}")
                continue
            synced += 1
        for error in errors:
            log.error("skipped subscriber: %s", error)
        return SyncResult(synced, tuple(errors))

    def active_subscribers(self) -> dict[int, Subscriber]:
        return self.store.subscribers_by_id(status=SubscriberStatus.ACTIVE)

    def plan(
        self, due: Sequence[tuple[Subscriber, date]], now: datetime | None = None
    ) -> PlanResult:
        """Plan the issues of these (subscriber, slot) pairs: one or many, one function."""
        return plan_issues(
            self.store,
            due,
            self._now(now),
            window_days=self.settings.candidate_window_days,
            rank_settings=self.rank_settings,
            embedder=self.embedder,
        )

    def plan_current_slots(self, now: datetime | None = None) -> PlanResult:
        """``run --once``: every active subscriber's slot at ``now`` is due, whatever their
        send time (weekly subscribers on their days only).

        In chunks of :data:`PLAN_CHUNK`, as the daemon plans: ranking holds each subscriber's
        eligible papers while it runs, so planning 100,000 subscribers at once peaked at
        2.5 GB."""
        moment = self._now(now)
        slots = {}
        for sub in self.active_send_times().values():
            slot = due_slot(SendSchedule.of(sub), moment)
            if slot is not None:
                slots[sub.id] = slot
        return self.plan_slots(slots, moment)

    def active_send_times(self) -> dict[int, SubscriberSendTime]:
        """Every active subscriber's send time and address (no profile): the daemon's view."""
        return self.store.active_send_times()

    def plan_slots(
        self,
        slots: Mapping[int, date],
        now: datetime | None = None,
        *,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> PlanResult:
        """The daemon: plan the given slot of each subscriber id that is still active.

        One ranking call per :data:`PLAN_CHUNK` subscribers, whatever their number; between
        chunks ``should_stop`` is asked, and a stop leaves the rest unplanned (a restart's
        catch-up finds those slots still without an issue)."""
        moment = self._now(now)
        planned = empty = already = 0
        ids = sorted(slots)
        for start in range(0, len(ids), PLAN_CHUNK):
            if start and should_stop():
                log.info("stopping: %d slot(s) left unplanned", len(ids) - start)
                break
            chunk = ids[start : start + PLAN_CHUNK]
            subscribers = self.store.subscribers_by_id(chunk, status=SubscriberStatus.ACTIVE)
            result = self.plan([(sub, slots[sub.id]) for sub in subscribers.values()], moment)
            planned, empty = planned + result.planned, empty + result.empty
            already += result.already
        return PlanResult(planned=planned, empty=empty, already=already)

    def missed_slots(
        self,
        now: datetime | None = None,
        send_times: Mapping[int, SubscriberSendTime] | None = None,
    ) -> list[MissedSlot]:
        """Each active subscriber's latest send time before ``now`` whose slot has no issue:
        within ``catch_up_grace_hours`` it is still to be sent (once), older ones are not.

        ``send_times`` (default: read now) are grouped by schedule, so the DST arithmetic runs
        once per distinct schedule, and the slots taken are read in a few queries by date: one
        batch for the whole audience. A zero grace sends nothing missed."""
        moment = self._now(now)
        grace = timedelta(hours=self.settings.catch_up_grace_hours)
        if send_times is None:
            send_times = self.active_send_times()
        latest: dict[SendSchedule, tuple[datetime, date] | None] = {}
        found = []
        for sub in send_times.values():
            schedule = SendSchedule.of(sub)
            if schedule not in latest:
                due = last_send_time(schedule, moment)
                latest[schedule] = None if due is None else (due, slot_of(schedule, due))
            if (when := latest[schedule]) is not None:
                found.append((sub, *when))
        taken = self.store.slots_with_issues((sub.id, slot) for sub, _, slot in found)
        return [
            MissedSlot(sub, slot, due, grace > timedelta(0) and moment - due <= grace)
            for sub, due, slot in found
            if (sub.id, slot) not in taken
        ]

    def deliver(
        self,
        now: datetime | None = None,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Delivery:
        """Render and send every pending issue whose time has come, holding the database's
        send lock: a second sender (an overlapping cron run, a manual run beside the daemon)
        delivers nothing and says so, and the issues it planned go out with the next pass.

        With ``queue.broker_url`` set, hand them to the workers instead
        (:meth:`enqueue_due`)."""
        if self.settings.queue.broker_url is not None:
            return self.enqueue_due(now, should_stop=should_stop)
        lock = SendLock(self.store.engine)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            reason = f"{exc}; pending issues are sent by the next run"
            log.warning("delivery skipped: %s", reason)
            return Delivery(stopped=reason)
        meter = DeliveryMeter(self.mailer)  # counts for /metrics (newsletter/observe.py)
        try:
            return deliver_pending(
                self.store,
                self.renderer,
                meter,
                site=self.site,
                now=self._now(now),
                progress=progress,
                should_stop=should_stop,
                batch_size=self.settings.delivery_batch_size,
                render_processes=self.render_processes,
            )
        finally:
            lock.release()
            meter.save(self.store)

    def enqueue_due(
        self, now: datetime | None = None, *, should_stop: Callable[[], bool] = lambda: False
    ) -> Delivery:
        """Queue mode: publish the delivery settings and hand every due issue to the workers
        once, re-enqueueing those whose task was lost (:mod:`newsletter.workers.enqueue`)."""
        from newsletter.workers.enqueue import enqueue_due

        with self._mailer_lock:
            if self._broker is None:
                from newsletter.workers.broker import Broker

                self._broker = Broker(self.settings.queue)
            broker = self._broker
        return enqueue_due(
            self.store, self.settings, broker, self._now(now), should_stop=should_stop
        )

    def write_feeds(self, now: datetime | None = None, *, force: bool = False) -> int:
        """Rebuild the feeds whose entries changed (``force``: all of them) for the window
        ending ``now``; returns the number of files changed."""
        return write_all_feeds(
            self.store,
            site=self.site,
            directory=self.settings.feeds_dir,
            templates_dir=self.settings.templates_dir,
            window=self.feed_window(now),
            force=force,
            private_files=self.settings.feeds.private_files,
        )

    def run_once(
        self, now: datetime | None = None, *, progress: Progress | None = None
    ) -> RunSummary:
        """The whole job once: what ``newsletter run --once`` does."""
        moment = self._now(now)
        self.check_semantic()
        summary = RunSummary(
            outbox_dir=str(self.settings.outbox_dir.resolve()),
            feeds_dir=str(self.settings.feeds_dir.resolve()),
        )
        problem = inbox_problem(self.settings.inbox)
        if problem:  # the run goes on (subscribers, retries, feeds); the summary says it
            summary.warnings.append(problem)
        reports = self.ingest(
            now=moment,
            scanner=InboxScanner(self.settings.inbox_settle_seconds),
            progress=file_progress(progress),
        )
        summary.count_files(reports)
        synced = self.sync_subscribers(moment)
        summary.subscribers_synced, summary.subscriber_errors = synced.synced, list(synced.errors)
        self.delete_unconfirmed(moment)  # web sign-ups never confirmed (web.unconfirmed_days)
        self.apply_retention(moment)  # issues past retention.issue_days keep the sent log only
        summary.issues_empty = self.plan_current_slots(moment).empty
        delivery = self.deliver(moment, progress=progress)
        summary.delivered, summary.delivery_stopped = delivery.delivered, delivery.stopped
        summary.failed_now = delivery.failed
        summary.issues_delivered = len(summary.delivered)
        summary.issues_queued = delivery.queued
        if self.settings.queue.broker_url is not None:
            with_workers = self.store.queue_counts()
            summary.issues_with_workers = with_workers.queued + with_workers.sending
        counts = self.store.issue_state_counts()
        summary.issues_failed = counts.failed
        summary.issues_pending = counts.pending
        summary.issues_unknown = counts.unknown
        try:
            summary.feeds_written = self.write_feeds(moment)
        except OSError as exc:  # a full or read-only disk: what was delivered stays delivered
            summary.feeds_error = f"feeds not written to {summary.feeds_dir}: {exc}"
        summary.papers_total = self.store.count_papers()
        return summary

    def apply_retention(self, now: datetime | None = None) -> PruneResult:
        """Prune issues whose slot is more than ``retention.issue_days`` old down to the sent
        log (:meth:`newsletter.store.Store.prune_issues` says what stays); ``run --once`` and
        the daemon call this. 0 days keeps everything. The cutoff is a date, so one process
        prunes once per date: later calls on the same date do nothing.

        The window is never shorter than the candidate window plus two days (a slot is a
        local date, up to a day off UTC, planned from papers seen up to a day after it):
        planning excludes the papers of a subscriber's issues only among papers that are
        still candidates, so pruning an issue whose papers could still be candidates would
        let them be sent twice.
        """
        days = self.settings.retention.issue_days
        if days <= 0:
            return PruneResult()
        days = max(days, self.settings.candidate_window_days + 2)
        before = self._now(now).astimezone(UTC).date() - timedelta(days=days)
        if before == self._pruned_before:  # the daemon calls this every refresh: once a day
            return PruneResult()
        result = self.store.prune_issues(before)
        self._pruned_before = before
        if result.issue_papers or result.issues:
            log.info(
                "retention: pruned %d issue(s) and the papers of issues older than %d days "
                "(%d issue-paper rows); the sent log is kept",
                result.issues,
                days,
                result.issue_papers,
            )
        return result

    # ------------------------------------------------------------------ operator

    def status(self, now: datetime | None = None) -> StatusReport:
        """Papers, files, pending and failed issues, each subscriber's last and next issue, and
        the configuration in use (settings file, database, folders, mailer)."""
        return build_status(self.store, self._now(now), self.settings)

    def retry(self, email: str | None = None) -> list[tuple[str, date]]:
        """Put failed issues of active subscribers back in line; (email, slot) of each."""
        address = None
        if email is not None:
            address = lookup_email(email, allow_local=self.defaults.allow_local_domains)
            if self.store.subscriber(address) is None:
                raise SubscriberError(
                    f"retry: no subscriber {email!r}: see `newsletter subscriber list --all`",
                    field="email",
                )
        return self.store.requeue_failed(address)

    def preview(self, email: str, out_dir: Path, now: datetime | None = None) -> Path:
        """Render a subscriber's next issue to an HTML file; deliver and record nothing."""
        moment = self._now(now)
        self.sync_subscribers(moment)
        sub = self.store.subscriber(
            lookup_email(email, allow_local=self.defaults.allow_local_domains)
        )
        if sub is None:
            raise SubscriberError(
                f"no subscriber {email!r}: see `newsletter subscriber list`, or add one",
                field="email",
            )
        selection = select_papers(
            self.store,
            [sub],
            moment,
            window_days=self.settings.candidate_window_days,
            rank_settings=self.rank_settings,
            embedder=self.embedder,
        )[sub.id]
        content = IssueContent(
            subscriber=sub,
            slot_date=slot_of(SendSchedule.of(sub), moment),
            papers=selection.papers,
            profile=selection.profile,
            created_at=moment,
        )
        rendered = self.renderer.render(content)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"preview_{content.slot_date.isoformat()}_{sub.id:05d}.html"
        path.write_text(rendered.html, encoding="utf-8")
        return path

    def rank(self, profile_text: str, *, limit: int | None = None) -> tuple[ScoredPaper, ...]:
        """Every stored paper ranked against a profile, ignoring history and the window."""
        from newsletter.profile import parse_profile
        from newsletter.rank import rank_one

        profile = parse_profile(profile_text, who="--profile")
        papers = self.store.papers()
        semantic = None
        if self.embedder is not None and papers:
            from newsletter.semantic import semantic_scores

            semantic = semantic_scores(self.store, self.embedder, papers, [profile])
        return rank_one(
            papers, profile, limit=limit, settings=self.rank_settings, semantic=semantic
        )

    def rank_for(
        self, email: str, *, limit: int | None = None, now: datetime | None = None
    ) -> tuple[ScoredPaper, ...]:
        """The papers of a subscriber's next issue, ranked as planning ranks them: their
        candidates (the window, less the papers already in their issues), their profile with
        its expansions, their min score, their feedback; ``limit`` in place of their max
        papers. Subscribers are synced first, as for :meth:`preview`; nothing is planned."""
        from dataclasses import replace

        from newsletter.profile import parse_profile

        moment = self._now(now)
        self.sync_subscribers(moment)
        sub = self.store.subscriber(
            lookup_email(email, allow_local=self.defaults.allow_local_domains)
        )
        if sub is None:
            raise SubscriberError(
                f"no subscriber {email!r}: see `newsletter subscriber list --all`",
                field="email",
            )
        parse_profile(sub.profile, who=f"subscriber {sub.email}", strict=False)  # or refused
        if limit is not None:
            sub = replace(sub, max_papers=limit)
        return select_papers(
            self.store,
            [sub],
            moment,
            window_days=self.settings.candidate_window_days,
            rank_settings=self.rank_settings,
            embedder=self.embedder,
        )[sub.id].papers

    def count_papers(self) -> int:
        return self.store.count_papers()

    def daemon_lock(self) -> DaemonLock:
        """The lock that keeps a second daemon off this database."""
        return DaemonLock(self.store.engine)


def make_mailer(settings: Settings) -> Mailer:
    """The configured mailer: the outbox folder (default) or an SMTP server (one session, or
    a pool of ``smtp.connections`` sessions that the pipeline sends through in parallel),
    DKIM-signing every message when ``mail.dkim_*`` is set (:func:`newsletter.dkim.signing`)."""
    if settings.mailer == "smtp":
        from newsletter.smtp import mailer_from_settings

        return signing(mailer_from_settings(settings), settings.mail)
    return signing(OutboxMailer(settings.outbox_dir), settings.mail)


def file_progress(progress: Progress | None) -> Callable[[FileReport], None] | None:
    """One progress line per file ingested, quarantined, skipped or still being written."""
    if progress is None:
        return None

    def report(r: FileReport) -> None:
        if r.status is IngestStatus.INGESTED:
            progress(f"ingested {r.path}: {r.entries} entries, {r.papers_new} new")
        elif r.status in (IngestStatus.QUARANTINED, IngestStatus.SKIPPED, IngestStatus.WAITING):
            progress(f"{r.status}: {r.reason}")

    return report


__all__ = ["ImportResult", "MissedSlot", "Newsletter", "SyncResult", "make_mailer", "utc_now"]
