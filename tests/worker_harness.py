"""What the end-to-end worker tests (tests/test_workers.py) run: ``newsletter worker``
subprocesses, the scheduler's enqueue pass in a thread, an SMTP server that answers slowly,
and brokers of their own to restart.

* :class:`Worker`: ``python -m newsletter worker`` in a process group of its own (the Celery
  main process and its pool), output in a log file; killed (SIGKILL to the group), stopped
  (SIGTERM, a warm shutdown), paused, restarted. :func:`group_members` says which processes of
  a group are alive, so a test can prove none is left behind.
* :class:`Scheduler`: ``Newsletter.deliver()`` (queue mode: the enqueue pass with the requeue
  sweep) every second in a thread, as the daemon runs it.
* :class:`SlowRecorder`: the aiosmtpd recorder of tests/smtp_server.py that records each
  message as its DATA ends, then answers ``reply_delay`` seconds later, and says which
  recipients' messages are in that window (received, not yet confirmed to the sender).
* :func:`held_issue_locks`: which worker process holds which issue's lock (``pg_locks``).
* :class:`PrivateRedis` and :class:`PrivateRabbit`: a broker on free ports, started, stopped
  and restarted by the test (never the machine's own).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import text

from newsletter.app import Newsletter
from newsletter.store.lock import ISSUE_LOCK_CLASS
from tests.factories import CONFIG, ROOT, clean_environ
from tests.smtp_server import HOST, Recorder, free_port

#: Limits small enough for a test to see a lost task come back (Redis hands an unacked task
#: to another worker after the visibility timeout; the requeue sweep re-enqueues a task lost
#: after 6 s), with SMTP timeouts that fit the time limit (config validation checks it).
QUEUE_ENV = {
    "NEWSLETTER_QUEUE_TASK_TIME_LIMIT_SECONDS": "10",
    "NEWSLETTER_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "20",
    "NEWSLETTER_QUEUE_REQUEUE_AFTER_MINUTES": "0.1",
}
SMTP_TIMEOUTS = {"smtp_timeout_seconds": 2, "smtp_data_timeout_seconds": 4}


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float,
    diagnostics: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds saying what was
    awaited, with ``diagnostics()`` (worker log tails, counts)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}\n{diagnostics()}"
            )
        time.sleep(interval)


# ---------------------------------------------------------------------------- SMTP


@dataclass
class SlowRecorder(Recorder):
    """A :class:`Recorder` that answers the end of DATA ``reply_delay`` seconds after it
    recorded the message: a message in that window has arrived, and its sender does not know."""

    reply_delay: float = 0.0
    pending: Counter[str] = field(default_factory=Counter)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.reply_delay and reply.startswith("250"):
            (rcpt,) = envelope.rcpt_tos
            with self.lock:
                self.pending[rcpt] += 1
            try:
                await asyncio.sleep(self.reply_delay)
            finally:
                with self.lock:
                    self.pending[rcpt] -= 1
        return reply

    def in_flight(self, rcpt: str) -> bool:
        """A message to ``rcpt`` was received and not yet confirmed."""
        with self.lock:
            return self.pending[rcpt] > 0

    def rows(self) -> list[tuple[str, str]]:
        """(recipient, Message-ID) of every message received, in arrival order."""
        with self.lock:
            return [(r.recipient, r.message_id) for r in self.received]

    def count(self) -> int:
        with self.lock:
            return len(self.received)


# ---------------------------------------------------------------------------- workers


def group_members(pgid: int) -> set[int]:
    """The live processes (zombies aside) of process group ``pgid``, from /proc."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(entry))
    return found


def worker_env(database_url: str, broker_url: str, queue: str) -> dict[str, str]:
    """A worker's own settings: the database, the broker and its queue, the limits. Nothing
    else: site, mail and SMTP settings come from the database, as the scheduler published them
    (its own file says ``mailer = "outbox"``: a message at the SMTP server proves it)."""
    return {
        "NEWSLETTER_CONFIG": str(CONFIG),
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_QUEUE_BROKER_URL": broker_url,
        "NEWSLETTER_QUEUE_NAME": queue,
        **QUEUE_ENV,
    }


class Worker:
    """``newsletter worker --concurrency N`` in a process group of its own; restartable."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, concurrency: int = 1):
        self.name = name
        self.env = env
        self.concurrency = concurrency
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.groups: list[int] = []  # every process group this worker ever had

    def start(self) -> Worker:
        assert self.proc is None, f"worker {self.name} is running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {len(self.groups) + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newsletter", "worker", f"--concurrency={self.concurrency}"],
                env=clean_environ(self.env),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.append(self.proc.pid)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None

    def pids(self) -> set[int]:
        """The live processes of the running worker (main process and pool)."""
        return group_members(self.proc.pid) if self.proc is not None else set()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group (main process and pool at once), and wait until none is
        left."""
        assert self.proc is not None
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None
        wait_for(lambda: not group_members(pgid), f"worker {self.name} to die", timeout=10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL if it takes longer than
        ``timeout``."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout)
            wait_for(lambda: not group_members(pgid), f"worker {self.name}'s pool", timeout=10)
        except (subprocess.TimeoutExpired, AssertionError):
            pass
        finally:
            if group_members(pgid) or self.proc.poll() is None:
                self.kill()
            self.proc = None

    def left_behind(self) -> set[int]:
        """Processes of any of this worker's groups still alive."""
        return set().union(*(group_members(g) for g in self.groups))

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def sent(self) -> int:
        """Issues this worker reported sent (the pipeline's INFO line per issue)."""
        return len(re.findall(r"^.*sent issue \d+ to ", self.log(), flags=re.MULTILINE))

    def tail(self, lines: int = 25) -> str:
        text_ = "\n".join(self.log().splitlines()[-lines:])
        return f"--- worker {self.name} ({self.log_path}), last {lines} lines:\n{text_}"


def worker_ready(worker: Worker) -> bool:
    """Celery said the worker is ready (it consumes from now on)."""
    return " ready." in worker.log().rsplit("--- start", 1)[-1]


# ---------------------------------------------------------------------------- the scheduler


class Scheduler:
    """The enqueue pass (``Newsletter.deliver()`` in queue mode) every ``interval`` seconds
    in a thread, with the real clock, as the daemon does; remembers what each pass said."""

    def __init__(self, app: Newsletter, interval: float = 1.0) -> None:
        self.app = app
        self.interval = interval
        self.passes = 0
        self.queued = 0
        self.requeued = 0
        self.stopped: list[str] = []  # why passes stopped (the broker was down)
        self.errors: list[str] = []  # a pass that raised: a bug
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                delivery = self.app.deliver()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.passes += 1
            self.queued += delivery.queued
            self.requeued += delivery.requeued
            if delivery.stopped:
                self.stopped.append(delivery.stopped)

    def summary(self) -> str:
        return (
            f"scheduler: {self.passes} passes, {self.queued} queued, {self.requeued} requeued, "
            f"{len(self.stopped)} stopped (last: {self.stopped[-1:]}), errors: {self.errors[-3:]}"
        )


# ---------------------------------------------------------------------------- the database


def held_issue_locks(engine: Any) -> dict[int, int]:
    """Issue id -> pid of the worker process holding its lock (from the ``application_name``
    its lock connection sets: ``newsletter worker pid=N host=H``), in this database only."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.objid, a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                "AND l.classid = :c AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": ISSUE_LOCK_CLASS},
        ).all()
    held: dict[int, int] = {}
    for issue_id, name in rows:
        found = re.search(r"pid=(\d+)", name or "")
        held[int(issue_id)] = int(found.group(1)) if found else 0
    return held


# ---------------------------------------------------------------------------- brokers


def delete_queue(broker_url: str, name: str) -> None:
    """Delete a test's queue. Best effort: the broker may be gone.

    On Redis, kombu's ``queue_delete`` forgets only the bindings its own connection made, so
    the keys go directly: the list, its binding sets, and the queue's tasks still
    unacknowledged (they would come back into a queue nobody reads)."""
    if broker_url.startswith("redis://"):
        _delete_redis_queue(broker_url, name)
        return
    from kombu.connection import Connection

    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            conn.default_channel.queue_delete(name)
    except Exception:  # noqa: BLE001
        return


def _delete_redis_queue(broker_url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5)
    try:
        keys = [name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"]
        keys += client.scan_iter(match=f"{name}\x06\x16*")  # priority lists, if any
        client.delete(*keys)
        for tag, payload in client.hgetall("unacked").items():
            try:
                routing_key = json.loads(payload)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == name:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    except redis.RedisError:
        return
    finally:
        client.close()


def unique_queue() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class PrivateRedis:
    """``redis-server`` on a free loopback port, keeping nothing on disk: killed and started
    again on the same port, it comes back empty (every queued task lost)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> PrivateRedis:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
        ]
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._pong, f"redis-server on port {self.port}", timeout=15)
        return self

    def _pong(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class PrivateRabbit:
    """A RabbitMQ node of the test's own (own name, loopback ports, data folder, cookie), so
    that stopping it disturbs nobody else's queues (the machine's node serves other tests and
    benchmarks meanwhile); its durable queues and persistent messages survive
    ``stop_app``/``start_app`` as on any node. Starts in about 4 s."""

    def __init__(self, workdir: Path) -> None:
        self.node = f"nltest{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dir = workdir
        (workdir / "rabbitmq.conf").write_text("", encoding="utf-8")
        (workdir / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        (workdir / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(workdir),  # the Erlang cookie the node and rabbitmqctl share
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"amqp://guest:guest@{HOST}:{self.port}//"

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> PrivateRabbit:
        with (self.dir / "rabbitmq-server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.await_startup()
        return self

    def await_startup(self) -> None:
        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self._log_tail()
            return self.ctl("await_startup", "--timeout", "30").returncode == 0

        wait_for(up, f"RabbitMQ node {self.node}", timeout=60, diagnostics=self._log_tail)

    def stop_app(self) -> None:
        done = self.ctl("stop_app")
        assert done.returncode == 0, done.stderr

    def start_app(self) -> None:
        done = self.ctl("start_app")
        assert done.returncode == 0, done.stderr
        self.await_startup()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.ctl("shutdown", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever the node left (epmd is not ours)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def _log_tail(self) -> str:
        path = self.dir / "rabbitmq-server.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-20:])
