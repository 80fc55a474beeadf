"""What a run did and what the operator sees: :class:`RunSummary` and :class:`StatusReport`.

Plain dataclasses: the CLI prints them for people or dumps them as JSON (``--json``), with the
field names as keys. :func:`build_status` reads the store in a fixed number of queries, never
the stored messages, whatever the number of issues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from newsletter.config import Settings, masked_broker_url
from newsletter.domain import DigestState, IngestStatus, IssueState, Subscriber, SubscriberStatus
from newsletter.ingest import FileReport, inbox_problem
from newsletter.schedule import SendSchedule, next_send_time
from newsletter.store import PENDING_STATES, Store
from newsletter.store.engine import display_url
from newsletter.store.lock import daemon_holder, issues_being_sent


@dataclass
class RunSummary:
    """What one run did; printed for humans, or as JSON with ``--json``."""

    files_ingested: int = 0
    files_unchanged: int = 0
    files_quarantined: int = 0
    files_waiting: int = 0
    files_skipped: int = 0  # inbox entries that are not regular files (links, FIFOs, …)
    papers_new: int = 0
    papers_total: int = 0
    subscribers_synced: int = 0
    subscriber_errors: list[str] = field(default_factory=list)
    issues_delivered: int = 0
    issues_empty: int = 0
    issues_failed: int = 0
    issues_pending: int = 0
    issues_unknown: int = 0  # sent, but the server's final reply never came: see `status`
    delivery_stopped: str = ""  # why delivery stopped early (mail server unavailable), if it did
    # Queue mode (queue.broker_url): issues handed to the workers in this run, and issues with
    # the workers at its end (queued or being sent): pending, but not left waiting.
    issues_queued: int = 0
    issues_with_workers: int = 0
    # Issues that failed for good, or whose outcome is unknown, in this run.
    failed_now: list[dict[str, object]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why each of files_skipped was not read
    delivered: list[dict[str, object]] = field(default_factory=list)
    outbox_dir: str = ""
    feeds_dir: str = ""
    feeds_written: int = 0
    # Why the feeds could not be written (a full or read-only disk), or "": the run did
    # everything else, and its summary is still worth printing before the error.
    feeds_error: str = ""
    # Misconfiguration the run went on despite (a missing inbox): one line each.
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """For cron and systemd timers: 0 when everything due went out (or nothing was
        due); 1 when an issue failed for good (or its outcome is unknown) in this run, or the
        feeds could not be written; 75 (EX_TEMPFAIL) when delivery stopped early (the mail
        server or the broker unavailable) or issues wait for a retry. Issues handed to the
        workers are not waiting: a run that queued everything due exits 0."""
        if self.failed_now or self.feeds_error:
            return 1
        if self.delivery_stopped or self.issues_pending > self.issues_with_workers:
            return 75
        return 0

    def count_files(self, reports: Sequence[FileReport]) -> None:
        for report in reports:
            if report.status is IngestStatus.INGESTED:
                self.files_ingested += 1
                self.papers_new += report.papers_new
            elif report.status is IngestStatus.QUARANTINED:
                self.files_quarantined += 1
                self.quarantined.append(report.reason or report.path)
            elif report.status is IngestStatus.WAITING:
                self.files_waiting += 1
            elif report.status is IngestStatus.SKIPPED:
                self.files_skipped += 1
                self.skipped.append(report.reason or report.path)
            else:
                self.files_unchanged += 1


@dataclass(frozen=True)
class QuarantinedFile:
    path: str
    reason: str | None


@dataclass(frozen=True)
class PendingIssue:
    email: str
    slot: date
    state: IssueState
    attempts: int
    reason: str | None  # the last server reply or error
    next_retry_at: datetime | None


@dataclass(frozen=True)
class FailedIssue:
    email: str
    slot: date
    attempts: int
    reason: str | None


@dataclass(frozen=True)
class SubscriberLine:
    email: str
    status: SubscriberStatus
    last_sent: date | None  # slot of the last issue sent
    last_sent_at: datetime | None
    last_reply: str | None
    next_send: str | None  # in the subscriber's timezone, e.g. "2026-11-24 07:00 CET"
    suppressed: str | None = None  # why bounces or a complaint suppressed it (bounces.py)


@dataclass(frozen=True)
class ConfigInUse:
    """Where this process reads and writes: a command that quietly ran on built-in defaults
    (no settings file found) or on a relative SQLite path looks like it worked and did it
    somewhere else. Paths are absolute; the database URL has its password hidden."""

    file: str | None  # the settings file read, or None: built-in defaults and environment
    database_url: str
    inbox: str
    outbox_dir: str
    feeds_dir: str
    mailer: str  # "outbox <folder>" or "smtp <host>:<port> (<security>)"
    broker: str | None = None  # queue.broker_url, password masked; None: delivery in-process

    @classmethod
    def of(cls, settings: Settings) -> ConfigInUse:
        if settings.mailer == "smtp":
            smtp = settings.smtp
            mailer = f"smtp {smtp.host}:{smtp.port} ({smtp.security})"
        else:
            mailer = f"outbox {settings.outbox_dir.resolve()}"
        return cls(
            file=None if settings.config_file is None else str(settings.config_file),
            database_url=display_url(settings.database_url),
            inbox=str(settings.inbox.resolve()),
            outbox_dir=str(settings.outbox_dir.resolve()),
            feeds_dir=str(settings.feeds_dir.resolve()),
            mailer=mailer,
            broker=masked_broker_url(settings.queue.broker_url),
        )


@dataclass(frozen=True)
class SemanticStatus:
    """Semantic matching when it is on: the model and how many stored papers it has embedded
    (``missing``: not yet; ingest embeds new papers, ``newsletter semantic embed`` the rest)."""

    model: str
    embedded: int
    missing: int


@dataclass(frozen=True)
class WorkQueue:
    """Issues handed to the workers and not done: ``queued`` (waiting in the broker),
    ``in_flight`` (a worker holds it and is sending it), ``interrupted`` (left ``sending`` by a
    sender that is gone: sent again by the next task or pass)."""

    queued: int
    in_flight: int
    interrupted: int


@dataclass(frozen=True)
class DaemonInfo:
    """Whether a daemon holds the database now (its lock says so: a killed daemon does not),
    its pid, host and start; and the last heartbeat any daemon wrote (every inbox scan)."""

    running: bool
    pid: int | None = None
    host: str | None = None
    since: datetime | None = None  # deployment's local time
    heartbeat: datetime | None = None  # deployment's local time


@dataclass(frozen=True)
class SourceLine:
    """One configured ``[[source]]``'s health (times in the deployment's local time): when it
    last answered, its last error and when, failures in a row, when it last brought a new
    paper: why there may be no email today."""

    name: str
    kind: str
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    last_new_paper: datetime | None


@dataclass(frozen=True)
class TodayCounts:
    """The issues of today's slot (the deployment's local date): ``due`` is every issue
    planned for it so far, then by state (``failed`` includes those of unknown outcome)."""

    day: date
    due: int
    sent: int
    pending: int
    failed: int


@dataclass(frozen=True)
class StatusReport:
    papers: int
    files_ingested: int
    last_ingest: datetime | None
    quarantined: tuple[QuarantinedFile, ...]
    pending: tuple[PendingIssue, ...]
    failed: tuple[FailedIssue, ...]
    unknown: tuple[FailedIssue, ...]  # sent, final reply never came: retry them or not
    subscribers: tuple[SubscriberLine, ...]
    config: ConfigInUse
    warnings: tuple[str, ...]  # misconfiguration found now (a missing inbox)
    workers: WorkQueue = WorkQueue(0, 0, 0)
    semantic: SemanticStatus | None = None  # None: semantic matching is off
    daemon: DaemonInfo = DaemonInfo(False)
    last_scan: datetime | None = None  # the last inbox scan (daemon or run --once), local time
    today: TodayCounts | None = None
    timezone: str = "UTC"  # settings.timezone: the zone of the times above
    suppressed: int = 0  # subscribers suppressed by bounces or complaints
    sources: tuple[SourceLine, ...] = ()  # the configured [[source]] tables, in their order


def build_status(store: Store, now: datetime, settings: Settings) -> StatusReport:
    subscribers = store.subscribers_by_id()
    suppressions = store.suppressions()
    digests = store.list_digests()
    quarantined = [d for d in digests if d.state == DigestState.QUARANTINED]
    open_issues = store.issues(states=(*PENDING_STATES, IssueState.FAILED, IssueState.UNKNOWN))
    last_sent = store.last_sent_issues()
    counts = store.queue_counts()
    in_flight = len(issues_being_sent(store.engine))

    zone = ZoneInfo(settings.timezone)
    holder = daemon_holder(store.engine)
    state = store.daemon_state()
    today = now.astimezone(zone).date()
    todays = store.issue_counts_of_slot(today)

    def email(subscriber_id: int) -> str:
        return subscribers[subscriber_id].email

    def local(moment: datetime | None) -> datetime | None:
        return moment.astimezone(zone) if moment is not None else None

    return StatusReport(
        papers=store.count_papers(),
        files_ingested=len(digests) - len(quarantined),
        last_ingest=local(max((d.seen_at for d in digests), default=None)),
        quarantined=tuple(QuarantinedFile(d.path, d.reason) for d in quarantined),
        pending=tuple(
            PendingIssue(
                email(i.subscriber_id),
                i.slot_date,
                i.state,
                i.attempts,
                i.last_reply,
                i.next_retry_at,
            )
            for i in open_issues
            if i.state in PENDING_STATES
        ),
        failed=tuple(
            FailedIssue(email(i.subscriber_id), i.slot_date, i.attempts, i.last_reply)
            for i in open_issues
            if i.state is IssueState.FAILED
        ),
        unknown=tuple(
            FailedIssue(email(i.subscriber_id), i.slot_date, i.attempts, i.last_reply)
            for i in open_issues
            if i.state is IssueState.UNKNOWN
        ),
        subscribers=tuple(
            SubscriberLine(
                email=s.email,
                status=s.status,
                last_sent=last_sent[s.id].slot_date if s.id in last_sent else None,
                last_sent_at=last_sent[s.id].sent_at if s.id in last_sent else None,
                last_reply=last_sent[s.id].last_reply if s.id in last_sent else None,
                next_send=next_send(s, now),
                suppressed=suppressions[s.id].reason if s.id in suppressions else None,
            )
            for s in subscribers.values()
        ),
        suppressed=sum(1 for s in subscribers.values() if s.status is SubscriberStatus.SUPPRESSED),
        config=ConfigInUse.of(settings),
        warnings=tuple(w for w in (inbox_problem(settings.inbox),) if w),
        workers=(
            WorkQueue(counts.queued, in_flight, max(counts.sending - in_flight, 0))
            if settings.queue.broker_url is not None
            else WorkQueue(0, 0, 0)  # in-process: `sending` issues are the pending ones
        ),
        semantic=SemanticStatus(
            settings.semantic.model,
            store.count_embeddings(settings.semantic.model),
            store.count_to_embed(settings.semantic.model),
        )
        if settings.semantic.enabled
        else None,
        daemon=DaemonInfo(
            running=holder is not None,
            pid=holder.pid if holder else None,
            host=holder.host if holder else None,
            since=local(holder.since) if holder else None,
            heartbeat=local(state.heartbeat_at) if state else None,
        ),
        last_scan=local(state.last_scan_at) if state else None,
        today=TodayCounts(
            day=today,
            due=sum(todays.values()),
            sent=todays.get(IssueState.SENT, 0),
            pending=sum(todays.get(s, 0) for s in PENDING_STATES),
            failed=todays.get(IssueState.FAILED, 0) + todays.get(IssueState.UNKNOWN, 0),
        ),
        timezone=settings.timezone,
        sources=source_lines(store, settings, local),
    )


def source_lines(
    store: Store, settings: Settings, local: Callable[[datetime | None], datetime | None]
) -> tuple[SourceLine, ...]:
    """The configured sources' health (one query); a source never fetched has no times."""
    if not settings.source:
        return ()
    healths = store.source_healths()
    lines = []
    for source in settings.source:
        h = healths.get(source.name)
        lines.append(
            SourceLine(
                name=source.name,
                kind=str(source.kind),
                last_success=local(h.last_success_at) if h else None,
                last_error=h.last_error if h else None,
                last_error_at=local(h.last_error_at) if h else None,
                consecutive_failures=h.consecutive_failures if h else 0,
                last_new_paper=local(h.last_new_paper_at) if h else None,
            )
        )
    return tuple(lines)


def next_send(sub: Subscriber, now: datetime) -> str | None:
    """When the daemon sends this subscriber's next issue, in their own timezone."""
    if sub.status is not SubscriberStatus.ACTIVE:
        return None
    moment = next_send_time(SendSchedule.of(sub), now, inclusive=True)
    return moment.strftime("%Y-%m-%d %H:%M %Z")
