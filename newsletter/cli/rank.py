"""Trying a profile before saving it: rank."""

from __future__ import annotations

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx


@cli.command(context_settings=CONTEXT)
@click.option("--profile", "profile_text", required=True, help="A profile (see README: Profiles).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N papers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, best first.")
@pass_ctx
def rank(ctx: Context, profile_text: str, limit: int | None, as_json: bool) -> None:
    """Rank every stored paper against a profile; send and record nothing.

    Ignores sent history and the candidate window: this is how to try a profile before
    saving it. Papers that match no term, or match an exclusion, are not listed.

    \b
    Example:
      newsletter rank --profile 'speech, "speech recognition"^2, -music' --limit 5
    """
    settings = ctx.settings
    with ctx.app() as app:
        ranked = app.rank(profile_text, limit=limit)
        stored = app.count_papers()
    if as_json:
        emit(
            [
                {
                    "rank": n,
                    "title": sp.paper.title,
                    "score": round(sp.score, 4),
                    "url": settings.site.paper_url(sp.paper),
                    "reasons": [
                        {"term": x.term, "where": x.where, "contribution": round(x.contribution, 4)}
                        for x in sp.reasons
                    ],
                }
                for n, sp in enumerate(ranked, start=1)
            ]
        )
        return
    if not ranked:
        click.echo(f"no stored paper matches {profile_text!r} ({stored} papers stored)")
        return
    for n, sp in enumerate(ranked, start=1):
        click.echo(f"{n:>3}. {sp.score:7.2f}  {sp.paper.title}")
        why = ", ".join(f"{x.term} in {x.where} +{x.contribution:.2f}" for x in sp.reasons)
        click.echo(f"              {why}")
