"""Subscriber management without editing files."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli._base import (
    CONTEXT,
    Context,
    cli,
    emit,
    pass_ctx,
)
from newsletter.domain import Subscriber, SubscriberStatus

# ---------------------------------------------------------------------- subscribers


@cli.group(context_settings=CONTEXT)
def subscriber() -> None:
    """Add, list, remove and import subscribers (stored in the database).

    Subscribers in config/subscribers.toml are synced into the database on every run;
    these commands manage the database directly, without editing files.
    """


@subscriber.command("add", context_settings=CONTEXT)
@click.argument("email")
@click.option(
    "--profile",
    default=None,
    help="What they care about (see README: Profiles); required for a new address.",
)
@click.option("--name", default=None, help="Display name used in the greeting and To header.")
@click.option("--timezone", "tz", default=None, help="IANA timezone, e.g. Europe/Berlin.")
@click.option("--send-at", default=None, help="Local send time, HH:MM (default 07:00).")
@click.option("--days", default=None, help="Weekly: days to send, e.g. mon,thu (default daily).")
@click.option("--max-papers", type=int, default=None, help="Most papers per issue.")
@click.option("--min-score", type=float, default=None, help="Least score a paper needs.")
@pass_ctx
def subscriber_add(
    ctx: Context,
    email: str,
    profile: str | None,
    name: str | None,
    tz: str | None,
    send_at: str | None,
    days: str | None,
    max_papers: int | None,
    min_score: float | None,
) -> None:
    """Add an active subscriber, or update (and re-activate) an existing one.

    For an existing address only the options given change; the others keep their values.
    Re-activating an address that bounces or a complaint suppressed (`newsletter bounces`)
    clears the suppression: the one way to undo it.

    \b
    Example:
      newsletter subscriber add ada@example.org --name "Ada" --send-at 07:30 \\
          --profile '"speech recognition"^2, speech, -music' --timezone Europe/London
    """
    given = {
        "profile": profile,
        "name": name,
        "timezone": tz,
        "send_at": send_at,
        "days": days,
        "max_papers": max_papers,
        "min_score": min_score,
    }
    with ctx.app() as app:
        sub, created = app.add_subscriber(email, given)
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

    An active subscriber's private feed URLs are listed too (the Atom one on a line of its own
    in the text output): the web serves them at `base_url`.

    \b
    Example:
      newsletter subscriber list --json
    """
    with ctx.app() as app:
        subs = app.subscribers(include_unsubscribed=show_all)
        site = app.site
        suppressions = app.store.suppressions(s.id for s in subs)

    def feed(sub: Subscriber, kind: str) -> str | None:
        """The private feed's URL; None while it is not served (pending, unsubscribed)."""
        return site.feed_url(sub, kind) if sub.status is SubscriberStatus.ACTIVE else None

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
                    "feed_atom": feed(s, "atom"),
                    "feed_rss": feed(s, "rss"),
                    "suppressed": suppressions[s.id].reason if s.id in suppressions else None,
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
        atom = feed(s, "atom")
        if atom is not None:
            click.echo(f"  feed: {atom}")
        if s.id in suppressions:
            click.echo(f"  suppressed: {suppressions[s.id].reason}")


@subscriber.command("remove", context_settings=CONTEXT)
@click.argument("email")
@pass_ctx
def subscriber_remove(ctx: Context, email: str) -> None:
    """Unsubscribe someone: no further issues; their history is kept.

    \b
    Example:
      newsletter subscriber remove ada@example.org
    """
    with ctx.app() as app:
        address = app.remove_subscriber(email)
    click.echo(f"unsubscribed {address} (history kept)")


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
    with ctx.app() as app:
        result = app.import_subscribers(csv_file)
    for error in result.errors:
        click.echo(f"skipped: {error}", err=True)
    click.echo(
        f"imported {csv_file}: {result.added} added, {result.updated} updated, "
        f"{len(result.errors)} skipped"
    )
