"""When sends happen: send times in local time, DST rules, catch-up, and the daemon's jobs.

The functions at the top are pure (a schedule and an instant in, instants out), so every DST
rule is tested without a clock. :class:`SendTimeTrigger` hands them to APScheduler 3.11, whose
own cron trigger we do not use for sends: its handling of times that do not exist, or exist
twice, on DST days is not the rule we promise ("once that day"):

* a local time that does not exist (Europe/Berlin 02:30 on the spring-forward day) runs at the
  next valid minute (03:00), once;
* a local time that occurs twice (02:30 on the fall-back day) runs at its first occurrence,
  once.

Even if a trigger fired twice, the slot (subscriber, local date) admits one issue only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

from newsletter.domain import Subscriber

log = logging.getLogger(__name__)

_MAX_GAP_MINUTES = 24 * 60  # DST gaps are an hour (rarely 30 min or 2 h); a day bounds them


@dataclass(frozen=True)
class SendSchedule:
    send_at: time
    zone: ZoneInfo
    weekdays: tuple[int, ...] = ()  # 0 = Monday; empty = every day

    @classmethod
    def of(cls, subscriber: Subscriber) -> SendSchedule:
        return cls(subscriber.send_at, ZoneInfo(subscriber.timezone), subscriber.weekdays)

    def sends_on(self, day: date) -> bool:
        return not self.weekdays or day.weekday() in self.weekdays


def local_send_time(day: date, send_at: time, zone: ZoneInfo) -> datetime:
    """The instant of ``send_at`` on ``day`` in ``zone``, by the DST rules above."""
    wall = datetime.combine(day, send_at.replace(second=0, microsecond=0))
    for minutes in range(_MAX_GAP_MINUTES):
        candidate = (wall + timedelta(minutes=minutes)).replace(tzinfo=zone, fold=0)
        # A wall time that does not exist does not survive the round trip through UTC.
        if candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == candidate.replace(
            tzinfo=None
        ):
            return candidate
    raise ValueError(f"no valid local time near {wall} in {zone}")  # pragma: no cover


def next_send_time(schedule: SendSchedule, after: datetime, *, inclusive: bool = False) -> datetime:
    """The first send instant after ``after`` (or at it, with ``inclusive``)."""
    first_day = after.astimezone(schedule.zone).date() - timedelta(days=1)
    for offset in range(9):  # a week and the days around it cover every weekly schedule
        day = first_day + timedelta(days=offset)
        if not schedule.sends_on(day):
            continue
        moment = local_send_time(day, schedule.send_at, schedule.zone)
        if moment > after or (inclusive and moment == after):
            return moment
    raise ValueError("a schedule without any send day")  # pragma: no cover


def last_send_time(schedule: SendSchedule, now: datetime) -> datetime | None:
    """The most recent send instant at or before ``now`` (within the last 8 days)."""
    today = now.astimezone(schedule.zone).date()
    for offset in range(9):
        day = today - timedelta(days=offset)
        if schedule.sends_on(day):
            moment = local_send_time(day, schedule.send_at, schedule.zone)
            if moment <= now:
                return moment
    return None


def slot_of(schedule: SendSchedule, moment: datetime) -> date:
    """The slot a send instant serves: its local calendar date."""
    return moment.astimezone(schedule.zone).date()


def due_slot(schedule: SendSchedule, now: datetime) -> date | None:
    """The slot a run at ``now`` serves whatever the send time (``run --once``): the local
    date, if the schedule sends that day; None on a weekly subscriber's day off."""
    day = slot_of(schedule, now)
    return day if schedule.sends_on(day) else None


class SendTimeTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """APScheduler trigger for one subscriber's send times (see the module docstring)."""

    __slots__ = ("schedule",)

    def __init__(self, schedule: SendSchedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is None:
            return next_send_time(self.schedule, now, inclusive=True)
        return next_send_time(self.schedule, previous_fire_time)

    def __str__(self) -> str:
        days = ",".join("MTWTFSS"[d] for d in self.schedule.weekdays) or "daily"
        return f"send at {self.schedule.send_at:%H:%M} {self.schedule.zone.key} ({days})"

    def __getstate__(self) -> dict[str, object]:  # pragma: no cover - we never pickle jobs
        raise TypeError("send triggers are rebuilt from the database, never pickled")
