"""doctor: the DNS records to publish and the mail set-up checked locally."""

from __future__ import annotations

import click

from newsletter.cli._base import CONTEXT, Context, cli, emit, pass_ctx


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """The DNS records to publish (DKIM, SPF, DMARC) and checks of the mail set-up.

    The DKIM record comes from mail.dkim_key_file; the SPF and DMARC records are samples to
    adapt. Each check (DKIM key, https List-Unsubscribe, From aligned with the DKIM domain,
    bounce address, SMTP TLS) is ok, warn or fail with the reason. Nothing is looked up in
    DNS and the database is not opened. Exit status 1 when a check fails, else 0.

    \b
    Example:
      newsletter doctor
      newsletter doctor --json
    """
    from newsletter.doctor import diagnose

    report = diagnose(ctx.settings)
    if as_json:
        emit(report.as_json())
    else:
        click.echo(f"DNS records to publish for {report.domain}:")
        for record in report.records:
            click.echo(f"  {record.kind.value}: {record.zone_line()}")
            click.echo(f"    {record.note}")
        click.echo("checks:")
        for check in report.checks:
            click.echo(f"  {check.status.value:<4}  {check.name.value}: {check.reason}")
    if report.exit_status:
        raise click.exceptions.Exit(report.exit_status)
