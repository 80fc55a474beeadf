"""``newsletter worker``: a Celery worker for delivery by workers (README "Workers")."""

from __future__ import annotations

import logging

import click

from newsletter.cli._base import CONTEXT, Context, cli, pass_ctx
from newsletter.errors import ConfigError


@cli.command(context_settings=CONTEXT)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes, each sending one issue at a time (default: one per core).",
)
@click.option(
    "--queues",
    "-Q",
    metavar="NAMES",
    default=None,
    help="Comma-separated queues to consume (default: queue.name, 'newsletter').",
)
@pass_ctx
def worker(ctx: Context, concurrency: int | None, queues: str | None) -> None:
    """Render and send the issues the scheduler hands over, until stopped.

    Needs queue.broker_url (NEWSLETTER_QUEUE_BROKER_URL: redis://… or amqp://…), a
    PostgreSQL database_url, and the `celery` extra (pip install 'newsletter[celery]').
    Nothing else: site, mail and SMTP settings are those the scheduler published in the
    database; only the SMTP password comes from this machine (NEWSLETTER_SMTP_PASSWORD).
    Start as many as the mail server allows connections, on any machine. SIGTERM finishes
    the issues being sent, then exits; a worker killed mid-send costs at most the messages
    in flight, re-sent with the same Message-ID.

    \b
    Example:
      NEWSLETTER_DATABASE_URL=postgresql://newsletter@db/newsletter \\
      NEWSLETTER_QUEUE_BROKER_URL=redis://127.0.0.1:6379/0 newsletter worker --concurrency 4
    """
    settings = ctx.settings
    if settings.queue.broker_url is None:
        raise ConfigError(
            "newsletter worker needs queue.broker_url (or NEWSLETTER_QUEUE_BROKER_URL): "
            "redis://host:6379/0 or amqp://user:password@host:5672//"
        )
    from newsletter.workers.broker import celery_app

    celery_app(settings.queue)  # the `celery` extra is there: a clear error now if not
    from newsletter.workers.process import run_worker

    level = settings.log_level if ctx.verbose == 0 else ("INFO" if ctx.verbose == 1 else "DEBUG")
    logging.getLogger().setLevel(level)
    run_worker(settings, concurrency=concurrency, queues=queues, loglevel=level)
