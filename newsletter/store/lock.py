"""Locks on a database that die with their holder: one daemon, one sender at a time.

:class:`DaemonLock` keeps a second daemon off a database for the daemon's lifetime;
:class:`SendLock` is taken around each delivery pass (a daemon's job or a ``run --once``), so
two senders never work through the pending issues at once: an issue found ``sending`` by the
holder of the send lock was left by a sender that is gone (the lock died with it), and sending
it again, with the same Message-ID, is the crash recovery. Both work the same way:

* SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the database file. The kernel
  drops it when the process dies, even by SIGKILL, so a crash never leaves a stale lock; the
  file's content (pid, host, start time) names the holder for the refusal message.
* PostgreSQL: a session-level advisory lock held on a dedicated connection for the daemon's
  lifetime; the holder is found in ``pg_locks`` / ``pg_stat_activity`` (our connection sets
  its ``application_name`` to say who it is).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError

from newsletter.errors import NewsletterError


class AlreadyRunning(NewsletterError):
    """Another daemon (or, for :class:`SendLock`, another sender) holds this database."""


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class DaemonLock:
    """Acquire with :meth:`acquire` (raises AlreadyRunning), release with :meth:`release`."""

    #: What holds the lock: names the lock file suffix, the advisory key and the messages.
    ROLE = "daemon"
    SUFFIX = ".lock"
    #: Tries, 20 ms apart, before the lock counts as held: :func:`daemon_holder` (``status``,
    #: ``/metrics``) holds it shared for an instant to see whether a daemon has it.
    PROBE_RETRIES = 25

    def __init__(self, engine: Any) -> None:
        # A fixed 64-bit key per role: the same for every process of this program.
        digest = hashlib.sha256(f"newsletter {self.ROLE}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self.engine = engine
        self._fd: int | None = None
        self._conn: Connection | None = None
        self.path: Path | None = None

    def acquire(self) -> None:
        if self.engine.dialect.name == "sqlite":
            self._acquire_file()
        elif self.engine.dialect.name == "postgresql":
            self._acquire_advisory()

    @property
    def held(self) -> bool:
        """Whether this object holds its lock (on a database without one: never)."""
        return self._fd is not None or self._conn is not None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ SQLite

    def _acquire_file(self) -> None:
        self.path = lock_file(self.engine, self.SUFFIX)
        if self.path is None:
            return  # nothing on disk to share: nobody else can open this database
        database = make_url(self.engine.url).database
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock_exclusive(fd, retries=self.PROBE_RETRIES)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise AlreadyRunning(
                f"another newsletter {self.ROLE} is running on {database}: {_describe(holder)} "
                f"(lock file {self.path}); stop it first, or use another database"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        os.fsync(fd)
        self._fd = fd

    # ------------------------------------------------------------------ PostgreSQL

    def _acquire_advisory(self) -> None:
        owner = _owner()
        conn = self.engine.connect()
        label = f"newsletter {self.ROLE} pid={owner['pid']} host={owner['host']}"
        conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": label})
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
        conn.commit()
        if got:
            self._conn = conn
            return
        row = conn.execute(
            text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": (self._key >> 32) & 0xFFFFFFFF, "lo": self._key & 0xFFFFFFFF},
        ).first()
        conn.close()
        who = (
            f"{row.application_name or 'unknown'} (server pid {row.pid}, from "
            f"{row.client_addr or 'local socket'}, since {row.backend_start:%Y-%m-%d %H:%M:%S %Z})"
            if row
            else "unknown holder"
        )
        url = make_url(self.engine.url).render_as_string(hide_password=True)
        raise AlreadyRunning(
            f"another newsletter {self.ROLE} is running on {url}: {who}; stop it first"
        )


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, started {info['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


class SendLock(DaemonLock):
    """Held by whoever is delivering pending issues on this database, for one pass."""

    ROLE = "sender"
    SUFFIX = ".send.lock"
    PROBE_RETRIES = 0  # nothing probes it


def lock_file(engine: Any, suffix: str = DaemonLock.SUFFIX) -> Path | None:
    """The lock file beside a SQLite database file (None: in memory, or not SQLite)."""
    url = make_url(engine.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = Path(url.database)
    return database.resolve().with_name(database.name + suffix)


def _flock_exclusive(fd: int, *, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == retries:
                raise
            time.sleep(0.02)


@dataclass(frozen=True)
class DaemonHolder:
    """The daemon that holds a database now: its pid and host, and since when."""

    pid: int | None
    host: str | None
    since: datetime | None


def daemon_holder(engine: Any) -> DaemonHolder | None:
    """The daemon holding this database now, or None: asked of the lock itself, which dies
    with its holder (a killed daemon is not running, whatever it last wrote).

    SQLite: the lock file is held shared for an instant (no daemon has it exclusively then;
    a daemon starting in that instant waits for it, see :attr:`DaemonLock.PROBE_RETRIES`),
    and the holder's pid, host and start time are read from it. PostgreSQL: the advisory lock
    in ``pg_locks``, and the holding session's ``application_name`` and start."""
    if engine.dialect.name == "postgresql":
        return _advisory_holder(engine, DaemonLock(engine)._key)
    path = lock_file(engine)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # no daemon ever ran here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _file_holder(os.read(fd, 4096).decode("utf-8", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _file_holder(content: str) -> DaemonHolder:
    try:
        info = json.loads(content)
        since = datetime.fromisoformat(info["started_at"])
        return DaemonHolder(int(info["pid"]), str(info["host"]), since)
    except (ValueError, KeyError, TypeError):
        return DaemonHolder(None, None, None)  # held, by a holder that has not written yet


_LABEL = re.compile(r"pid=(\d+) host=(\S+)")


def _advisory_holder(engine: Any, key: int) -> DaemonHolder | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT a.application_name, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
        ).first()
    if row is None:
        return None
    found = _LABEL.search(row.application_name or "")
    since = row.backend_start.astimezone(UTC) if row.backend_start else None
    if found is None:
        return DaemonHolder(None, None, since)
    return DaemonHolder(int(found.group(1)), found.group(2), since)


#: The first key of every per-issue advisory lock (the second is the issue id): PostgreSQL's
#: two-integer lock keys, a key space apart from the one-bigint keys of the locks above.
ISSUE_LOCK_CLASS = int.from_bytes(hashlib.sha256(b"newsletter issue").digest()[:4], "big") >> 1


class WorkerLocks:
    """A delivery worker's locks on PostgreSQL, on one dedicated connection per process.

    * The send lock, **shared**, for the process's lifetime: workers send side by side, while
      an in-process sender (``run --once`` or a daemon without ``queue.broker_url``), which
      takes the send lock exclusively, cannot run beside them, nor they beside it. That
      sender treats every ``sending`` issue as left by a dead sender, which only holds
      when no worker is alive.
    * One lock per issue while a worker sends it (:meth:`try_issue`): the issue's lease.
      Another worker given the same issue (a task redelivered after Redis's visibility
      timeout, a task enqueued twice) finds it locked and does nothing. The server drops
      the locks the moment their holder's connection ends (SIGKILL, a lost machine), so an
      issue found ``sending`` and unlocked was left by a worker that died, and is re-sent
      with its Message-ID.
    """

    def __init__(self, engine: Any) -> None:
        if engine.dialect.name != "postgresql":
            raise NewsletterError(
                "delivery workers need PostgreSQL: database_url is "
                f"{make_url(engine.url).render_as_string(hide_password=True)}"
            )
        self.engine = engine
        self._send_key = SendLock(engine)._key
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            owner = _owner()
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            label = f"newsletter worker pid={owner['pid']} host={owner['host']}"
            conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": label})
            conn.execute(text("SELECT pg_advisory_lock_shared(:k)"), {"k": self._send_key})
            self._conn = conn
        return self._conn

    def start(self) -> None:
        """Take the shared send lock, waiting while an in-process sender holds it."""
        self._connection()

    def try_issue(self, issue_id: int, *, wait_seconds: float = 0.0) -> bool:
        """Lock one issue for sending; False if another worker holds it (after waiting up to
        ``wait_seconds``: a worker that just died may not have been noticed by the server).
        One round trip when the issue is free, the usual case."""
        conn = self._connection()
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:c, :i)"), {"c": ISSUE_LOCK_CLASS, "i": issue_id}
        ).scalar()
        if got or wait_seconds <= 0:
            return bool(got)
        timeout = f"{int(wait_seconds * 1000)}ms"
        conn.execute(text("SELECT set_config('lock_timeout', :t, false)"), {"t": timeout})
        try:
            conn.execute(
                text("SELECT pg_advisory_lock(:c, :i)"), {"c": ISSUE_LOCK_CLASS, "i": issue_id}
            )
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                return False
            raise
        finally:
            conn.execute(text("SELECT set_config('lock_timeout', '0', false)"))
        return True

    def release_issue(self, issue_id: int) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.execute(
                text("SELECT pg_advisory_unlock(:c, :i)"), {"c": ISSUE_LOCK_CLASS, "i": issue_id}
            )

    def close(self) -> None:
        """Drop every lock of this process by ending its database session. Not by handing
        the connection back to the engine's pool: the session, and its advisory locks, would
        live on there (the next user of that pooled connection would hold them)."""
        if self._conn is not None:
            self._conn.invalidate()  # closes the DBAPI connection: the server drops the locks
            self._conn.close()
            self._conn = None


def issues_being_sent(engine: Any) -> set[int]:
    """The ids of the issues a worker holds the lock of right now (PostgreSQL; empty on
    SQLite, where no worker runs). For ``status`` and for the requeue of lost tasks.

    Advisory locks belong to one database, but ``pg_locks`` lists those of every database of
    the server: only this database's count (another newsletter database on the same server,
    with its own issue ids, must not look busy here)."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 2 AND classid = :c AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": ISSUE_LOCK_CLASS},
        ).scalars()
        return {int(i) for i in found}
