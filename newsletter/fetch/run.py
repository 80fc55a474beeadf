"""Fetching sources into the inbox: ``newsletter fetch`` and the daemon's source jobs.

For one source: build the request URL for the day (:mod:`newsletter.fetch.sources`), GET it
conditionally with the validators of that URL's last answer (:mod:`newsletter.fetch.http`),
and

* a 304, or the same bytes as a file already in the inbox: nothing written;
* an answer with no papers (an empty list, a feed with no entries: arXiv on a weekend):
  nothing written, the source answered;
* otherwise the bytes go into the inbox as ``<name>-<date>-<hash>.<ext>``: written under a
  hidden temporary name (``.<file>.part``, which inbox scans skip), flushed to disk, then
  renamed, so no scan ever reads half a file; then ingested at once through the application
  (``Newsletter.ingest``), so the source's health knows whether it brought a new paper (the
  daemon's next scan finds the file already recorded). An answer the parsers cannot read is
  quarantined like any digest file, and counts as the source's error.

Each outcome updates the source's row (:class:`newsletter.store.SourceHealth`). The stale
rule (:func:`stale_hours`) is here too: hours since any source last brought a new paper,
Saturdays and Sundays (in the deployment's timezone) not counted, because arXiv announces
nothing on those days.
"""

from __future__ import annotations

import enum
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import feedparser
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.domain import IngestStatus
from newsletter.fetch.http import FetchError, HttpFetcher, user_agent
from newsletter.fetch.sources import (
    ARXIV_API_SPACING_SECONDS,
    SourceKind,
    extension,
    inbox_name,
    request_url,
)

if TYPE_CHECKING:
    from newsletter.app import Newsletter
    from newsletter.config import Settings, SourceSettings
    from newsletter.store import SourceHealth

log = logging.getLogger(__name__)

#: `newsletter fetch`'s exit statuses: every source answered; one failed transiently (try
#: again later: EX_TEMPFAIL); one failed for good (its configuration or upstream is wrong).
EXIT_OK, EXIT_TRANSIENT, EXIT_PERMANENT = 0, 75, 1


class FetchStatus(enum.StrEnum):
    FETCHED = "fetched"  # a new file written into the inbox and ingested
    NOT_MODIFIED = "not_modified"  # 304: nothing changed since the last answer
    UNCHANGED = "unchanged"  # the same bytes as a file already in the inbox
    EMPTY = "empty"  # answered with no papers at all: nothing written
    FAILED = "failed"


@dataclass(frozen=True)
class SourceResult:
    """What one fetch of one source did (``newsletter fetch --json``: one per source)."""

    name: str
    kind: SourceKind
    url: str
    status: FetchStatus
    path: str | None = None  # the inbox file written
    bytes: int = 0
    papers_new: int = 0
    error: str | None = None
    transient: bool | None = None  # for a failure: worth trying again later


def exit_status(results: Iterable[SourceResult]) -> int:
    """0 when every source answered (a 304 or an empty answer too), 1 when one failed for
    good, else 75 when one failed transiently."""
    failed = [r for r in results if r.status is FetchStatus.FAILED]
    if any(not r.transient for r in failed):
        return EXIT_PERMANENT
    return EXIT_TRANSIENT if failed else EXIT_OK


def make_fetcher(settings: Settings, **overrides: object) -> HttpFetcher:
    """The fetcher of these settings (tests override the sleep, the clocks, the random)."""
    conf = settings.sources
    contact = conf.user_agent_contact or conf.operator_email or settings.mail.from_address
    return HttpFetcher(
        user_agent=user_agent(settings.base_url, contact),
        timeout=conf.timeout_seconds,
        retries=conf.retries,
        max_wait=conf.max_retry_wait_seconds,
        max_bytes=settings.max_digest_bytes,
        **overrides,  # type: ignore[arg-type]
    )


def source_day(settings: Settings, now: datetime) -> date:
    """The date a fetch at ``now`` is for: the deployment's local date."""
    return now.astimezone(ZoneInfo(settings.timezone)).date()


def select_sources(settings: Settings, names: Sequence[str]) -> list[SourceSettings]:
    """The configured sources named (all when none is); an unknown name is a ConfigError."""
    from newsletter.errors import ConfigError

    if not names:
        return list(settings.source)
    known = {s.name: s for s in settings.source}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"no source named {', '.join(map(repr, unknown))} in the settings; configured: "
            f"{', '.join(known) or 'none (add a [[source]] table)'}"
        )
    return [known[n] for n in names]


def fetch_sources(
    app: Newsletter,
    fetcher: HttpFetcher,
    sources: Sequence[SourceSettings],
    *,
    now: datetime,
    day: date | None = None,
) -> list[SourceResult]:
    """Fetch each source in turn (one fetcher: the arXiv API's spacing holds across them)."""
    when = day or source_day(app.settings, now)
    return [fetch_source(app, fetcher, source, now=now, day=when) for source in sources]


def fetch_source(
    app: Newsletter, fetcher: HttpFetcher, source: SourceSettings, *, now: datetime, day: date
) -> SourceResult:
    """Fetch one source into the inbox and record its health; never raises for the source's
    own failures (they are its result)."""
    url = request_url(
        source.kind, source.base_url, day=day, categories=source.categories, query=source.query
    )
    store = app.store
    known = store.source_health(source.name)
    same_url = known is not None and known.url == url
    etag = known.etag if known is not None and same_url else None
    modified = known.last_modified if known is not None and same_url else None
    spacing = ARXIV_API_SPACING_SECONDS if source.kind is SourceKind.ARXIV_API else 0.0

    def failed(error: str, *, transient: bool) -> SourceResult:
        store.record_source_failure(source.name, now, error)
        log.warning("source %s failed: %s", source.name, error)
        return SourceResult(
            source.name, source.kind, url, FetchStatus.FAILED, error=error, transient=transient
        )

    def answered(status: FetchStatus, *, new_papers: int = 0, **extra: object) -> SourceResult:
        store.record_source_success(
            source.name,
            now,
            url=url,
            etag=answer.etag or etag,
            last_modified=answer.last_modified or modified,
            new_papers=new_papers > 0,
        )
        log.info("source %s: %s", source.name, status)
        return SourceResult(
            source.name,
            source.kind,
            url,
            status,
            papers_new=new_papers,
            **extra,  # type: ignore[arg-type]
        )

    try:
        answer = fetcher.get(url, etag=etag, last_modified=modified, spacing=spacing)
    except FetchError as exc:
        return failed(str(exc), transient=exc.transient)
    if answer.status == 304:
        return answered(FetchStatus.NOT_MODIFIED)
    if has_no_papers(answer.body):
        return answered(FetchStatus.EMPTY, bytes=len(answer.body))
    name = inbox_name(source.name, day, answer.body, extension(source.kind, answer.content_type))
    path = app.settings.inbox / name
    if path.exists():
        return answered(FetchStatus.UNCHANGED, path=str(path), bytes=len(answer.body))
    try:
        write_into_inbox(app.settings.inbox, name, answer.body)
    except OSError as exc:
        return failed(f"cannot write into the inbox {app.settings.inbox}: {exc}", transient=True)
    reports = app.ingest([path], now=now, two_scans=False)
    report = reports[0] if reports else None
    if report is not None and report.status is IngestStatus.QUARANTINED:
        return failed(
            f"the answer of {url} cannot be read as papers ({report.reason}); quarantined "
            f"as {path}",
            transient=False,
        )
    return answered(
        FetchStatus.FETCHED,
        new_papers=report.papers_new if report is not None else 0,
        path=str(path),
        bytes=len(answer.body),
    )


def write_into_inbox(inbox: Path, name: str, body: bytes) -> Path:
    """Write ``body`` as ``inbox/name``: to a hidden ``.part`` name first (skipped by inbox
    scans), flushed, then renamed: a scan sees the whole file or none of it."""
    final = inbox / name
    temp = inbox / f".{name}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def has_no_papers(body: bytes) -> bool:
    """An answer that holds no paper at all: an empty JSON list, or a well-formed feed with no
    entries (arXiv's RSS on days without announcements). Anything else is written and left
    to the parsers, which quarantine what they cannot read."""
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            return bool(json.loads(body) == [])
        except (ValueError, RecursionError):
            return False
    if head == b"<":
        feed = feedparser.parse(io.BytesIO(body))
        return bool(feed.get("version")) and not feed.bozo and not feed.entries
    return False


# ---------------------------------------------------------------------- staleness


def weekday_hours(start: datetime, end: datetime, zone: ZoneInfo) -> float:
    """Hours from ``start`` to ``end`` that fall on Monday to Friday in ``zone``."""
    if end <= start:
        return 0.0
    total = 0.0
    cursor = start.astimezone(zone)
    end_local = end.astimezone(zone)
    while cursor < end_local:
        midnight = datetime.combine(cursor.date() + timedelta(days=1), datetime.min.time(), zone)
        segment_end = min(midnight, end_local)
        if cursor.weekday() < 5:
            total += (segment_end - cursor).total_seconds() / 3600
        cursor = segment_end
    return total


def last_new_paper(
    healths: dict[str, SourceHealth], sources: Sequence[SourceSettings]
) -> datetime | None:
    """When any configured source last brought a new paper."""
    times = [
        h.last_new_paper_at
        for s in sources
        if (h := healths.get(s.name)) is not None and h.last_new_paper_at is not None
    ]
    return max(times, default=None)


def stale_hours(since: datetime, now: datetime, zone: ZoneInfo) -> float:
    """The stale rule's clock: weekday hours since ``since`` (see the module docstring)."""
    return weekday_hours(since, now, zone)


# ---------------------------------------------------------------------- the daemon's jobs


def source_trigger(source: SourceSettings, timezone: str) -> BaseTrigger:
    """Every ``every_minutes`` minutes, or daily at ``at`` in the deployment's timezone."""
    if source.every_minutes is not None:
        return IntervalTrigger(minutes=source.every_minutes)
    assert source.at is not None  # one of the two: SourceSettings checks it
    hour, minute = source.at.split(":")
    return CronTrigger(hour=int(hour), minute=int(minute), timezone=ZoneInfo(timezone))


class SourceJobs:
    """What the daemon does for its sources: one fetch per source job (one fetcher for the
    daemon's life: the arXiv API's spacing holds across sources and runs), then the stale
    check: when no source has brought a new paper for ``sources.stale_after_hours`` weekday
    hours (since the last new paper, else since the daemon started), log a warning once per
    stale spell and, with ``sources.operator_email``, email one alert, recorded in the
    database: the next one goes out only after a source brought papers and went stale again.
    """

    def __init__(self, settings: Settings, started: datetime, **fetcher_options: object):
        self.settings = settings
        self.started = started
        self._fetcher_options = fetcher_options
        self._fetcher: HttpFetcher | None = None
        self._warned_since: datetime | None = None  # the reference of the spell warned about

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def fetch(self, app: Newsletter, name: str, now: datetime) -> SourceResult:
        if self._fetcher is None:
            self._fetcher = make_fetcher(self.settings, **self._fetcher_options)
        source = select_sources(self.settings, [name])[0]
        result = fetch_source(
            app, self._fetcher, source, now=now, day=source_day(self.settings, now)
        )
        self.check_stale(app, now)
        return result

    def check_stale(self, app: Newsletter, now: datetime) -> bool:
        """Apply the stale rule at ``now``; True when the sources are stale."""
        sources = self.settings.source
        if not sources:
            return False
        last = last_new_paper(app.store.source_healths(), sources)
        since = last or self.started
        limit = self.settings.sources.stale_after_hours
        hours = stale_hours(since, now, ZoneInfo(self.settings.timezone))
        if hours < limit:
            return False
        if self._warned_since != since:
            self._warned_since = since
            log.warning(
                "no source has brought a new paper for %.0f weekday hours (since %s; "
                "sources.stale_after_hours = %g): check `newsletter status`",
                hours,
                since.isoformat(),
                limit,
            )
        operator = self.settings.sources.operator_email
        if operator:
            sent = app.store.stale_alert_sent_at()
            if sent is None or (last is not None and sent < last):
                if send_stale_alert(app, operator, since, hours, now):
                    app.store.record_stale_alert(now)
        return True


def send_stale_alert(
    app: Newsletter, operator: str, since: datetime, hours: float, now: datetime
) -> bool:
    """Email the operator that the sources are stale; False (logged) when it cannot go out."""
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from newsletter.deliver import Envelope
    from newsletter.errors import DeliveryError

    settings = app.settings
    healths = app.store.source_healths()
    message = EmailMessage()
    message["From"] = settings.mail.from_address
    message["To"] = operator
    message["Subject"] = f"{settings.name}: no new papers for {hours:.0f} hours"
    message["Date"] = format_datetime(now)
    message_id = make_msgid("stale", domain=settings.mail.from_address.rpartition("@")[2])
    message["Message-ID"] = message_id
    lines = [
        f"No source has brought a new paper since {since.isoformat()} "
        f"({hours:.0f} weekday hours; the limit is sources.stale_after_hours = "
        f"{settings.sources.stale_after_hours:g}). Readers get no email, or an empty one.",
        "",
    ]
    for source in settings.source:
        h = healths.get(source.name)
        lines.append(
            f"- {source.name} ({source.kind}): last success "
            f"{h.last_success_at.isoformat() if h and h.last_success_at else 'never'}, "
            f"{h.consecutive_failures if h else 0} failure(s) in a row"
            + (f", last error: {h.last_error}" if h and h.last_error else "")
        )
    lines += ["", "Run `newsletter status` and `newsletter fetch` to see more.", ""]
    message.set_content("\n".join(lines))
    envelope = Envelope(
        sender=settings.mail.from_address,
        recipient=operator,
        message_id=message_id,
        name_hint=f"stale-alert_{now:%Y-%m-%d}",
    )
    try:
        app.send_message(envelope, message.as_bytes())
    except (DeliveryError, OSError) as exc:
        log.error("the stale-sources alert to %s was not sent: %s", operator, exc)
        return False
    log.info("stale-sources alert sent to %s", operator)
    return True
