"""Subscriber management without editing files."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli._base import (
    CONTEXT,
    Context,
    cli,
    emit,
    parse_now,
    pass_ctx,
)
from newsletter.domain import SubscriberStatus
from newsletter.errors import SubscriberError

# ---------------------------------------------------------------------- subscribers


@cli.group(context_settings=CONTEXT)
def subscriber() -> None:
    """Add, list, remove and import subscribers (stored in the database).

    Subscribers in config/subscribers.toml are synced into the database on every run;
    these commands manage the database directly, without editing files.
    """


@subscriber.command("add", context_settings=CONTEXT)
@click.argument("email")
@click.option("--profile", required=True, help="What they care about (see README: Profiles).")
@click.option("--name", default="", help="Display name used in the greeting and To header.")
@click.option("--timezone", "tz", default=None, help="IANA timezone, e.g. Europe/Berlin.")
@click.option("--send-at", default=None, help="Local send time, HH:MM (default 07:00).")
@click.option("--days", default=None, help="Weekly: days to send, e.g. mon,thu (default daily).")
@click.option("--max-papers", type=int, default=None, help="Most papers per issue.")
@click.option("--min-score", type=float, default=None, help="Least score a paper needs.")
@pass_ctx
def subscriber_add(
    ctx: Context,
    email: str,
    profile: str,
    name: str,
    tz: str | None,
    send_at: str | None,
    days: str | None,
    max_papers: int | None,
    min_score: float | None,
) -> None:
    """Add (or update) an active subscriber.

    \b
    Example:
      newsletter subscriber add ada@example.org --name "Ada" --send-at 07:30 \\
          --profile '"speech recognition"^2, speech, -music' --timezone Europe/London
    """
    from newsletter.pipeline import defaults_from, open_store
    from newsletter.subscribers import make_spec

    entry = {
        k: v
        for k, v in {
            "email": email,
            "profile": profile,
            "name": name,
            "timezone": tz,
            "send_at": send_at,
            "days": days,
            "max_papers": max_papers,
            "min_score": min_score,
        }.items()
        if v not in (None, "")
    }
    spec = make_spec(entry, defaults_from(ctx.settings), where="subscriber add")
    store = open_store(ctx.settings)
    try:
        sub, created = store.upsert_subscriber(spec, source="cli", now=parse_now(None))
        if not created and sub.status is not SubscriberStatus.ACTIVE:
            store.set_subscriber_status(sub.email, SubscriberStatus.ACTIVE, parse_now(None))
    finally:
        store.close()
    click.echo(
        f"{'added' if created else 'updated'} {sub.email} "
        f"(sends {sub.send_at:%H:%M} {sub.timezone})"
    )


@subscriber.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--all", "show_all", is_flag=True, help="Include unsubscribed people.")
@pass_ctx
def subscriber_list(ctx: Context, as_json: bool, show_all: bool) -> None:
    """List subscribers (active and pending; --all adds unsubscribed).

    \b
    Example:
      newsletter subscriber list --json
    """
    from newsletter.pipeline import open_store

    store = open_store(ctx.settings)
    try:
        subs = [
            s
            for s in store.subscribers()
            if show_all or s.status is not SubscriberStatus.UNSUBSCRIBED
        ]
    finally:
        store.close()
    if as_json:
        emit(
            [
                {
                    "email": s.email,
                    "name": s.name,
                    "status": s.status.value,
                    "timezone": s.timezone,
                    "send_at": s.send_at.strftime("%H:%M"),
                    "days": list(s.weekdays),
                    "profile": s.profile,
                    "max_papers": s.max_papers,
                    "min_score": s.min_score,
                }
                for s in subs
            ]
        )
        return
    if not subs:
        click.echo("no subscribers yet: `newsletter subscriber add EMAIL --profile '...'`")
    for s in subs:
        click.echo(
            f"{s.email:<32} {s.status.value:<12} {s.send_at:%H:%M} {s.timezone:<18} {s.profile}"
        )


@subscriber.command("remove", context_settings=CONTEXT)
@click.argument("email")
@pass_ctx
def subscriber_remove(ctx: Context, email: str) -> None:
    """Unsubscribe someone: no further issues; their history is kept.

    \b
    Example:
      newsletter subscriber remove ada@example.org
    """
    from newsletter.pipeline import open_store

    store = open_store(ctx.settings)
    try:
        found = store.set_subscriber_status(
            email.strip(), SubscriberStatus.UNSUBSCRIBED, parse_now(None)
        )
    finally:
        store.close()
    if not found:
        raise SubscriberError(f"no subscriber {email!r}: see `newsletter subscriber list --all`")
    click.echo(f"unsubscribed {email.strip().lower()} (history kept)")


@subscriber.command("import", context_settings=CONTEXT)
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def subscriber_import(ctx: Context, csv_file: Path) -> None:
    """Add or update subscribers from a CSV file; bad rows are reported and skipped.

    Columns (header row required): email, name, profile, timezone, send_at.

    \b
    Example:
      newsletter subscriber import people.csv
    """
    from newsletter.pipeline import defaults_from, open_store
    from newsletter.subscribers import read_csv

    result = read_csv(csv_file, defaults_from(ctx.settings))
    store = open_store(ctx.settings)
    added = updated = 0
    try:
        for spec in result.specs:
            _sub, created = store.upsert_subscriber(spec, source="csv", now=parse_now(None))
            added += created
            updated += not created
    finally:
        store.close()
    for error in result.errors:
        click.echo(f"skipped: {error}", err=True)
    click.echo(
        f"imported {csv_file}: {added} added, {updated} updated, {len(result.errors)} skipped"
    )
