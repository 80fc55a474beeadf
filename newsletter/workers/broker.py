"""The Celery side of delivery by workers: the app, its settings, publishing task ids.

The only module that imports Celery (the ``celery`` extra). Celery is used as it is, set up
for tasks that must not run twice unguarded and must never be lost:

* tasks carry an issue id only (JSON; pickle is never accepted) and keep no result;
* ``acks_late``: a task is acknowledged after it ran, so a worker that dies mid-task leaves
  it to be delivered again; ``task_reject_on_worker_lost``: a pool process killed mid-task
  puts its task back at once. What makes redelivery harmless is the database, not Celery:
  the issue's state and lock (:mod:`newsletter.workers.deliver`);
* a hard time limit per task (``queue.task_time_limit_seconds``), and on Redis a visibility
  timeout of at least twice that (checked with the settings), with prefetching off: Redis
  hands an unacknowledged task to another worker after the visibility timeout, which is how a
  slow mailing got re-sent every hour elsewhere; here such a copy finds the issue locked or
  sent, and the timeout is longer than any task can run anyway;
* a failing task is not retried by Celery: the issue's attempts, backoff and final failure
  are the pipeline's, and a task that was lost is re-enqueued by the scheduler from the
  database (:func:`newsletter.workers.enqueue.enqueue_due`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from newsletter.config import QueueSettings, masked_broker_url
from newsletter.errors import NewsletterError

log = logging.getLogger(__name__)

#: The one task of the project.
TASK_NAME = "newsletter.deliver_issue"


class BrokerUnavailable(NewsletterError):
    """The broker did not take the tasks (down, unreachable, refused our login)."""


class CeleryMissing(NewsletterError):
    """queue.broker_url is set but the ``celery`` extra is not installed."""


def celery_app(queue: QueueSettings) -> Any:
    """A Celery app for ``queue.broker_url``, configured as the module docstring says."""
    try:
        from celery import Celery
    except ImportError:
        raise CeleryMissing(
            "queue.broker_url is set but Celery is not installed: "
            "pip install 'newsletter[celery]' (or unset queue.broker_url to deliver in-process)"
        ) from None
    assert queue.broker_url is not None
    redis = queue.broker_url.startswith(("redis://", "rediss://"))
    app = Celery("newsletter", broker=queue.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        task_time_limit=queue.task_time_limit_seconds,
        task_default_queue=queue.name,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=redis,  # Redis only (Celery warns on other brokers)
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=10,
        broker_transport_options=(
            {"visibility_timeout": queue.visibility_timeout_seconds}
            if redis
            # RabbitMQ: publisher confirms, so publish() returns once the broker has each task
            # (basic.publish alone is fire-and-forget: a failure after it would lose them).
            else {"confirm_publish": True}
        ),
        broker_channel_error_retry=True,
    )
    return app


class Broker:
    """The scheduler's side: publish task ids and read the queue's length.

    ``with Broker(settings.queue) as broker: broker.publish(ids)``. Every error of the broker
    becomes :class:`BrokerUnavailable`, with the URL shown without its password.
    """

    #: Publishing retries a broken connection this often before giving up for the pass.
    RETRY_POLICY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1.0}

    def __init__(self, queue: QueueSettings) -> None:
        self.queue = queue
        self.app = celery_app(queue)
        self._url = masked_broker_url(queue.broker_url)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        # publish() and queue_length() use connections of their own, closed after each use:
        # Celery's pools (app.pool, app.amqp.producer_pool) are per process and shared by
        # every app on the same URL, so they are neither used nor closed here.
        self.app.close()

    def publish(self, issue_ids: Sequence[int]) -> None:
        """One task per issue id, on one connection of its own; raises
        :class:`BrokerUnavailable`."""
        try:
            with self.app.connection_for_write() as conn, conn.Producer() as producer:
                for issue_id in issue_ids:
                    self.app.send_task(
                        TASK_NAME,
                        args=(issue_id,),
                        queue=self.queue.name,
                        producer=producer,
                        retry=True,
                        retry_policy=self.RETRY_POLICY,
                    )
        except Exception as exc:  # noqa: BLE001 - kombu, amqp, redis and socket errors alike
            raise BrokerUnavailable(
                f"broker {self._url} did not take the tasks: {type(exc).__name__}: {exc}"
            ) from None

    def queue_length(self) -> int:
        """Tasks waiting in the queue (not those a worker holds); raises BrokerUnavailable."""
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.default_channel
                try:
                    return int(channel.queue_declare(queue=self.queue.name, passive=True)[1])
                except Exception as exc:  # noqa: BLE001 - RabbitMQ: no such queue yet
                    if conn.connection_errors and isinstance(exc, conn.connection_errors):
                        raise
                    return 0
        except Exception as exc:  # noqa: BLE001
            raise BrokerUnavailable(
                f"broker {self._url} did not answer: {type(exc).__name__}: {exc}"
            ) from None
