"""``newsletter worker``: a Celery worker that renders and sends the issues it is handed.

Each pool process keeps, for its lifetime, a :class:`WorkerContext`: the application object
built from the worker's own settings and the delivery settings the scheduler published, one
SMTP session (reused from task to task), and its locks on PostgreSQL. The context is made in
the process that runs the task (after the pool forked), never inherited: a database
connection or an SMTP session must not be shared across a fork.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from newsletter.app import Newsletter
from newsletter.config import Settings, masked_broker_url, slowest_smtp_send
from newsletter.deliver import Mailer
from newsletter.errors import ConfigError
from newsletter.store import Store
from newsletter.store.lock import WorkerLocks
from newsletter.workers.broker import TASK_NAME, celery_app
from newsletter.workers.deliver import TaskOutcome, TaskResult, deliver_issue
from newsletter.workers.published import apply_published

log = logging.getLogger(__name__)

#: After a task found the mail server unavailable, this process hands the next tasks' issues
#: back (due again in 5 minutes) without connecting for this long: during an outage a queue
#: of tasks would otherwise each wait for a connect timeout (30 s by default).
MAILER_DOWN_PAUSE = timedelta(seconds=30)


class WorkerContext:
    """What one worker process keeps between tasks (see the module docstring)."""

    def __init__(self, own: Settings) -> None:
        self.own = own
        self._app: Newsletter | None = None
        self._mailer: Mailer | None = None
        self._published: str | None = None
        self._store: Store | None = None  # the published settings and the locks
        self._locks: WorkerLocks | None = None
        # The mail server was found unavailable: until when tasks hand their issue back
        # without connecting, and why.
        self._mailer_down = ""
        self._mailer_down_until = datetime.min.replace(tzinfo=UTC)

    def _current(self) -> tuple[Newsletter, WorkerLocks]:
        """The application for the settings published now (rebuilt when they changed)."""
        if self._store is None:
            store = Store(self.own.database_url)
            try:
                store.check_revision()  # the scheduler migrates, never a worker
            except BaseException:
                store.close()
                raise
            self._store = store
        if self._locks is None:
            self._locks = WorkerLocks(self._store.engine)
            self._locks.start()
        published = self._store.delivery_settings()
        if published is None:
            raise ConfigError(
                "no delivery settings published in the database yet: start the scheduler "
                "(`newsletter run` or `newsletter run --once` with queue.broker_url set) first"
            )
        if published.settings != self._published or self._app is None:
            self._close_app()
            settings = apply_published(self.own, published.settings)
            limit = self.own.queue.task_time_limit_seconds
            if settings.mailer == "smtp" and limit < slowest_smtp_send(settings.smtp):
                log.warning(
                    "queue.task_time_limit_seconds of this worker (%d) is shorter than the "
                    "scheduler's SMTP timeouts allow one send (%g s): a slow send would be "
                    "killed and retried; raise it",
                    limit,
                    slowest_smtp_send(settings.smtp),
                )
            if settings.mailer == "smtp" and settings.smtp.rate_per_second > 0:
                log.warning(
                    "smtp.rate_per_second (%g) applies to each worker process: the deployment "
                    "sends up to that many times the number of worker processes; set it to the "
                    "provider's limit divided by the processes of all workers",
                    settings.smtp.rate_per_second,
                )
            self._mailer = _mailer(settings)
            self._app = Newsletter(settings, mailer=self._mailer, migrate=False)
            self._published = published.settings
            log.info("delivery settings of %s loaded", published.updated_at.isoformat())
        return self._app, self._locks

    def deliver(self, issue_id: int) -> TaskOutcome:
        app, locks = self._current()
        now = app.clock()
        down = self._mailer_down if now < self._mailer_down_until else None
        outcome = deliver_issue(
            app.store,
            app.renderer,
            app.mailer,
            locks,
            issue_id=issue_id,
            site=app.site,
            now=now,
            mailer_unavailable=down,
        )
        if outcome.result is TaskResult.HANDED_BACK and down is None:
            self._mailer_down = outcome.detail
            self._mailer_down_until = now + MAILER_DOWN_PAUSE
            log.error(
                "%s; issues handed back without trying for %s, then retried",
                outcome.detail,
                MAILER_DOWN_PAUSE,
            )
        return outcome

    def _close_app(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._mailer is not None:
            self._mailer.close()
            self._mailer = None

    def close(self) -> None:
        if self._locks is not None:
            self._locks.close()
            self._locks = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self._close_app()
        self._published = None


def _mailer(settings: Settings) -> Mailer:
    """One SMTP session per worker process (its parallelism is the number of processes, so
    ``smtp.connections`` does not apply), or the outbox folder."""
    if settings.mailer == "smtp":
        from newsletter.smtp import SmtpMailer

        return SmtpMailer.from_settings(settings)
    from newsletter.deliver import OutboxMailer

    return OutboxMailer(settings.outbox_dir)


_own: Settings | None = None
_context: WorkerContext | None = None
_context_pid = 0


def _process_context() -> WorkerContext:
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        assert _own is not None, "the worker's settings are set by make_worker_app"
        _context, _context_pid = WorkerContext(_own), os.getpid()
    return _context


def run_task(issue_id: object) -> str:
    """The task: render and send issue ``issue_id``. A message that does not carry one
    positive integer is logged and dropped (acknowledged): it can never succeed."""
    if isinstance(issue_id, bool) or not isinstance(issue_id, int) or issue_id <= 0:
        log.error("task %s: %.100r is not an issue id; dropped", TASK_NAME, issue_id)
        return "rejected"
    outcome = _process_context().deliver(issue_id)
    level = logging.DEBUG if outcome.result is TaskResult.SENT else logging.INFO
    log.log(level, "issue %d: %s %s", issue_id, outcome.result.value, outcome.detail)
    return outcome.result.value


def _close_context(**_: Any) -> None:
    global _context
    if _context is not None and _context_pid == os.getpid():
        _context.close()
        _context = None


def make_worker_app(settings: Settings) -> Any:
    """The Celery app of ``newsletter worker``, with the task registered."""
    global _own
    from celery.signals import worker_process_shutdown

    _own = settings
    app = celery_app(settings.queue)
    app.task(name=TASK_NAME, ignore_result=True)(run_task)
    worker_process_shutdown.connect(_close_context, weak=False)
    return app


def run_worker(
    settings: Settings, *, concurrency: int | None, queues: str | None, loglevel: str
) -> None:
    """Start a Celery worker (prefork pool) and block until it is stopped (SIGTERM: warm
    shutdown, the tasks running finish first)."""
    app = make_worker_app(settings)
    if logging.getLevelName(loglevel) > logging.DEBUG:
        # Celery's "received" and "succeeded" lines, two per task: the pipeline's own line
        # per sent issue says what happened (they come back with -vv).
        for chatty in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    queue_names = queues or settings.queue.name
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={queue_names}",
        f"--hostname=newsletter-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    log.info(
        "worker for queue(s) %s on %s, database %s, time limit %s",
        queue_names,
        masked_broker_url(settings.queue.broker_url),
        _display_db(settings.database_url),
        timedelta(seconds=settings.queue.task_time_limit_seconds),
    )
    app.worker_main(argv)


def _display_db(url: str) -> str:
    from newsletter.store.engine import display_url

    return display_url(url)
