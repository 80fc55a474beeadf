"""The daemon at scale: one minute's sends against ``run --once``, and start-up with a big audience.

Not a test (shared machines are noisy): run it by hand and read the figures as ratios taken in
the same run.

    .venv/bin/python bench/bench_daemon.py                          # N = 1,000, SQLite
    .venv/bin/python bench/bench_daemon.py --startup-subscribers 100000
    .venv/bin/python bench/bench_daemon.py --database-url postgresql://postgres@127.0.0.1/postgres

What it measures, against one aiosmtpd ``Sink`` in its own process (``bench/sink.py``), with
the workspaces, digests and subscribers of ``bench/bench_e2e.py``:

* **one minute's sends**: N subscribers, all in UTC with the same send time two minutes
  ahead, and a real daemon (``newsletter -v run``, a child process) started before it with the
  digests ingested. Timed from the log line of the tick that finds them due to the N-th
  ``sent issue`` line (the tick plans everyone in one batch and delivers in one loop).
* **the same work by ``run --once``**: a second workspace with the same subscribers and
  digests, ingested beforehand (``newsletter ingest``), then ``newsletter run --once`` timed
  from spawn to exit (it plans and delivers the same N issues, and writes the feeds).
  The issue's target: the daemon within 1.25 times ``run --once``.
* **start-up** (``--startup-subscribers M``): M subscribers whose send time is three hours
  ahead (nothing due, and ``catch_up_grace_hours = 0``: no catch-up sends), the time from
  spawning ``newsletter run`` to its ``daemon ready`` line, then its RSS and CPU share over an
  idle window (``--idle-seconds``, default 130: two subscriber refreshes and inbox scans).
  Targets at M = 100,000: ready within 30 s, idle RSS <= 1 GB, CPU <= 2 %.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_e2e import (
    build_papers,
    drop_scratch,
    insert_subscribers,
    make_workspace,
    settings_of,
    subscriber_entries,
    write_digests,
)
from sink import free_port, start_sink

from newsletter.app import Newsletter

ROOT = Path(__file__).resolve().parent.parent


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "-c", str(config), *args]


def _prepare(
    folder: Path, url: str | None, port: int, entries: list[dict[str, Any]], seed: int
) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    ws = make_workspace(folder, url, port)
    write_digests(folder / "inbox", build_papers(400, random.Random(seed)), random.Random(seed))
    with Newsletter(settings_of(ws)) as app:
        insert_subscribers(app, entries, datetime.now(UTC))
    return ws


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if text in log.read_text():
            return time.monotonic()
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one_minute(n: int, url: str | None, port: int, parent: Path) -> dict[str, float]:
    """The daemon's tick for N due subscribers against ``run --once`` for the same work."""
    start = datetime.now(UTC)
    due = (start + timedelta(minutes=2)).replace(second=0, microsecond=0)
    entries = subscriber_entries(n, build_papers(400, random.Random(1)), random.Random(2))
    for entry in entries:
        entry["timezone"], entry["send_at"] = "UTC", due.strftime("%H:%M")
    # The daemon's workspace.
    ws = _prepare(parent / "daemon", url, port, entries, 1)
    subprocess.run(
        _cli(ws.config, "ingest", str(ws.folder / "inbox")),
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    log = parent / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            _cli(ws.config, "-v", "run"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NEWSLETTER_CATCH_UP_GRACE_HOURS": "0"},
        )
    try:
        _wait_for(log, "daemon ready", proc, 120)
        tick = _wait_for(log, "subscriber(s) due", proc, 300)
        _wait_for(log, "due slot(s)", proc, 3600)
        planned = int(log.read_text().split("planned ", 1)[1].split(" ", 1)[0])
        deadline = time.monotonic() + 3600
        while log.read_text().count("sent issue") < planned:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(log.read_text()[-3000:])
            time.sleep(0.05)
        daemon_s = time.monotonic() - tick
    finally:
        _stop(proc)
        drop_scratch(ws)
    # The same work by run --once (digests ingested first, as the daemon had them).
    ws2 = _prepare(parent / "once", url, port, entries, 1)
    subprocess.run(
        _cli(ws2.config, "ingest", str(ws2.folder / "inbox")),
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    began = time.monotonic()
    done = subprocess.run(_cli(ws2.config, "run", "--once"), cwd=ROOT, capture_output=True)
    once_s = time.monotonic() - began
    drop_scratch(ws2)
    if done.returncode not in (0, 75):
        raise SystemExit(done.stderr.decode()[-3000:])
    return {"n": n, "daemon_s": daemon_s, "once_s": once_s, "ratio": daemon_s / once_s}


def _rss_and_cpu(pid: int) -> tuple[int, float]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def start_up(m: int, url: str | None, port: int, parent: Path, idle: float) -> dict[str, float]:
    later = (datetime.now(UTC) + timedelta(hours=3)).strftime("%H:%M")
    entries = subscriber_entries(m, build_papers(400, random.Random(1)), random.Random(3))
    for entry in entries:
        entry["timezone"], entry["send_at"] = "UTC", later
    ws = _prepare(parent / "startup", url, port, entries, 1)
    log = parent / "startup.log"
    began = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen(
            _cli(ws.config, "-v", "run"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NEWSLETTER_CATCH_UP_GRACE_HOURS": "0"},
        )
    try:
        ready_s = _wait_for(log, "daemon ready", proc, 600) - began
        time.sleep(5)
        _, cpu0 = _rss_and_cpu(proc.pid)
        t0 = time.monotonic()
        peak = 0
        while time.monotonic() - t0 < idle:
            time.sleep(1)
            peak = max(peak, _rss_and_cpu(proc.pid)[0])
        rss, cpu1 = _rss_and_cpu(proc.pid)
        cpu_share = (cpu1 - cpu0) / (time.monotonic() - t0)
    finally:
        _stop(proc)
        drop_scratch(ws)
    return {"m": m, "ready_s": ready_s, "idle_rss_mb": peak / 2**20, "idle_cpu": cpu_share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000, help="N due together")
    parser.add_argument("--startup-subscribers", type=int, default=0, help="M (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=130)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the workspace")
    parser.add_argument("--skip-minute", action="store_true", help="start-up figures only")
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_daemon_") as tmp:
            if not args.skip_minute:
                r = one_minute(args.subscribers, args.database_url, port, Path(tmp))
                print(
                    f"{r['n']:.0f} due together: daemon tick {r['daemon_s']:.1f} s, "
                    f"run --once {r['once_s']:.1f} s, ratio {r['ratio']:.2f} (target <= 1.25)"
                )
            if args.startup_subscribers:
                s = start_up(
                    args.startup_subscribers, args.database_url, port, Path(tmp), args.idle_seconds
                )
                print(
                    f"start-up with {s['m']:.0f} subscribers: ready in {s['ready_s']:.1f} s; "
                    f"idle RSS {s['idle_rss_mb']:.0f} MiB, CPU {100 * s['idle_cpu']:.2f} %"
                )
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
