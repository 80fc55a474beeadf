"""Optional semantic matching from the command line: semantic embed."""

from __future__ import annotations

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx


@cli.group(context_settings=CONTEXT)
def semantic() -> None:
    """Sentence embeddings for the optional semantic matching (README "Semantic matching").

    Needs `pip install 'newsletter[semantic]'` and `[semantic] enabled = true`.
    """


@semantic.command("embed", context_settings=CONTEXT)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Embed at most N papers (default: every paper that has no embedding yet).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the counts.")
@pass_ctx
def semantic_embed(ctx: Context, limit: int | None, as_json: bool) -> None:
    """Embed the stored papers that have no embedding by the configured model.

    Ingest embeds new papers by itself; run this once after switching semantic matching
    on or changing semantic.model, for the papers stored before. Progress goes to stderr;
    it can be stopped and run again (each batch is committed).

    \b
    Example:
      NEWSLETTER_SEMANTIC_ENABLED=true newsletter semantic embed
    """
    if not ctx.settings.semantic.enabled:
        raise click.UsageError(
            "semantic matching is off: set [semantic] enabled = true (or "
            "NEWSLETTER_SEMANTIC_ENABLED=true) first"
        )

    def progress(done: int, total: int) -> None:
        if not as_json:
            click.echo(f"  embedded {done} of {total} papers", err=True)

    with ctx.app() as app:
        embedded = app.embed_papers(limit=limit, progress=progress)
        model = ctx.settings.semantic.model
        stored = app.store.count_embeddings(model)
        missing = app.store.count_to_embed(model)
    if as_json:
        emit({"model": model, "embedded": embedded, "stored": stored, "missing": missing})
        return
    click.echo(f"{embedded} papers embedded with {model}; {stored} stored, {missing} missing")
