"""One issue, rendered and sent by a worker: the body of the Celery task, without Celery.

The task carries the issue id only; everything else is read from the database, which is
what makes a repeated, late or lost task harmless:

1. The worker takes the issue's lock (:class:`newsletter.store.lock.WorkerLocks`). Held by
   another worker: that one is sending it; nothing to do.
2. It reads the issue. Sent, failed, unknown, deleted, or not due yet: nothing to do. Its
   subscriber left: failed, with why. Found ``sending`` (under a lock nobody held: the worker
   that claimed it died, or went over the time limit) with :data:`MAX_ATTEMPTS` attempts
   counted: failed, with that reason (a poison issue ends here, not in endless redeliveries).
3. It claims the issue (``sending``, an attempt counted) *before* rendering, so a crash in
   rendering counts too, then renders and sends it, and records the outcome with the same
   rules as the in-process pass (:class:`newsletter.pipeline.BatchSender`).

A message in flight when a worker dies is the only one that can arrive twice, with the same
Message-ID (derived from the issue).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from newsletter.deliver import Mailer
from newsletter.domain import IssueState, SiteInfo, SubscriberStatus
from newsletter.pipeline import (
    MAX_ATTEMPTS,
    RETRY_BASE,
    BatchSender,
    Rendered,
    issue_content,
    not_active_outcome,
)
from newsletter.store import PENDING_STATES, IssueOutcome, Store
from newsletter.store.lock import WorkerLocks

if TYPE_CHECKING:
    from newsletter.render import EmailRenderer

log = logging.getLogger(__name__)

#: How long a task waits for an issue's lock before leaving it to its holder: the server
#: notices a dead worker's connection within moments, and a task redelivered at once (the
#: worker process was killed) must not find the dead one's lock still held.
LOCK_WAIT_SECONDS = 3.0


class TaskResult(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"  # for good, or retried after a backoff (see ``detail``)
    UNKNOWN = "unknown"
    HANDED_BACK = "handed back"  # the mail server is unavailable: due again later
    DONE_ALREADY = "done already"
    NOT_DUE = "not due"
    BUSY = "busy"  # another worker holds the issue
    GONE = "gone"


@dataclass(frozen=True)
class TaskOutcome:
    issue_id: int
    result: TaskResult
    detail: str = ""


def deliver_issue(
    store: Store,
    renderer: EmailRenderer,
    mailer: Mailer,
    locks: WorkerLocks,
    *,
    issue_id: int,
    site: SiteInfo,
    now: datetime,
    mailer_unavailable: str | None = None,
) -> TaskOutcome:
    """Render and send issue ``issue_id`` if it is still due and nobody else is sending it
    (the steps are in the module docstring).

    ``mailer_unavailable``: why this process found the mail server unavailable moments ago;
    the issue is then handed back at once, as a failed connection would, without trying
    again (a queue of tasks would otherwise each wait for a connect timeout)."""
    if not locks.try_issue(issue_id, wait_seconds=LOCK_WAIT_SECONDS):
        return TaskOutcome(issue_id, TaskResult.BUSY, "another worker is sending it")
    try:
        return _deliver_locked(
            store,
            renderer,
            mailer,
            issue_id=issue_id,
            site=site,
            now=now,
            mailer_unavailable=mailer_unavailable,
        )
    finally:
        locks.release_issue(issue_id)


def _deliver_locked(
    store: Store,
    renderer: EmailRenderer,
    mailer: Mailer,
    *,
    issue_id: int,
    site: SiteInfo,
    now: datetime,
    mailer_unavailable: str | None,
) -> TaskOutcome:
    issue = store.issue_by_id(issue_id)
    if issue is None:
        return TaskOutcome(issue_id, TaskResult.GONE, "no such issue (deleted by retention?)")
    if issue.state not in PENDING_STATES:
        return TaskOutcome(issue_id, TaskResult.DONE_ALREADY, issue.state.value)
    if issue.next_retry_at is not None and issue.next_retry_at > now:
        return TaskOutcome(issue_id, TaskResult.NOT_DUE, f"due at {issue.next_retry_at}")
    sub = store.subscribers_by_id({issue.subscriber_id})[issue.subscriber_id]
    if sub.status is not SubscriberStatus.ACTIVE:
        store.record_outcomes([not_active_outcome(issue, sub)], sent_at=now)
        return TaskOutcome(issue_id, TaskResult.FAILED, f"{sub.email} is {sub.status.value}")
    if issue.state is IssueState.SENDING and issue.attempts >= MAX_ATTEMPTS:
        reason = (
            f"sending was interrupted {issue.attempts} times (the worker died or reached "
            "queue.task_time_limit_seconds); not sent again unless retried (`newsletter retry`)"
        )
        log.error("issue %d for %s failed: %s", issue.id, sub.email, reason)
        outcome = IssueOutcome(issue, IssueState.FAILED, issue.attempts, reason)
        store.record_outcomes([outcome], sent_at=now)
        return TaskOutcome(issue_id, TaskResult.FAILED, reason)
    if mailer_unavailable is not None:  # as BatchSender hands an issue back for an outage
        reply = f"not sent yet: {mailer_unavailable}"
        outcome = IssueOutcome(issue, IssueState.RENDERED, issue.attempts, reply, now + RETRY_BASE)
        store.record_outcomes([outcome], sent_at=now)
        return TaskOutcome(issue_id, TaskResult.HANDED_BACK, mailer_unavailable)
    if issue.id not in store.claim_issues([issue]):
        return TaskOutcome(issue_id, TaskResult.BUSY, "claimed by another sender")
    if issue.state is IssueState.SENDING:
        log.warning(
            "issue %d for %s was left sending by a worker that is gone; sending it again "
            "(same Message-ID)",
            issue.id,
            sub.email,
        )
    sender = BatchSender(
        store, mailer, site, now, 1, None, lambda: False, hand_back_until=now + RETRY_BASE
    )
    try:
        item = Rendered(issue, sub, renderer.render(issue_content(store, issue, sub)))
    except Exception as exc:  # noqa: BLE001 - a rendering failure counts for its issue only
        sender.note_render_failure(Rendered(issue, sub, None, exc))
        return _result(issue_id, sender)
    sender.send_claimed([item])
    return _result(issue_id, sender)


def _result(issue_id: int, sender: BatchSender) -> TaskOutcome:
    done = sender.result
    if done.delivered:
        return TaskOutcome(issue_id, TaskResult.SENT, str(done.delivered[0]["where"]))
    if done.stopped:
        return TaskOutcome(issue_id, TaskResult.HANDED_BACK, done.stopped)
    if done.failed:
        state, reason = done.failed[0]["state"], str(done.failed[0]["reason"])
        if state == IssueState.UNKNOWN.value:
            return TaskOutcome(issue_id, TaskResult.UNKNOWN, reason)
        return TaskOutcome(issue_id, TaskResult.FAILED, reason)
    return TaskOutcome(issue_id, TaskResult.FAILED, "will be retried after a backoff")
