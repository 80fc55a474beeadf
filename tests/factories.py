"""Builders shared by the tests: papers, subscribers, a workspace's environment, the CLI.

* :func:`make_paper` and :func:`make_subscriber`: domain values with plain defaults, any field
  overridden by keyword;
* :func:`workspace_env`: the ``NEWSLETTER_*`` variables that point the application at one test
  folder (the ``workdir`` fixture's layout) and one database; :func:`settings_env` the same
  for loaded settings;
* :func:`run_once` and :func:`open_store`: one ``run --once`` as a new process does it, and
  the run's database, in-process;
* :func:`clean_environ` and :func:`run_cli`: ``python -m newsletter`` in a subprocess that
  inherits no ``NEWSLETTER_*`` variable from the shell that started pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import Mailer
from newsletter.domain import Paper, Subscriber, SubscriberStatus
from newsletter.reports import RunSummary
from newsletter.store import Store

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "newsletter.toml"
ENV_PREFIX = "NEWSLETTER_"

#: ``first_seen_at`` of a paper that does not say otherwise.
FIRST_SEEN = datetime(2025, 3, 1, tzinfo=UTC)


def make_paper(id: int, title: str, abstract: str = "", **fields: Any) -> Paper:
    """A stored paper. Unless given: no authors, dates, upvotes or links, first seen at
    :data:`FIRST_SEEN`, and the key the store would give it (``arxiv:<arxiv_id>`` when an
    ``arxiv_id`` is given, else ``title:<casefolded title>``)."""
    arxiv_id = fields.get("arxiv_id")
    values: dict[str, Any] = {
        "id": id,
        "key": f"arxiv:{arxiv_id}" if arxiv_id else f"title:{title.casefold()}",
        "title": title,
        "abstract": abstract,
        "authors": (),
        "author_count": None,
        "published": None,
        "upvotes": None,
        "arxiv_id": None,
        "url": None,
        "first_seen_at": FIRST_SEEN,
        **fields,
    }
    return Paper(**values)


def make_subscriber(**fields: Any) -> Subscriber:
    """An active daily subscriber: Ada (id 1), 07:00 Europe/Berlin, profile "diffusion", up to
    10 papers, no minimum score, no empty issues; any field overridden by keyword."""
    values: dict[str, Any] = {
        "id": 1,
        "email": "ada@example.com",
        "name": "Ada",
        "timezone": "Europe/Berlin",
        "send_at": time(7, 0),
        "weekdays": (),
        "profile": "diffusion",
        "max_papers": 10,
        "min_score": 0.0,
        "send_when_empty": False,
        "status": SubscriberStatus.ACTIVE,
        "token": "tok-ada",
        "feed_token": "feed-ada",
        **fields,
    }
    return Subscriber(**values)


def workspace_env(workdir: Path, database_url: str, **extra: object) -> dict[str, str]:
    """The variables that put the application in ``workdir`` (the ``workdir`` fixture's layout:
    ``inbox/``, ``outbox/``, ``feeds/``, ``config/subscribers.toml``) on ``database_url``.

    ``extra`` adds or overrides settings by name: ``inbox_settle_seconds=0`` becomes
    ``NEWSLETTER_INBOX_SETTLE_SECONDS=0``, ``smtp_host=...`` ``NEWSLETTER_SMTP_HOST``.
    """
    env = {
        "NEWSLETTER_CONFIG": str(CONFIG),
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_INBOX": str(workdir / "inbox"),
        "NEWSLETTER_OUTBOX_DIR": str(workdir / "outbox"),
        "NEWSLETTER_FEEDS_DIR": str(workdir / "feeds"),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(workdir / "config" / "subscribers.toml"),
    }
    env.update({ENV_PREFIX + key.upper(): str(value) for key, value in extra.items()})
    return env


def settings_env(settings: Settings, **extra: object) -> dict[str, str]:
    """:func:`workspace_env` of the folders and the database ``settings`` use: hands a test's
    settings (e.g. the ``settings`` fixture's) to a subprocess, or extends them."""
    env = workspace_env(
        settings.inbox.parent,
        settings.database_url,
        inbox=settings.inbox,
        outbox_dir=settings.outbox_dir,
        feeds_dir=settings.feeds_dir,
        subscribers_file=settings.subscribers_file,
        **extra,
    )
    if settings.subscribers_file is None:
        del env["NEWSLETTER_SUBSCRIBERS_FILE"]
    return env


def clean_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``NEWSLETTER_*`` variable, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**inherited, **(env or {})}


def run_cli(
    env: Mapping[str, str], *args: str, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m newsletter *args`` with :func:`clean_environ` ``(env)``; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def run_once(settings: Settings, *, now: datetime, mailer: Mailer | None = None) -> RunSummary:
    """One ``run --once`` as a new process does it: its own app (store, mailer) each time."""
    with Newsletter(settings, mailer=mailer) as app:
        return app.run_once(now)


def head_revision() -> str:
    """The newest migration (what ``Store.migrate()`` reaches): tests that check the revision
    need no edit when a revision is added; more than one head is an error here too."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import newsletter.migrations as migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def open_store(settings: Settings) -> Store:
    """The run's database, migrated; the caller closes it."""
    store = Store(settings.database_url)
    store.migrate()
    return store


def with_web(settings: Settings, **web: Any) -> Settings:
    """``settings`` with these ``web.*`` values (``subscribe_limit_per_client=""`` lifts that
    limit, for a test that posts a burst from one client on purpose)."""
    return settings.model_copy(update={"web": settings.web.model_copy(update=web)})


@contextmanager
def sql_statements(store: Store, *, with_transactions: bool = True) -> Iterator[list[str]]:
    """Every SQL statement ``store`` sends while the block runs (a ``before_cursor_execute``
    hook: once per statement, a multi-row insert counting once); without BEGIN, COMMIT and
    ROLLBACK when ``with_transactions`` is false."""
    statements: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if with_transactions or statement.split()[0].upper() not in _TRANSACTION_CONTROL:
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", hook)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", hook)


_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
