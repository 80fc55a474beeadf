"""``newsletter serve``: the web side (feeds, archive, subscribe, unsubscribe, preferences)."""

from __future__ import annotations

import logging

import click

from newsletter.cli._base import CONTEXT, Context, cli, pass_ctx

log = logging.getLogger(__name__)


@cli.command("serve", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="TCP port to listen on.",
)
@pass_ctx
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the web side on the daemon's database, until interrupted.

    Feeds (/feeds/all.atom, private feeds), archived issues, day pages, subscribe with
    double opt-in, one-click unsubscribe and preferences: every link the emails carry.
    Put it behind a TLS-terminating proxy and set base_url to its public address.

    \b
    Example:
      newsletter serve --host 127.0.0.1 --port 8080
    """
    import uvicorn

    from newsletter.web import create_app

    app = create_app(ctx.settings)
    level = logging.WARNING - 10 * min(ctx.verbose, 2)
    # At every verbosity: where to point the browser, the proxy and the monitoring.
    address = f"[{host}]" if ":" in host else host
    click.echo(
        f"serving {ctx.settings.base_url} on http://{address}:{port} "
        "(health: /healthz, /readyz; metrics: /metrics); Ctrl-C stops",
        err=True,
    )
    # No access log: request paths carry subscribers' secret tokens, which must not end up in
    # log files (and the CLI's handlers redact them from any other line: cli/_base.py).
    # log_config=None keeps the handlers the CLI configured (-v, -vv).
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=logging.getLevelName(level).lower(),
        access_log=False,
        server_header=False,
    )
