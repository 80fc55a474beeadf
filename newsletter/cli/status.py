"""What the operator checks: status."""

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
from newsletter.domain import IssueState

# ---------------------------------------------------------------------- status


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Papers, quarantined files, pending and failed issues, last issue per subscriber.

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
            {"email": subs[i.subscriber_id].email, "slot": i.slot_date, "state": i.state.value}
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
    for f in data["failed"]:
        click.echo(
            f"  failed: {f['email']} {f['slot']} after {f['attempts']} attempt(s): {f['reason']}"
        )
    click.echo("subscribers:")
    for s in data["subscribers"]:
        click.echo(f"  {s['email']:<32} {s['status']:<13} last issue: {s['last_sent'] or '-'}")
