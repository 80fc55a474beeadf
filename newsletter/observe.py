"""Health, readiness and metrics: what a monitoring system asks of a running deployment.

* ``/healthz``: the process answers (``ok``), nothing else is looked at;
* ``/readyz``: :func:`readiness`: the database answers, its migration is the one this code
  expects, and the inbox can be read; JSON, 200 when every check passes, 503 otherwise;
* ``/metrics``: :class:`StoreCollector` in Prometheus' text format (prometheus-client, on a
  registry of its own, never the global one).

Every number comes from the database, so ``serve`` shows what the daemon (or a ``run
--once``) did in another process: papers and digest files, issues by state, the last inbox
scan (``daemon_state``), the last message sent (``issues.sent_at``), whether a daemon holds
the database (its lock: :func:`newsletter.store.lock.daemon_holder`), and the cumulative
delivery counters (``delivery_counters``) that every in-process delivery pass adds to through
a :class:`DeliveryMeter`: messages sent, failed by reason class, and the time each send took.
A scrape costs six SQL statements and one lock probe, cached for :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from newsletter.config import Settings
from newsletter.deliver import Envelope, Mailer, MailerUnavailable, OutcomeUnknown
from newsletter.domain import DigestState, IssueState
from newsletter.errors import DeliveryError, NewsletterError
from newsletter.ingest import inbox_problem
from newsletter.store import MetricsSnapshot, Store
from newsletter.store.lock import DaemonHolder, daemon_holder

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE_LATEST",
    "DeliveryMeter",
    "FailureReason",
    "Readiness",
    "StoreCollector",
    "metrics_registry",
    "metrics_text",
    "readiness",
    "redact_tokens",
]

#: Upper bounds (seconds) of the send-time histogram's buckets: an outbox file takes
#: milliseconds, an SMTP transaction up to the timeouts (``smtp.timeout_seconds``).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: A scrape within this many seconds of the last one gets the same numbers.
CACHE_SECONDS = 5.0


class FailureReason:
    """The reason classes of failed sends (label ``reason`` of the failure counter)."""

    PERMANENT = "permanent"  # the server refused this message for good (5xx)
    TRANSIENT = "transient"  # this message, this time (4xx, a write error): retried later
    UNAVAILABLE = "unavailable"  # nothing could be sent (server down, refused our session)
    UNKNOWN = "unknown"  # sent, but the final reply never came
    ERROR = "error"  # anything else (a bug, an unexpected exception)

    ALL = (PERMANENT, TRANSIENT, UNAVAILABLE, UNKNOWN, ERROR)


def classify(exc: BaseException) -> str:
    if isinstance(exc, MailerUnavailable):
        return FailureReason.UNAVAILABLE
    if isinstance(exc, OutcomeUnknown):
        return FailureReason.UNKNOWN
    if isinstance(exc, DeliveryError):
        return FailureReason.PERMANENT if exc.permanent else FailureReason.TRANSIENT
    return FailureReason.ERROR


# ---------------------------------------------------------------------- delivery counters

SENT = "sent"
FAILED = "failed:"  # + reason class
SECONDS_COUNT = "seconds:count"
SECONDS_SUM = "seconds:sum"
BUCKET = "seconds:le:"  # + upper bound; cumulative, like Prometheus' own buckets


class DeliveryMeter:
    """A :class:`~newsletter.deliver.Mailer` that counts what the mailer it wraps did: sends
    that returned (and how long each took), and failures by reason class. Thread-safe (an
    SMTP pool sends from several threads); :meth:`save` adds the counts to the database and
    starts again from zero. It keeps the wrapped mailer's ``parallel_sessions`` and never
    closes it (the mailer's owner does)."""

    def __init__(self, mailer: Mailer, *, timer: Callable[[], float] = time.perf_counter):
        self.mailer = mailer
        self._timer = timer
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds = 0.0
        sessions = getattr(mailer, "parallel_sessions", None)
        if isinstance(sessions, int):
            self.parallel_sessions = sessions

    def send(self, envelope: Envelope, message: bytes) -> str:
        started = self._timer()
        try:
            where = self.mailer.send(envelope, message)
        except Exception as exc:
            with self._lock:
                self._counts[FAILED + classify(exc)] += 1
            raise
        self.observe(self._timer() - started)
        return where

    def observe(self, seconds: float) -> None:
        """One message handed to the mailer successfully in ``seconds``."""
        first = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._counts[SENT] += 1
            self._counts[SECONDS_COUNT] += 1
            self._seconds += seconds
            for bound in BUCKETS[first:]:
                self._counts[BUCKET + _bound(bound)] += 1

    def close(self) -> None:
        """Nothing: the wrapped mailer belongs to whoever made it."""

    def take(self) -> dict[str, float]:
        """The counts since the last call, and zero them."""
        with self._lock:
            counts: dict[str, float] = {name: float(n) for name, n in self._counts.items()}
            if self._counts[SECONDS_COUNT]:
                counts[SECONDS_SUM] = self._seconds
            self._counts.clear()
            self._seconds = 0.0
        return counts

    def save(self, store: Store) -> None:
        store.add_delivery_counts(self.take())


def _bound(bound: float) -> str:
    return f"{bound:g}"


# ---------------------------------------------------------------------- /metrics


@dataclass(frozen=True)
class _Scrape:
    snapshot: MetricsSnapshot
    holder: DaemonHolder | None


class StoreCollector:
    """The deployment's metrics, read from the database at each scrape (cached for
    ``cache_seconds``). Register it on a ``CollectorRegistry`` of your own."""

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, _Scrape] | None = None

    def _scrape(self) -> _Scrape:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                scrape = _Scrape(self.store.metrics_snapshot(), daemon_holder(self.store.engine))
                self._cached = (now, scrape)
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        scrape = self._scrape()
        snap, holder = scrape.snapshot, scrape.holder
        yield _gauge("newsletter_papers", "Papers stored.", snap.papers)
        digests = GaugeMetricFamily(
            "newsletter_digest_files", "Digest files by state.", labels=["state"]
        )
        for d_state in DigestState:
            digests.add_metric([d_state.value], snap.digests.get(d_state, 0))
        yield digests
        issues = GaugeMetricFamily("newsletter_issues", "Issues by state.", labels=["state"])
        for i_state in IssueState:
            issues.add_metric([i_state.value], snap.issues.get(i_state, 0))
        yield issues
        counters = snap.counters
        yield CounterMetricFamily(
            "newsletter_messages_sent",
            "Issues handed to the mailer successfully (outbox file written, SMTP accepted).",
            value=counters.get(SENT, 0.0),
        )
        failed = CounterMetricFamily(
            "newsletter_messages_failed",
            "Sends that failed, by reason class (permanent, transient, unavailable, unknown, "
            "error).",
            labels=["reason"],
        )
        for reason in FailureReason.ALL:
            failed.add_metric([reason], counters.get(FAILED + reason, 0.0))
        yield failed
        histogram = HistogramMetricFamily(
            "newsletter_delivery_seconds",
            "Time to hand one issue to the mailer (successful sends).",
        )
        count = counters.get(SECONDS_COUNT, 0.0)
        buckets = [(repr(b), counters.get(BUCKET + _bound(b), 0.0)) for b in BUCKETS]
        histogram.add_metric(
            [], buckets=[*buckets, ("+Inf", count)], sum_value=counters.get(SECONDS_SUM, 0.0)
        )
        yield histogram
        state = snap.state
        yield _gauge(
            "newsletter_last_scan_timestamp_seconds",
            "When the last inbox scan finished (Unix time; 0: never).",
            _stamp(state.last_scan_at if state else None),
        )
        yield _gauge(
            "newsletter_last_send_timestamp_seconds",
            "When the last issue was sent (Unix time; 0: never).",
            _stamp(snap.last_send_at),
        )
        yield _gauge(
            "newsletter_daemon_up",
            "1 when a daemon holds the database (its lock), else 0.",
            1 if holder is not None else 0,
        )
        yield _gauge(
            "newsletter_daemon_start_time_seconds",
            "When the daemon holding the database started (Unix time; 0: none runs).",
            _stamp(holder.since if holder else None),
        )
        yield _gauge(
            "newsletter_daemon_heartbeat_timestamp_seconds",
            "The daemon's last heartbeat, written at every inbox scan (Unix time; 0: never).",
            _stamp(state.heartbeat_at if state else None),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _stamp(moment: Any) -> float:
    return moment.timestamp() if moment is not None else 0.0


def metrics_registry(store: Store, **kwargs: Any) -> CollectorRegistry:
    """A registry of its own holding the deployment's collector (not the process-global
    registry, whose process and platform collectors would describe the web worker)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, **kwargs))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (:data:`CONTENT_TYPE_LATEST`)."""
    return generate_latest(registry)


# ---------------------------------------------------------------------- /readyz


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Readiness:
    """``/readyz``'s answer: each check, and whether all passed."""

    database: Check
    migrations: Check
    inbox: Check

    @property
    def ready(self) -> bool:
        return self.database.ok and self.migrations.ok and self.inbox.ok

    def as_json(self) -> dict[str, Any]:
        checks = {"database": self.database, "migrations": self.migrations, "inbox": self.inbox}
        return {
            "status": "ok" if self.ready else "unavailable",
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
            "failed": [name for name, c in checks.items() if not c.ok],
        }


def readiness(store: Store, settings: Settings) -> Readiness:
    """Check the database (a ``SELECT 1``), its migration against this code's head, and the
    inbox; each failure says what is wrong (the database URL without its password)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = Check(True, "answers")
    except SQLAlchemyError as exc:
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
        database = Check(False, f"does not answer: {detail[:300]}")
    if not database.ok:
        migrations = Check(False, "not checked: the database does not answer")
    else:
        try:
            migrations = Check(True, f"at {store.check_revision()}, current")
        except NewsletterError as exc:
            migrations = Check(False, str(exc))
    problem = inbox_problem(settings.inbox)
    inbox = Check(problem is None, problem or f"{settings.inbox.resolve()} readable")
    return Readiness(database, migrations, inbox)


# ---------------------------------------------------------------------- log hygiene

#: A secret token in a path of ours: ``/unsubscribe/<token>``, ``/feeds/<feed token>.atom``...
_TOKEN_IN_PATH = re.compile(
    r"(/(?:unsubscribe|resubscribe|confirm|preferences|issues|feedback|mute|feeds)/)"
    r"[A-Za-z0-9_-]{16,}"
)


def redact_tokens(text: str) -> str:
    """``text`` with the token of every path of ours replaced by ``<token>``."""
    return _TOKEN_IN_PATH.sub(r"\1<token>", text)
