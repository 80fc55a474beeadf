"""The sources' health and conditional-GET validators, and the stale alert (newsletter/fetch).

One row per source name in ``source_health``, written by each fetch in one statement (an
upsert: the first fetch of a source creates its row); ``stale_alerts`` (one row) remembers
when the "no new papers" email went out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from newsletter.store.engine import StoreBase
from newsletter.store.schema import SourceHealthRow, StaleAlertRow

#: The one row of ``stale_alerts``.
_ALERT_ROW = 1


@dataclass(frozen=True)
class SourceHealth:
    """What the database knows of one source (``status``, the next conditional GET)."""

    name: str
    url: str | None = None  # the URL the validators below belong to
    etag: str | None = None
    last_modified: str | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    last_new_paper_at: datetime | None = None


class SourceQueries(StoreBase):
    """Per-source health and validators; the stale alert's last sending."""

    def _upsert_source(
        self, name: str, insert: dict[str, object], update: dict[str, object]
    ) -> None:
        stmt = self._insert(SourceHealthRow).values(name=name, **insert)
        with self._session() as s:
            s.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=update))

    def record_source_success(
        self,
        name: str,
        now: datetime,
        *,
        url: str,
        etag: str | None,
        last_modified: str | None,
        new_papers: bool,
    ) -> None:
        """The source answered (a 304 too): its validators for ``url``, failures reset, and
        ``now`` as its last new paper when it brought one."""
        values: dict[str, object] = {
            "url": url,
            "etag": etag,
            "last_modified": last_modified,
            "last_attempt_at": now,
            "last_success_at": now,
            "consecutive_failures": 0,
        }
        if new_papers:
            values["last_new_paper_at"] = now
        self._upsert_source(name, values, values)

    def record_source_failure(self, name: str, now: datetime, error: str) -> None:
        """The source failed: its error, and one more failure in a row."""
        values: dict[str, object] = {
            "last_attempt_at": now,
            "last_error": error,
            "last_error_at": now,
        }
        self._upsert_source(
            name,
            {**values, "consecutive_failures": 1},
            {**values, "consecutive_failures": SourceHealthRow.consecutive_failures + 1},
        )

    def source_health(self, name: str) -> SourceHealth | None:
        with self._read() as s:
            row = s.get(SourceHealthRow, name)
            return _health(row) if row is not None else None

    def source_healths(self) -> dict[str, SourceHealth]:
        """Every source that was ever fetched, by name (one query)."""
        with self._read() as s:
            rows = s.scalars(select(SourceHealthRow).order_by(SourceHealthRow.name))
            return {row.name: _health(row) for row in rows}

    def stale_alert_sent_at(self) -> datetime | None:
        with self._read() as s:
            row = s.get(StaleAlertRow, _ALERT_ROW)
            return row.sent_at if row is not None else None

    def record_stale_alert(self, now: datetime) -> None:
        stmt = self._insert(StaleAlertRow).values(id=_ALERT_ROW, sent_at=now)
        with self._session() as s:
            s.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"sent_at": now}))


def _health(row: SourceHealthRow) -> SourceHealth:
    return SourceHealth(
        name=row.name,
        url=row.url,
        etag=row.etag,
        last_modified=row.last_modified,
        last_attempt_at=row.last_attempt_at,
        last_success_at=row.last_success_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        consecutive_failures=row.consecutive_failures,
        last_new_paper_at=row.last_new_paper_at,
    )
