"""Reader feedback from the command line: feedback add, feedback list."""

from __future__ import annotations

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx
from newsletter.domain import Judgment


@cli.group(context_settings=CONTEXT)
def feedback() -> None:
    """Record and list readers' judgments of papers ("more / less like this").

    Readers record them with the links under every paper of their email, archived issue
    and private feed; these commands do the same from the command line.
    """


@feedback.command("add", context_settings=CONTEXT)
@click.argument("email")
@click.option(
    "--paper",
    "paper_id",
    type=click.IntRange(min=1),
    required=True,
    help="The paper's id (`newsletter rank --json` shows it).",
)
@click.option("--like", "judgment", flag_value=Judgment.LIKE.value, help="More like this.")
@click.option("--dislike", "judgment", flag_value=Judgment.DISLIKE.value, help="Less like this.")
@click.option("--json", "as_json", is_flag=True, help="Print the judgment as a JSON object.")
@pass_ctx
def feedback_add(
    ctx: Context, email: str, paper_id: int, judgment: str | None, as_json: bool
) -> None:
    """Record a subscriber's judgment of one paper; a later one replaces it.

    \b
    Example:
      newsletter feedback add ada@example.org --paper 42 --like
    """
    if judgment is None:
        raise click.UsageError("give --like or --dislike")
    with ctx.app() as app:
        sub, paper = app.add_judgment(email, paper_id, Judgment(judgment))
    if as_json:
        emit({"email": sub.email, "paper": paper.id, "title": paper.title, "judgment": judgment})
        return
    click.echo(f"{sub.email}: {judgment} paper {paper.id} ({paper.title})")


@feedback.command("list", context_settings=CONTEXT)
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, latest first.")
@pass_ctx
def feedback_list(ctx: Context, email: str, as_json: bool) -> None:
    """List a subscriber's judgments of papers, latest first.

    \b
    Example:
      newsletter feedback list ada@example.org --json
    """
    with ctx.app() as app:
        sub, entries = app.feedback_of(email)
    if as_json:
        emit(
            [
                {
                    "paper": e.paper_id,
                    "title": e.title,
                    "judgment": e.judgment.value,
                    "created_at": e.created_at.isoformat(),
                    "updated_at": e.updated_at.isoformat(),
                }
                for e in entries
            ]
        )
        return
    if not entries:
        click.echo(f"no judgments from {sub.email} yet")
    for e in entries:
        click.echo(
            f"{e.updated_at:%Y-%m-%d %H:%M} {e.judgment.value:<8} {e.paper_id:>6}  {e.title}"
        )
