"""Logs: no subscriber token and no secret at any level, APScheduler's per-run lines at DEBUG.

Real processes: ``run --once``, ``subscriber list``, ``status`` and a daemon with ``-vv``, and
``serve -vv`` (uvicorn) answering the pages whose paths carry tokens (archive, private feeds,
unsubscribe, preferences, feedback, mute); every token and feed token in the database, the
SMTP password and the secret key are then looked for in everything they logged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from sqlalchemy import text

from newsletter.config import Settings
from newsletter.daemon import READY
from tests.conftest import NOW, ROOT
from tests.factories import clean_environ, open_store, run_cli, settings_env
from tests.smtp_server import free_port

SMTP_PASSWORD = "s3cret-smtp-Passw0rd"
SECRET_KEY = "form-signing-secret-0123456789abcdef"


class Server:
    """``newsletter serve`` as a subprocess on ``port``, its stderr in ``log``."""

    def __init__(
        self,
        settings: Settings,
        port: int,
        log: Path,
        *,
        verbosity: tuple[str, ...] = ("-vv",),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port, self.log = port, log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newsletter", *verbosity, "serve", "--port", str(port)],
                env=clean_environ(env or settings_env(settings)),
                cwd=ROOT,
                stdout=stderr,
                stderr=stderr,
            )

    def get(self, path: str, data: bytes | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"serve exited:\n{self.log.read_text()}"
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve not up:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def _secrets(settings: Settings) -> list[str]:
    with closing(open_store(settings)) as store, store.engine.connect() as conn:
        rows = conn.execute(text("SELECT token, feed_token FROM subscribers")).all()
    tokens = [t for row in rows for t in row if t]
    assert len(tokens) == 2 * len(rows) and len(rows) >= 3
    return [*tokens, SMTP_PASSWORD, SECRET_KEY]


def test_no_token_or_secret_in_debug_logs(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(
        settings,
        feeds_private_files="true",  # private feed files written (and logged) by the run
        smtp_password=SMTP_PASSWORD,
        secret_key=SECRET_KEY,
        scan_interval_seconds=1,
        inbox_settle_seconds=0,
    )
    logs: dict[str, str] = {}
    run = run_cli(env, "-vv", "run", "--once", "--now", NOW.isoformat())
    assert run.returncode == 0, run.stderr
    logs["run --once"] = run.stdout + run.stderr
    for args in (("status",), ("status", "--json")):
        done = run_cli(env, "-vv", *args)
        assert done.returncode == 0, done.stderr
        logs[" ".join(args)] = done.stdout + done.stderr
    # `subscriber list` prints the private feed URLs on purpose (its output, for the
    # operator): only its log (stderr) is looked at.
    listed = run_cli(env, "-vv", "subscriber", "list")
    assert listed.returncode == 0, listed.stderr
    assert "/feeds/" in listed.stdout
    logs["subscriber list (log)"] = listed.stderr
    assert "sent issue" in logs["run --once"]
    assert "DEBUG" in logs["run --once"]  # -vv did log at debug level

    with closing(open_store(settings)) as store, store.engine.connect() as conn:
        issue = conn.execute(
            text(
                "SELECT s.token, s.feed_token, i.slot_date, p.paper_id FROM issues i "
                "JOIN subscribers s ON s.id = i.subscriber_id "
                "JOIN issue_papers p ON p.issue_id = i.id WHERE i.state = 'sent' "
                "ORDER BY i.id, p.position LIMIT 1"
            )
        ).one()
    token, feed_token, slot, paper_id = issue
    server = Server(settings, free_port(), tmp_path / "serve.log", env=env)
    try:
        server.wait_until_up()
        pages = [
            f"/issues/{token}/{slot}",
            f"/feeds/{feed_token}.atom",
            f"/feeds/{feed_token}.rss",
            f"/preferences/{token}",
            f"/feedback/{token}/{paper_id}/like",
            f"/mute/{token}",
            f"/unsubscribe/{token}",
        ]
        assert [server.get(p)[0] for p in pages] == [200] * len(pages)
        assert server.get("/unsubscribe/" + "x" * 32)[0] == 404
        # RFC 8058 one-click unsubscribe, as a mail client posts it.
        assert server.get(f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click")[0] == 200
    finally:
        logs["serve -vv"] = server.stop()
    assert "serving http://127.0.0.1:8080" in logs["serve -vv"]
    assert "DEBUG" in logs["serve -vv"]

    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("w") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "-vv", "run"],
            env=clean_environ(env),
            cwd=ROOT,
            stdout=stderr,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while "Running job" not in daemon_log.read_text():
            assert daemon.poll() is None, daemon_log.read_text()
            assert time.monotonic() < deadline, daemon_log.read_text()
            time.sleep(0.1)
        assert READY in daemon_log.read_text()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    logs["run (daemon) -vv"] = daemon_log.read_text()
    # APScheduler's per-run lines are there with -vv, at DEBUG.
    running = [line for line in logs["run (daemon) -vv"].splitlines() if "Running job" in line]
    assert running and all(" DEBUG apscheduler.executors.default: " in line for line in running)

    for secret in _secrets(settings):
        leaks = [name for name, output in logs.items() if secret in output]
        assert leaks == [], f"a secret of length {len(secret)} is in the output of {leaks}"
