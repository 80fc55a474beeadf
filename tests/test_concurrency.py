"""Several processes on one database at once: the web beside a sender, senders beside each other.

* A web server (``newsletter serve``, a subprocess) takes a stream of subscribe forms from many
  client threads while ``run --once`` (another subprocess) ingests, plans and delivers 200+
  issues over SMTP on the same database: no request fails (SQLite writers wait for each other
  with ``BEGIN IMMEDIATE`` and the busy timeout instead of failing "database is locked"), and
  every issue goes out exactly once.
* Three overlapping ``run --once`` against a slow SMTP server: the send lock lets one of them
  deliver; the others deliver nothing and exit 75, or find nothing due and exit 0.
* ``run --once`` exit statuses: 75 when the mail server is down, 1 when it refuses every
  recipient for good, 0 once everything is sent.

Every server is on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.domain import (
    IngestStatus,
    IssueState,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.store import Store
from tests.conftest import NOW, ROOT
from tests.factories import CONFIG, clean_environ, run_cli, workspace_env
from tests.smtp_server import HOST, Received, Recorder, SmtpServer, cli_env, free_port

RUN_ONCE = ("run", "--once", "--now", NOW.isoformat())
PROFILE = "language, model, speech, diffusion"
EX_TEMPFAIL = 75


def _backend(database_url: str) -> str:
    return database_url.split(":", 1)[0].split("+", 1)[0]


def _settings(workdir: Path, database_url: str) -> Settings:
    return load_settings(CONFIG, environ=workspace_env(workdir, database_url))


def _add_subscribers(database_url: str, count: int, prefix: str = "reader") -> None:
    """``count`` active subscribers whose profile matches the seed papers (migrating first)."""
    store = Store(database_url)
    try:
        store.migrate()
        for i in range(count):
            spec = SubscriberSpec(
                email=f"{prefix}{i:03d}@example.org",
                name=f"Reader {i}",
                profile=PROFILE,
                min_score=0.0,
            )
            store.upsert_subscriber(spec, source=SubscriberSource.CLI, now=NOW)
    finally:
        store.close()


def _database(database_url: str) -> tuple[list[Any], dict[int, Any]]:
    """(issues, subscribers by id) as stored now."""
    store = Store(database_url)
    try:
        return store.issues(), {s.id: s for s in store.subscribers()}
    finally:
        store.close()


def _assert_exactly_once(received: list[Received], database_url: str) -> int:
    """Every issue is sent and arrived once, with its Message-ID; returns the issue count."""
    issues, subscribers = _database(database_url)
    assert issues, "no issue was planned"
    assert Counter(i.state for i in issues) == {IssueState.SENT: len(issues)}
    message_ids = Counter(r.message_id for r in received)
    assert [mid for mid, n in message_ids.items() if n > 1] == []  # no Message-ID twice
    assert len(received) == len(issues)  # one message per issue
    by_recipient = {r.recipient: r.message_id for r in received}
    assert by_recipient == {subscribers[i.subscriber_id].email: i.message_id for i in issues}
    return len(issues)


def _popen(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m newsletter *args`` in the background, stdout and stderr to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "newsletter", *args],
            env=clean_environ(env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout: float = 100) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"{proc.args!r} still running after {timeout} s:\n{log.read_text()}"
        ) from None


# ---------------------------------------------------------------------- A: web beside a sender

CLIENTS = 8
POST_SECONDS = 20.0  # how long the clients post, the run starting with them


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"newsletter serve exited:\n{log.read_text()}"
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"newsletter serve not listening on {port} after 30 s:\n{log.read_text()}")


class _Clients:
    """Threads POSTing the subscribe form with distinct addresses until told to stop."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        self.port = port
        self.stop = stop
        self.lock = threading.Lock()
        self.statuses: Counter[int | str] = Counter()
        self.retry_after: Counter[str] = Counter()
        self.accepted: list[str] = []  # addresses answered 200
        self.threads = [
            threading.Thread(target=self._post_loop, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a client thread hangs"

    def _post_loop(self, client: int) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        n = 0
        try:
            while not self.stop.is_set():
                address = f"web{client}-{n}@example.net"
                n += 1
                body = urllib.parse.urlencode(
                    {
                        "email": address,
                        "name": f"Web {client} {n}",
                        "profile": "speech, diffusion",
                        "timezone": "Europe/Berlin",
                    }
                )
                headers = {"content-type": "application/x-www-form-urlencoded"}
                try:
                    conn.request("POST", "/subscribe", body, headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with self.lock:
                        self.statuses[type(exc).__name__] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                    continue
                with self.lock:
                    self.statuses[response.status] += 1
                    if response.status == 503:
                        self.retry_after[str(response.getheader("retry-after"))] += 1
                    if response.status == 200:
                        self.accepted.append(address)
        finally:
            conn.close()


def test_web_subscribes_while_a_run_delivers_200_issues(
    workdir: Path, database_url: str, tmp_path: Path
) -> None:
    _add_subscribers(database_url, 200)
    settings = _settings(workdir, database_url)
    port = free_port()
    serve_log = tmp_path / "serve.log"
    run_log = tmp_path / "run.log"
    # This test is about the database under concurrent writers, not abuse: the request and
    # confirmation limits (tests/test_web_abuse.py) are lifted so every post reaches it.
    unlimited = {
        "web_subscribe_limit_per_client": "",
        "web_subscribe_limit_total": "",
        "web_confirmations_per_hour": 1_000_000,
    }
    web = _popen(
        workspace_env(workdir, database_url, **unlimited),
        "serve",
        "--port",
        str(port),
        log=serve_log,
    )
    stop = threading.Event()
    clients = _Clients(port, stop)
    try:
        _wait_listening(web, port, serve_log)
        with SmtpServer() as smtp:
            env = cli_env(settings, smtp.port, inbox_settle_seconds=0)
            started = time.monotonic()
            clients.start()
            run = _popen(env, *RUN_ONCE, log=run_log)
            stop.wait(POST_SECONDS)
            run_running = run.poll() is None  # still working when the clients stopped?
            stop.set()
            clients.join()
            run_status = _wait(run, run_log, timeout=80)
            run_seconds = time.monotonic() - started
            received = list(smtp.handler.received)
        web.send_signal(signal.SIGTERM)
        web_status = _wait(web, serve_log, timeout=40)
    finally:
        stop.set()
        if web.poll() is None:
            web.kill()
            web.wait()

    confirmations = len(list((workdir / "outbox").glob("*.eml")))
    pending = [
        s for s in _database(database_url)[1].values() if s.status is SubscriberStatus.PENDING
    ]
    print(
        f"\nweb+run [{_backend(database_url)}]: run exit={run_status} in {run_seconds:.1f} s "
        f"(still running when the clients stopped: {run_running}), "
        f"messages received={len(received)}; web responses={dict(clients.statuses)} "
        f"(503 Retry-After: {dict(clients.retry_after)}), pending subscribers={len(pending)}, "
        f"confirmation emails={confirmations}, serve exit={web_status}"
    )
    assert run_status == 0, run_log.read_text()
    issues = _assert_exactly_once(received, database_url)
    assert issues >= 200
    assert clients.statuses[500] == 0, serve_log.read_text()[-5000:]
    # Only 200 (the "check your inbox" page) or a 503 that says when to come back.
    assert set(clients.statuses) <= {200, 503}, serve_log.read_text()[-5000:]
    assert sum(clients.retry_after.values()) == clients.statuses[503]
    assert "None" not in clients.retry_after
    assert clients.statuses[200] > 0
    # Each accepted form left its pending subscriber, and nobody else is pending.
    assert sorted(s.email for s in pending) == sorted(clients.accepted)
    # uvicorn re-raises the SIGTERM it handled, after a graceful shutdown.
    assert web_status in (0, -signal.SIGTERM), serve_log.read_text()[-5000:]
    assert "Traceback" not in serve_log.read_text(), serve_log.read_text()[-5000:]


# ---------------------------------------------------------------------- B: overlapping senders


class SlowRecorder(Recorder):
    """Takes a second to accept each message (asyncio sleep: other sessions go on)."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(1.0)
        return await super().handle_DATA(server, session, envelope)


def test_overlapping_runs_send_each_issue_once(
    workdir: Path, database_url: str, tmp_path: Path
) -> None:
    # The 3 example subscribers of config/subscribers.toml and 4 more: 7 issues due.
    _add_subscribers(database_url, 4)
    settings = _settings(workdir, database_url)
    with SmtpServer(SlowRecorder()) as smtp:
        env = cli_env(settings, smtp.port, inbox_settle_seconds=0)
        # The three runs also ingest the same new digests at once.
        logs = [tmp_path / f"run{n}.log" for n in range(3)]
        runs = [_popen(env, *RUN_ONCE, log=log) for log in logs]
        statuses = [_wait(run, log) for run, log in zip(runs, logs, strict=True)]
        received = list(smtp.handler.received)
        sessions = smtp.handler.connections
    outputs = [log.read_text() for log in logs]
    print(
        f"\noverlapping runs [{_backend(database_url)}]: exit statuses={statuses}, "
        f"messages received={len(received)}, SMTP sessions={sessions}"
    )
    roles = [_role(output) for output in outputs]
    print(f"roles={roles}")
    # One run delivered all 7 (exit 0); each other one found the send lock held (delivered
    # nothing, said so, exit 75) or started after the first had finished (nothing due, 0).
    assert sorted(roles).count("delivered") == 1, outputs
    assert _assert_exactly_once(received, database_url) == 7
    expected = {"delivered": 0, "lock held": EX_TEMPFAIL, "nothing due": 0}
    assert statuses == [expected[role] for role in roles], outputs


def _role(output: str) -> str:
    """What a run's output says it did: delivered the 7 issues, found the send lock held, or
    found nothing due."""
    if "issues: 7 delivered" in output:
        return "delivered"
    assert "issues: none delivered" in output, output
    if "another newsletter sender is running" in output:
        return "lock held"
    assert "nothing new for anyone, or already sent this slot" in output, output
    return "nothing due"


def test_a_digest_recorded_by_another_process_meanwhile_is_not_an_error(
    workdir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping runs ingesting the same new file: the race, made deterministic. The second
    run looked the file up before the first had recorded it, and records it after."""
    settings = _settings(workdir, database_url)
    seed = sorted((workdir / "inbox").glob("*.txt"))[0]
    with Newsletter(settings) as first, Newsletter(settings) as second:
        monkeypatch.setattr(second.store, "find_digest", lambda content_hash: None)
        [one] = first.ingest([seed], now=NOW)
        [other] = second.ingest([seed], now=NOW)
        digests = first.store.list_digests()
        papers = first.store.count_papers()
    assert one.status is IngestStatus.INGESTED
    assert other.status is IngestStatus.UNCHANGED
    assert len(digests) == 1
    assert papers == one.papers_new


# ---------------------------------------------------------------------- C: exit statuses


class RefuseAll(Recorder):
    """Answers 550 to every RCPT TO while ``refusing`` is set."""

    refusing = True

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refusing:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: no such user"
        return await super().handle_RCPT(server, session, envelope, address, options)


EXAMPLES = ("ada@example.org", "grace@example.org", "karen@example.org")


def test_run_once_exits_75_while_the_mail_server_is_down_then_0(
    workdir: Path, database_url: str
) -> None:
    settings = _settings(workdir, database_url)
    port = free_port()  # nobody listens: connection refused
    env = cli_env(settings, port, inbox_settle_seconds=0)
    down = run_cli(env, *RUN_ONCE)
    issues, _ = _database(database_url)
    print(f"\nserver down [{_backend(database_url)}]: exit={down.returncode}")
    assert down.returncode == EX_TEMPFAIL, down.stdout + down.stderr
    assert "delivery stopped" in down.stdout
    assert "3 issue(s) pending" in down.stdout
    assert len(issues) == 3 and all(i.state is not IssueState.SENT for i in issues)
    with SmtpServer(port=port) as smtp:
        up = run_cli(env, *RUN_ONCE)
        received = list(smtp.handler.received)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "issues: 3 delivered" in up.stdout
    assert _assert_exactly_once(received, database_url) == 3
    again = run_cli(env, *RUN_ONCE)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "issues: none delivered" in again.stdout


def test_run_once_exits_1_when_every_recipient_is_refused_then_0(
    workdir: Path, database_url: str
) -> None:
    settings = _settings(workdir, database_url)
    with SmtpServer(RefuseAll()) as smtp:
        env = cli_env(settings, smtp.port, inbox_settle_seconds=0)
        refused = run_cli(env, *RUN_ONCE)
        print(f"\nrecipients refused [{_backend(database_url)}]: exit={refused.returncode}")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        for address in EXAMPLES:  # the output names each failed issue
            assert f"failed: {address} {NOW.date().isoformat()}: 550" in refused.stdout
        assert "3 failed issue(s)" in refused.stdout
        issues, _ = _database(database_url)
        assert [i.state for i in issues] == [IssueState.FAILED] * 3
        assert smtp.handler.received == []
        # Failed for good: the next run does not resend them and has nothing to report.
        quiet = run_cli(env, *RUN_ONCE)
        assert quiet.returncode == 0, quiet.stdout + quiet.stderr
        assert "issues: none delivered" in quiet.stdout
        # A 550 to RCPT is a hard bounce: each subscriber is suppressed (issue 17).
        assert [s.status for s in _database(database_url)[1].values()] == [
            SubscriberStatus.SUPPRESSED
        ] * 3
        # Once the operator reactivates them, retries the issues and the server takes them, all
        # is sent: exit 0.
        assert isinstance(smtp.handler, RefuseAll)
        smtp.handler.refusing = False
        for address in EXAMPLES:
            reactivated = run_cli(env, "subscriber", "add", address)
            assert reactivated.returncode == 0, reactivated.stdout + reactivated.stderr
        retried = run_cli(env, "retry")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        sent = run_cli(env, *RUN_ONCE)
        received = list(smtp.handler.received)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "issues: 3 delivered" in sent.stdout
    assert _assert_exactly_once(received, database_url) == 3
