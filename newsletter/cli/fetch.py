"""Fetching papers from the configured sources by hand: fetch."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx


def _parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-26") from None


@cli.command(context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option(
    "--date",
    "day",
    metavar="D",
    callback=_parse_date,
    help="Fetch for this date (YYYY-MM-DD; hf_daily asks for that day's papers), not today.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def fetch(ctx: Context, name: str | None, day: date | None, as_json: bool) -> None:
    """Fetch every [[source]] (or the one NAME) into the inbox, and ingest what came.

    Each source is asked once, conditionally (a 304 writes nothing), with retries on 429, 5xx
    and timeouts; what it answers is written into the inbox (write-then-rename) and ingested
    at once, and its health is recorded for `newsletter status`. Exit status 0 when every
    source answered (a 304 or an empty day included), 75 when one failed transiently (try
    again later), 1 when one failed for good (a 404, an answer too big or unreadable).

    \b
    Example:
      newsletter fetch
      newsletter fetch hf --date 2026-11-25 --json | jq '.sources[].status'
    """
    from newsletter.fetch.run import exit_status, fetch_sources, make_fetcher, select_sources

    settings = ctx.settings
    sources = select_sources(settings, [name] if name else [])
    with ctx.app() as app, make_fetcher(settings) as fetcher:
        results = fetch_sources(app, fetcher, sources, now=app.clock(), day=day)
    status = exit_status(results)
    if as_json:
        emit({"sources": [asdict(r) for r in results], "exit_status": status})
    else:
        if not results:
            click.echo('no sources configured: add [[source]] tables (README "Fetching papers")')
        for r in results:
            line = f"{r.name}: {r.status}"
            if r.path:
                line += f", {r.bytes} bytes into {r.path}, {r.papers_new} new paper(s)"
            if r.error:
                line += f": {r.error}"
            click.echo(line)
    if status:
        raise click.exceptions.Exit(status)
