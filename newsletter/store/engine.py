"""The connection side of the store: engine, dialect quirks, migrations, units of work.

:class:`StoreBase` is the base of every query mixin of :class:`newsletter.store.Store`; the
mixins only use ``_session()`` (writes), ``_read()`` and ``_insert()`` from here, so one class
offers one API.
SQLite (WAL, busy_timeout, foreign keys on) is the embedded default; PostgreSQL (psycopg 3) is
selected by URL. Inserts that may repeat use the dialect's ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.errors import StorageError

#: Rows per multi-row INSERT and values per ``IN (…)`` list: well under SQLite's 32,766
#: bound parameters and PostgreSQL's 65,535 for the widest row we insert.
BATCH = 500


def new_token() -> str:
    """A URL-safe secret of 192 bits (unsubscribe links, private feeds, web view)."""
    return secrets.token_urlsafe(24)


def normalize_url(url: str) -> str:
    """Turn ``postgresql://`` into ``postgresql+psycopg://`` so psycopg 3 is the driver."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def display_url(url: str) -> str:
    """The database URL as the operator should see it: the password hidden, and a SQLite
    file's path made absolute (``sqlite:///var/x.db`` is relative to the working directory,
    ``sqlite:////var/x.db`` is ``/var/x.db``; the two are easy to mix up)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return parsed.render_as_string(hide_password=True)
    database = parsed.database
    if not database or database == ":memory:":
        return url
    query = url.partition("?")[2]
    return f"{parsed.drivername}:///{Path(database).resolve()}" + (f"?{query}" if query else "")


class StoreBase:
    def __init__(self, url: str) -> None:
        url = normalize_url(url)
        parsed = make_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        # Units that write take SQLite's write lock when they begin (BEGIN IMMEDIATE): a
        # deferred transaction that reads and then writes cannot wait for the lock once
        # another connection has committed, and fails with "database is locked" at once.
        # Reads begin deferred and never block a writer (WAL).
        writer = self.engine.execution_options(newsletter_begin="IMMEDIATE")
        self._sessions = sessionmaker(writer, expire_on_commit=False)
        self._readers = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ lifecycle

    def migrate(self, revision: str = "head") -> str:
        """Apply Alembic migrations up to ``revision``; return the resulting revision."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        import newsletter.migrations as migrations

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
        try:
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    # Alembic's batch mode copies and drops tables; SQLite would refuse the drop
                    # of a table other tables reference. The pragma only works outside a
                    # transaction, hence on the raw connection before SQLAlchemy begins one.
                    _raw_sqlite(conn).execute("PRAGMA foreign_keys=OFF")
                try:
                    with conn.begin():
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, revision)
                finally:
                    if self.dialect == "sqlite":
                        _raw_sqlite(conn).execute("PRAGMA foreign_keys=ON")
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise StorageError(
                f"cannot open database {self.engine.url.render_as_string(hide_password=True)}: "
                f"{' '.join(str(exc.orig).split())}. Check database_url / NEWSLETTER_DATABASE_URL."
            ) from None
        return current or ""

    def check_revision(self) -> str:
        """The database's migration, if it is the one this version of the code expects;
        else :class:`StorageError` saying what to do. For processes that must not migrate a
        shared database themselves (delivery workers: several start at once, possibly newer
        or older than the scheduler)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        import newsletter.migrations as migrations

        head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise StorageError(
                f"cannot open database {self.engine.url.render_as_string(hide_password=True)}: "
                f"{' '.join(str(exc.orig).split())}. Check database_url / NEWSLETTER_DATABASE_URL."
            ) from None
        if current is None or current != head:
            raise StorageError(
                f"the database is at migration {current or 'none'}, this version of newsletter "
                f"expects {head}: run the scheduler of this version first (it migrates), or "
                "`newsletter db upgrade`, or run the scheduler's version on this worker"
            )
        return current

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A unit of work that writes (on SQLite it holds the write lock from its start)."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A unit of work that only reads."""
        with self._readers.begin() as session:
            yield session

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)


def _raw_sqlite(conn: Any) -> Any:
    return conn.connection.dbapi_connection


def _sqlite_begin(conn: Any) -> None:
    """Emit BEGIN ourselves: pysqlite's own transaction handling skips DDL, which would leave a
    failed migration half-applied (SQLAlchemy's documented recipe for SQLite). Writers ask for
    ``BEGIN IMMEDIATE`` through an execution option (see ``StoreBase.__init__``)."""
    mode = conn.get_execution_options().get("newsletter_begin", "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # autocommit at the driver: transactions are ours
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
