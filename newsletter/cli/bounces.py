"""Bounces and complaints from the command line: ``newsletter bounces SOURCE``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from newsletter.bounces import BouncePolicy, Outcome, process_messages, read_mailbox
from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx


@cli.command(context_settings=CONTEXT)
@click.argument("source", metavar="PATH|imaps://USER@HOST/MAILBOX")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="IMAP only: trust the server certificate signed by this CA (PEM) instead of the system's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bounces(ctx: Context, source: str, ca_file: Path | None, as_json: bool) -> None:
    """Read bounces and complaints from a mailbox and suppress who must get no more issues.

    SOURCE is a maildir folder, an mbox file, or an IMAP mailbox over TLS
    (imaps://user@host/INBOX; the password from NEWSLETTER_IMAP_PASSWORD). Delivery status
    notifications (RFC 3464) and feedback-loop complaints (RFC 5965) are matched to
    subscribers by the VERP return path (mail.bounce_address), the returned issue's
    Message-ID or the failed recipient. A hard bounce or a complaint suppresses at once;
    bounces.soft_limit soft bounces within bounces.soft_days days do too. A report read
    again counts once; the mailbox is not changed. `newsletter subscriber add EMAIL`
    makes a suppressed subscriber active again.

    \b
    Example:
      newsletter bounces /var/mail/bounces/Maildir
      NEWSLETTER_IMAP_PASSWORD=... newsletter bounces imaps://bounces@mail.example.org/INBOX --json
    """
    with ctx.app() as app:
        policy = BouncePolicy(app.settings.bounces.soft_limit, app.settings.bounces.soft_days)
        run = process_messages(
            app.store,
            read_mailbox(source, ca_file=ca_file),
            site=app.site,
            policy=policy,
            now=app.clock(),
        )
    if as_json:
        emit({"messages": [asdict(m) for m in run.messages], "summary": run.summary})
        return
    for m in run.messages:
        who = f" {m.email}" if m.email else ""
        by = f" (by {m.matched_by.value})" if m.matched_by else ""
        click.echo(f"{m.key}: {m.outcome.value}{who}{by}: {m.note}")
    s = run.summary
    click.echo(
        f"read {s['read']} message(s): {s[Outcome.SUPPRESSED]} suppressed, "
        f"{s[Outcome.RECORDED]} recorded, {s[Outcome.DUPLICATE]} processed before, "
        f"{s[Outcome.UNMATCHED]} unmatched, {s[Outcome.IGNORED]} not bounces"
    )
