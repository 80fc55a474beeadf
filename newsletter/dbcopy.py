"""Moving a deployment to another database (``newsletter db copy``): SQLite to PostgreSQL, or
one server to another.

The rules of a safe copy, around :func:`newsletter.store.copy.copy_tables`:

* the two URLs must name two databases (a copy onto itself would be refused anyway, but a
  clear message is better);
* the source is only read: it must exist and be at this version's migration (else
  ``newsletter db upgrade`` on it first); it is never migrated here;
* the target is migrated to the current head, and must hold no row in any table (checked
  before its migration too, so a non-empty database is never changed);
* no daemon and no sender may work on either database meanwhile: the copy holds both
  databases' daemon and send locks (:mod:`newsletter.store.lock`), so a running daemon makes
  it stop with "stop it first" rather than copy a moving snapshot's sequel;
* afterwards every table's rows are counted on both sides; the report says whether they all
  match (``newsletter db copy`` exits 1 when not).

Ids, tokens (unsubscribe links and private feeds already sent keep working), issues, the sent
log (nothing is sent twice) and every other table go over unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from newsletter.errors import StorageError
from newsletter.store import Store
from newsletter.store.copy import (
    Progress,
    TableCount,
    copy_tables,
    current_revision,
    head_revision,
    row_counts,
    same_database,
    sqlite_file,
)
from newsletter.store.engine import display_url
from newsletter.store.lock import DaemonLock, SendLock

log = logging.getLogger(__name__)


class SameDatabase(StorageError):
    """``--from`` and ``--to`` name one database."""

    def __init__(self, url: str) -> None:
        super().__init__(f"--from and --to are the same database ({url}): copy into another one")
        self.url = url


class SourceMissing(StorageError):
    """The source SQLite file does not exist (opening it would create an empty one)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"no database at {url}: check --from (a SQLite path is relative to here)")
        self.url = url


class SourceNotCurrent(StorageError):
    """The source is not at this version's migration (the copy never migrates it)."""

    def __init__(self, url: str, revision: str | None, head: str) -> None:
        super().__init__(
            f"the source {url} is at migration {revision or 'none'}, this version of newsletter "
            f"copies databases at {head}: run `newsletter db upgrade` on it first "
            f"(NEWSLETTER_DATABASE_URL=<the --from URL> newsletter db upgrade), then copy"
        )
        self.url, self.revision, self.head = url, revision, head


class TargetNotEmpty(StorageError):
    """The target holds rows: a copy only goes into an empty database."""

    def __init__(self, url: str, rows: Mapping[str, int]) -> None:
        listed = ", ".join(f"{table} ({count} rows)" for table, count in rows.items())
        super().__init__(
            f"the target {url} is not empty: {listed}; copy into a new, empty database "
            "(e.g. createdb newsletter), nothing was changed"
        )
        self.url = url
        self.rows = dict(rows)


@dataclass(frozen=True)
class CopyReport:
    """What ``db copy`` did: both databases (without passwords), the migration, each table."""

    source: str
    target: str
    revision: str
    tables: tuple[TableCount, ...]

    @property
    def ok(self) -> bool:
        return all(t.matches for t in self.tables)

    @property
    def mismatched(self) -> tuple[str, ...]:
        return tuple(t.table for t in self.tables if not t.matches)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "revision": self.revision,
            "ok": self.ok,
            "tables": {
                t.table: {"source": t.source, "copied": t.copied, "target": t.target}
                for t in self.tables
            },
        }


def copy_database(
    source_url: str, target_url: str, *, progress: Progress | None = None
) -> CopyReport:
    """Copy every table of ``source_url`` into the empty ``target_url`` (see the module)."""
    source_shown, target_shown = display_url(source_url), display_url(target_url)
    if same_database(source_url, target_url):
        raise SameDatabase(source_shown)
    path = sqlite_file(source_url)
    if path is not None and not path.is_file():
        raise SourceMissing(source_shown)
    head = head_revision()
    source, target = Store(source_url), Store(target_url)
    try:
        revision = current_revision(source)
        if revision != head:
            raise SourceNotCurrent(source_shown, revision, head)
        locks = [
            DaemonLock(source.engine),
            SendLock(source.engine),
            DaemonLock(target.engine),
            SendLock(target.engine),
        ]
        held: list[DaemonLock] = []
        try:
            for lock in locks:
                lock.acquire()
                held.append(lock)
            # Before the migration (an older schema's rows are refused untouched) and after.
            _refuse_rows(target, target_shown, before_migration=True)
            target.migrate()
            _refuse_rows(target, target_shown, before_migration=False)
            tables = copy_tables(source, target, progress=progress)
        finally:
            for lock in reversed(held):
                lock.release()
    finally:
        source.close()
        target.close()
    report = CopyReport(source_shown, target_shown, head, tuple(tables))
    log.info(
        "copied %s to %s: %d rows in %d tables%s",
        source_shown,
        target_shown,
        sum(t.copied for t in tables),
        len(tables),
        "" if report.ok else f"; counts differ in {', '.join(report.mismatched)}",
    )
    return report


def _refuse_rows(target: Store, shown: str, *, before_migration: bool) -> None:
    counts = row_counts(target, only_existing=before_migration)
    rows = {table: count for table, count in counts.items() if count}
    if rows:
        raise TargetNotEmpty(shown, rows)
