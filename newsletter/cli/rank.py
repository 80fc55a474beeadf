"""Trying a profile before saving it, or seeing a subscriber's next issue ranked: rank."""

from __future__ import annotations

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx
from newsletter.domain import MatchField


@cli.command(context_settings=CONTEXT)
@click.option("--profile", "profile_text", default=None, help="A profile (see README: Profiles).")
@click.option(
    "--subscriber",
    "email",
    default=None,
    help="Rank that subscriber's candidates as their next issue would (profile, feedback).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N papers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, best first.")
@pass_ctx
def rank(
    ctx: Context, profile_text: str | None, email: str | None, limit: int | None, as_json: bool
) -> None:
    """Rank stored papers against a profile, or for a subscriber; send and record nothing.

    --profile ranks every stored paper, ignoring sent history and the candidate window: this
    is how to try a profile before saving it. Papers that match no term, or match an
    exclusion, are not listed. --subscriber ranks that subscriber's candidates exactly as
    their next issue would: the window less the papers already in their issues, their
    profile, min score and max papers (--limit replaces it), and their feedback.

    \b
    Example:
      newsletter rank --profile 'speech, "speech recognition"^2, -music' --limit 5
      newsletter rank --subscriber ada@example.org --json
    """
    if (profile_text is None) == (email is None):
        raise click.UsageError(
            "--profile and --subscriber are mutually exclusive: give one of them"
            if email is not None
            else "give --profile '...' (try a profile) or --subscriber EMAIL (their next issue)"
        )
    settings = ctx.settings
    with ctx.app() as app:
        if email is not None:
            ranked = app.rank_for(email, limit=limit)
        else:
            ranked = app.rank(profile_text or "", limit=limit)
        stored = app.count_papers()
    if as_json:
        emit(
            [
                {
                    "rank": n,
                    "id": sp.paper.id,
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
        if email is not None:
            click.echo(f"nothing for {email} at or above their min score ({stored} papers stored)")
        else:
            click.echo(f"no stored paper matches {profile_text!r} ({stored} papers stored)")
        return
    for n, sp in enumerate(ranked, start=1):
        click.echo(f"{n:>3}. {sp.score:7.2f}  {sp.paper.title}")
        why = ", ".join(
            f"{x.term} {x.contribution:+.2f}"
            if x.where is MatchField.FEEDBACK
            else f"{x.term} in {x.where} +{x.contribution:.2f}"
            for x in sp.reasons
        )
        click.echo(f"              {why}")
