"""The daemon's jobs in-process, on a fake clock, without starting the scheduler.

``with Daemon(settings, mailer=..., clock=...)`` opens the application only; each test drives
the jobs (:meth:`Daemon.refresh_subscribers`, :meth:`Daemon.scan_inbox`,
:meth:`Daemon.catch_up`, :meth:`Daemon.tick`) by hand at exact moments. tests/test_daemon.py
runs the real daemon as a subprocess.

The workspace (the ``settings`` fixture) has the seeds in its inbox and the three example
subscribers of config/subscribers.toml: ada 07:30 Europe/London, grace 06:45 America/New_York,
karen 08:00 Europe/Berlin. At :data:`NOW` (Monday 2026-11-23 09:00 UTC) ada's slot of that
day was due 1 h 30 min ago, karen's 2 h ago, and grace's latest (2026-11-22, 11:45 UTC)
21 h 15 min ago: beyond the 12 h of ``catch_up_grace_hours``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.daemon import Daemon
from newsletter.deliver import MemoryMailer
from newsletter.domain import IssueState
from newsletter.schedule import SendCalendar
from tests.conftest import NOW
from tests.factories import CONFIG, workspace_env

ADA, GRACE, KAREN = "ada@example.org", "grace@example.org", "karen@example.org"
MONDAY = date(2026, 11, 23)


class FakeClock:
    """The daemon's clock: returns :attr:`now`, which the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def daemon(settings: Settings, mailer: MemoryMailer, clock: FakeClock) -> Iterator[Daemon]:
    with Daemon(settings, mailer=mailer, clock=clock) as d:
        yield d


def start_up(d: Daemon) -> None:
    """The start-up work of ``Daemon.run`` but its catch-up: subscribers, then two inbox scans
    (a file is read once it is unchanged between two scans)."""
    d.refresh_subscribers()
    d.scan_inbox(two_scans=False)
    assert d.app.count_papers() == 0  # first scan: the seeds are seen, not yet read
    d.scan_inbox(two_scans=False)
    assert d.app.count_papers() == 380


def ids(d: Daemon) -> dict[str, int]:
    return {sub.email: sub.id for sub in d.app.active_subscribers().values()}


def recipients(mailer: MemoryMailer) -> list[str]:
    return [envelope.recipient for envelope, _ in mailer.sent]


def issues(d: Daemon) -> list[tuple[int, date, IssueState]]:
    return [(i.subscriber_id, i.slot_date, i.state) for i in d.app.store.issues()]


def next_sends(d: Daemon) -> dict[int, datetime]:
    """Each subscriber's next send instant in the daemon's calendar, in UTC."""
    found = {}
    for sid in ids(d).values():
        moment = d.calendar.next_send(sid)
        if moment is not None:
            found[sid] = moment.astimezone(UTC)
    return found


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "newsletter.daemon" and r.levelno >= level
    ]


# ------------------------------------------------------------------ catch-up


def test_catch_up_sends_each_missed_slot_within_the_grace_once(
    daemon: Daemon, mailer: MemoryMailer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    start_up(daemon)
    assert mailer.sent == []  # scans deliver due issues only: none is planned yet
    caplog.set_level(logging.INFO, logger="newsletter.daemon")
    daemon.catch_up()
    assert sorted(recipients(mailer)) == [ADA, KAREN]
    sub = ids(daemon)
    assert sorted(issues(daemon)) == [
        (sub[ADA], MONDAY, IssueState.SENT),
        (sub[KAREN], MONDAY, IssueState.SENT),
    ]
    assert "catching up ada@example.org's slot 2026-11-23 (due 2026-11-23 07:30 GMT)" in (
        messages(caplog)
    )
    assert "catching up karen@example.org's slot 2026-11-23 (due 2026-11-23 08:00 CET)" in (
        messages(caplog)
    )
    # Again, later (a restart, say): those slots have their issue, nothing more goes out.
    clock.now = NOW + timedelta(minutes=10)
    daemon.catch_up()
    assert len(mailer.sent) == 2
    assert len(issues(daemon)) == 2
    # A tick serving those send times (a calendar built before them) sends nothing either.
    daemon.calendar = SendCalendar()
    clock.now = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    daemon.refresh_subscribers()
    clock.now = NOW + timedelta(minutes=10)
    daemon.tick()
    assert len(mailer.sent) == 2
    assert len(issues(daemon)) == 2


def test_slot_older_than_the_grace_is_skipped_and_logged(
    daemon: Daemon, mailer: MemoryMailer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    start_up(daemon)
    caplog.set_level(logging.INFO, logger="newsletter.daemon")
    daemon.catch_up()
    assert GRACE not in recipients(mailer)
    grace_id = ids(daemon)[GRACE]
    assert [i for i in issues(daemon) if i[0] == grace_id] == []
    skipped = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "newsletter.daemon" and "skipped" in r.getMessage()
    ]
    assert skipped == [
        (
            logging.WARNING,
            "skipped grace@example.org's missed slot 2026-11-22: due 2026-11-22 06:45 EST, "
            "older than the 12 h grace",
        )
    ]
    # Her next send time sends her next slot, once.
    clock.now = datetime(2026, 11, 23, 11, 45, tzinfo=UTC)  # 06:45 in New York
    daemon.tick()
    daemon.tick()
    assert recipients(mailer).count(GRACE) == 1
    assert [i for i in issues(daemon) if i[0] == grace_id] == [(grace_id, MONDAY, IssueState.SENT)]


def test_zero_grace_catches_up_nothing_but_the_ticks_send_on_time(
    workdir: Path, database_url: str, mailer: MemoryMailer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        CONFIG, environ=workspace_env(workdir, database_url, catch_up_grace_hours=0)
    )
    assert settings.catch_up_grace_hours == 0
    clock = FakeClock(datetime(2026, 11, 23, 7, 30, tzinfo=UTC))  # ada's send time exactly
    with Daemon(settings, mailer=mailer, clock=clock) as d:
        start_up(d)
        caplog.set_level(logging.INFO, logger="newsletter.daemon")
        d.catch_up()
        assert recipients(mailer) == []
        # Ada's send time is now: not missed, the calendar has it for the tick.
        assert messages(caplog, logging.WARNING) == [
            "skipped grace@example.org's missed slot 2026-11-22: due 2026-11-22 06:45 EST, "
            "older than the 0 h grace",
            "skipped karen@example.org's missed slot 2026-11-23: due 2026-11-23 08:00 CET, "
            "older than the 0 h grace",
        ]
        # The tick of this minute sends it, even a few seconds late: the grace is about
        # slots missed while no daemon ran, not about the daemon's own ticks.
        clock.now += timedelta(seconds=3)
        d.tick()
        assert recipients(mailer) == [ADA]
        clock.now += timedelta(minutes=1)
        d.catch_up()
        d.tick()
        assert recipients(mailer) == [ADA]


# ------------------------------------------------------------------ the send calendar


def test_refresh_puts_every_active_subscriber_in_the_calendar(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="newsletter.daemon")
    daemon.refresh_subscribers()
    sub = ids(daemon)
    assert len(daemon.calendar) == 3
    assert daemon.scheduler.get_jobs() == []  # no job per subscriber: run() adds the tick
    assert next_sends(daemon) == {
        sub[ADA]: datetime(2026, 11, 24, 7, 30, tzinfo=UTC),
        sub[GRACE]: datetime(2026, 11, 23, 11, 45, tzinfo=UTC),
        sub[KAREN]: datetime(2026, 11, 24, 7, 0, tzinfo=UTC),
    }
    assert messages(caplog) == [
        "next send to ada@example.org at 2026-11-24 07:30 GMT",
        "next send to grace@example.org at 2026-11-23 06:45 EST",
        "next send to karen@example.org at 2026-11-24 08:00 CET",
        "send calendar: 3 subscriber(s) added or moved, 0 removed (was 0, now 3)",
        "subscriber refresh done: 3 send time(s)",
    ]
    # A refresh with nothing changed changes nothing.
    caplog.clear()
    daemon.refresh_subscribers()
    assert messages(caplog) == ["subscriber refresh done: 3 send time(s)"]
    assert len(daemon.calendar) == 3


def test_removed_subscriber_leaves_the_calendar_at_the_next_refresh(
    daemon: Daemon, mailer: MemoryMailer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    start_up(daemon)
    karen = ids(daemon)[KAREN]
    assert daemon.app.remove_subscriber(KAREN) == KAREN
    assert karen in daemon.calendar  # until the next refresh
    caplog.set_level(logging.DEBUG, logger="newsletter.daemon")
    daemon.refresh_subscribers()  # the subscribers file lists her, but does not resubscribe
    assert karen not in daemon.calendar
    assert len(daemon.calendar) == 2
    assert messages(caplog) == [
        f"removed send time of subscriber {karen} (no longer active)",
        "send calendar: 0 subscriber(s) added or moved, 1 removed (was 3, now 2)",
        "subscriber refresh done: 2 send time(s)",
    ]
    # Her send time comes: she is not due (grace's, passed meanwhile, goes out alone).
    clock.now = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    daemon.tick()
    assert recipients(mailer) == [GRACE]
    assert [i for i in issues(daemon) if i[0] == karen] == []


def test_changed_send_time_moves_the_subscriber(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    zoe = "zoe@example.org"  # not in the subscribers file, which a refresh re-applies
    daemon.app.add_subscriber(zoe, {"profile": "diffusion", "send_at": "07:00"})
    daemon.refresh_subscribers()
    zoe_id = ids(daemon)[zoe]
    assert next_sends(daemon)[zoe_id] == datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    daemon.app.add_subscriber(zoe, {"send_at": "09:15"})
    caplog.set_level(logging.DEBUG, logger="newsletter.daemon")
    daemon.refresh_subscribers()
    assert next_sends(daemon)[zoe_id] == datetime(2026, 11, 23, 9, 15, tzinfo=UTC)
    assert len(daemon.calendar) == 4
    assert messages(caplog) == [
        "next send to zoe@example.org at 2026-11-23 09:15 UTC",
        "send calendar: 1 subscriber(s) added or moved, 0 removed (was 4, now 4)",
        "subscriber refresh done: 4 send time(s)",
    ]


def test_a_tick_running_after_midnight_serves_the_day_of_the_send_time(
    daemon: Daemon, mailer: MemoryMailer, clock: FakeClock
) -> None:
    start_up(daemon)
    owl = "owl@example.org"
    daemon.app.add_subscriber(owl, {"profile": "diffusion", "send_at": "23:30", "timezone": "UTC"})
    daemon.refresh_subscribers()
    owl_id = ids(daemon)[owl]
    clock.now = datetime(2026, 11, 24, 0, 20, tzinfo=UTC)  # the 23:30 tick, 50 minutes late
    daemon.tick()
    assert [i for i in issues(daemon) if i[0] == owl_id] == [(owl_id, MONDAY, IssueState.SENT)]
    assert recipients(mailer).count(owl) == 1
    # Tuesday's own tick, on time, still has Tuesday's slot to serve.
    clock.now = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    daemon.tick()
    assert [(i[1], i[2]) for i in issues(daemon) if i[0] == owl_id] == [
        (MONDAY, IssueState.SENT),
        (date(2026, 11, 24), IssueState.SENT),
    ]
