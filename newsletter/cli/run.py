"""Commands of the main job: run, ingest, preview, feeds, db."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from newsletter.cli._base import (
    CONTEXT,
    NOW_OPTION,
    Context,
    cli,
    emit,
    parse_now,
    pass_ctx,
    progress_printer,
)
from newsletter.domain import IngestStatus

# ---------------------------------------------------------------------- run


@cli.command(context_settings=CONTEXT)
@click.option("--once", is_flag=True, help="Do one full pass and exit (no scheduler).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@NOW_OPTION
@pass_ctx
def run(ctx: Context, once: bool, as_json: bool, now_text: str | None) -> None:
    """Run the daemon: scan the inbox, send each issue at its subscriber's local time.

    Without --once: runs until SIGTERM/SIGINT (SIGHUP re-reads subscribers now), one daemon
    per database; a second one exits with status 3 naming the first. Logs one line per event
    to stderr (level: log_level, or -v/-vv).

    With --once: one pass in which every active subscriber's current slot (their local date)
    is due, whatever their send time; a slot that already has an issue is never sent again.
    Exit status: 0 when everything due went out (or nothing was due); 75 when delivery
    stopped (mail server down, another run delivering) or issues wait for a retry; 1 when an
    issue failed for good (or its outcome is unknown) in this run, or the feeds could not be
    written (the summary is printed first, then one error line).

    \b
    Example:
      newsletter run                 # the daemon (see deploy/newsletter.service)
      newsletter run --once
      newsletter run --once --json | jq .issues_delivered
    """
    settings = ctx.settings
    if not once:
        if as_json or now_text:
            raise click.UsageError("--json and --now apply to --once only")
        _run_daemon(ctx)
        return
    with ctx.app() as app:
        summary = app.run_once(parse_now(now_text), progress=progress_printer(as_json))
    if as_json:
        emit(asdict(summary))
        _feeds_error(summary.feeds_error)
        raise click.exceptions.Exit(summary.exit_status)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}")
    click.echo(
        f"files: {summary.files_ingested} ingested, {summary.files_unchanged} unchanged, "
        f"{summary.files_quarantined} quarantined; papers: {summary.papers_new} new, "
        f"{summary.papers_total} stored"
    )
    for reason in summary.quarantined:
        click.echo(f"  quarantined: {reason}")
    for reason in summary.skipped:
        click.echo(f"  skipped: {reason}")
    if summary.files_waiting:
        click.echo(f"  {summary.files_waiting} file(s) still being written: read on the next run")
    for error in summary.subscriber_errors:
        click.echo(f"  skipped subscriber: {error}")
    where = (
        summary.outbox_dir if settings.mailer == "outbox" else f"SMTP server {settings.smtp.host}"
    )
    if settings.queue.broker_url is not None:
        click.echo(
            f"issues: {summary.issues_queued} handed to the workers; "
            f"{summary.issues_with_workers} with them now (see `newsletter status`)"
        )
    elif summary.issues_delivered:
        click.echo(f"issues: {summary.issues_delivered} delivered to {where}")
    elif summary.exit_status == 0:
        click.echo("issues: none delivered (nothing new for anyone, or already sent this slot)")
    else:
        click.echo("issues: none delivered")
    if summary.delivery_stopped:
        click.echo(
            f"  delivery stopped: {summary.delivery_stopped}; {summary.issues_pending} issue(s) "
            "pending, sent on the next run"
        )
    for failed in summary.failed_now:
        click.echo(f"  {failed['state']}: {failed['email']} {failed['slot']}: {failed['reason']}")
    if summary.issues_failed:
        click.echo(f"  {summary.issues_failed} failed issue(s): see `newsletter status`")
    if summary.issues_unknown:
        click.echo(
            f"  {summary.issues_unknown} issue(s) with unknown outcome: see `newsletter status`"
        )
    if summary.feeds_error:
        click.echo(f"feeds: {summary.feeds_dir} (not written)")
    else:
        click.echo(f"feeds: {summary.feeds_dir} ({summary.feeds_written} file(s) changed)")
    _feeds_error(summary.feeds_error)
    if summary.exit_status:
        raise click.exceptions.Exit(summary.exit_status)


def _feeds_error(error: str) -> None:
    """The run's one ``error:`` line, after its summary, when the feeds could not be written."""
    if error:
        click.echo(f"error: {error}", err=True)


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
    with ctx.app() as app:
        reports = app.ingest(list(paths), scanner=None)
    if as_json:
        emit([asdict(r) for r in reports])
        return
    for r in reports:
        if r.status is IngestStatus.INGESTED:
            click.echo(
                f"{r.path}: {r.entries} papers found, {r.papers_new} new, "
                f"{r.papers_merged} merged ({r.format})"
            )
            for note in (*r.skipped, *r.notes):
                click.echo(f"  {note}")
        elif r.status is IngestStatus.QUARANTINED:
            click.echo(f"{r.path}: quarantined: {r.reason}")
        elif r.status is IngestStatus.SKIPPED:
            click.echo(f"{r.path}: skipped: {r.reason}")
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
    with ctx.app() as app:
        path = app.preview(email.strip().lower(), out_dir, parse_now(now_text))
    click.echo(str(path.resolve()))


# ---------------------------------------------------------------------- db


@cli.group(context_settings=CONTEXT)
def db() -> None:
    """Database commands: migrations (upgrade) and moving to another database (copy)."""


@db.command(context_settings=CONTEXT)
@pass_ctx
def upgrade(ctx: Context) -> None:
    """Apply all migrations (run automatically on first use too).

    \b
    Example:
      NEWSLETTER_DATABASE_URL=postgresql://localhost/newsletter newsletter db upgrade
    """
    with ctx.app() as app:
        revision = app.schema_revision()
    click.echo(f"database at revision {revision}")


@db.command("copy", context_settings=CONTEXT)
@click.option("--from", "source_url", required=True, metavar="URL", help="Database to copy.")
@click.option(
    "--to", "target_url", required=True, metavar="URL", help="Empty database to copy into."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def db_copy(source_url: str, target_url: str, as_json: bool) -> None:
    """Copy every table of a database into an empty one (the move to PostgreSQL).

    The source is only read and must be at this version's migration; the target is migrated
    and must hold no row. Ids and tokens are kept (links already sent keep working, nothing
    is sent twice). No daemon or run may work on either database meanwhile: stop the daemon
    first. Every table's rows are counted on both sides afterwards; exit status 1 when a
    count differs (or on any refusal), 0 when all match. Progress goes to stderr.

    \b
    Example:
      newsletter db copy --from sqlite:///var/newsletter.db \\
          --to postgresql://newsletter@localhost/newsletter
      newsletter db copy --from sqlite:///var/newsletter.db --to postgresql:///nl --json
    """
    from newsletter.dbcopy import copy_database

    report = copy_database(
        source_url, target_url, progress=lambda line: click.echo(f"  {line}", err=True)
    )
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"copied {report.source} to {report.target} (migration {report.revision})")
        width = max(len(t.table) for t in report.tables)
        for t in report.tables:
            mark = "ok" if t.matches else "MISMATCH"
            click.echo(f"  {t.table:<{width}}  {t.source:>9,} -> {t.target:>9,}  {mark}")
    if not report.ok:
        click.echo(
            f"error: row counts differ in {', '.join(report.mismatched)}: do not use the "
            "target; empty it (drop and create it again) and copy again",
            err=True,
        )
        raise SystemExit(1)


# ---------------------------------------------------------------------- feeds


@cli.command(context_settings=CONTEXT)
@pass_ctx
def feeds(ctx: Context) -> None:
    """Rebuild the RSS and Atom feeds from the database.

    Every feed is rebuilt, also those whose entries did not change (a run rebuilds only
    those): what to run after editing the feed templates.

    \b
    Example:
      newsletter feeds
    """
    with ctx.app() as app:
        count = app.write_feeds(force=True)
    click.echo(f"{ctx.settings.feeds_dir.resolve()}: {count} file(s) changed")


def _run_daemon(ctx: Context) -> None:
    import logging

    from newsletter.daemon import Daemon
    from newsletter.store.lock import AlreadyRunning

    if ctx.verbose == 0:
        logging.getLogger().setLevel(ctx.settings.log_level)
    try:
        Daemon(ctx.settings).run()
    except AlreadyRunning as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(3) from None
