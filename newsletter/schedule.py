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

import heapq
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

from newsletter.domain import Subscriber, SubscriberSendTime

log = logging.getLogger(__name__)

_MAX_GAP_MINUTES = 24 * 60  # DST gaps are an hour (rarely 30 min or 2 h); a day bounds them


@dataclass(frozen=True)
class SendSchedule:
    send_at: time
    zone: ZoneInfo
    weekdays: tuple[int, ...] = ()  # 0 = Monday; empty = every day

    @classmethod
    def of(cls, subscriber: Subscriber | SubscriberSendTime) -> SendSchedule:
        return _schedule(subscriber.send_at, subscriber.timezone, subscriber.weekdays)

    def sends_on(self, day: date) -> bool:
        return not self.weekdays or day.weekday() in self.weekdays


@lru_cache(maxsize=4096)
def _schedule(send_at: time, timezone: str, weekdays: tuple[int, ...]) -> SendSchedule:
    """One shared value per distinct schedule: an audience of 100,000 has a few hundred."""
    return SendSchedule(send_at, ZoneInfo(timezone), weekdays)


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


@dataclass(frozen=True)
class DueGroup:
    """Subscribers of one schedule whose latest send time ``due`` has come: slot ``slot``."""

    schedule: SendSchedule
    due: datetime
    slot: date
    subscriber_ids: frozenset[int]


@dataclass(frozen=True)
class CalendarChange:
    """What :meth:`SendCalendar.update` changed: subscriber ids added (new or with a new
    schedule) and removed (no longer active)."""

    added: tuple[int, ...]
    removed: tuple[int, ...]


class SendCalendar:
    """The daemon's send times for the whole audience, grouped by schedule.

    Subscribers sharing a schedule (time, zone, weekdays) share one entry in a heap of next
    send instants, so finding who is due costs the number of schedules that came due, not the
    audience; computing next instants costs the number of distinct schedules. Mutable, owned
    by one daemon and used from its single worker thread only.
    """

    def __init__(self) -> None:
        self._of: dict[int, SendSchedule] = {}  # subscriber id -> schedule
        self._members: dict[SendSchedule, set[int]] = {}
        self._next: dict[SendSchedule, datetime] = {}  # the live heap entry of each schedule
        self._heap: list[tuple[datetime, int, SendSchedule]] = []
        self._seq = 0  # heap tie-breaker: schedules are not ordered

    def __len__(self) -> int:
        return len(self._of)

    def __contains__(self, subscriber_id: object) -> bool:
        return subscriber_id in self._of

    def schedule(self, subscriber_id: int) -> SendSchedule | None:
        return self._of.get(subscriber_id)

    def next_send(self, subscriber_id: int) -> datetime | None:
        schedule = self._of.get(subscriber_id)
        return None if schedule is None else self._next.get(schedule)

    def groups(self) -> Iterator[tuple[SendSchedule, frozenset[int]]]:
        """Every schedule with its subscribers."""
        for schedule, members in self._members.items():
            yield schedule, frozenset(members)

    def update(self, send_times: Mapping[int, SubscriberSendTime], now: datetime) -> CalendarChange:
        """Make the calendar hold exactly these subscribers; new schedules get their first
        send instant at or after ``now``."""
        removed = [sid for sid in self._of if sid not in send_times]
        for sid in removed:
            self._leave(sid)
        added = []
        for sid, send_time in send_times.items():
            schedule = SendSchedule.of(send_time)
            if self._of.get(sid) == schedule:
                continue
            if sid in self._of:
                self._leave(sid)
            self._of[sid] = schedule
            self._members.setdefault(schedule, set()).add(sid)
            if schedule not in self._next:
                self._push(schedule, next_send_time(schedule, now, inclusive=True))
            added.append(sid)
        return CalendarChange(tuple(added), tuple(removed))

    def pop_due(self, now: datetime) -> list[DueGroup]:
        """The schedules whose next send instant is at or before ``now``, each with its latest
        send time (however late this runs: the slot is that send time's own day), moved on to
        their next send instant after ``now``."""
        found = []
        while self._heap and self._heap[0][0] <= now:
            moment, _, schedule = heapq.heappop(self._heap)
            if self._next.get(schedule) != moment:
                continue  # stale: the schedule lost its subscribers, or was pushed again
            del self._next[schedule]
            members = self._members.get(schedule)
            if not members:
                continue
            due = last_send_time(schedule, now) or moment
            found.append(DueGroup(schedule, due, slot_of(schedule, due), frozenset(members)))
            self._push(schedule, next_send_time(schedule, now))
        return found

    def _push(self, schedule: SendSchedule, moment: datetime) -> None:
        self._next[schedule] = moment
        self._seq += 1
        heapq.heappush(self._heap, (moment, self._seq, schedule))

    def _leave(self, subscriber_id: int) -> None:
        schedule = self._of.pop(subscriber_id)
        members = self._members[schedule]
        members.discard(subscriber_id)
        if not members:  # its heap entry goes stale and is dropped when it comes up
            del self._members[schedule]
            del self._next[schedule]


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
