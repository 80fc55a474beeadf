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
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

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
        database = make_url(self.engine.url).database
        if not database or database == ":memory:":
            return  # nothing on disk to share: nobody else can open this database
        self.path = Path(database).resolve().with_name(Path(database).name + self.SUFFIX)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
                "AND l.classid = :hi AND l.objid = :lo"
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
