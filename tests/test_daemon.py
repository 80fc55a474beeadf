"""The real daemon as a subprocess: ingest, send, catch up, one per database, clean stop."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.daemon import READY
from tests.conftest import ROOT, SEEDS
from tests.factories import clean_environ, run_cli, workspace_env

SEED = "000_3a916ff8f52d44d3.txt"  # 72 papers, several on diffusion


def _subscribers(path: Path, *entries: tuple[str, str]) -> None:
    path.write_text(
        "".join(
            f'[[subscriber]]\nemail = "{email}"\nprofile = "diffusion"\ntimezone = "UTC"\n'
            f'send_at = "{send_at}"\nmin_score = 0.5\n\n'
            for email, send_at in entries
        )
    )


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "config").mkdir()
    return workspace_env(
        tmp_path,
        database_url,
        scan_interval_seconds=1,
        subscriber_refresh_seconds=1,
        inbox_settle_seconds=0,
    )


class Daemon:
    def __init__(self, env: dict[str, str], log: Path, verbosity: str = "-v") -> None:
        self.log = log
        with log.open("w") as stderr:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newsletter", verbosity, "run"],
                env=clean_environ(env),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"daemon exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in time:\n{self.output()}"
            time.sleep(0.1)

    def count(self, *parts: str) -> int:
        """The lines of the log that contain each of ``parts``."""
        return sum(all(p in line for p in parts) for line in self.output().splitlines())

    def wait_for_count(self, n: int, *parts: str, timeout: float = 30) -> None:
        """Wait until ``n`` lines of the log contain each of ``parts``."""
        deadline = time.monotonic() + timeout
        while self.count(*parts) < n:
            assert self.proc.poll() is None, f"daemon exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"not {n} {parts!r} in time:\n{self.output()}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=15)
        return code, time.monotonic() - started


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    running: list[Daemon] = []
    yield running
    for d in running:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _emls(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["NEWSLETTER_OUTBOX_DIR"]).glob("*.eml"))


def test_daemon_ingests_sends_and_stops_on_sigterm(
    env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    _subscribers(Path(env["NEWSLETTER_SUBSCRIBERS_FILE"]), ("d@example.org", "07:00"))
    # -vv: APScheduler's per-run lines, waited for below, are DEBUG lines.
    daemon = Daemon({**env, "NEWSLETTER_DEBUG_SEND_EVERY_SECONDS": "2"}, tmp_path / "d.log", "-vv")
    daemons.append(daemon)
    daemon.wait_for("send calendar: 1 subscriber(s) added or moved, 0 removed (was 0, now 1)")
    shutil.copy(SEEDS / SEED, Path(env["NEWSLETTER_INBOX"]) / SEED)
    daemon.wait_for("sent issue")
    # Two more send ticks end (so one whole tick ran after the issue was recorded): the slot
    # already has its issue, nothing more goes out.
    tick_done = ('Job "send tick ', '" executed successfully')
    daemon.wait_for_count(daemon.count(*tick_done) + 2, *tick_done)
    assert [p.name.split("_", 1)[1] for p in _emls(env)] == ["00001_d.eml"]
    log = daemon.output()
    assert f"ingested {Path(env['NEWSLETTER_INBOX']) / SEED}: 72 entries" in log
    assert log.count("sent issue") == 1
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 10
    assert "daemon stopped" in daemon.output()


def test_second_daemon_refuses_and_names_the_first(
    env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    _subscribers(Path(env["NEWSLETTER_SUBSCRIBERS_FILE"]), ("d@example.org", "07:00"))
    first = Daemon(env, tmp_path / "first.log")
    daemons.append(first)
    first.wait_for("daemon started")
    started = time.monotonic()
    second = run_cli(env, "run", timeout=30)
    assert second.returncode == 3
    assert time.monotonic() - started < 15
    assert "another newsletter daemon is running on" in second.stderr
    assert f"pid={first.proc.pid}" in second.stderr or f"pid {first.proc.pid}" in second.stderr
    assert first.proc.poll() is None  # the first one is untouched
    code, _ = first.stop(signal.SIGINT)
    assert code == 0


def test_catch_up_within_grace_and_skip_older(
    env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    now = datetime.now(UTC)  # slots 1 h and 13.5 h ago (possibly yesterday's: same rule)
    recent = (now - timedelta(hours=1)).strftime("%H:%M")
    old = (now - timedelta(hours=13, minutes=30)).strftime("%H:%M")
    _subscribers(
        Path(env["NEWSLETTER_SUBSCRIBERS_FILE"]),
        ("recent@example.org", recent),
        ("old@example.org", old),
    )
    shutil.copy(SEEDS / SEED, Path(env["NEWSLETTER_INBOX"]) / SEED)
    daemon = Daemon(env, tmp_path / "c.log")
    daemons.append(daemon)
    daemon.wait_for("sent issue")
    daemon.wait_for("skipped old@example.org's missed slot")
    assert [p.name.split("_", 2)[2] for p in _emls(env)] == ["recent.eml"]
    assert daemon.stop()[0] == 0
    # Restarting does not send the caught-up slot again.
    again = Daemon(env, tmp_path / "c2.log")
    daemons.append(again)
    again.wait_for(READY)  # start-up catch-up done
    assert len(_emls(env)) == 1
    assert "catching up" not in again.output()
    assert "skipped old@example.org's missed slot" in again.output()
    assert again.stop()[0] == 0


def test_sigterm_mid_delivery_leaves_nothing_half_recorded(
    env: dict[str, str], tmp_path: Path, daemons: list[Daemon], database_url: str
) -> None:
    from newsletter.domain import IssueState
    from newsletter.store import Store
    from tests.smtp_server import HOST, SmtpServer

    _subscribers(
        Path(env["NEWSLETTER_SUBSCRIBERS_FILE"]),
        *[(f"s{n:02d}@example.org", "07:00") for n in range(40)],
    )
    shutil.copy(SEEDS / SEED, Path(env["NEWSLETTER_INBOX"]) / SEED)
    with SmtpServer() as server:
        smtp_env = {
            **env,
            "NEWSLETTER_MAILER": "smtp",
            "NEWSLETTER_SMTP_HOST": HOST,
            "NEWSLETTER_SMTP_PORT": str(server.port),
            "NEWSLETTER_SMTP_SECURITY": "none",
            "NEWSLETTER_SMTP_RATE_PER_SECOND": "5",
            "NEWSLETTER_DEBUG_SEND_EVERY_SECONDS": "1",
        }
        daemon = Daemon(smtp_env, tmp_path / "t.log")
        daemons.append(daemon)
        deadline = time.monotonic() + 60
        while len(server.handler.received) < 5:
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.05)
        code, seconds = daemon.stop(signal.SIGTERM)
        assert code == 0 and seconds < 10, daemon.output()
        received = {r.message_id for r in server.handler.received}
        store = Store(database_url)
        issues = store.issues()
        states = {i.state for i in issues}
        sent = {i.message_id for i in issues if i.state is IssueState.SENT}
        # Every message the server got is recorded sent, and nothing is left mid-send.
        assert IssueState.SENDING not in states
        assert sent == received and 5 <= len(sent) < 40
        store.close()
        # A restart sends the rest, each once.
        again = Daemon(smtp_env, tmp_path / "t2.log")
        daemons.append(again)
        deadline = time.monotonic() + 60
        while len(server.handler.received) < 40:
            assert time.monotonic() < deadline, again.output()
            time.sleep(0.1)
        assert again.stop()[0] == 0
        ids = [r.message_id for r in server.handler.received]
        assert len(ids) == len(set(ids)) == 40


def test_sighup_refreshes_the_calendar_and_a_stop_during_start_up_exits(
    env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    subs = Path(env["NEWSLETTER_SUBSCRIBERS_FILE"])
    _subscribers(subs, ("a@example.org", "07:00"))
    slow_refresh = {**env, "NEWSLETTER_SUBSCRIBER_REFRESH_SECONDS": "3600"}
    daemon = Daemon(slow_refresh, tmp_path / "h.log")
    daemons.append(daemon)
    daemon.wait_for("Scheduler started")
    _subscribers(subs, ("a@example.org", "07:00"), ("b@example.org", "09:15"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("send calendar: 1 subscriber(s) added or moved, 0 removed (was 1, now 2)")
    assert "SIGHUP: refreshing subscribers" in daemon.output()
    assert daemon.stop()[0] == 0
    # A stop signal as soon as the daemon says it started (before its scheduler runs).
    early = Daemon(slow_refresh, tmp_path / "e.log")
    daemons.append(early)
    early.wait_for("daemon started")
    code, seconds = early.stop(signal.SIGTERM)
    assert code == 0 and seconds < 10
    assert "daemon stopped" in early.output()
