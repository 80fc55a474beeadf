"""The daemon: ``newsletter run`` without ``--once``.

One APScheduler 3.11 BlockingScheduler per deployment, with jobs built from our own tables (no
pickled job store: a renamed function would silently delete pickled jobs):

* ``inbox``: every ``scan_interval_seconds``, ingest the files that are stable since the last
  scan, then deliver issues whose retry time has come;
* ``subscribers``: every ``subscriber_refresh_seconds`` (and on SIGHUP), sync the subscribers
  file, delete web sign-ups unconfirmed for ``web.unconfirmed_days``, prune issues past
  ``retention.issue_days`` (once a day), and bring the send calendar
  (:class:`newsletter.schedule.SendCalendar`) in line with the active subscribers, read as
  send times only (no profiles);
* ``send``: a tick at the start of every minute (send times are whole minutes) takes every
  subscriber whose send time has come, whatever their number, plans their slots in one
  ranking call per :data:`newsletter.app.PLAN_CHUNK` subscribers and delivers them in one
  loop. The work of a tick is proportional to the subscribers due, never to the audience;
* ``source:<name>``: one per ``[[source]]``, every ``every_minutes`` (first at start-up) or
  daily at ``at``: fetch it into the inbox and ingest it, then the stale check
  (:class:`newsletter.fetch.run.SourceJobs`).

Jobs run one at a time (a single worker thread): a send never races an ingest on the same
database. At start-up, the slots missed while the daemon was down are planned and delivered
as one batch, those within ``catch_up_grace_hours`` (a zero grace: none); older ones are
logged and skipped. SIGTERM and SIGINT stop the scheduler; the job in progress (a tick, the
catch-up) stops between planning chunks or after the message in flight, records it, and
leaves the rest for the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from datetime import UTC, date, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.app import Clock, Newsletter, utc_now
from newsletter.config import Settings
from newsletter.deliver import Mailer
from newsletter.domain import IngestStatus, SubscriberSendTime
from newsletter.errors import ConfigError
from newsletter.fetch.run import SourceJobs, source_trigger
from newsletter.ingest import InboxScanner, inbox_problem
from newsletter.schedule import SendCalendar, slot_of
from newsletter.store.engine import display_url

log = logging.getLogger(__name__)

#: Missed slots logged one per line at start-up; the rest are counted in one line.
CATCH_UP_LINES = 50
#: Logged when start-up work (subscribers, inbox, catch-up) is done and the scheduler starts:
#: tests wait for it instead of sleeping.
READY = "daemon ready"


class Daemon:
    """The scheduler around one :class:`Newsletter`.

    ``with Daemon(settings, mailer=..., clock=...) as daemon:`` opens the application without
    starting the scheduler, so each job (:meth:`refresh_subscribers`, :meth:`scan_inbox`,
    :meth:`catch_up`, :meth:`tick`) can be driven in-process with a fake clock; :meth:`run`
    does the start-up work and runs the scheduler until SIGTERM/SIGINT.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        mailer: Mailer | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stopping = threading.Event()
        self._hup = threading.Event()
        self._finished = threading.Event()
        self._mailer = mailer
        self.scanner = InboxScanner(settings.inbox_settle_seconds)
        self.executor = ThreadPoolExecutor(max_workers=1)
        # APScheduler refuses a zero grace: one second is "no catch-up by the scheduler".
        grace = max(1, int(settings.catch_up_grace_hours * 3600))
        self.scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": self.executor},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        self.calendar = SendCalendar()
        self._send_times: dict[int, SubscriberSendTime] = {}
        # When the calendar was first built: send times from then on are the ticks' to send,
        # earlier ones were missed while no daemon watched (the catch-up's).
        self._watching_since: datetime | None = None
        self._app: Newsletter | None = None
        self._inbox_problem: str | None = None  # logged once when it appears, once when fixed
        # [[source]] fetching and the stale alert (newsletter/fetch/run.py).
        self.sources = SourceJobs(settings, started=clock())

    # ------------------------------------------------------------------ lifecycle

    @property
    def app(self) -> Newsletter:
        if self._app is None:
            raise RuntimeError("the daemon is not open: use `with Daemon(...)` or run()")
        return self._app

    def __enter__(self) -> Daemon:
        self._app = Newsletter(self.settings, mailer=self._mailer, clock=self.clock)
        return self

    def __exit__(self, *_: object) -> None:
        self.sources.close()
        if self._app is not None:
            self._app.close()
            self._app = None

    def run(self) -> None:
        """Run until SIGTERM/SIGINT. Raises AlreadyRunning if another daemon has the database,
        and ConfigError if the inbox is missing or unreadable: a daemon that watches nothing
        would otherwise run for months looking like a quiet inbox."""
        problem = inbox_problem(self.settings.inbox)
        if problem:
            raise ConfigError(f"the daemon cannot start: {problem}")
        with self:
            self.app.check_semantic()  # a missing model stops the start, not each planning
            lock = self.app.daemon_lock()
            watcher = threading.Thread(target=self._watch_signals, name="signals", daemon=True)
            try:
                lock.acquire()
                self.app.store.record_daemon_start(os.getpid(), socket.gethostname(), self.clock())
                self._install_signal_handlers()
                watcher.start()
                log.info(
                    "daemon started (pid lock %s): database %s, inbox %s",
                    lock.path or "advisory",
                    display_url(self.settings.database_url),
                    self.settings.inbox.resolve(),
                )
                # Each start-up step is skipped once a stop is asked for (catch-up stops
                # inside, between planning chunks and messages).
                for step in (
                    self.refresh_subscribers,
                    lambda: self.scan_inbox(two_scans=True),  # papers first, for catch-up
                    self.catch_up,
                ):
                    if not self.stopping.is_set():
                        step()
                if not self.stopping.is_set():
                    self._add_jobs()
                    log.info(READY)
                    self.scheduler.start()  # blocks until the watcher shuts it down
                pool = getattr(self.executor, "_pool", None)
                if pool is not None:
                    pool.shutdown(wait=True)  # the job in progress finishes its message
            finally:
                self._finished.set()
                if lock.held:
                    self._record_stop()
                lock.release()
                log.info("daemon stopped")

    def _record_stop(self) -> None:
        try:
            self.app.store.record_daemon_stop(self.clock())
        except Exception as exc:  # noqa: BLE001 - the database may be what stopped us
            log.warning("could not record the daemon's stop: %s", exc)

    def _add_jobs(self) -> None:
        self.scheduler.add_job(
            self.scan_inbox,
            IntervalTrigger(seconds=self.settings.scan_interval_seconds),
            id="inbox",
            name="inbox scan",
        )
        self.scheduler.add_job(
            self.refresh_subscribers,
            IntervalTrigger(seconds=self.settings.subscriber_refresh_seconds),
            id="subscribers",
            name="subscriber refresh",
        )
        self.scheduler.add_job(self.tick, self.tick_trigger(), id="send", name="send tick")
        for source in self.settings.source:  # interval sources fetch at start, then every N
            self.scheduler.add_job(
                self.fetch_source,
                source_trigger(source, self.settings.timezone),
                args=[source.name],
                id=f"source:{source.name}",
                name=f"fetch {source.name}",
                **({"next_run_time": self.clock()} if source.every_minutes else {}),
            )

    def fetch_source(self, name: str) -> None:
        """Fetch one [[source]] into the inbox and ingest it (the feeds refreshed when it
        brought papers: the next inbox scan finds the file already recorded), then apply the
        stale rule."""
        result = self.sources.fetch(self.app, name, self.clock())
        if result.papers_new:
            try:
                self.app.write_feeds()
            except OSError as exc:  # as in scan_inbox: the next run tries again
                log.error("feeds not written to %s: %s", self.settings.feeds_dir.resolve(), exc)

    def request_stop(self, *_: Any) -> None:
        """Signal handler: only set a flag. Taking the scheduler's or an executor's locks here
        could deadlock: the handler runs on the main thread, which may be holding them."""
        self.stopping.set()

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._hup.set())

    def _watch_signals(self) -> None:
        """Act on the flags the signal handlers set, from an ordinary thread."""
        while not self._finished.wait(0.2):
            if self._hup.is_set():
                self._hup.clear()
                log.info("SIGHUP: refreshing subscribers")
                self.scheduler.add_job(
                    self.refresh_subscribers, id="subscribers-now", replace_existing=True
                )
            if self.stopping.is_set():
                log.info("stopping: finishing the message in flight")
                break
        while not self._finished.is_set():
            try:
                self.scheduler.shutdown(wait=False)
                return
            except SchedulerNotRunningError:  # not started yet: look again until run() ends
                self._finished.wait(0.1)

    # ------------------------------------------------------------------ jobs

    def scan_inbox(self, two_scans: bool = False) -> None:
        """Ingest stable files, refresh the feeds if anything came in, send due retries."""
        now = self.clock()
        self._check_inbox()
        reports = self.app.ingest(now=now, scanner=self.scanner, two_scans=two_scans)
        self.app.store.record_heartbeat(now)  # `status` and /metrics: the daemon is alive
        if any(r.status is IngestStatus.INGESTED for r in reports):
            try:
                self.app.write_feeds()
            except OSError as exc:  # a full or read-only disk: the next scan tries again
                log.error("feeds not written to %s: %s", self.settings.feeds_dir.resolve(), exc)
        self._deliver(now)
        log.debug("inbox scan done: %d file(s) looked at", len(reports))

    def _check_inbox(self) -> None:
        """Log when the inbox goes missing or unreadable while the daemon runs (a warning,
        once), and when it is back: every scan in between would find nothing, silently."""
        problem = inbox_problem(self.settings.inbox)
        if problem == self._inbox_problem:
            return
        if problem:
            log.warning("%s", problem)
        else:
            log.info("inbox %s can be read again", self.settings.inbox.resolve())
        self._inbox_problem = problem

    def refresh_subscribers(self) -> None:
        """Sync the subscribers file, delete web sign-ups never confirmed in time, prune old
        issues, then bring the send calendar in line with the active subscribers' send
        times."""
        now = self.clock()
        self.app.sync_subscribers(now)
        self.app.delete_unconfirmed(now)  # one DELETE; pending subscribers have no send time
        self.app.apply_retention(now)  # retention.issue_days; prunes once per date
        send_times = self.app.active_send_times()
        previous, self._send_times = self._send_times, send_times
        if self._watching_since is None:
            self._watching_since = now
        change = self.calendar.update(send_times, now)
        for sub_id in change.removed:
            log.info("removed send time of subscriber %d (no longer active)", sub_id)
        for sub_id in change.added:
            sub = send_times[sub_id]
            log.debug(
                "next send to %s at %s", sub.email, _local(self.calendar.next_send(sub_id), sub)
            )
        if change.added or change.removed:
            log.info(
                "send calendar: %d subscriber(s) added or moved, %d removed (was %d, now %d)",
                len(change.added),
                len(change.removed),
                len(previous),
                len(send_times),
            )
        log.debug("subscriber refresh done: %d send time(s)", len(self.calendar))

    def tick_trigger(self) -> Any:
        """Every minute at second 0 (send times are whole minutes); with
        ``debug_send_every_seconds``, every that many seconds."""
        if self.settings.debug_send_every_seconds:
            return IntervalTrigger(seconds=self.settings.debug_send_every_seconds)
        return CronTrigger(second=0, timezone=UTC)

    def tick(self) -> None:
        """The send job: plan the slot of every subscriber whose send time has come since the
        last tick, in one batch, then deliver in one loop.

        The slot is the day of the send time that came due, not of the tick: a tick that runs
        late (after local midnight, behind a long delivery, after the machine was suspended)
        still serves that send time's own day. With ``debug_send_every_seconds`` every active
        subscriber's current slot is due at every tick.
        """
        now = self.clock()
        due: dict[int, date] = {}
        if self.settings.debug_send_every_seconds:
            for schedule, members in self.calendar.groups():
                slot = slot_of(schedule, now)
                due.update((sid, slot) for sid in members)
        else:
            for group in self.calendar.pop_due(now):
                due.update((sid, group.slot) for sid in group.subscriber_ids)
                log.info(
                    "send time %s: %d subscriber(s) due, slot %s",
                    group.due.astimezone(group.schedule.zone).strftime("%Y-%m-%d %H:%M %Z"),
                    len(group.subscriber_ids),
                    group.slot,
                )
        if due:
            self._plan_and_deliver(due, now)

    def catch_up(self) -> None:
        """Send, once, the slots missed while the daemon was down that are within the grace
        period: one batch for everyone (one plan, one delivery loop)."""
        if self.settings.debug_send_every_seconds:
            return
        now = self.clock()
        since = self._watching_since or now
        # A send time since the calendar was built is not missed: the next tick sends it.
        missed = [m for m in self.app.missed_slots(now, self._send_times or None) if m.due < since]
        for position, m in enumerate(missed):
            if position == CATCH_UP_LINES:  # 100,000 lines help nobody: count the rest
                log.info(
                    "... and %d more missed slot(s) (%d to send, %d older than the grace); "
                    "each is logged at debug level (-vv)",
                    len(missed) - position,
                    sum(1 for rest in missed[position:] if rest.within_grace),
                    sum(1 for rest in missed[position:] if not rest.within_grace),
                )
            level = logging.DEBUG if position >= CATCH_UP_LINES else None
            if m.within_grace:
                log.log(
                    level or logging.INFO,
                    "catching up %s's slot %s (due %s)",
                    m.subscriber.email,
                    m.slot,
                    _local(m.due, m.subscriber),
                )
            else:
                log.log(
                    level or logging.WARNING,
                    "skipped %s's missed slot %s: due %s, older than the %g h grace",
                    m.subscriber.email,
                    m.slot,
                    _local(m.due, m.subscriber),
                    self.settings.catch_up_grace_hours,
                )
        slots = {m.subscriber.id: m.slot for m in missed if m.within_grace}
        if slots:
            log.info("catch-up: %d missed slot(s) to send", len(slots))
            self._plan_and_deliver(slots, now)

    def _plan_and_deliver(self, slots: dict[int, date], now: datetime) -> None:
        result = self.app.plan_slots(slots, now, should_stop=self.stopping.is_set)
        log.info(
            "planned %d issue(s) for %d due slot(s) (%d with nothing to send, %d planned before)",
            result.planned,
            len(slots),
            result.empty,
            result.already,
        )
        self._deliver(now)

    def _deliver(self, now: datetime) -> None:
        self.app.deliver(now, should_stop=self.stopping.is_set)


def _local(moment: datetime | None, sub: SubscriberSendTime) -> str:
    if moment is None:
        return "never"
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(sub.timezone)).strftime("%Y-%m-%d %H:%M %Z")
