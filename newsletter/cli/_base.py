"""The command group, its shared options and the entry point.

Only this module configures logging handlers and writes to the terminal. Every command has
help with an example (``newsletter COMMAND -h``); commands a script would read take ``--json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from newsletter import __version__
from newsletter.config import DEFAULT_CONFIG, Settings, load_settings
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.app import Newsletter

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def parse_now(value: str | None) -> datetime:
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


log = logging.getLogger(__name__)


class Context:
    """What the group's options parsed: the settings file, the verbosity, the settings.

    :func:`main` creates it and hands it to click as ``obj``; the group callback fills it in,
    so after the command main() still knows the verbosity (to show a traceback with -v).
    """

    def __init__(self, config: Path | None = None, verbose: int = 0) -> None:
        self.config = config
        self.verbose = verbose
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
            announce(self._settings)
        return self._settings

    def app(self) -> Newsletter:
        """The application over the configured database: use as ``with ctx.app() as app``."""
        from newsletter.app import Newsletter

        return Newsletter(self.settings)


pass_ctx = click.make_pass_decorator(Context)


def announce(settings: Settings) -> None:
    """Say which settings a command runs on: a warning when no settings file was found (run
    outside the project folder, a command would otherwise quietly create ./var/newsletter.db
    and read an inbox that is not there), else at info level. Both name the database as an
    absolute URL, because ``sqlite:///tmp/x.db`` is ``./tmp/x.db``, not ``/tmp/x.db``."""
    from newsletter.store.engine import display_url

    database = display_url(settings.database_url)
    inbox = settings.inbox.resolve()
    if settings.config_file is None:
        log.warning(
            "no settings file (looked for %s; set NEWSLETTER_CONFIG or --config): using "
            "built-in defaults and NEWSLETTER_* variables: database %s, inbox %s",
            DEFAULT_CONFIG.resolve(),
            database,
            inbox,
        )
    else:
        log.info("settings %s: database %s, inbox %s", settings.config_file, database, inbox)


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
    configure_log_hygiene()
    state = ctx.ensure_object(Context)  # main()'s, or a new one (CliRunner in tests)
    state.config, state.verbose = config, verbose


class _PerRunLines(logging.Filter):
    """APScheduler's lines about every run of every job ("Running job …", "Job … executed
    successfully": two per inbox scan and per send tick, thousands a day) are DEBUG, not
    INFO: shown with -vv, and dropped below it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class _RedactTokens(logging.Filter):
    """No subscriber's token in a log line, at any level: the token of every path of ours
    (``/unsubscribe/<token>``, ``/feeds/<feed token>.atom``, …) becomes ``<token>``, whoever
    logs it (a library's debug line, a traceback's message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from newsletter.observe import redact_tokens

        message = record.getMessage()
        if "/" in message:
            cleaned = redact_tokens(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


PER_RUN_LINES = _PerRunLines()
REDACT_TOKENS = _RedactTokens()


def configure_log_hygiene() -> None:
    """APScheduler's per-run lines to DEBUG, and tokens redacted on every handler of the
    root logger (the one -v and -vv write through; uvicorn's loggers propagate to it)."""
    logging.getLogger("apscheduler.executors.default").addFilter(PER_RUN_LINES)
    for handler in logging.getLogger().handlers:
        handler.addFilter(REDACT_TOKENS)


def main() -> None:
    """Console-script entry point: errors become one clear line on stderr and exit code 1.

    A :class:`NewsletterError` is the user's to fix: ``error: <message>``. Anything else is a
    bug or an environment problem: ``error: <ExceptionType>: <message>`` and a hint, with the
    traceback logged when -v was given. Ctrl-C is "aborted" with exit code 130.
    """
    state = Context()
    try:
        # Without standalone mode click returns (not raises) the code of ctx.exit(code) or
        # click.exceptions.Exit: `run --once` asks for 75 or 1 that way.
        code = cli.main(standalone_mode=False, obj=state)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except NewsletterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if state.verbose >= 1:
            log.error("unexpected error", exc_info=exc)
        click.echo(f"error: {describe_unexpected(exc)}", err=True)
        if state.verbose < 1:
            click.echo("hint: run with -v for the traceback", err=True)
        sys.exit(1)


def describe_unexpected(exc: BaseException) -> str:
    """``ExceptionType: message`` on one line (``ExceptionType`` alone without a message)."""
    message = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def emit(data: Any) -> None:
    """Print ``data`` as JSON, the one way every ``--json`` output is written.

    It is always valid JSON: a non-finite number (a score overflowing to infinity) becomes
    null, where ``json.dumps`` would print the bare words ``NaN`` or ``Infinity`` that JSON
    parsers refuse; text that is not UTF-8 (a file name's undecodable bytes) is escaped; other
    values JSON has no type for (dates, paths) become their text.
    """
    click.echo(
        json.dumps(json_safe(data), indent=2, ensure_ascii=False, allow_nan=False, default=str)
    )


def json_safe(value: Any) -> Any:
    """``value`` with every float finite (else None) and every string encodable as UTF-8."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def progress_printer(as_json: bool) -> Any:
    return None if as_json else (lambda line: click.echo(f"  {line}", err=True))
