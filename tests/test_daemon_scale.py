"""The daemon at scale: sends that fall due together are one batch, and status reads no blobs.

In-process on a fake clock (as tests/test_daemon_jobs.py), plus one subprocess daemon stopped
by SIGTERM in the middle of its start-up catch-up. Exact counts only: calls of the planning
and delivery use cases, SQL statements, messages; no timings.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import pytest

from newsletter import app as app_module
from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.daemon import CATCH_UP_LINES, READY, Daemon
from newsletter.deliver import MemoryMailer
from newsletter.domain import IssueState, SubscriberSource, SubscriberSpec
from tests.conftest import SEEDS
from tests.factories import sql_statements, workspace_env

MONDAY = date(2026, 11, 23)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Calls:
    """Records the arguments of each call of a wrapped use case."""

    def __init__(self) -> None:
        self.sizes: list[int] = []


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> tuple[Calls, Calls]:
    """(plan, deliver): one entry per call of ``Newsletter.plan`` (the number of slots it
    was given) and of ``Newsletter.deliver``."""
    plans, deliveries = Calls(), Calls()
    plan, deliver = Newsletter.plan, Newsletter.deliver

    def plan_spy(self: Newsletter, due: Any, now: Any = None) -> Any:
        plans.sizes.append(len(due))
        return plan(self, due, now)

    def deliver_spy(self: Newsletter, *args: Any, **kwargs: Any) -> Any:
        deliveries.sizes.append(1)
        return deliver(self, *args, **kwargs)

    monkeypatch.setattr(Newsletter, "plan", plan_spy)
    monkeypatch.setattr(Newsletter, "deliver", deliver_spy)
    return plans, deliveries


def add_readers(app: Newsletter, count: int, send_at: clock_time, first: int = 0) -> None:
    for n in range(first, first + count):
        app.store.upsert_subscriber(
            SubscriberSpec(
                email=f"reader{n:05d}@example.org",
                profile="speech, language",
                send_at=send_at,
                max_papers=3,
                min_score=0.0,
            ),
            source=SubscriberSource.CLI,
            now=datetime(2026, 11, 1, tzinfo=UTC),
        )


def test_one_tick_plans_everyone_due_in_one_call_and_delivers_in_one_loop(
    settings: Settings, spied: tuple[Calls, Calls]
) -> None:
    plans, deliveries = spied
    mailer = MemoryMailer()
    clock = FakeClock(datetime(2026, 11, 23, 6, 59, tzinfo=UTC))
    with Daemon(settings, mailer=mailer, clock=clock) as d:
        d.app.ingest([SEEDS], now=clock.now)
        add_readers(d.app, 150, clock_time(7, 0))
        d.refresh_subscribers()
        # 150 readers at 07:00 UTC and karen at 08:00 Berlin (07:00 UTC): one schedule each.
        clock.now = datetime(2026, 11, 23, 7, 0, 2, tzinfo=UTC)
        d.tick()
        assert plans.sizes == [151]
        assert len(deliveries.sizes) == 1
        assert len(mailer.sent) == 151
        assert {i.state for i in d.app.store.issues()} == {IssueState.SENT}
        # The next minute's tick finds nobody due: no planning, no delivery pass.
        clock.now += timedelta(minutes=1)
        d.tick()
        assert plans.sizes == [151]
        assert len(deliveries.sizes) == 1


def test_refresh_statements_do_not_grow_with_the_audience(settings: Settings) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    with Daemon(settings, mailer=MemoryMailer(), clock=clock) as d:
        add_readers(d.app, 10, clock_time(7, 0))
        d.refresh_subscribers()
        with sql_statements(d.app.store) as small:
            d.refresh_subscribers()
        add_readers(d.app, 290, clock_time(7, 15), first=10)
        d.refresh_subscribers()
        with sql_statements(d.app.store) as large:
            d.refresh_subscribers()
        assert len(d.calendar) == 303
    assert len(large) == len(small)


def test_catch_up_is_one_batch(
    settings: Settings, spied: tuple[Calls, Calls], caplog: pytest.LogCaptureFixture
) -> None:
    plans, deliveries = spied
    caplog.set_level(logging.INFO, logger="newsletter.daemon")
    mailer = MemoryMailer()
    clock = FakeClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    with Daemon(settings, mailer=mailer, clock=clock) as d:
        d.app.ingest([SEEDS], now=clock.now)
        add_readers(d.app, 100, clock_time(6, 0))
        add_readers(d.app, 100, clock_time(8, 30), first=100)
        d.refresh_subscribers()
        d.catch_up()
        # 200 readers, ada (07:30 London) and karen (08:00 Berlin); grace is beyond the grace.
        assert plans.sizes == [202]
        assert len(deliveries.sizes) == 1
        assert len(mailer.sent) == 202
    # One line per missed slot up to CATCH_UP_LINES (203 missed: grace's is too old), then
    # one line that counts the rest.
    shown = [m for m in caplog.messages if m.startswith(("catching up ", "skipped "))]
    assert len(shown) == CATCH_UP_LINES
    (summary,) = [m for m in caplog.messages if m.startswith("... and ")]
    match = re.fullmatch(
        r"\.\.\. and (\d+) more missed slot\(s\) \((\d+) to send, (\d+) older than the "
        r"grace\); each is logged at debug level \(-vv\)",
        summary,
    )
    assert match is not None
    more, to_send, old = (int(g) for g in match.groups())
    assert more == 203 - CATCH_UP_LINES and to_send + old == more
    assert to_send + sum(m.startswith("catching up ") for m in shown) == 202


def test_planning_a_batch_stops_between_chunks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "PLAN_CHUNK", 2)
    now = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    with Newsletter(settings) as app:
        app.ingest([SEEDS], now=now)
        add_readers(app, 5, clock_time(7, 0))
        slots = {sub.id: MONDAY for sub in app.active_send_times().values()}
        caplog.set_level(logging.INFO, logger="newsletter.app")
        asked = []

        def stop() -> bool:
            asked.append(True)
            return len(asked) >= 2

        result = app.plan_slots(slots, now, should_stop=stop)
        assert (result.planned, result.empty, result.already) == (4, 0, 0)
        assert len(asked) == 2  # asked before the second and the third chunk
        assert "stopping: 1 slot(s) left unplanned" in caplog.messages
        # The rest are planned by the next batch; those planned are not planned again.
        again = app.plan_slots(slots, now)
        assert (again.planned, again.already) == (1, 4)


# ------------------------------------------------------------------ status


def _select_columns(statement: str) -> str:
    """The column list of a SELECT (what it reads), lower-cased."""
    match = re.match(r"\s*select\s(.*?)\sfrom\s", statement, re.IGNORECASE | re.DOTALL)
    return match.group(1).lower() if match else ""


def test_status_reads_counts_and_columns_never_the_stored_messages(settings: Settings) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:
        app.ingest([SEEDS], now=datetime(2026, 11, 23, 7, 0, tzinfo=UTC))
        add_readers(app, 10, clock_time(7, 0))
        app.run_once(datetime(2026, 11, 23, 7, 0, tzinfo=UTC))
        with sql_statements(app.store) as small:
            first = app.status(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))
        add_readers(app, 90, clock_time(7, 0), first=10)
        app.run_once(datetime(2026, 11, 24, 7, 0, tzinfo=UTC))
        with sql_statements(app.store) as large:
            second = app.status(datetime(2026, 11, 24, 8, 0, tzinfo=UTC))
    assert len(mailer.sent) == 13 + 103
    assert (len(first.subscribers), len(second.subscribers)) == (13, 103)
    assert sum(line.last_sent == date(2026, 11, 24) for line in second.subscribers) == 103
    assert len(large) == len(small)
    for statement in large:
        columns = _select_columns(statement)
        assert not re.search(r"issues\.(html|message)\b", columns), statement
        assert not re.search(r"\bhtml\b|\bmessage\b", columns), statement


# ------------------------------------------------------------------ the real daemon


def test_sigterm_during_the_start_up_catch_up_stops_it_cleanly(
    tmp_path: Path, database_url: str
) -> None:
    from tests.smtp_server import HOST, SmtpServer
    from tests.test_daemon import Daemon as DaemonProcess

    (tmp_path / "inbox").mkdir()
    (tmp_path / "config").mkdir()
    env = workspace_env(tmp_path, database_url, inbox_settle_seconds=0)
    due = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    Path(env["NEWSLETTER_SUBSCRIBERS_FILE"]).write_text(
        "".join(
            f'[[subscriber]]\nemail = "s{n:02d}@example.org"\nprofile = "diffusion"\n'
            f'timezone = "UTC"\nsend_at = "{due}"\nmin_score = 0.5\n\n'
            for n in range(40)
        )
    )
    shutil.copy(SEEDS / "000_3a916ff8f52d44d3.txt", Path(env["NEWSLETTER_INBOX"]))
    with SmtpServer() as server:
        daemon = DaemonProcess(
            {
                **env,
                "NEWSLETTER_MAILER": "smtp",
                "NEWSLETTER_SMTP_HOST": HOST,
                "NEWSLETTER_SMTP_PORT": str(server.port),
                "NEWSLETTER_SMTP_SECURITY": "none",
                "NEWSLETTER_SMTP_RATE_PER_SECOND": "5",
            },
            tmp_path / "d.log",
        )
        try:
            daemon.wait_for("catch-up: 40 missed slot(s) to send", timeout=60)
            deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
            while len(server.handler.received) < 2:
                assert time.monotonic() < deadline, daemon.output()
                time.sleep(0.05)
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.proc.wait(timeout=60)  # a hang guard
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
        received = len(server.handler.received)
    log = daemon.output()
    assert code == 0, log
    assert 2 <= received < 40
    assert f"stopping: {40 - received} issue(s) left pending" in log
    assert READY not in log  # stopped inside the start-up work
    assert "daemon stopped" in log
