"""Health, readiness and metrics: /healthz, /readyz, /metrics over the real app and database."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from sqlalchemy import text
from starlette.testclient import TestClient

from newsletter.config import Settings
from newsletter.deliver import Envelope, MailerUnavailable, MemoryMailer, OutcomeUnknown
from newsletter.errors import DeliveryError
from newsletter.ingest import inbox_problem
from newsletter.observe import BUCKETS, DeliveryMeter, StoreCollector
from newsletter.store import Store
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import head_revision, open_store, run_once


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, parsed by prometheus-client."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, mailer=MemoryMailer(), secret=b"k" * 32)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")
    assert response.headers["cache-control"] == "no-store"


def test_readyz_checks_database_migrations_and_inbox(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["failed"] == []
    assert body["checks"]["database"] == {"ok": True, "detail": "answers"}
    assert body["checks"]["migrations"] == {"ok": True, "detail": f"at {head_revision()}, current"}
    assert body["checks"]["inbox"]["ok"] is True


def test_readyz_is_503_with_the_failed_checks(settings: Settings, client: TestClient) -> None:
    shutil.rmtree(settings.inbox)
    with closing(open_store(settings)) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0010'"))
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["migrations", "inbox"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["migrations"]["detail"].startswith(
        f"the database is at migration 0010, this version of newsletter expects {head_revision()}"
    )
    assert body["checks"]["inbox"] == {"ok": False, "detail": inbox_problem(settings.inbox)}
    assert str(settings.inbox.resolve()) in body["checks"]["inbox"]["detail"]


def test_metrics_on_an_empty_database(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "newsletter_papers") == 0
    assert value(samples, "newsletter_issues", state="sent") == 0
    assert value(samples, "newsletter_messages_sent_total") == 0
    for reason in ("permanent", "transient", "unavailable", "unknown", "error"):
        assert value(samples, "newsletter_messages_failed_total", reason=reason) == 0
    assert value(samples, "newsletter_delivery_seconds_count") == 0
    assert value(samples, "newsletter_delivery_seconds_bucket", le="+Inf") == 0
    assert value(samples, "newsletter_last_scan_timestamp_seconds") == 0
    assert value(samples, "newsletter_last_send_timestamp_seconds") == 0
    assert value(samples, "newsletter_daemon_up") == 0


def test_metrics_after_a_run(settings: Settings) -> None:
    summary = run_once(settings, now=NOW)  # the outbox mailer: real .eml files
    sent = summary.issues_delivered
    assert sent == 3
    with closing(open_store(settings)) as store:
        papers = store.count_papers()
        issues = store.issue_state_counts()
    app = create_app(settings, mailer=MemoryMailer(), secret=b"k" * 32)
    with TestClient(app) as client:
        samples = scrape(client)
    assert value(samples, "newsletter_papers") == papers == summary.papers_total
    assert value(samples, "newsletter_digest_files", state="ingested") == summary.files_ingested
    assert value(samples, "newsletter_digest_files", state="quarantined") == (
        summary.files_quarantined
    )
    assert value(samples, "newsletter_issues", state="sent") == sent
    assert value(samples, "newsletter_issues", state="failed") == issues.failed == 0
    assert value(samples, "newsletter_messages_sent_total") == sent
    assert value(samples, "newsletter_messages_failed_total", reason="permanent") == 0
    assert value(samples, "newsletter_delivery_seconds_count") == sent
    assert value(samples, "newsletter_delivery_seconds_bucket", le="+Inf") == sent
    assert value(samples, "newsletter_delivery_seconds_bucket", le="60.0") == sent
    assert value(samples, "newsletter_delivery_seconds_sum") > 0
    # The run's clock is NOW: the scan and the sends happened "at" NOW.
    assert value(samples, "newsletter_last_scan_timestamp_seconds") == NOW.timestamp()
    assert value(samples, "newsletter_last_send_timestamp_seconds") == NOW.timestamp()
    assert value(samples, "newsletter_daemon_up") == 0


class Refusing:
    """A mailer that fails with each error in turn (the library's own exceptions)."""

    def __init__(self, errors: list[Exception | None]) -> None:
        self.errors = errors

    def send(self, envelope: Envelope, message: bytes) -> str:
        error = self.errors.pop(0)
        if error is not None:
            raise error
        return "accepted"

    def close(self) -> None:
        pass


def test_failures_are_counted_by_reason_class_across_processes(store: Store) -> None:
    errors: list[Exception | None] = [
        DeliveryError("550 5.1.1 user unknown", permanent=True),
        DeliveryError("451 4.3.0 try later"),
        MailerUnavailable("connection refused"),
        OutcomeUnknown("no reply to DATA"),
        RuntimeError("bug"),
        None,
        DeliveryError("550 5.7.1 refused", permanent=True),
    ]
    ticks = itertools.count(0.0, 0.3)  # a clock that moves 0.3 s between two readings
    meter = DeliveryMeter(Refusing(errors), timer=lambda: next(ticks))
    envelope = Envelope("n@example.org", "a@example.org", "<m@x>", "label")
    outcomes = []
    for _ in range(7):
        try:
            outcomes.append(meter.send(envelope, b"x"))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(type(exc).__name__)
    assert outcomes[5] == "accepted"
    meter.save(store)
    meter.save(store)  # nothing more: the counts were taken
    # A second process (another pass) adds to the same counters.
    other = DeliveryMeter(Refusing([DeliveryError("552 too big", permanent=True)]))
    with pytest.raises(DeliveryError):
        other.send(envelope, b"x")
    other.save(store)
    registry_values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in StoreCollector(store, cache_seconds=0).collect()
        for s in family.samples
    }
    assert value(registry_values, "newsletter_messages_sent_total") == 1
    failed = {
        reason: value(registry_values, "newsletter_messages_failed_total", reason=reason)
        for reason in ("permanent", "transient", "unavailable", "unknown", "error")
    }
    assert failed == {"permanent": 3, "transient": 1, "unavailable": 1, "unknown": 1, "error": 1}
    assert value(registry_values, "newsletter_delivery_seconds_count") == 1
    assert value(registry_values, "newsletter_delivery_seconds_sum") == pytest.approx(0.3)
    below = [b for b in BUCKETS if b < 0.3]
    for bound in BUCKETS:
        expected = 0 if bound in below else 1
        le = floatToGoString(bound)
        assert value(registry_values, "newsletter_delivery_seconds_bucket", le=le) == expected


def test_metrics_are_cached_for_a_few_seconds(store: Store) -> None:
    now = [100.0]
    collector = StoreCollector(store, cache_seconds=5, clock=lambda: now[0])

    def sent() -> float:
        return next(
            s.value
            for family in collector.collect()
            for s in family.samples
            if s.name == "newsletter_messages_sent_total"
        )

    assert sent() == 0
    store.add_delivery_counts({"sent": 2.0})
    assert sent() == 0  # the cached scrape
    now[0] += 5
    assert sent() == 2


def test_the_daemons_state_row(store: Store) -> None:
    assert store.daemon_state() is None
    started = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    store.record_daemon_start(4242, "box", started)
    store.record_scan(started.replace(minute=1))
    store.record_heartbeat(started.replace(minute=2))
    state = store.daemon_state()
    assert state is not None
    assert (state.pid, state.host, state.started_at, state.stopped_at) == (
        4242,
        "box",
        started,
        None,
    )
    assert state.last_scan_at == started.replace(minute=1)
    assert state.heartbeat_at == started.replace(minute=2)
    store.record_daemon_stop(started.replace(minute=3))
    stopped = store.daemon_state()
    assert stopped is not None and stopped.stopped_at == started.replace(minute=3)


def test_metrics_route_is_a_registry_of_its_own(client: TestClient) -> None:
    """The global registry's process collectors (the web worker's CPU, memory) are not ours."""
    names = {name for name, _ in scrape(client)}
    assert not any(n.startswith(("process_", "python_gc", "python_info")) for n in names)
    assert all(n.startswith("newsletter_") for n in names)


def test_serve_says_where_it_listens_at_the_default_level(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.smtp_server import free_port
    from tests.test_logs import Server

    port = free_port()
    server = Server(settings, port, tmp_path / "serve.log", verbosity=())
    try:
        server.wait_until_up()
        assert server.get("/healthz") == (200, "ok\n")
    finally:
        output = server.stop()
    assert (
        f"serving http://127.0.0.1:8080 on http://127.0.0.1:{port} "
        "(health: /healthz, /readyz; metrics: /metrics); Ctrl-C stops"
    ) in output
