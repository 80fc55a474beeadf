"""What the daemon last did and the delivery counters, for ``status`` and ``/metrics``.

The daemon, ``run --once``, ``status`` and the web side are different processes sharing only
the database: the daemon writes its identity (pid, host, since), a heartbeat and the time of
its last inbox scan into ``daemon_state`` (one row), and every delivery pass adds what it sent
and what failed (by reason class), and how long each send took, to ``delivery_counters`` in one
transaction. :meth:`StateQueries.metrics_snapshot` reads everything ``/metrics`` shows in a
fixed number of statements, whatever the size of the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import func, select

from newsletter.domain import DigestState, IssueState
from newsletter.store.engine import StoreBase
from newsletter.store.schema import (
    DaemonStateRow,
    DeliveryCounterRow,
    DigestFileRow,
    IssueRow,
    PaperRow,
)

#: The one row of ``daemon_state``.
_ROW = 1


@dataclass(frozen=True)
class DaemonState:
    """The last daemon that ran on this database, as it recorded itself (``stopped_at`` set
    when it stopped cleanly; a killed daemon leaves it None: whether a daemon runs now is the
    lock's to say, :func:`newsletter.store.lock.daemon_holder`)."""

    pid: int | None
    host: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    stopped_at: datetime | None
    last_scan_at: datetime | None


@dataclass(frozen=True)
class MetricsSnapshot:
    """What ``/metrics`` shows from the database."""

    papers: int
    digests: Mapping[DigestState, int]
    issues: Mapping[IssueState, int]
    last_send_at: datetime | None
    state: DaemonState | None
    counters: Mapping[str, float]


class StateQueries(StoreBase):
    """The daemon's state row and the delivery counters."""

    def _set_state(self, **values: object) -> None:
        """Write columns of the state row, creating it on first use (one statement)."""
        stmt = self._insert(DaemonStateRow).values(id=_ROW, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=values)
        with self._session() as s:
            s.execute(stmt)

    def record_daemon_start(self, pid: int, host: str, now: datetime) -> None:
        self._set_state(pid=pid, host=host, started_at=now, heartbeat_at=now, stopped_at=None)

    def record_daemon_stop(self, now: datetime) -> None:
        self._set_state(stopped_at=now, heartbeat_at=now)

    def record_heartbeat(self, now: datetime) -> None:
        self._set_state(heartbeat_at=now)

    def record_scan(self, now: datetime, *, heartbeat: bool = False) -> None:
        """An inbox scan finished at ``now`` (``heartbeat``: by the daemon)."""
        values: dict[str, object] = {"last_scan_at": now}
        if heartbeat:
            values["heartbeat_at"] = now
        self._set_state(**values)

    def daemon_state(self) -> DaemonState | None:
        with self._read() as s:
            row = s.get(DaemonStateRow, _ROW)
            return _state(row) if row is not None else None

    def add_delivery_counts(self, counts: Mapping[str, float]) -> None:
        """Add ``counts`` to the named counters, in one transaction: ``value = value + n``
        in the database, so passes of different processes never lose each other's counts."""
        if not counts:
            return
        rows = [{"name": name, "value": value} for name, value in sorted(counts.items())]
        stmt = self._insert(DeliveryCounterRow).values(rows)  # one statement, one lock order
        with self._session() as s:
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"value": DeliveryCounterRow.value + stmt.excluded.value},
                )
            )

    def delivery_counters(self) -> dict[str, float]:
        with self._read() as s:
            rows = s.execute(select(DeliveryCounterRow.name, DeliveryCounterRow.value))
            return {name: value for name, value in rows}

    def issue_counts_of_slot(self, slot: date) -> dict[IssueState, int]:
        """How many issues of ``slot`` are in each state (one query)."""
        with self._read() as s:
            rows = s.execute(
                select(IssueRow.state, func.count())
                .where(IssueRow.slot_date == slot)
                .group_by(IssueRow.state)
            )
            return {IssueState(state): n for state, n in rows}

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Everything ``/metrics`` reads from the database: six statements in one read."""
        with self._read() as s:
            papers = s.scalar(select(func.count()).select_from(PaperRow)) or 0
            digests = {
                DigestState(state): n
                for state, n in s.execute(
                    select(DigestFileRow.state, func.count()).group_by(DigestFileRow.state)
                )
            }
            issues = {
                IssueState(state): n
                for state, n in s.execute(
                    select(IssueRow.state, func.count()).group_by(IssueRow.state)
                )
            }
            last_send = s.scalar(select(func.max(IssueRow.sent_at)))
            row = s.get(DaemonStateRow, _ROW)
            counters = {
                name: value
                for name, value in s.execute(
                    select(DeliveryCounterRow.name, DeliveryCounterRow.value)
                )
            }
            return MetricsSnapshot(
                papers=papers,
                digests=digests,
                issues=issues,
                last_send_at=_aware(last_send),
                state=_state(row) if row is not None else None,
                counters=counters,
            )


def _state(row: DaemonStateRow) -> DaemonState:
    return DaemonState(
        pid=row.pid,
        host=row.host,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
        last_scan_at=row.last_scan_at,
    )


def _aware(value: datetime | None) -> datetime | None:
    """``max(sent_at)`` comes back without the column's type on SQLite: a naive UTC text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
