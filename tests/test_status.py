"""`newsletter status`: the daemon holding the database, the last scan and ingest in local time,
today's counts, the configuration in use; with a real daemon running, and without."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from newsletter.config import Settings, load_settings
from newsletter.daemon import READY
from newsletter.deliver import MemoryMailer
from newsletter.store.engine import display_url
from newsletter.web import create_app
from tests.conftest import NOW, ROOT
from tests.factories import CONFIG, clean_environ, run_cli, settings_env
from tests.test_observe import scrape, value


def status_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_cli(env, "status", "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_status_without_a_daemon_in_local_time(settings: Settings) -> None:
    env = settings_env(settings, timezone="Europe/Berlin")
    run = run_cli(env, "run", "--once", "--now", NOW.isoformat())
    assert run.returncode == 0, run.stderr
    report = status_json(env, "--now", NOW.isoformat())
    assert report["daemon"] == {
        "running": False,
        "pid": None,
        "host": None,
        "since": None,
        "heartbeat": None,
    }
    # The run scanned the inbox at NOW (09:00 UTC): 10:00 in Berlin, ISO 8601 with the offset.
    assert report["last_scan"] == "2026-11-23T10:00:00+01:00"
    assert report["last_ingest"] == "2026-11-23T10:00:00+01:00"
    assert report["timezone"] == "Europe/Berlin"
    # Today (Berlin) is 2026-11-23: the run sent Ada's, Grace's and Karen's issues of that slot.
    assert report["today"] == {"day": "2026-11-23", "due": 3, "sent": 3, "pending": 0, "failed": 0}
    # Another day has no issue yet.
    later = status_json(env, "--now", "2026-11-25T09:00+00:00")["today"]
    assert later == {"day": "2026-11-25", "due": 0, "sent": 0, "pending": 0, "failed": 0}
    config = report["config"]
    assert config["file"] == str(CONFIG)
    assert config["database_url"] == display_url(settings.database_url)
    assert config["inbox"] == str(settings.inbox.resolve())
    assert config["outbox_dir"] == str(settings.outbox_dir.resolve())
    assert config["mailer"] == f"outbox {settings.outbox_dir.resolve()}"
    # Times inside the report are ISO 8601 too (with a "T"), and last_sent_at is UTC-aware.
    sent_at = [s["last_sent_at"] for s in report["subscribers"] if s["last_sent_at"]]
    assert len(sent_at) == 3 and all(datetime.fromisoformat(t).tzinfo for t in sent_at)
    assert all("T" in t for t in sent_at)

    text = run_cli(env, "status", "--now", NOW.isoformat())
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:3] == [
        "daemon: not running",
        "last scan: 2026-11-23 10:00:00 CET; last ingest: 2026-11-23 10:00:00 CET",
        "today (2026-11-23): due 3, sent 3, pending 0, failed 0",
    ]
    assert f"  database: {display_url(settings.database_url)}" in lines
    assert f"  mailer: outbox {settings.outbox_dir.resolve()}" in lines


def test_database_url_without_password(settings: Settings) -> None:
    env = settings_env(settings)
    env["NEWSLETTER_DATABASE_URL"] = "postgresql://news:hunter2@127.0.0.1:1/newsletter"
    shown = load_settings(CONFIG, environ=env)
    from newsletter.reports import ConfigInUse

    assert ConfigInUse.of(shown).database_url == "postgresql://news:***@127.0.0.1:1/newsletter"


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_status_and_metrics_with_a_running_daemon(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings, scan_interval_seconds=1, inbox_settle_seconds=0)
    log = tmp_path / "daemon.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "-v", "run"],
            env=clean_environ(env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait(lambda: READY in log.read_text(), proc, log)
        first = status_json(env)
        daemon = first["daemon"]
        assert (daemon["running"], daemon["pid"], daemon["host"]) == (
            True,
            proc.pid,
            socket.gethostname(),
        )
        assert datetime.fromisoformat(daemon["since"]).tzinfo is not None
        assert daemon["heartbeat"] is not None and first["last_scan"] is not None
        # Two more scans: the heartbeat moves on, and -v shows no APScheduler per-run line.
        _wait(lambda: status_json(env)["last_scan"] != first["last_scan"], proc, log)
        second = status_json(env)
        _wait(lambda: status_json(env)["last_scan"] != second["last_scan"], proc, log)
        text = run_cli(env, "status")
        assert text.stdout.startswith(
            f"daemon: running, pid {proc.pid} on {socket.gethostname()}, since "
        )
        # /metrics of another process (the web side) sees the daemon up.
        app = create_app(settings, mailer=MemoryMailer(), secret=b"k" * 32)
        with TestClient(app) as client:
            samples = scrape(client)
        assert value(samples, "newsletter_daemon_up") == 1
        since = datetime.fromisoformat(daemon["since"])
        assert value(samples, "newsletter_daemon_start_time_seconds") == since.timestamp()
        assert value(samples, "newsletter_daemon_heartbeat_timestamp_seconds") > 0
        assert value(samples, "newsletter_last_scan_timestamp_seconds") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    output = log.read_text()
    assert "daemon stopped" in output
    assert "Running job" not in output and "executed successfully" not in output
    after = status_json(env)
    assert after["daemon"]["running"] is False
    assert after["daemon"]["pid"] is None
    assert after["daemon"]["heartbeat"] is not None
    text = run_cli(env, "status")
    assert text.stdout.splitlines()[0].startswith("daemon: not running (last heartbeat ")
