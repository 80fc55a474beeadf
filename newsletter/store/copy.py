"""Copying one database into another, table by table (``newsletter db copy``).

Every table of the models (:data:`Base.metadata`, in foreign-key order, so a table added to
:mod:`newsletter.store.schema` is copied without a change here) is read from the source in
one read transaction (one snapshot: SQLite's WAL read, PostgreSQL's ``REPEATABLE READ``),
streamed in batches in primary-key order, and written to the target in one transaction: a
copy that fails leaves the target as empty as it found it. Values go through the column
types both ways (times stay UTC-aware, booleans booleans), ids and tokens unchanged, so links
already sent keep working. After explicit ids, PostgreSQL's sequences are moved past the
largest id, or the next insert would collide.

The rules around the copy (same database refused, source at the current migration, target
empty, locks, the count check) are the use case's: :mod:`newsletter.dbcopy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

import newsletter.store  # noqa: F401  (every module with models is imported: full metadata)
from newsletter.errors import StorageError
from newsletter.store.engine import StoreBase, normalize_url
from newsletter.store.schema import Base

#: Rows read and written per batch: a few MB of papers, one progress line each.
COPY_BATCH = 5_000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TableCount:
    """One table of a copy: rows in the source's snapshot, rows written, rows in the target
    after the commit."""

    table: str
    source: int
    copied: int
    target: int

    @property
    def matches(self) -> bool:
        return self.source == self.copied == self.target


def copied_tables() -> list[Table]:
    """Every table of the models, parents before the tables that reference them."""
    return list(Base.metadata.sorted_tables)


def head_revision() -> str:
    """The newest migration of this version of the code."""
    from alembic.script import ScriptDirectory

    import newsletter.migrations as migrations

    head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
    return head or ""


def current_revision(store: StoreBase) -> str | None:
    """The database's migration (None: never migrated, or no schema at all)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with store.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise StorageError(
            f"cannot open database {store.engine.url.render_as_string(hide_password=True)}: "
            f"{' '.join(str(exc.orig).split())}"
        ) from None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and ``:memory:``)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name one database: the same SQLite file (however the path is
    written), or the same server, port and database name (whoever logs in, with any driver)."""
    ua, ub = make_url(normalize_url(a)), make_url(normalize_url(b))
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    fa, fb = sqlite_file(a), sqlite_file(b)
    if fa is not None or fb is not None:
        return fa is not None and fb is not None and fa.resolve() == fb.resolve()
    return (ua.host or "", ua.port or 5432, ua.database) == (
        ub.host or "",
        ub.port or 5432,
        ub.database,
    )


def row_counts(store: StoreBase, *, only_existing: bool = False) -> dict[str, int]:
    """Rows in every copied table, in foreign-key order; with ``only_existing``, of the
    tables the database has (a database not migrated yet, or at an older migration)."""
    with store.engine.connect() as conn:
        names = set(inspect(conn).get_table_names()) if only_existing else None
        return _counts(conn, names)


def _counts(conn: Connection, names: set[str] | None = None) -> dict[str, int]:
    return {
        table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        for table in copied_tables()
        if names is None or table.name in names
    }


def copy_tables(
    source: StoreBase, target: StoreBase, *, progress: Progress | None = None
) -> list[TableCount]:
    """Copy every table's rows from ``source`` into ``target`` (migrated, empty: the caller
    checks); return the counts of each table, the target's counted after the commit."""
    say = progress or (lambda _line: None)
    source_counts: dict[str, int] = {}
    copied: dict[str, int] = {}
    with _snapshot(source) as read, _writing(target) as write:
        source_counts = _counts(read)
        for table in copied_tables():
            total = source_counts[table.name]
            done = 0
            for batch in _batches(read, table):
                try:
                    write.execute(table.insert(), batch)
                except DBAPIError as exc:
                    raise StorageError(
                        f"the target refused a row of {table.name} (rows {done + 1}–"
                        f"{done + len(batch)} in id order): {_first_line(exc)}; nothing was "
                        "copied (the target is still empty)"
                    ) from None
                done += len(batch)
                say(f"{table.name}: {done:,} / {total:,} rows")
            if done == 0:
                say(f"{table.name}: 0 rows")
            copied[table.name] = done
        if target.dialect == "postgresql":
            _reset_sequences(write)
    after = row_counts(target)
    return [
        TableCount(t.name, source_counts[t.name], copied[t.name], after[t.name])
        for t in copied_tables()
    ]


@contextmanager
def _snapshot(store: StoreBase) -> Iterator[Connection]:
    """One read transaction over the whole copy: every table from the same moment."""
    engine = store.engine
    if store.dialect == "postgresql":
        engine = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def _writing(store: StoreBase) -> Iterator[Connection]:
    """One write transaction (SQLite's write lock from the start): all rows or none."""
    engine = store.engine.execution_options(newsletter_begin="IMMEDIATE")
    with engine.connect() as conn, conn.begin():
        yield conn


def _batches(conn: Connection, table: Table) -> Iterator[list[dict[str, Any]]]:
    """The table's rows in primary-key order, :data:`COPY_BATCH` at a time, streamed (a
    server-side cursor on PostgreSQL): memory stays one batch whatever the table's size."""
    query = select(table).order_by(*table.primary_key.columns)
    result = conn.execution_options(yield_per=COPY_BATCH).execute(query)
    for partition in result.mappings().partitions(COPY_BATCH):
        yield [dict(row) for row in partition]


def _reset_sequences(conn: Connection) -> None:
    """Each serial id's sequence set to the table's largest id (rows were inserted with their
    ids, which does not advance the sequence); an empty table's restarts at 1."""
    quote = conn.dialect.identifier_preparer.quote
    for table in copied_tables():
        column = table.autoincrement_column
        if column is None:
            continue
        name, col = quote(table.name), quote(column.name)
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                f"COALESCE((SELECT max({col}) FROM {name}), 1), "
                f"(SELECT max({col}) FROM {name}) IS NOT NULL)"
            ),
            {"table": name, "column": column.name},
        )


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0] if lines else type(exc.orig).__name__
