"""Shared fixtures: the seed corpus, a fresh database per test (SQLite, and PostgreSQL when
``NEWSLETTER_TEST_POSTGRES_URL`` is set), settings pointing into a temp folder, and an
environment without the shell's other ``NEWSLETTER_*`` variables. Builders: tests/factories.py."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from newsletter.config import Settings, load_settings
from newsletter.store import Store
from tests.factories import CONFIG, ENV_PREFIX, workspace_env

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
SEED_COUNTS = {
    "000_3a916ff8f52d44d3.txt": 72,
    "001_8e50b1300fefa0f1.txt": 119,
    "002_3c0e7f085ac361a2.txt": 79,
    "003_48e8e8a7bd500b11.txt": 119,
    "004_8f615052814f5bfc.txt": 44,
}
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PG_ENV = "NEWSLETTER_TEST_POSTGRES_URL"
#: The brokers of the worker tests (tests/test_workers*.py); .ci/run sets both.
REDIS_ENV = "NEWSLETTER_TEST_REDIS_URL"
RABBITMQ_ENV = "NEWSLETTER_TEST_RABBITMQ_URL"
TEST_SERVICE_ENV = (PG_ENV, REDIS_ENV, RABBITMQ_ENV)


def _backends() -> list[object]:
    pg = pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not os.environ.get(PG_ENV),
            reason=f"PostgreSQL tests skipped: set {PG_ENV}=postgresql://user@host:5432/db "
            "(.ci/run sets it)",
        ),
    )
    return ["sqlite", pg]


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the ``NEWSLETTER_*`` variables of the shell that started pytest (a
    developer's ``NEWSLETTER_MAILER=smtp`` would send real mail), except the PostgreSQL URL
    and broker URLs that select the PostgreSQL and worker tests. Subprocesses inherit the
    cleaned environment."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and name not in TEST_SERVICE_ENV:
            monkeypatch.delenv(name)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``NEWSLETTER_TEST_POSTGRES_URL``,
    dropped afterwards (the test is skipped without that variable)."""
    if not os.environ.get(PG_ENV):
        pytest.skip(f"PostgreSQL tests skipped: set {PG_ENV}=postgresql://user@host:5432/db")
    base = make_url(os.environ[PG_ENV].replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database only (worker tests: workers need PostgreSQL)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on :func:`database_url` (web tests override it with the app's)."""
    s = Store(database_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def seeds() -> Path:
    return SEEDS


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A project folder of its own: inbox (a copy of the seeds), config, outputs."""
    (tmp_path / "inbox").mkdir()
    for seed in sorted(SEEDS.glob("*.txt")):
        shutil.copy(seed, tmp_path / "inbox" / seed.name)
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "subscribers.toml", tmp_path / "config" / "subscribers.toml")
    return tmp_path


@pytest.fixture
def settings(workdir: Path, database_url: str) -> Settings:
    return load_settings(CONFIG, environ=workspace_env(workdir, database_url))
