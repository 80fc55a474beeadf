"""The daemon: ``newsletter run`` without ``--once``.

One APScheduler 3.11 BlockingScheduler per deployment, with jobs built from our own tables (no
pickled job store: a renamed function would silently delete pickled jobs):

* ``inbox``: every ``scan_interval_seconds``, ingest the files that are stable since the last
  scan, then deliver issues whose retry time has come;
* ``subscribers``: every ``subscriber_refresh_seconds`` (and on SIGHUP), sync the subscribers
  file, delete web sign-ups unconfirmed for ``web.unconfirmed_days``, and add, move or remove
  send jobs to match the database;
* ``send-<id>``: at each subscriber's local send time (:mod:`newsletter.schedule`), plan the
  slot's issue and deliver.

Jobs run one at a time (a single worker thread): a send never races an ingest on the same
database. At start-up, a slot missed while the daemon was down is sent once if it is within
``catch_up_grace_hours``; older ones are logged and skipped. SIGTERM and SIGINT stop the
scheduler; the job in progress finishes the message in flight, records it, and stops before
the next one.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.app import Clock, Newsletter, utc_now
from newsletter.config import Settings
from newsletter.deliver import Mailer
from newsletter.domain import IngestStatus, Subscriber
from newsletter.errors import ConfigError
from newsletter.ingest import InboxScanner, inbox_problem
from newsletter.schedule import SendSchedule, SendTimeTrigger, last_send_time, slot_of
from newsletter.store.engine import display_url

log = logging.getLogger(__name__)

#: Logged when start-up work (subscribers, inbox, catch-up) is done and the scheduler starts:
#: tests wait for it instead of sleeping.
READY = "daemon ready"


class Daemon:
    """The scheduler around one :class:`Newsletter`.

    ``with Daemon(settings, mailer=..., clock=...) as daemon:`` opens the application without
    starting the scheduler, so each job (:meth:`refresh_subscribers`, :meth:`scan_inbox`,
    :meth:`catch_up`, :meth:`send`) can be driven in-process with a fake clock; :meth:`run`
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
        self._schedules: dict[int, SendSchedule] = {}
        self._signatures: dict[int, tuple[object, ...]] = {}
        self._app: Newsletter | None = None
        self._inbox_problem: str | None = None  # logged once when it appears, once when fixed

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
            lock = self.app.daemon_lock()
            watcher = threading.Thread(target=self._watch_signals, name="signals", daemon=True)
            try:
                lock.acquire()
                self._install_signal_handlers()
                watcher.start()
                log.info(
                    "daemon started (pid lock %s): database %s, inbox %s",
                    lock.path or "advisory",
                    display_url(self.settings.database_url),
                    self.settings.inbox.resolve(),
                )
                self.refresh_subscribers()
                self.scan_inbox(two_scans=True)  # papers first, so a catch-up issue has them
                self.catch_up()
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
                log.info(READY)
                if not self.stopping.is_set():
                    self.scheduler.start()  # blocks until the watcher shuts it down
                pool = getattr(self.executor, "_pool", None)
                if pool is not None:
                    pool.shutdown(wait=True)  # the job in progress finishes its message
            finally:
                self._finished.set()
                lock.release()
                log.info("daemon stopped")

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
        """Sync the subscribers file, delete web sign-ups never confirmed in time, then add,
        move or remove send jobs to match."""
        now = self.clock()
        self.app.sync_subscribers(now)
        self.app.delete_unconfirmed(now)  # one DELETE; pending subscribers have no send job
        active = self.app.active_subscribers()
        for sub_id in set(self._signatures) - set(active):
            self.scheduler.remove_job(f"send-{sub_id}")
            del self._signatures[sub_id]
            del self._schedules[sub_id]
            log.info("removed send job of subscriber %d (no longer active)", sub_id)
        for sub in active.values():
            signature = (sub.timezone, sub.send_at, sub.weekdays)
            if self._signatures.get(sub.id) == signature:
                continue
            if sub.id in self._signatures:  # moved: a scheduler not started yet keeps duplicates
                self.scheduler.remove_job(f"send-{sub.id}")
            schedule = SendSchedule.of(sub)
            trigger: Any = (
                IntervalTrigger(seconds=self.settings.debug_send_every_seconds)
                if self.settings.debug_send_every_seconds
                else SendTimeTrigger(schedule)
            )
            job = self.scheduler.add_job(
                self.send,
                trigger,
                args=[sub.id],
                id=f"send-{sub.id}",
                name=f"send to {sub.email}",
                replace_existing=True,
            )
            self._signatures[sub.id] = signature
            self._schedules[sub.id] = schedule
            next_run = getattr(job, "next_run_time", None) or trigger.get_next_fire_time(
                None, self.clock()
            )
            log.info("next send to %s at %s", sub.email, _local(next_run, sub))
        log.debug("subscriber refresh done: %d send job(s)", len(self._signatures))

    def send(self, subscriber_id: int) -> None:
        """A send job: plan this subscriber's slot (reading that subscriber only), deliver.

        The slot is the one of the send time the job was scheduled for, the latest at or
        before now, not today's date: a job that fires late (after local midnight, after the
        machine was suspended) still serves its own day, within the catch-up grace.
        """
        now = self.clock()
        schedule = self._schedules.get(subscriber_id)
        if schedule is None:
            return  # removed by a refresh since the job was queued
        if self.settings.debug_send_every_seconds:
            slot = slot_of(schedule, now)
        else:
            due = last_send_time(schedule, now)
            grace = timedelta(hours=self.settings.catch_up_grace_hours)
            if due is None or now - due > grace:
                log.warning("send job for subscriber %d fired with no send time due", subscriber_id)
                return
            slot = slot_of(schedule, due)
        self.app.plan_slots({subscriber_id: slot}, now)
        self._deliver(now)

    def catch_up(self) -> None:
        """Send, once, each slot missed while the daemon was down, if within the grace period."""
        if self.settings.debug_send_every_seconds:
            return
        now = self.clock()
        missed = self.app.missed_slots(now)
        for m in missed:
            if m.within_grace:
                log.info(
                    "catching up %s's slot %s (due %s)",
                    m.subscriber.email,
                    m.slot,
                    _local(m.due, m.subscriber),
                )
            else:
                log.warning(
                    "skipped %s's missed slot %s: due %s, older than the %g h grace",
                    m.subscriber.email,
                    m.slot,
                    _local(m.due, m.subscriber),
                    self.settings.catch_up_grace_hours,
                )
        self.app.plan_slots({m.subscriber.id: m.slot for m in missed if m.within_grace}, now)
        self._deliver(now)

    def _deliver(self, now: datetime) -> None:
        self.app.deliver(now, should_stop=self.stopping.is_set)


def _local(moment: datetime | None, sub: Subscriber) -> str:
    if moment is None:
        return "never"
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(sub.timezone)).strftime("%Y-%m-%d %H:%M %Z")
