"""Command line: ``newsletter`` (or ``python -m newsletter``).

Only this module configures logging handlers and writes to the terminal. Every command has
help with an example (``newsletter COMMAND -h``); commands a script would read take ``--json``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from newsletter import __version__
from newsletter.config import Settings, load_settings
from newsletter.domain import IssueState, SubscriberStatus
from newsletter.errors import NewsletterError, SubscriberError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date-time like 2026-11-23T07:30+01:00"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


NOW_OPTION = click.option(
    "--now",
    "now_text",
    metavar="ISO",
    default=None,
    help="Act as if the current time were ISO (e.g. 2026-11-24T08:00+00:00): replays and tests.",
)


class Context:
    def __init__(self, config: Path | None, verbose: int) -> None:
        self.config = config
        self.verbose = verbose
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="newsletter")
@click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path),
    default=None,
    help="Settings file (default: $NEWSLETTER_CONFIG or config/newsletter.toml).",
)
@click.option("-v", "--verbose", count=True, help="More detail: -v info, -vv debug.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: int) -> None:
    """A daily research-paper newsletter: digests in, personal emails and feeds out.

    \b
    Quick start:
      newsletter run --once        ingest seeds/, email everyone, write feeds
      newsletter subscriber list   who gets what
      newsletter COMMAND -h        help and an example for every command
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("alembic", "cssutils"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    ctx.obj = Context(config, verbose)


def main() -> None:
    """Console-script entry point: package errors become one clear line and exit code 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except NewsletterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _progress(as_json: bool) -> Any:
    return None if as_json else (lambda line: click.echo(f"  {line}", err=True))


# ---------------------------------------------------------------------- run


@cli.command(context_settings=CONTEXT)
@click.option("--once", is_flag=True, help="Do one full pass and exit (no scheduler).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@NOW_OPTION
@pass_ctx
def run(ctx: Context, once: bool, as_json: bool, now_text: str | None) -> None:
    """Ingest the inbox, send every due issue, write the feeds.

    With --once: one pass in which every active subscriber's current slot (their local date)
    is due, whatever their send time; a slot that already has an issue is never sent again.

    \b
    Example:
      newsletter run --once
      newsletter run --once --json | jq .issues_delivered
    """
    from newsletter.pipeline import run_once

    if not once:
        raise click.UsageError(
            "the scheduled daemon is not built yet; run `newsletter run --once` "
            "(from cron or a systemd timer) meanwhile"
        )
    settings = ctx.settings
    summary = run_once(settings, now=_now(now_text), progress=_progress(as_json))
    if as_json:
        _emit(asdict(summary))
        return
    click.echo(
        f"files: {summary.files_ingested} ingested, {summary.files_unchanged} unchanged, "
        f"{summary.files_quarantined} quarantined; papers: {summary.papers_new} new, "
        f"{summary.papers_total} stored"
    )
    for reason in summary.quarantined:
        click.echo(f"  quarantined: {reason}")
    if summary.files_waiting:
        click.echo(f"  {summary.files_waiting} file(s) still being written: read on the next run")
    for error in summary.subscriber_errors:
        click.echo(f"  skipped subscriber: {error}")
    if summary.issues_delivered:
        click.echo(f"issues: {summary.issues_delivered} delivered to {summary.outbox_dir}")
    else:
        click.echo("issues: none delivered (nothing new for anyone, or already sent this slot)")
    if summary.issues_failed:
        click.echo(f"  {summary.issues_failed} failed issue(s): see `newsletter status`")
    click.echo(f"feeds: {summary.feeds_dir} ({summary.feeds_written} file(s) changed)")


# ---------------------------------------------------------------------- ingest


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file.")
@pass_ctx
def ingest(ctx: Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Ingest digest files or folders by hand, with a report per file.

    \b
    Example:
      newsletter ingest ~/Downloads/daily_papers.txt seeds/
    """
    from newsletter.ingest import ingest_paths
    from newsletter.pipeline import open_store

    settings = ctx.settings
    store = open_store(settings)
    try:
        reports = ingest_paths(
            store, list(paths), now=_now(None), max_bytes=settings.max_digest_bytes
        )
    finally:
        store.close()
    if as_json:
        _emit([asdict(r) for r in reports])
        return
    for r in reports:
        if r.status == "ingested":
            click.echo(
                f"{r.path}: {r.entries} papers found, {r.papers_new} new, "
                f"{r.papers_merged} merged ({r.format})"
            )
            for note in r.skipped:
                click.echo(f"  {note}")
        elif r.status == "quarantined":
            click.echo(f"{r.path}: quarantined: {r.reason}")
        elif r.reason:
            click.echo(f"{r.path}: quarantined before (same bytes): {r.reason}")
        else:
            click.echo(f"{r.path}: already ingested (same bytes), nothing to do")


# ---------------------------------------------------------------------- preview


@cli.command(context_settings=CONTEXT)
@click.option("--subscriber", "email", required=True, help="The subscriber's email address.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("var/preview"),
    show_default=True,
    help="Folder for the HTML file.",
)
@NOW_OPTION
@pass_ctx
def preview(ctx: Context, email: str, out_dir: Path, now_text: str | None) -> None:
    """Write a subscriber's next issue as an HTML file; send and record nothing.

    \b
    Example:
      newsletter preview --subscriber ada@example.org
    """
    from newsletter.pipeline import preview as build_preview

    path = build_preview(ctx.settings, email.strip().lower(), _now(now_text), out_dir)
    click.echo(str(path.resolve()))


# ---------------------------------------------------------------------- db


@cli.group(context_settings=CONTEXT)
def db() -> None:
    """Database schema commands."""


@db.command(context_settings=CONTEXT)
@pass_ctx
def upgrade(ctx: Context) -> None:
    """Apply all migrations (run automatically on first use too).

    \b
    Example:
      NEWSLETTER_DATABASE_URL=postgresql://localhost/newsletter newsletter db upgrade
    """
    from newsletter.store import Store

    store = Store(ctx.settings.database_url)
    try:
        revision = store.migrate()
    finally:
        store.close()
    click.echo(f"database at revision {revision}")


# ---------------------------------------------------------------------- feeds


@cli.command(context_settings=CONTEXT)
@pass_ctx
def feeds(ctx: Context) -> None:
    """Rebuild the RSS and Atom feeds from the database.

    \b
    Example:
      newsletter feeds
    """
    from newsletter.pipeline import open_store, write_all_feeds

    store = open_store(ctx.settings)
    try:
        count = write_all_feeds(store, ctx.settings)
    finally:
        store.close()
    click.echo(f"{ctx.settings.feeds_dir.resolve()}: {count} file(s) changed")


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
        _emit(data)
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
        sub, created = store.upsert_subscriber(spec, source="cli", now=_now(None))
        if not created and sub.status is not SubscriberStatus.ACTIVE:
            store.set_subscriber_status(sub.email, SubscriberStatus.ACTIVE, _now(None))
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
        _emit(
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
            email.strip(), SubscriberStatus.UNSUBSCRIBED, _now(None)
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
            _sub, created = store.upsert_subscriber(spec, source="csv", now=_now(None))
            added += created
            updated += not created
    finally:
        store.close()
    for error in result.errors:
        click.echo(f"skipped: {error}", err=True)
    click.echo(
        f"imported {csv_file}: {added} added, {updated} updated, {len(result.errors)} skipped"
    )
