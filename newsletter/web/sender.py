"""The web's background sender: confirmation emails leave on one worker thread, never on a
request thread.

Why: sending is slow when the SMTP server is (up to ``smtp.timeout_seconds`` per reply), and
:meth:`newsletter.app.Newsletter.send_message` serializes all sends behind one lock. Sending
from the request handler let a slow server hold every thread of the pool, so that even
``GET /`` waited. Now ``POST /subscribe`` records the request, composes the email and puts it
on a bounded in-memory queue; the page answers at once.

Design: :class:`ConfirmationSender` is plumbing only. What to do with a job is the
application's (:mod:`newsletter.accounts`): ``send`` is
:meth:`~newsletter.accounts.AccountUseCases.send_confirmation` (send, or withdraw the token
if the send fails), ``withdraw`` is
:meth:`~newsletter.accounts.AccountUseCases.withdraw_confirmation`. :meth:`submit` is the
``deliver`` argument of :meth:`~newsletter.accounts.AccountUseCases.subscribe`, which
withdraws the token itself when the queue is full. One worker is enough (the sends are
serialized anyway) and keeps one SMTP session busy.

Lifetime: the worker starts on the first job and stops at :meth:`close` (the app's shutdown):
close refuses new jobs, waits a bounded time for the queue to drain, withdraws (and logs) what
is still queued, and lets the worker finish the send it is in. The queue lives in memory, so
a crash loses queued emails; their tokens then stay on file and the address can ask again
after :data:`newsletter.accounts.RESEND_AFTER`. Logs name subscriber ids, never tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from newsletter.accounts import ConfirmationJob

log = logging.getLogger(__name__)

#: Confirmation emails waiting at most; a subscribe beyond this gets its token withdrawn.
QUEUE_SIZE = 1000
#: How long shutdown waits for queued emails to go out.
DRAIN_SECONDS = 10.0


class ConfirmationSender:
    """A bounded queue of :class:`~newsletter.accounts.ConfirmationJob` and one daemon thread
    that hands each to ``send``; thread-safe."""

    def __init__(
        self,
        send: Callable[[ConfirmationJob], object],
        withdraw: Callable[[ConfirmationJob, str], None],
        *,
        maxsize: int = QUEUE_SIZE,
    ) -> None:
        self._send = send
        self._withdraw = withdraw
        self._queue: queue.Queue[ConfirmationJob | None] = queue.Queue(maxsize)
        self._lock = threading.Lock()  # guards _thread and _closed against submit
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: ConfirmationJob) -> bool:
        """Queue a job without waiting; False if the queue is full or the sender closed."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="confirmation-sender", daemon=True
                )
                self._thread.start()
            return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every job submitted so far is done (sent or withdrawn); False if that
        did not happen within ``timeout`` seconds. For shutdown and tests."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Refuse new jobs, let the queued ones go out for up to ``timeout`` seconds, withdraw
        the rest, and stop the worker. Safe to call again (it waits for the worker again)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            first, self._closed = not self._closed, True
            thread = self._thread
        if thread is None:
            return
        if first:
            if not self.wait_idle(timeout):
                log.warning(
                    "confirmation sender: %d email(s) still queued after %g s at shutdown",
                    self._queue.qsize(),
                    timeout,
                )
            self._drop_queued()
            self._queue.put_nowait(None)  # empty now, and nothing else is let in: stop
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning(
                "confirmation sender: a send is still in progress at shutdown; the mailer's "
                "timeout ends it"
            )

    def _drop_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if job is not None:
                    self._withdraw(job, "not sent before shutdown")
            except Exception:
                log.exception(
                    "confirmation sender: could not withdraw the confirmation of subscriber %s",
                    job.subscriber_id if job is not None else "?",
                )
            finally:
                self._queue.task_done()

    def _withdraw_after(self, job: ConfirmationJob, exc: Exception) -> None:
        """After an unforeseen error the email most likely did not go out: withdraw its token
        so that the visitor can ask again at once rather than after ``RESEND_AFTER``. Best
        effort: if the error was the database's, withdrawing may fail too (logged)."""
        try:
            self._withdraw(job, f"send failed unexpectedly: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception(
                "confirmation sender: could not withdraw the confirmation of subscriber %s",
                job.subscriber_id,
            )

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._send(job)
            except Exception as exc:
                # ``send`` handles delivery errors itself; anything else (a database error
                # while withdrawing, a bug) must not stop the emails queued behind this one.
                log.exception(
                    "confirmation sender: the confirmation of subscriber %s failed",
                    job.subscriber_id if job is not None else "?",
                )
                if job is not None:
                    self._withdraw_after(job, exc)
            finally:
                self._queue.task_done()
