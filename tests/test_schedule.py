"""Send times: local time, weekly days, and the DST rules (with zoneinfo, no clock)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from newsletter.schedule import (
    SendSchedule,
    SendTimeTrigger,
    last_send_time,
    local_send_time,
    next_send_time,
    slot_of,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _fires(schedule: SendSchedule, start: datetime, n: int) -> list[datetime]:
    trigger = SendTimeTrigger(schedule)
    out: list[datetime] = []
    previous = None
    for _ in range(n):
        fire = trigger.get_next_fire_time(previous, start)
        assert fire is not None
        out.append(fire)
        previous = fire
    return out


def test_daily_local_time_across_timezones() -> None:
    schedule = SendSchedule(time(7, 30), NEW_YORK)
    fires = _fires(schedule, datetime(2026, 11, 23, 12, 0, tzinfo=UTC), 2)  # 07:00 there
    assert fires == [
        datetime(2026, 11, 23, 7, 30, tzinfo=NEW_YORK),
        datetime(2026, 11, 24, 7, 30, tzinfo=NEW_YORK),
    ]
    assert [f.astimezone(UTC).hour for f in fires] == [12, 12]


def test_spring_forward_missing_time_runs_once_at_the_next_valid_minute() -> None:
    # 2026-03-29: Berlin clocks go from 02:00 to 03:00; 02:30 does not exist.
    schedule = SendSchedule(time(2, 30), BERLIN)
    fires = _fires(schedule, datetime(2026, 3, 27, 12, tzinfo=UTC), 4)
    assert [f.replace(tzinfo=None) for f in fires] == [
        datetime(2026, 3, 28, 2, 30),
        datetime(2026, 3, 29, 3, 0),  # the next valid minute, once
        datetime(2026, 3, 30, 2, 30),
        datetime(2026, 3, 31, 2, 30),
    ]
    assert [slot_of(schedule, f) for f in fires] == [
        date(2026, 3, 28),
        date(2026, 3, 29),
        date(2026, 3, 30),
        date(2026, 3, 31),
    ]
    assert fires[1].astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_fall_back_repeated_time_runs_once_at_its_first_occurrence() -> None:
    # 2026-10-25: Berlin clocks go from 03:00 back to 02:00; 02:30 happens twice.
    schedule = SendSchedule(time(2, 30), BERLIN)
    fires = _fires(schedule, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    on_the_day = [f for f in fires if slot_of(schedule, f) == date(2026, 10, 25)]
    assert len(on_the_day) == 1
    assert on_the_day[0].astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # CEST
    assert fires[1].astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # CET


def test_weekly_days() -> None:
    schedule = SendSchedule(time(8, 0), BERLIN, weekdays=(0, 3))  # Monday, Thursday
    fires = _fires(schedule, datetime(2026, 11, 23, 12, tzinfo=UTC), 3)  # a Monday, after 8
    assert [(f.date(), f.strftime("%a")) for f in fires] == [
        (date(2026, 11, 26), "Thu"),
        (date(2026, 11, 30), "Mon"),
        (date(2026, 12, 3), "Thu"),
    ]


def test_first_fire_may_be_now_and_last_send_time() -> None:
    schedule = SendSchedule(time(9, 0), BERLIN)
    at_nine = datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN)
    assert next_send_time(schedule, at_nine, inclusive=True) == at_nine
    assert next_send_time(schedule, at_nine) == at_nine + timedelta(days=1)
    assert last_send_time(schedule, at_nine + timedelta(hours=3)) == at_nine
    assert last_send_time(schedule, at_nine - timedelta(minutes=1)) == at_nine - timedelta(days=1)
    weekly = SendSchedule(time(9, 0), BERLIN, weekdays=(4,))  # Fridays
    assert last_send_time(weekly, at_nine) == datetime(2026, 11, 20, 9, 0, tzinfo=BERLIN)


def test_local_send_time_in_a_30_minute_shift_zone() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # moves its clocks by 30 minutes
    moment = local_send_time(date(2026, 10, 4), time(2, 15), lord_howe)
    assert moment.replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)
