"""Subscriber entries from the config file, the CLI and CSV imports, validated the same way.

A bad entry (invalid address, unknown timezone, bad send time, invalid profile) raises
:class:`SubscriberError` naming the entry's line and field; callers report it and go on with
the other entries, so one typo never costs everyone else their issue.
"""

from __future__ import annotations

import csv
import logging
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from newsletter.config import check_timezone
from newsletter.domain import Subscriber, SubscriberSpec
from newsletter.errors import ConfigError, ProfileError, SubscriberError

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FIELDS = frozenset(
    {
        "email",
        "name",
        "timezone",
        "send_at",
        "days",
        "profile",
        "max_papers",
        "min_score",
        "send_when_empty",
    }
)
CSV_COLUMNS = ("email", "name", "profile", "timezone", "send_at")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Defaults:
    timezone: str = "UTC"
    send_at: time = time(7, 0)
    max_papers: int = 10
    min_score: float = 1.0


@dataclass(frozen=True)
class LoadResult:
    specs: tuple[SubscriberSpec, ...]
    errors: tuple[str, ...]  # one line per skipped entry


def normalize_email(raw: str) -> str:
    try:
        # ASCII only: an SMTPUTF8 address could be stored but not sent by every server.
        info = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address {raw!r}: {exc}") from None
    return str(info.normalized).lower()


def parse_send_at(raw: str) -> time:
    match = _HHMM.match(raw.strip())
    if not match:
        raise ValueError(f"send_at {raw!r} is not a time of day like 07:30 (24-hour HH:MM)")
    return time(int(match[1]), int(match[2]))


def parse_days(raw: Any) -> tuple[int, ...]:
    """``["mon", "thu"]`` or ``"mon,thu"`` -> (0, 3); empty means daily."""
    items = raw.split(",") if isinstance(raw, str) else list(raw or [])
    days = []
    for item in items:
        key = str(item).strip().lower()[:3]
        if not key:
            continue
        if key not in WEEKDAYS:
            raise ValueError(f"days: {item!r} is not a weekday; use mon, tue, … sun")
        days.append(WEEKDAYS.index(key))
    return tuple(sorted(set(days)))


def make_spec(entry: Mapping[str, Any], defaults: Defaults, *, where: str) -> SubscriberSpec:
    """Validate one entry; raise SubscriberError saying where and which field is wrong.

    The error's ``field`` is the field at fault (None for an unknown field name) and its
    ``detail`` the message without ``where`` and the field, as a form shows it.
    """
    from newsletter.profile import parse_profile

    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise SubscriberError(
            f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(FIELDS))}"
        )
    with _checking("email", where):
        if not str(entry.get("email") or "").strip():
            raise ValueError("email is required")
        email = normalize_email(str(entry["email"]))
    with _checking("timezone", where):
        tz = str(entry.get("timezone") or defaults.timezone).strip()
        check_timezone(tz)
    with _checking("send_at", where):
        send_at = parse_send_at(str(entry["send_at"])) if entry.get("send_at") else defaults.send_at
    with _checking("days", where):
        weekdays = parse_days(entry.get("days"))
    with _checking("max_papers", where):
        max_papers = _whole_number(entry.get("max_papers"), defaults.max_papers)
        if not 1 <= max_papers <= 500:
            raise ValueError(f"max_papers must be between 1 and 500, not {max_papers}")
    with _checking("min_score", where):
        raw_min = entry.get("min_score")
        min_score = float(defaults.min_score if raw_min in (None, "") else raw_min)
        if min_score < 0:
            raise ValueError(f"min_score must be 0 or more, not {min_score}")
    with _checking("send_when_empty", where):
        send_when_empty = _boolean(entry.get("send_when_empty"))
    with _checking("profile", where):
        profile = str(entry.get("profile") or "").strip()
        who = f"subscriber {email}"
        try:
            parse_profile(profile, who=who)
        except ProfileError as exc:
            # parse_profile starts its message with the ``who`` given above: the detail drops it.
            raise SubscriberError(
                f"{where}: {exc}", field="profile", detail=str(exc).removeprefix(f"{who}: ")
            ) from None
    return SubscriberSpec(
        email=email,
        name=_clean_name(str(entry.get("name") or "")),
        timezone=tz,
        send_at=send_at,
        weekdays=weekdays,
        profile=profile,
        max_papers=max_papers,
        min_score=min_score,
        send_when_empty=send_when_empty,
    )


@contextmanager
def _checking(field: str, where: str) -> Iterator[None]:
    """Turn a ValueError or TypeError raised while reading ``field`` into a SubscriberError."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise SubscriberError(f"{where}: {field}: {exc}", field=field, detail=str(exc)) from None


def _whole_number(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off", ""})


def _boolean(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{value!r} is not true or false")


def _clean_name(name: str) -> str:
    """Names end up in headers: no control characters, no line breaks."""
    return " ".join("".join(c if c.isprintable() else " " for c in name).split())


def load_config_file(path: Path, defaults: Defaults) -> LoadResult:
    """Read ``[[subscriber]]`` entries from a TOML file; bad entries are reported, not fatal."""
    try:
        raw = path.read_text(encoding="utf-8")
        data = tomllib.loads(raw)
    except OSError as exc:
        raise ConfigError(f"subscribers_file {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"subscribers_file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"subscriber"})
    if unknown:
        raise ConfigError(
            f"subscribers_file {path}: unknown table {unknown[0]!r}; entries are [[subscriber]]"
        )
    lines = _entry_lines(raw)
    specs, errors = [], []
    for index, entry in enumerate(data.get("subscriber", [])):
        line = lines[index] if index < len(lines) else None
        where = f"{path}, line {line}" if line else f"{path}, subscriber #{index + 1}"
        try:
            specs.append(make_spec(entry, defaults, where=where))
        except SubscriberError as exc:
            errors.append(str(exc))
    return LoadResult(tuple(specs), tuple(errors))


def _entry_lines(raw: str) -> list[int]:
    return [
        number
        for number, line in enumerate(raw.splitlines(), start=1)
        if line.strip().replace(" ", "") == "[[subscriber]]"
    ]


def read_csv(path: Path, defaults: Defaults) -> LoadResult:
    """Columns: email, name, profile, timezone, send_at (a header row is required)."""
    specs, errors = [], []
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot read: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in ("email", "profile") if c not in header]
        if missing:
            raise SubscriberError(
                f"{path}, line 1: the header row must name the columns "
                f"{', '.join(CSV_COLUMNS)}; missing {', '.join(missing)}"
            )
        for row in _rows(reader):
            line, entry = row
            try:
                specs.append(make_spec(entry, defaults, where=f"{path}, line {line}"))
            except SubscriberError as exc:
                errors.append(str(exc))
    return LoadResult(tuple(specs), tuple(errors))


def _rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    for row in reader:
        entry = {
            (k or "").strip().lower(): (v or "").strip()
            for k, v in row.items()
            if k is not None and (v or "").strip()
        }
        if entry:
            yield reader.line_num, entry


def spec_entry(sub: Subscriber) -> dict[str, Any]:
    """A stored subscriber as an entry :func:`make_spec` accepts: the base that a partial
    update (``subscriber add`` on an existing address) overlays with what it was given."""
    return {
        "email": sub.email,
        "name": sub.name,
        "timezone": sub.timezone,
        "send_at": sub.send_at.strftime("%H:%M"),
        "days": [WEEKDAYS[d] for d in sub.weekdays],
        "profile": sub.profile,
        "max_papers": sub.max_papers,
        "min_score": sub.min_score,
        "send_when_empty": sub.send_when_empty,
    }
