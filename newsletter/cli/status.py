"""What the operator checks and does about it: status, retry."""

from __future__ import annotations

from typing import Any

import click

from newsletter.cli._base import (
    CONTEXT,
    Context,
    cli,
    emit,
    pass_ctx,
)
from newsletter.domain import IssueState, Subscriber, SubscriberStatus
from newsletter.errors import NewsletterError

# ---------------------------------------------------------------------- status


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Papers, quarantined files, pending and failed issues, last issue per subscriber.

    Pending issues show their attempts, the last server reply and when they are retried;
    failed ones why they failed (`newsletter retry` puts them back in line).

    \b
    Example:
      newsletter status
    """
    from newsletter.pipeline import open_store

    store = open_store(ctx.settings)
    try:
        subs = {s.id: s for s in store.subscribers()}
        papers = store.count_papers()
        digests = store.list_digests()
        issues = store.issues()
    finally:
        store.close()
    quarantined = [d for d in digests if d.state == "quarantined"]
    pending = [
        i
        for i in issues
        if i.state in (IssueState.PLANNED, IssueState.RENDERED, IssueState.SENDING)
    ]
    failed = [i for i in issues if i.state is IssueState.FAILED]
    last_sent: dict[int, Any] = {}
    for i in issues:
        if i.state is IssueState.SENT:
            last_sent[i.subscriber_id] = i
    data: dict[str, Any] = {
        "papers": papers,
        "files_ingested": len(digests) - len(quarantined),
        "last_ingest": max((d.seen_at for d in digests), default=None),
        "quarantined": [{"path": d.path, "reason": d.reason} for d in quarantined],
        "pending": [
            {
                "email": subs[i.subscriber_id].email,
                "slot": i.slot_date,
                "state": i.state.value,
                "attempts": i.attempts,
                "reason": i.last_reply,
                "next_retry_at": i.next_retry_at,
            }
            for i in pending
        ],
        "failed": [
            {
                "email": subs[i.subscriber_id].email,
                "slot": i.slot_date,
                "attempts": i.attempts,
                "reason": i.last_reply,
            }
            for i in failed
        ],
        "subscribers": [
            {
                "email": s.email,
                "status": s.status.value,
                "last_sent": last_sent[s.id].slot_date if s.id in last_sent else None,
                "last_sent_at": last_sent[s.id].sent_at if s.id in last_sent else None,
                "last_reply": last_sent[s.id].last_reply if s.id in last_sent else None,
                "next_send": _next_send(s),
            }
            for s in subs.values()
        ],
    }
    if as_json:
        emit(data)
        return
    click.echo(
        f"papers stored: {data['papers']}; digest files ingested: "
        f"{data['files_ingested']}; last ingest: {data['last_ingest'] or 'never'}"
    )
    click.echo(f"quarantined files: {len(quarantined)}")
    for d in quarantined:
        click.echo(f"  {d.reason}")
    click.echo(f"pending issues: {len(pending)}; failed issues: {len(failed)}")
    for p in data["pending"]:
        line = f"  pending: {p['email']} {p['slot']} ({p['state']}, {p['attempts']} attempt(s))"
        if p["next_retry_at"]:
            line += f", retry at {p['next_retry_at']}"
        if p["reason"]:
            line += f": {p['reason']}"
        click.echo(line)
    for f in data["failed"]:
        click.echo(
            f"  failed: {f['email']} {f['slot']} after {f['attempts']} attempt(s): {f['reason']}"
        )
    click.echo("subscribers:")
    for s in data["subscribers"]:
        click.echo(
            f"  {s['email']:<32} {s['status']:<13} last issue: {s['last_sent'] or '-'}; "
            f"next send: {s['next_send'] or '-'}"
        )


def _next_send(sub: Subscriber) -> str | None:
    """When the daemon sends this subscriber's next issue, in their own timezone."""
    from datetime import UTC, datetime

    from newsletter.schedule import SendSchedule, next_send_time

    if sub.status is not SubscriberStatus.ACTIVE:
        return None
    moment = next_send_time(SendSchedule.of(sub), datetime.now(UTC), inclusive=True)
    return moment.strftime("%Y-%m-%d %H:%M %Z")


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
    from newsletter.pipeline import open_store

    store = open_store(ctx.settings)
    try:
        if email is not None and store.subscriber(email) is None:
            raise NewsletterError(
                f"retry: no subscriber {email!r}: see `newsletter subscriber list --all`"
            )
        requeued = store.requeue_failed(email)
    finally:
        store.close()
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
