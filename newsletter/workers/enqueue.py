"""The scheduler's delivery pass in queue mode: hand every due issue to the workers once.

The database says what is due and what was handed over (``issues.queued_at``); the broker
only carries ids. A pass:

1. publishes the delivery settings for the workers (:mod:`newsletter.workers.published`);
2. enqueues the due issues no task was sent for, in chunks, noting ``queued_at`` just before
   handing each chunk to the broker, and taking it back if the broker refused the chunk.
   Noted after, a task that a fast worker finished first (handed back for a mail outage,
   due again in 5 minutes) would be marked queued when it no longer is, and wait for step 3;
   a crash between noting and publishing leaves issues marked but not in the broker, which
   step 3 finds;
3. re-enqueues the issues handed over more than ``queue.requeue_after_minutes`` ago that are
   still not done, no worker is sending, and the broker's queue is empty: their task was
   lost (Redis restarted, keeping nothing; a task acknowledged by a worker that then died).

When the broker is unavailable, the pass stops with the reason: nothing is lost, the issues
stay due, and the next pass hands them over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from newsletter.config import Settings
from newsletter.pipeline import Delivery
from newsletter.store import Store
from newsletter.store.engine import chunks
from newsletter.store.lock import issues_being_sent
from newsletter.workers.broker import Broker, BrokerUnavailable
from newsletter.workers.published import published_json

log = logging.getLogger(__name__)

#: Tasks published, then noted as queued, per step.
PUBLISH_CHUNK = 1000


def enqueue_due(
    store: Store,
    settings: Settings,
    broker: Broker,
    now: datetime,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Delivery:
    """One pass (see the module docstring); ``Delivery.queued`` says how many went out. A
    stop request (SIGTERM) is honoured between two chunks: the rest is queued next time."""
    if store.publish_delivery_settings(published_json(settings), now):
        log.info("published the delivery settings for the workers")
    requeue_before = now - timedelta(minutes=settings.queue.requeue_after_minutes)
    todo = store.issues_to_enqueue(now, requeue_before=requeue_before)
    result = Delivery()
    try:
        stale: list[int] = []
        if todo.stale:
            being_sent = issues_being_sent(store.engine)
            stale = [i for i in todo.stale if i not in being_sent]
            waiting = broker.queue_length() if stale else 0
            if waiting:
                log.debug("%d tasks still in the queue: nothing re-enqueued", waiting)
                stale = []
        for part in chunks([*todo.fresh, *stale], PUBLISH_CHUNK):
            if should_stop():
                log.info("stopping: the issues not queued yet are queued by the next pass")
                break
            store.mark_queued(part, now)
            try:
                broker.publish(part)
            except BrokerUnavailable:
                store.unmark_queued(part, now)
                raise
            result.queued += len(part)
        result.requeued = len(stale)
    except BrokerUnavailable as exc:
        result.stopped = f"{exc}; the issues stay due and are queued by the next pass"
        log.error("%s (%d queued in this pass)", result.stopped, result.queued)
        return result
    if result.queued:
        log.info(
            "queued %d issue(s) for the workers%s",
            result.queued,
            f", {result.requeued} of them again (their task was lost)" if result.requeued else "",
        )
    return result
