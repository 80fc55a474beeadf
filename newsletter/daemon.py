"""The daemon: ``newsletter run`` without ``--once``.

One APScheduler 3.11 BlockingScheduler per deployment, with jobs built from our own tables (no
pickled job store: a renamed function would silently delete pickled jobs):

* ``inbox``: every ``scan_interval_seconds``, ingest the files that are stable since the last
  scan, then deliver issues whose retry time has come;
* ``subscribers``: every ``subscriber_refresh_seconds`` (and on SIGHUP), sync the subscribers
  file and add, move or remove send jobs to match the database;
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.config import Settings
from newsletter.deliver import Mailer
from newsletter.domain import Subscriber, SubscriberStatus
from newsletter.ingest import InboxScanner, ingest_paths
from newsletter.pipeline import (
    deliver_pending,
    make_mailer,
    open_store,
    plan_slot,
    sync_subscribers,
    write_all_feeds,
)
from newsletter.schedule import SendSchedule, SendTimeTrigger, last_send_time, slot_of
from newsletter.store import Store
from newsletter.store.lock import DaemonLock

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        mailer: Mailer | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stopping = threading.Event()
        self._hup = threading.Event()
        self._finished = threading.Event()
        self.mailer = mailer or make_mailer(settings)
        self.scanner = InboxScanner(settings.inbox_settle_seconds)
        self.executor = ThreadPoolExecutor(max_workers=1)
        grace = int(settings.catch_up_grace_hours * 3600)
        self.scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": self.executor},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        self._signatures: dict[int, tuple[object, ...]] = {}
        self.store: Store | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Run until SIGTERM/SIGINT. Raises AlreadyRunning if another daemon has the database."""
        self.store = open_store(self.settings)
        lock = DaemonLock(self.store.engine)
        watcher = threading.Thread(target=self._watch_signals, name="signals", daemon=True)
        try:
            lock.acquire()
            self._install_signal_handlers()
            watcher.start()
            log.info("daemon started (pid lock %s)", lock.path or "advisory")
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
            if not self.stopping.is_set():
                self.scheduler.start()  # blocks until the watcher shuts it down
            pool = getattr(self.executor, "_pool", None)
            if pool is not None:
                pool.shutdown(wait=True)  # the job in progress finishes its message
        finally:
            self._finished.set()
            self.mailer.close()
            lock.release()
            self.store.close()
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

    def _store(self) -> Store:
        assert self.store is not None
        return self.store

    def scan_inbox(self, two_scans: bool = False) -> None:
        """Ingest stable files, refresh the feeds if anything came in, send due retries."""
        store, now = self._store(), self.clock()
        reports = ingest_paths(
            store,
            [self.settings.inbox],
            now=now,
            max_bytes=self.settings.max_digest_bytes,
            scanner=self.scanner,
            two_scans=two_scans,
        )
        if any(r.status == "ingested" for r in reports):
            write_all_feeds(store, self.settings)
        self._deliver(now)

    def refresh_subscribers(self) -> None:
        store, now = self._store(), self.clock()
        sync_subscribers(store, self.settings, now)
        active = {s.id: s for s in store.subscribers(SubscriberStatus.ACTIVE)}
        for sub_id in set(self._signatures) - set(active):
            self.scheduler.remove_job(f"send-{sub_id}")
            del self._signatures[sub_id]
            log.info("removed send job of subscriber %d (no longer active)", sub_id)
        for sub in active.values():
            signature = (sub.timezone, sub.send_at, sub.weekdays)
            if self._signatures.get(sub.id) == signature:
                continue
            trigger: Any = (
                IntervalTrigger(seconds=self.settings.debug_send_every_seconds)
                if self.settings.debug_send_every_seconds
                else SendTimeTrigger(SendSchedule.of(sub))
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
            next_run = getattr(job, "next_run_time", None) or trigger.get_next_fire_time(None, now)
            log.info("next send to %s at %s", sub.email, _local(next_run, sub))

    def send(self, subscriber_id: int, scheduled: datetime | None = None) -> None:
        store, now = self._store(), self.clock()
        sub = next((s for s in store.subscribers() if s.id == subscriber_id), None)
        if sub is None or sub.status is not SubscriberStatus.ACTIVE:
            return
        schedule = SendSchedule.of(sub)
        slot = slot_of(schedule, scheduled or now)
        plan_slot(store, self.settings, sub, slot, now)
        self._deliver(now)

    def catch_up(self) -> None:
        """Send, once, each slot missed while the daemon was down, if within the grace period."""
        store, now = self._store(), self.clock()
        grace = timedelta(hours=self.settings.catch_up_grace_hours)
        for sub in store.subscribers(SubscriberStatus.ACTIVE):
            if self.settings.debug_send_every_seconds:
                break
            schedule = SendSchedule.of(sub)
            missed = last_send_time(schedule, now)
            if missed is None or store.issue(sub.id, slot_of(schedule, missed)) is not None:
                continue
            if now - missed <= grace:
                log.info(
                    "catching up %s's slot %s (due %s)",
                    sub.email,
                    slot_of(schedule, missed),
                    _local(missed, sub),
                )
                self.send(sub.id, missed)
            else:
                log.warning(
                    "skipped %s's missed slot %s: due %s, older than the %g h grace",
                    sub.email,
                    slot_of(schedule, missed),
                    _local(missed, sub),
                    self.settings.catch_up_grace_hours,
                )

    def _deliver(self, now: datetime) -> None:
        deliver_pending(
            self._store(), self.settings, self.mailer, now, should_stop=self.stopping.is_set
        )


def _local(moment: datetime | None, sub: Subscriber) -> str:
    if moment is None:
        return "never"
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(sub.timezone)).strftime("%Y-%m-%d %H:%M %Z")
