"""Delivery by workers end to end: real ``newsletter worker`` processes (Celery, prefork) on a
real broker, Redis and RabbitMQ, sending to a real SMTP server on loopback, on PostgreSQL.

The scheduler side runs in the test process: planning with ``Newsletter.plan_current_slots``,
then ``Newsletter.deliver()`` (queue mode: the enqueue pass, with the sweep that re-enqueues
lost tasks) every second in a thread, as the daemon does. The workers are given only the
database, the broker and the queue: they send through the SMTP server the scheduler published
in the database. Every message the server accepts is recorded (recipient, Message-ID).

* Two workers deliver 200 issues: each exactly once, the database and ``status`` agree.
* A worker SIGKILLed three times, each time with a message received by the server but not yet
  confirmed to it, while the other goes on: every issue arrives; the only duplicates are the
  messages in flight at the kills, one per kill, each with its first copy's Message-ID.
* The broker restarted mid-run (a private redis-server that comes back empty; a private
  RabbitMQ node's app stopped and started): every issue arrives, none twice.

Skipped without ``NEWSLETTER_TEST_POSTGRES_URL``, and per broker without
``NEWSLETTER_TEST_REDIS_URL`` / ``NEWSLETTER_TEST_RABBITMQ_URL``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.domain import IssueState
from tests.conftest import NOW, RABBITMQ_ENV, REDIS_ENV
from tests.factories import CONFIG, run_cli, workspace_env
from tests.smtp_server import HOST, SmtpServer
from tests.test_exactly_once import DIGEST
from tests.worker_harness import (
    QUEUE_ENV,
    RABBITMQ_BIN,
    SMTP_TIMEOUTS,
    PrivateRabbit,
    PrivateRedis,
    Scheduler,
    SlowRecorder,
    Worker,
    delete_queue,
    held_issue_locks,
    unique_queue,
    wait_for,
    worker_env,
)

ISSUES = 200
KILLS = 3

_BROKER_ENV = {"redis": REDIS_ENV, "rabbitmq": RABBITMQ_ENV}


def _broker_param(name: str) -> object:
    env = _BROKER_ENV[name]
    return pytest.param(
        name,
        id=name,
        marks=pytest.mark.skipif(
            not os.environ.get(env),
            reason=f"{name} worker tests skipped: set {env} (.ci/run sets it)",
        ),
    )


BROKERS = [_broker_param("redis"), _broker_param("rabbitmq")]


@dataclass
class Run:
    """One scenario: the planned issues, the SMTP server, the scheduler and the workers."""

    settings: Settings
    env: dict[str, str]  # the scheduler's (for `newsletter status`)
    app: Newsletter
    recorder: SlowRecorder
    scheduler: Scheduler
    workers: list[Worker]
    rcpt: dict[int, str]  # issue id -> recipient
    broker_url: str
    queue: str

    def diagnostics(self) -> str:
        counts = Counter(i.state.value for i in self.app.store.issues())
        parts = [
            f"issues by state: {dict(counts)}; messages received: {self.recorder.count()}",
            self.scheduler.summary(),
            *(w.tail() for w in self.workers),
        ]
        return "\n".join(parts)

    def all_sent(self) -> bool:
        return all(i.state is IssueState.SENT for i in self.app.store.issues())

    def wait_all_sent(self, timeout: float = 90) -> None:
        wait_for(
            self.all_sent,
            f"all {len(self.rcpt)} issues sent",
            timeout=timeout,
            diagnostics=self.diagnostics,
            interval=0.25,
        )

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            assert not worker.left_behind(), f"worker {worker.name} left processes behind"


def _subscribers_file(path: Path, count: int) -> None:
    entries = [
        f'[[subscriber]]\nemail = "reader{i:03d}@example.org"\nname = "Reader {i}"\n'
        f'profile = "quantum"\nmax_papers = 3\nmin_score = 0.01\n'
        for i in range(count)
    ]
    path.write_text("\n".join(entries), encoding="utf-8")


def _start_run(
    stack: ExitStack,
    tmp_path: Path,
    database_url: str,
    broker_url: str,
    *,
    issues: int = ISSUES,
    reply_delay: float = 0.0,
) -> Run:
    """Plan ``issues`` issues (one per subscriber, 3 papers each), start the SMTP server,
    hand the issues to the broker once (which publishes the delivery settings), and start the
    scheduler's passes. No worker yet."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "today.txt").write_text(DIGEST, encoding="utf-8")
    _subscribers_file(tmp_path / "subscribers.toml", issues)
    recorder = SlowRecorder(reply_delay=reply_delay)
    server = stack.enter_context(SmtpServer(recorder))
    queue = unique_queue()
    stack.callback(delete_queue, broker_url, queue)
    env = workspace_env(
        tmp_path,
        database_url,
        subscribers_file=tmp_path / "subscribers.toml",
        inbox_settle_seconds=0,
        mailer="smtp",
        smtp_host=HOST,
        smtp_port=server.port,
        smtp_security="none",
        queue_broker_url=broker_url,
        queue_name=queue,
        **SMTP_TIMEOUTS,
    )
    env.update(QUEUE_ENV)
    settings = load_settings(CONFIG, environ=env)
    assert settings.queue.broker_url == broker_url and settings.queue.name == queue
    app = stack.enter_context(Newsletter(settings))
    app.ingest(now=NOW)
    assert app.sync_subscribers(NOW).synced == issues
    app.plan_current_slots(NOW)
    planned = app.store.issues()
    assert len(planned) == issues
    emails = {s.id: s.email for s in app.store.subscribers()}
    rcpt = {i.id: emails[i.subscriber_id] for i in planned}
    first = app.deliver()
    assert (first.queued, first.stopped) == (issues, ""), first
    scheduler = Scheduler(app).start()
    stack.callback(scheduler.stop)
    return Run(settings, env, app, recorder, scheduler, [], rcpt, broker_url, queue)


def _add_workers(stack: ExitStack, run: Run, tmp_path: Path, count: int) -> list[Worker]:
    env = worker_env(run.settings.database_url, run.broker_url, run.queue)
    for n in range(count):
        worker = Worker(chr(ord("A") + n), env, tmp_path)
        run.workers.append(worker)
        stack.callback(worker.stop)
        worker.start()
    return run.workers


def _check_delivered(run: Run, extra: Counter[str]) -> None:
    """Every issue arrived, ``1 + extra[recipient]`` times, every copy with the Message-ID
    the database holds for the issue; every issue sent, one sent-log row per paper."""
    rows = run.recorder.rows()
    copies = Counter(rcpt for rcpt, _ in rows)
    ids: dict[str, set[str]] = defaultdict(set)
    for rcpt, message_id in rows:
        ids[rcpt].add(message_id)
    expected = {rcpt: 1 + extra[rcpt] for rcpt in run.rcpt.values()}
    wrong = {r: (copies[r], n) for r, n in expected.items() if copies[r] != n}
    assert not wrong, f"recipient: (copies, expected) {wrong}\n{run.diagnostics()}"
    assert set(copies) == set(expected)
    issues = run.app.store.issues()
    assert {i.state for i in issues} == {IssueState.SENT}
    for issue in issues:
        assert ids[run.rcpt[issue.id]] == {issue.message_id}, "a copy with another Message-ID"
    delivered = sorted((i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids)
    assert len(delivered) == len(issues) * 3
    assert run.app.store.sent_log() == delivered  # one sent-log row per delivered paper


# ---------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("broker", BROKERS)
def test_two_workers_deliver_every_issue_exactly_once(
    broker: str, pg_url: str, tmp_path: Path
) -> None:
    broker_url = os.environ[_BROKER_ENV[broker]]
    with ExitStack() as stack:
        run = _start_run(stack, tmp_path, pg_url, broker_url)
        workers = _add_workers(stack, run, tmp_path, 2)
        run.wait_all_sent()
        _check_delivered(run, Counter())
        # Both workers sent, and between them every issue once.
        sent = {w.name: w.sent() for w in workers}
        assert sum(sent.values()) == ISSUES and all(sent.values()), (sent, run.diagnostics())

        # The last worker records its issue sent, then lets go of its lock: quiet from then on.
        engine = run.app.store.engine
        wait_for(
            lambda: not held_issue_locks(engine), "the workers to let go of every lock", timeout=10
        )
        status = run_cli(run.env, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["workers"] == {"queued": 0, "in_flight": 0, "interrupted": 0}
        assert report["pending"] == [] and report["failed"] == []
        run.scheduler.stop()
        assert not run.scheduler.errors and not run.scheduler.stopped, run.scheduler.summary()
        run.stop_workers()


# ---------------------------------------------------------------------------- (b)


def _kill_mid_send(run: Run, victim: Worker, engine: object) -> str:
    """Wait until ``victim`` holds an issue whose message the server has received and not yet
    confirmed, freeze the worker (SIGSTOP: nothing it holds changes), make sure it has not
    recorded the issue sent, and SIGKILL its process group. Returns the recipient of that
    message, which will arrive a second time."""
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, f"{victim.name} never had a message in flight\n" + (
            run.diagnostics()
        )
        assert victim.proc is not None and victim.proc.poll() is None, run.diagnostics()
        pids = victim.pids()
        mine = [i for i, pid in held_issue_locks(engine).items() if pid in pids]
        if not any(run.recorder.in_flight(run.rcpt[i]) for i in mine):
            time.sleep(0.005)
            continue
        victim.signal(signal.SIGSTOP)
        # Frozen: the locks it holds and the issue states it left cannot change now.
        mine = [i for i, pid in held_issue_locks(engine).items() if pid in pids]
        states = {i.id: i.state for i in run.app.store.issues() if i.id in mine}
        hit = [i for i in mine if states.get(i) is IssueState.SENDING]
        if len(hit) == 1:
            victim.kill()
            return run.rcpt[hit[0]]
        victim.signal(signal.SIGCONT)  # it recorded the outcome meanwhile: try the next one


@pytest.mark.parametrize("broker", BROKERS)
def test_worker_killed_mid_send_loses_nothing(broker: str, pg_url: str, tmp_path: Path) -> None:
    broker_url = os.environ[_BROKER_ENV[broker]]
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        run = _start_run(stack, tmp_path, pg_url, broker_url, reply_delay=0.08)
        victim, other = _add_workers(stack, run, tmp_path, 2)
        in_flight: list[str] = []
        for _ in range(KILLS):
            in_flight.append(_kill_mid_send(run, victim, engine))
            assert other.proc is not None and other.proc.poll() is None, run.diagnostics()
            victim.start()
        assert not run.all_sent(), "the kills came too late: nothing left to send"
        run.wait_all_sent()
        # The one message in flight at each kill (concurrency 1) arrived twice; nothing else.
        _check_delivered(run, Counter(in_flight))
        run.scheduler.stop()
        assert not run.scheduler.errors, run.scheduler.summary()
        run.stop_workers()
        print(
            f"\nworker kills [{broker}]: kills={KILLS} duplicates={in_flight} "
            f"sent by {victim.name}={victim.sent()} {other.name}={other.sent()} "
            f"requeued={run.scheduler.requeued}"
        )


# ---------------------------------------------------------------------------- (c)


def _private_broker(broker: str, stack: ExitStack, tmp_path: Path) -> PrivateRedis | PrivateRabbit:
    folder = tmp_path / f"{broker}-data"
    folder.mkdir()
    if broker == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed: the Redis restart test needs one")
        redis = PrivateRedis(folder)
        stack.callback(redis.kill)
        return redis.start()
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip(f"no RabbitMQ server in {RABBITMQ_BIN}: the RabbitMQ restart test needs one")
    rabbit = PrivateRabbit(folder)
    stack.callback(rabbit.close)
    return rabbit.start()


@pytest.mark.parametrize("broker", BROKERS)
def test_broker_restarted_mid_run_loses_nothing(broker: str, pg_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        server = _private_broker(broker, stack, tmp_path)
        run = _start_run(stack, tmp_path, pg_url, server.url, reply_delay=0.05)
        _add_workers(stack, run, tmp_path, 2)
        wait_for(
            lambda: run.recorder.count() >= ISSUES // 4,
            "a quarter of the issues sent",
            timeout=60,
            diagnostics=run.diagnostics,
        )
        if isinstance(server, PrivateRedis):
            server.kill()  # Redis keeps nothing: every task in the queue is gone
            time.sleep(1.5)  # an outage, during which the scheduler's passes fail
            server.start()
        else:
            server.stop_app()  # the durable queue and its persistent tasks survive
            time.sleep(1.5)
            server.start_app()
        assert not run.all_sent(), "the restart came too late: nothing left to send"
        run.wait_all_sent()
        _check_delivered(run, Counter())
        run.scheduler.stop()
        assert not run.scheduler.errors, run.scheduler.summary()
        run.stop_workers()
        print(
            f"\nbroker restart [{broker}]: requeued={run.scheduler.requeued} "
            f"passes stopped={len(run.scheduler.stopped)}"
        )
