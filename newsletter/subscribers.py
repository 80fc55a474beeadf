"""Subscriber entries from the config file, the CLI and CSV imports, validated the same way.

A bad entry (invalid address, unknown timezone, bad send time, invalid profile) raises
:class:`SubscriberError` naming the entry's line and field; callers report it and go on with
the other entries, so one typo never costs everyone else their issue.
"""

from __future__ import annotations

import csv
import logging
import math
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
from newsletter.limits import MAX_NAME_CHARS, unstorable_character

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
    # mail.allow_local_domains: whether normalize_email accepts user@localhost. Carried here
    # because every entry point (file, CLI, CSV, web form) already receives the Defaults.
    allow_local_domains: bool = False


@dataclass(frozen=True)
class LoadResult:
    specs: tuple[SubscriberSpec, ...]
    errors: tuple[str, ...]  # one line per skipped entry


#: Appended to a dotless domain so that email-validator checks it as the first label of a
#: dotted name: it has no switch for ``localhost`` (a special-use name to it, always refused).
_LOCAL_SUFFIX = ".example"


def normalize_email(raw: str, *, allow_local: bool = False) -> str:
    """The one address rule, for every way in (subscribers file, ``subscriber add``, CSV
    import, web form, and ``mail.from_address``): the address as it is stored and sent, or
    ValueError saying what is wrong.

    * The result is pure ASCII and lower case, because SMTP without the SMTPUTF8 extension
      (which many servers and relays lack) carries only ASCII, in the envelope and in headers.
      An internationalized domain is therefore accepted and stored in its IDNA form
      (``user@bücher.example`` → ``user@xn--bcher-kva.example``): the same mailbox, and
      every server takes it. Storing the ``xn--`` form also disarms homoglyph domains: what
      is stored, shown and sent is ``xn--…``, never look-alike letters.
    * Non-ASCII before the ``@`` is refused: it has no ASCII form, and sending it needs
      SMTPUTF8 on every server on the way, which we cannot know.
    * A domain without a dot (``user@localhost``, ``user@mailhost``) reaches a mailbox only on
      the sending host or network: refused unless ``allow_local`` (the setting
      ``mail.allow_local_domains``) says that such local delivery is the set-up.
    * No quoted local parts, bracketed IP addresses or display names (``Ada <a@b.org>``).
    """
    text = raw.strip()
    _local, at, domain = text.rpartition("@")
    dotless = bool(at and domain) and "." not in domain
    try:
        info = validate_email(
            text + _LOCAL_SUFFIX if dotless else text,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address {raw!r}: {exc}") from None
    address = str(info.ascii_email or info.normalized).lower()
    if not dotless:
        return address
    if not allow_local:
        raise ValueError(
            f"invalid email address {raw!r}: the domain {domain!r} has no dot, so it reaches "
            "only a local mail system; set mail.allow_local_domains = true "
            "(NEWSLETTER_MAIL_ALLOW_LOCAL_DOMAINS) if that is the set-up"
        )
    return address.removesuffix(_LOCAL_SUFFIX)


def lookup_email(raw: str, *, allow_local: bool = False) -> str:
    """The stored form of ``raw`` for finding a subscriber (``subscriber add`` on a known
    address, ``subscriber remove``, ``preview``, ``retry``): :func:`normalize_email`'s form,
    or, for something the rule refuses, ``raw`` stripped and lower-cased, so that a row stored
    before the rule (e.g. with a Unicode domain) can still be found and removed."""
    try:
        return normalize_email(raw, allow_local=allow_local)
    except ValueError:
        return raw.strip().lower()


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
        email = normalize_email(str(entry["email"]), allow_local=defaults.allow_local_domains)
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
        min_score = _min_score(entry.get("min_score"), defaults.min_score)
    with _checking("send_when_empty", where):
        send_when_empty = _boolean(entry.get("send_when_empty"))
    with _checking("name", where):
        name = _display_name(entry.get("name"))
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
        name=name,
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


def _min_score(value: Any, default: float) -> float:
    """A finite number, 0 or more. ``nan`` would pass a plain ``< 0`` test and then crash the
    run at the database's NOT NULL; ``inf`` would be stored and never send anything."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"min_score must be a finite number, 0 or more, not {value!r}")
    if number < 0:
        raise ValueError(f"min_score must be 0 or more, not {number}")
    return number


_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off", ""})


def _boolean(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{value!r} is not true or false")


def _display_name(value: Any) -> str:
    """The name as stored: line breaks and tabs become spaces, as in any pasted text, but
    other control characters are refused (limits.unstorable_character), and so is a name
    longer than :data:`~newsletter.limits.MAX_NAME_CHARS`."""
    raw = str(value or "")
    problem = unstorable_character(raw)
    if problem:
        raise ValueError(f"the name {problem}")
    name = _clean_name(raw)
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(
            f"the name is {len(name):,} characters long; at most {MAX_NAME_CHARS} are allowed"
        )
    return name


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
    """Columns: email, name, profile, timezone, send_at (a header row is required).

    Every row stands alone: one that is not valid UTF-8 (its bytes are kept as surrogates,
    which the validation refuses), cannot be split into fields (a field over the csv module's
    size limit, a stray quote) or fails validation is reported with its line and skipped.
    """
    specs, errors = [], []
    try:
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot read: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            fieldnames = reader.fieldnames or []
        except (csv.Error, OSError) as exc:
            raise SubscriberError(f"{path}, line 1: cannot read the header row: {exc}") from None
        header = [h.strip().lower() for h in fieldnames]
        missing = [c for c in ("email", "profile") if c not in header]
        if missing:
            raise SubscriberError(
                f"{path}, line 1: the header row must name the columns "
                f"{', '.join(CSV_COLUMNS)}; missing {', '.join(missing)}"
            )
        for line, entry in _rows(reader):
            if isinstance(entry, str):
                errors.append(f"{path}, line {line}: {entry}")
                continue
            try:
                specs.append(make_spec(entry, defaults, where=f"{path}, line {line}"))
            except SubscriberError as exc:
                errors.append(str(exc))
    return LoadResult(tuple(specs), tuple(errors))


def _rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line, entry) per non-empty row, or (line, why) for a row the csv module cannot split;
    reading goes on with the next line."""
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader has not counted the line it failed on yet.
            yield reader.line_num + 1, f"cannot read this row as CSV ({exc}): fix or remove it"
            continue
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


def mailbox_key(email: str) -> str:
    """The mailbox an address delivers to, for the limits on confirmation emails: lower-cased,
    with a ``+tag`` cut from the local part (``Victim+7@Example.org`` → ``victim@example.org``).

    Why: mail servers deliver ``victim+1@``, ``victim+2@`` … to the one mailbox ``victim@``, so
    a rule "one confirmation per address per hour" that looked at whole addresses let one form
    flood one person. The stored address keeps its tag (the subscriber chose it, and may sort
    mail by it); only the limits use this key. A local part that starts with ``+`` is kept
    whole: there is no mailbox name before the tag to fall back to.
    """
    local, at, domain = email.strip().lower().rpartition("@")
    if not at:
        return domain  # not an address; make_spec refuses it before any limit is asked
    mailbox = local.split("+", 1)[0] or local
    return f"{mailbox}@{domain}"
