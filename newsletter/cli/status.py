"""What the operator checks and does about it: status, retry."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import click

from newsletter.cli._base import (
    CONTEXT,
    NOW_OPTION,
    Context,
    cli,
    emit,
    parse_now,
    pass_ctx,
)

# ---------------------------------------------------------------------- status


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@NOW_OPTION
@pass_ctx
def status(ctx: Context, as_json: bool, now_text: str | None) -> None:
    """Daemon, last scan and ingest, today's issues, papers, pending and failed issues.

    First whether a daemon holds the database (pid, host, since), the last inbox scan and
    ingest, and the issues of today's slot (due, sent, pending, failed), in the local time
    of `timezone`; --json gives every time in ISO 8601. Pending issues show their attempts,
    the last server reply and when they are retried; failed ones why they failed
    (`newsletter retry` puts them back in line). Each [[source]]'s last success, last new
    paper, failures in a row and last error. With workers (queue.broker_url), how many
    issues are queued and being sent. Last, the configuration in use: settings file,
    database, inbox, outbox, feeds, mailer and delivery.

    \b
    Example:
      newsletter status
      newsletter status --json | jq .daemon
    """
    with ctx.app() as app:
        report = app.status(parse_now(now_text) if now_text else None)
    if as_json:
        emit(iso_times(asdict(report)))
        return
    d = report.daemon
    if d.running:
        who = f"pid {d.pid} on {d.host}" if d.pid is not None else "holder unknown"
        click.echo(f"daemon: running, {who}, since {_when(d.since)}")
    else:
        click.echo(
            "daemon: not running"
            + (f" (last heartbeat {_when(d.heartbeat)})" if d.heartbeat else "")
        )
    click.echo(f"last scan: {_when(report.last_scan)}; last ingest: {_when(report.last_ingest)}")
    if report.today is not None:
        t = report.today
        click.echo(
            f"today ({t.day}): due {t.due}, sent {t.sent}, pending {t.pending}, failed {t.failed}"
        )
    click.echo(f"papers stored: {report.papers}; digest files ingested: {report.files_ingested}")
    if report.semantic is not None:
        sem = report.semantic
        click.echo(
            f"semantic matching: {sem.model}, {sem.embedded} papers embedded"
            + (f", {sem.missing} not yet (`newsletter semantic embed`)" if sem.missing else "")
        )
    click.echo(f"quarantined files: {len(report.quarantined)}")
    for q in report.quarantined:
        click.echo(f"  {q.reason}")
    click.echo(f"pending issues: {len(report.pending)}; failed issues: {len(report.failed)}")
    w = report.workers
    if report.config.broker or w.queued or w.in_flight:
        click.echo(
            f"  with the workers: {w.queued} queued, {w.in_flight} being sent"
            + (f", {w.interrupted} interrupted (sent again next)" if w.interrupted else "")
        )
    for p in report.pending:
        line = f"  pending: {p.email} {p.slot} ({p.state}, {p.attempts} attempt(s))"
        if p.next_retry_at:
            line += f", retry at {p.next_retry_at}"
        if p.reason:
            line += f": {p.reason}"
        click.echo(line)
    for f in report.failed:
        click.echo(f"  failed: {f.email} {f.slot} after {f.attempts} attempt(s): {f.reason}")
    if report.unknown:
        click.echo(
            f"outcome unknown (sent, no final reply; `newsletter retry` re-sends): "
            f"{len(report.unknown)}"
        )
    for u in report.unknown:
        click.echo(f"  unknown: {u.email} {u.slot}: {u.reason}")
    suppressed = report.suppressed
    click.echo(
        "subscribers:"
        + (f" ({suppressed} suppressed by bounces or complaints)" if suppressed else "")
    )
    for s in report.subscribers:
        click.echo(
            f"  {s.email:<32} {s.status:<13} last issue: {s.last_sent or '-'}; "
            f"next send: {s.next_send or '-'}"
            + (f"; suppressed: {s.suppressed}" if s.suppressed else "")
        )
    if report.sources:
        click.echo("sources:")
    for src in report.sources:
        line = (
            f"  {src.name:<16} last success: {_when(src.last_success)}; last new paper: "
            f"{_when(src.last_new_paper)}"
        )
        if src.consecutive_failures:
            line += f"; {src.consecutive_failures} failure(s) in a row"
        if src.last_error:
            line += f"; last error ({_when(src.last_error_at)}): {src.last_error}"
        click.echo(line)
    config = report.config
    click.echo("configuration:")
    click.echo(
        f"  settings file: {config.file or 'none: built-in defaults and NEWSLETTER_* variables'}"
    )
    click.echo(f"  database: {config.database_url}")
    click.echo(f"  inbox: {config.inbox}")
    click.echo(f"  outbox: {config.outbox_dir}")
    click.echo(f"  feeds: {config.feeds_dir}")
    click.echo(f"  mailer: {config.mailer}")
    delivery = f"workers, broker {config.broker}" if config.broker else "in-process"
    click.echo(f"  delivery: {delivery}")
    for warning in report.warnings:
        click.echo(f"warning: {warning}")


def _when(moment: datetime | None) -> str:
    """A time as the status shows it: local (settings.timezone) to the second, or never."""
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z") if moment is not None else "never"


def iso_times(value: Any) -> Any:
    """``value`` with every datetime as ISO 8601 text (``2026-12-03T08:00:00+01:00``)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: iso_times(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [iso_times(v) for v in value]
    return value


# ---------------------------------------------------------------------- retry


@cli.command(context_settings=CONTEXT)
@click.option("--subscriber", "email", metavar="EMAIL", help="Only this subscriber's issues.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def retry(ctx: Context, email: str | None, as_json: bool) -> None:
    """Put failed issues back in line; the next `newsletter run --once` sends them.

    Each failed issue of an active subscriber goes back to rendered (planned if it was never
    rendered) with its attempts reset; its last server reply is kept until the next try.
    Issues of people who unsubscribed stay failed. Re-sent issues carry the same Message-ID.

    \b
    Example:
      newsletter retry --subscriber ada@example.org
      newsletter retry --json | jq .requeued
    """
    with ctx.app() as app:
        requeued = app.retry(email)
    if as_json:
        emit(
            {
                "requeued": len(requeued),
                "issues": [{"email": e, "slot": slot} for e, slot in requeued],
            }
        )
        return
    for address, slot in requeued:
        click.echo(f"  requeued: {address} {slot}")
    click.echo(
        f"requeued {len(requeued)} failed issue(s)"
        + ("; they go out on the next `newsletter run --once`" if requeued else "")
    )
