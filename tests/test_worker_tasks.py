"""Delivery by workers, piece by piece: one task (``deliver_issue``), the scheduler's enqueue
pass, the queue settings, the published delivery settings, the locks beside an in-process
sender, the CLI, and the Celery task's guard against junk arguments.

Everything that touches the database runs on PostgreSQL (workers need it) and is skipped
without ``NEWSLETTER_TEST_POSTGRES_URL``; the tests that use a real broker are skipped without
``NEWSLETTER_TEST_REDIS_URL``. Mail goes to a real aiosmtpd server, the outbox, or the memory
mailer; the one fake is the broker handed to ``enqueue_due`` where a test needs to steer its
queue length or make it fail (the real ``Broker`` on Redis has tests of its own here).
Real Celery worker processes (started, killed mid-task) are not started here.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from newsletter.app import Newsletter
from newsletter.config import QueueSettings, Settings, load_settings, masked_broker_url
from newsletter.deliver import MemoryMailer
from newsletter.domain import IssueRecord, IssueState, SubscriberStatus
from newsletter.errors import ConfigError, StorageError
from newsletter.pipeline import MAX_ATTEMPTS, RETRY_BASE
from newsletter.smtp import SmtpMailer
from newsletter.store import Store
from newsletter.store.lock import (
    ISSUE_LOCK_CLASS,
    AlreadyRunning,
    SendLock,
    WorkerLocks,
    issues_being_sent,
)
from newsletter.workers import deliver as deliver_module
from newsletter.workers import process
from newsletter.workers.broker import TASK_NAME, Broker, BrokerUnavailable
from newsletter.workers.deliver import TaskOutcome, TaskResult, deliver_issue
from newsletter.workers.enqueue import enqueue_due
from newsletter.workers.published import PUBLISHED_KEYS, apply_published, published_json
from tests.conftest import NOW, RABBITMQ_ENV, REDIS_ENV, fresh_postgres_database
from tests.factories import CONFIG, run_cli, workspace_env
from tests.smtp_server import Recorder, SmtpServer, free_port, smtp_settings

#: What the seed corpus and config/subscribers.toml plan at NOW: one issue each for Ada,
#: Grace and Karen.
PLANNED = 3
REQUEUE_AFTER = timedelta(minutes=30)  # queue.requeue_after_minutes by default

# ---------------------------------------------------------------------------- fixtures


def _redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"broker tests need Redis: set {REDIS_ENV}=redis://127.0.0.1:6379/0")
    return url


@pytest.fixture
def pg_settings(workdir: Path, pg_url: str) -> Settings:
    """The test workspace on PostgreSQL, delivering in-process (no broker)."""
    return load_settings(CONFIG, environ=workspace_env(workdir, pg_url))


@pytest.fixture
def queue_settings(pg_settings: Settings) -> Settings:
    """The same with a broker URL and a queue of its own (the fake broker ignores the URL)."""
    queue = QueueSettings(broker_url="redis://127.0.0.1:1/0", name=f"t_{uuid.uuid4().hex}")
    return pg_settings.model_copy(update={"queue": queue})


@pytest.fixture
def app(pg_settings: Settings) -> Iterator[Newsletter]:
    """The application on the test database, with the seed papers ingested, the subscribers
    synced and their issues for NOW planned (nothing sent)."""
    with Newsletter(pg_settings, mailer=MemoryMailer()) as application:
        application.store.migrate()
        application.ingest(now=NOW)
        application.sync_subscribers(NOW)
        application.plan_current_slots(NOW)
        assert len(application.store.issues(states=[IssueState.PLANNED])) == PLANNED
        yield application


@pytest.fixture
def locks(app: Newsletter) -> Iterator[WorkerLocks]:
    """A worker process's locks on the test database (shared send lock taken)."""
    worker_locks = WorkerLocks(app.store.engine)
    worker_locks.start()
    yield worker_locks
    worker_locks.close()


@pytest.fixture
def other_engine(pg_url: str) -> Iterator[Engine]:
    """A second engine on the test database: another worker process, another machine."""
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def elsewhere() -> Iterator[Engine]:
    """An engine on another database of the same server (another newsletter instance)."""
    with fresh_postgres_database() as url:
        engine = create_engine(url)
        yield engine
        engine.dispose()


def _issues(store: Store) -> list[IssueRecord]:
    return sorted(store.issues(), key=lambda i: i.id)


def _issue(store: Store, issue_id: int) -> IssueRecord:
    found = store.issue_by_id(issue_id)
    assert found is not None
    return found


def _task(
    app: Newsletter, mailer: Any, locks: WorkerLocks, issue_id: int, now: datetime = NOW
) -> TaskOutcome:
    """One task as a worker process runs it, on this app's store, renderer and site."""
    return deliver_issue(
        app.store, app.renderer, mailer, locks, issue_id=issue_id, site=app.site, now=now
    )


def _expected_message_id(app: Newsletter, issue: IssueRecord) -> str:
    """The Message-ID the in-process pipeline gives this issue (derived from its subscriber
    and slot, whoever renders it)."""
    sub = app.store.subscribers_by_id({issue.subscriber_id})[issue.subscriber_id]
    return app.site.message_id(sub, issue.slot_date)


def _queued_at(store: Store) -> dict[int, datetime | None]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, queued_at FROM issues ORDER BY id")).all()
    return {int(i): _aware(q) for i, q in rows}


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=NOW.tzinfo)


def _set(store: Store, issue_id: int, **values: object) -> None:
    """Write columns of one issue directly (the state a crashed worker would leave)."""
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with store.engine.begin() as conn:
        conn.execute(
            text(f"UPDATE issues SET {assignments} WHERE id = :id"), {**values, "id": issue_id}
        )


# ---------------------------------------------------------------------------- deliver_issue


def test_a_due_issue_is_sent_once_with_its_message_id(app: Newsletter, locks: WorkerLocks) -> None:
    first, *others = _issues(app.store)
    with SmtpServer(Recorder()) as server:
        mailer = SmtpMailer.from_settings(smtp_settings(app.settings, server.port))
        try:
            sent = _task(app, mailer, locks, first.id)
            again = _task(app, mailer, locks, first.id, NOW + timedelta(minutes=1))
        finally:
            mailer.close()
        received = list(server.handler.received)
    expected = _expected_message_id(app, first)
    assert sent.result is TaskResult.SENT, sent
    assert (again.result, again.detail) == (TaskResult.DONE_ALREADY, "sent")
    assert [(r.recipient, r.message_id) for r in received] == [("ada@example.org", expected)]
    header = email.message_from_bytes(received[0].raw, policy=email.policy.default)
    assert header["Message-ID"] == expected
    after = _issue(app.store, first.id)
    assert (after.state, after.attempts, after.message_id) == (IssueState.SENT, 1, expected)
    assert sorted(p for _, p, i in app.store.sent_log() if i == first.id) == sorted(first.paper_ids)
    assert [(i.state, i.attempts) for i in _issues(app.store)[1:]] == [
        (IssueState.PLANNED, 0)
    ] * len(others)


def test_an_issue_locked_by_another_worker_is_left_to_it(
    app: Newsletter,
    locks: WorkerLocks,
    other_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deliver_module, "LOCK_WAIT_SECONDS", 0.2)
    issue = _issues(app.store)[0]
    mailer = MemoryMailer()
    other = WorkerLocks(other_engine)
    try:
        assert other.try_issue(issue.id)
        busy = _task(app, mailer, locks, issue.id)
        state = _issue(app.store, issue.id)
    finally:
        other.close()
    assert busy.result is TaskResult.BUSY
    assert mailer.sent == []
    assert (state.state, state.attempts) == (IssueState.PLANNED, 0)
    # The same with a bare advisory lock on the issue's key (what WorkerLocks takes).
    with other_engine.connect() as conn:
        conn.execute(
            text("SELECT pg_advisory_lock(:c, :i)"), {"c": ISSUE_LOCK_CLASS, "i": issue.id}
        )
        assert _task(app, mailer, locks, issue.id).result is TaskResult.BUSY
        conn.execute(
            text("SELECT pg_advisory_unlock(:c, :i)"), {"c": ISSUE_LOCK_CLASS, "i": issue.id}
        )
    assert mailer.sent == []
    # Released: the next task for it sends it.
    assert _task(app, mailer, locks, issue.id).result is TaskResult.SENT
    assert len(mailer.sent) == 1


def test_an_issue_waiting_for_its_retry_is_not_sent_early(
    app: Newsletter, locks: WorkerLocks
) -> None:
    issue = _issues(app.store)[0]
    retry_at = NOW + timedelta(minutes=10)
    _set(app.store, issue.id, next_retry_at=retry_at)
    mailer = MemoryMailer()
    early = _task(app, mailer, locks, issue.id, NOW + timedelta(minutes=9))
    assert early.result is TaskResult.NOT_DUE
    assert mailer.sent == []
    assert (_issue(app.store, issue.id).state, _issue(app.store, issue.id).attempts) == (
        IssueState.PLANNED,
        0,
    )
    assert _task(app, mailer, locks, issue.id, retry_at).result is TaskResult.SENT


def test_an_unknown_issue_is_gone(app: Newsletter, locks: WorkerLocks) -> None:
    mailer = MemoryMailer()
    assert _task(app, mailer, locks, 999_999).result is TaskResult.GONE
    assert mailer.sent == []


def test_an_issue_of_a_subscriber_who_left_fails_with_why(
    app: Newsletter, locks: WorkerLocks
) -> None:
    issue = _issues(app.store)[0]
    assert app.store.set_subscriber_status("ada@example.org", SubscriberStatus.UNSUBSCRIBED, NOW)
    mailer = MemoryMailer()
    outcome = _task(app, mailer, locks, issue.id)
    after = _issue(app.store, issue.id)
    assert outcome.result is TaskResult.FAILED
    assert outcome.detail == "ada@example.org is unsubscribed"
    assert (after.state, after.attempts) == (IssueState.FAILED, 0)
    assert after.last_reply == "not sent: ada@example.org is unsubscribed"
    assert mailer.sent == []


def test_an_issue_left_sending_is_sent_again_with_the_same_message_id(
    app: Newsletter, locks: WorkerLocks
) -> None:
    issue = _issues(app.store)[0]
    # A worker claimed it (an attempt counted) and died before its outcome was recorded.
    assert app.store.claim_issues([issue]) == {issue.id}
    assert (_issue(app.store, issue.id).state, _issue(app.store, issue.id).attempts) == (
        IssueState.SENDING,
        1,
    )
    mailer = MemoryMailer()
    outcome = _task(app, mailer, locks, issue.id)
    after = _issue(app.store, issue.id)
    expected = _expected_message_id(app, issue)
    assert outcome.result is TaskResult.SENT
    assert [envelope.message_id for envelope, _ in mailer.sent] == [expected]
    assert (after.state, after.attempts, after.message_id) == (IssueState.SENT, 2, expected)
    # The in-process path gives the other issues the same kind of Message-ID.
    with Newsletter(app.settings, mailer=MemoryMailer()) as in_process:
        locks.close()  # no worker alive: the in-process sender may run
        delivery = in_process.deliver(NOW)
        in_process_ids = {e.message_id for e, _ in cast(MemoryMailer, in_process.mailer).sent}
    assert len(delivery.delivered) == PLANNED - 1
    assert in_process_ids == {_expected_message_id(app, i) for i in _issues(app.store)[1:]}


def test_an_issue_interrupted_too_often_fails_instead_of_being_sent(
    app: Newsletter, locks: WorkerLocks
) -> None:
    issue = _issues(app.store)[0]
    _set(app.store, issue.id, state=IssueState.SENDING.value, attempts=MAX_ATTEMPTS)
    mailer = MemoryMailer()
    outcome = _task(app, mailer, locks, issue.id)
    after = _issue(app.store, issue.id)
    assert outcome.result is TaskResult.FAILED
    assert f"sending was interrupted {MAX_ATTEMPTS} times" in outcome.detail
    assert (after.state, after.attempts) == (IssueState.FAILED, MAX_ATTEMPTS)
    assert after.last_reply == outcome.detail
    assert mailer.sent == []
    # One attempt short of the limit it is still sent.
    second = _issues(app.store)[1]
    _set(app.store, second.id, state=IssueState.SENDING.value, attempts=MAX_ATTEMPTS - 1)
    assert _task(app, mailer, locks, second.id).result is TaskResult.SENT
    assert (_issue(app.store, second.id).attempts, len(mailer.sent)) == (MAX_ATTEMPTS, 1)


def test_a_rendering_failure_counts_an_attempt_until_the_issue_fails(
    app: Newsletter, locks: WorkerLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_content: object) -> None:
        raise RuntimeError("template exploded")

    monkeypatch.setattr(app.renderer, "render", broken)
    issue = _issues(app.store)[0]
    mailer = MemoryMailer()
    moment = NOW
    seen: list[tuple[TaskResult, IssueState, int, datetime | None]] = []
    for _ in range(MAX_ATTEMPTS):
        outcome = _task(app, mailer, locks, issue.id, moment)
        after = _issue(app.store, issue.id)
        seen.append((outcome.result, after.state, after.attempts, after.next_retry_at))
        if after.next_retry_at is not None:
            # Not due before its backoff ends: a task delivered early does nothing.
            early = _task(app, mailer, locks, issue.id, after.next_retry_at - timedelta(seconds=1))
            assert early.result is TaskResult.NOT_DUE
            moment = after.next_retry_at
    backoff = [NOW]
    for n in range(1, MAX_ATTEMPTS):
        backoff.append(backoff[-1] + RETRY_BASE * 2 ** (n - 1))
    assert seen == [
        (TaskResult.FAILED, IssueState.PLANNED, n, backoff[n]) for n in range(1, MAX_ATTEMPTS)
    ] + [(TaskResult.FAILED, IssueState.FAILED, MAX_ATTEMPTS, None)]
    after = _issue(app.store, issue.id)
    assert after.last_reply == "RuntimeError: template exploded"
    assert mailer.sent == []
    assert _task(app, mailer, locks, issue.id, moment + timedelta(days=1)).result is (
        TaskResult.DONE_ALREADY
    )


def test_an_unavailable_mail_server_hands_the_issue_back_for_later(
    app: Newsletter, locks: WorkerLocks
) -> None:
    issue = _issues(app.store)[0]
    app.store.mark_queued([issue.id], NOW - timedelta(minutes=1))
    port = free_port()  # nobody listens there
    closed = smtp_settings(app.settings, port)
    mailer = SmtpMailer.from_settings(closed)
    try:
        outcome = _task(app, mailer, locks, issue.id)
    finally:
        mailer.close()
    after = _issue(app.store, issue.id)
    assert outcome.result is TaskResult.HANDED_BACK, outcome
    assert outcome.detail.startswith(f"SMTP server unreachable: cannot connect to 127.0.0.1:{port}")
    assert after.last_reply == f"not sent yet: {outcome.detail}"
    assert (after.state, after.attempts) == (IssueState.RENDERED, 0)  # attempt not counted
    assert after.next_retry_at == NOW + timedelta(minutes=5)
    assert _queued_at(app.store)[issue.id] is None  # the next enqueue pass hands it over again
    # Back in line once the 5 minutes are over (and not before).
    mailer2 = MemoryMailer()
    assert _task(app, mailer2, locks, issue.id, NOW + timedelta(minutes=4)).result is (
        TaskResult.NOT_DUE
    )
    assert _task(app, mailer2, locks, issue.id, NOW + timedelta(minutes=5)).result is (
        TaskResult.SENT
    )
    assert _issue(app.store, issue.id).attempts == 1


def test_after_an_outage_a_worker_hands_issues_back_without_connecting(
    app: Newsletter, locks: WorkerLocks
) -> None:
    """The next tasks after one that found the server unavailable do not wait for a connect
    timeout each: their issues go back at once, as a failed connection would leave them."""
    first, second = _issues(app.store)[:2]
    mailer = MemoryMailer()
    outcome = deliver_issue(
        app.store,
        app.renderer,
        mailer,
        locks,
        issue_id=second.id,
        site=app.site,
        now=NOW,
        mailer_unavailable="SMTP server unreachable: refused",
    )
    assert (outcome.result, outcome.detail) == (
        TaskResult.HANDED_BACK,
        "SMTP server unreachable: refused",
    )
    assert mailer.sent == []  # never tried
    after = _issue(app.store, second.id)
    assert (after.state, after.attempts) == (IssueState.RENDERED, 0)
    assert after.last_reply == "not sent yet: SMTP server unreachable: refused"
    assert after.next_retry_at == NOW + RETRY_BASE
    assert _issue(app.store, first.id).state is IssueState.PLANNED  # untouched


def test_a_worker_process_pauses_connecting_after_an_outage(
    app: Newsletter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WorkerContext: one task finds the server down; the tasks of the next 30 s hand their
    issue back without connecting; after that a task tries again."""
    context = process.WorkerContext(app.settings)
    calls: list[str | None] = []
    clock = [NOW]

    class FakeApp:
        store, renderer, mailer, site = app.store, app.renderer, MemoryMailer(), app.site

        @staticmethod
        def clock() -> datetime:
            return clock[0]

    def fake_deliver(*_: Any, issue_id: int, mailer_unavailable: str | None, **__: Any) -> Any:
        calls.append(mailer_unavailable)
        return TaskOutcome(issue_id, TaskResult.HANDED_BACK, "SMTP server unreachable: x")

    monkeypatch.setattr(context, "_current", lambda: (FakeApp, None))
    monkeypatch.setattr(process, "deliver_issue", fake_deliver)
    context.deliver(1)
    clock[0] = NOW + timedelta(seconds=29)
    context.deliver(2)
    clock[0] = NOW + timedelta(seconds=30)
    context.deliver(3)
    assert calls == [None, "SMTP server unreachable: x", None]


def test_a_worker_refuses_a_database_at_another_migration(app: Newsletter) -> None:
    """Workers never migrate the shared database (several at once, or a newer worker under an
    older scheduler, would break it): at another revision they say what to do."""
    assert app.store.check_revision() == app.schema_revision()
    with app.store.engine.begin() as conn:  # as an older scheduler's database would be
        conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
    with pytest.raises(StorageError, match="at migration 0006, this version of newsletter"):
        app.store.check_revision()
    with pytest.raises(StorageError, match="run the scheduler of this version first"):
        Newsletter(app.settings, migrate=False)
    context = process.WorkerContext(app.settings)
    with pytest.raises(StorageError, match="at migration 0006"):
        context.deliver(1)
    context.close()


# ---------------------------------------------------------------------------- enqueue_due


class FakeBroker:
    """Stands in for :class:`Broker` where a test steers the queue: records what it was given,
    reports ``waiting`` tasks, and is down while ``down`` is set."""

    def __init__(self) -> None:
        self.published: list[int] = []
        self.waiting = 0
        self.down = False

    def publish(self, issue_ids: Sequence[int]) -> None:
        if self.down:
            raise BrokerUnavailable("broker redis://127.0.0.1:1/0 did not take the tasks: refused")
        self.published.extend(issue_ids)

    def queue_length(self) -> int:
        if self.down:
            raise BrokerUnavailable("broker redis://127.0.0.1:1/0 did not answer: refused")
        return self.waiting


def _enqueue(app: Newsletter, settings: Settings, broker: FakeBroker, now: datetime) -> Any:
    return enqueue_due(app.store, settings, cast(Broker, broker), now)


def test_enqueue_hands_every_due_issue_over_once(app: Newsletter, queue_settings: Settings) -> None:
    ids = [i.id for i in _issues(app.store)]
    later = ids[-1]
    _set(app.store, later, next_retry_at=NOW + timedelta(minutes=10))
    broker = FakeBroker()
    first = _enqueue(app, queue_settings, broker, NOW)
    published = app.store.delivery_settings()
    second = _enqueue(app, queue_settings, broker, NOW + timedelta(minutes=1))
    assert (first.queued, first.requeued, first.stopped) == (PLANNED - 1, 0, "")
    assert (second.queued, second.requeued) == (0, 0)
    assert broker.published == ids[:-1]
    assert _queued_at(app.store) == {**{i: NOW for i in ids[:-1]}, later: None}
    # The delivery settings: published by the first pass, unchanged by the second.
    assert published is not None
    assert published.settings == published_json(queue_settings)
    assert app.store.delivery_settings() == published
    assert published.updated_at == NOW
    # Its retry time come, the last one is handed over, once.
    third = _enqueue(app, queue_settings, broker, NOW + timedelta(minutes=10))
    fourth = _enqueue(app, queue_settings, broker, NOW + timedelta(minutes=11))
    assert (third.queued, fourth.queued) == (1, 0)
    assert broker.published == ids
    assert _queued_at(app.store)[later] == NOW + timedelta(minutes=10)
    # The settings change: published again.
    renamed = queue_settings.model_copy(update={"name": "Renamed Digest"})
    _enqueue(app, renamed, broker, NOW + timedelta(minutes=12))
    republished = app.store.delivery_settings()
    assert republished is not None
    assert republished.updated_at == NOW + timedelta(minutes=12)
    assert json.loads(republished.settings)["name"] == "Renamed Digest"


def test_enqueue_hands_a_retried_issue_over_again_when_due(
    app: Newsletter, queue_settings: Settings, locks: WorkerLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that scheduled a retry clears ``queued_at``; the pass after the backoff hands
    the issue over again (fresh, not as a lost task)."""

    def broken(_content: object) -> None:
        raise RuntimeError("template exploded")

    broker = FakeBroker()
    assert _enqueue(app, queue_settings, broker, NOW).queued == PLANNED
    issue = _issues(app.store)[0]
    monkeypatch.setattr(app.renderer, "render", broken)
    assert _task(app, MemoryMailer(), locks, issue.id).result is TaskResult.FAILED
    assert _queued_at(app.store)[issue.id] is None
    early = _enqueue(app, queue_settings, broker, NOW + RETRY_BASE - timedelta(seconds=1))
    due = _enqueue(app, queue_settings, broker, NOW + RETRY_BASE)
    assert (early.queued, due.queued, due.requeued) == (0, 1, 0)
    assert broker.published == [i.id for i in _issues(app.store)] + [issue.id]


def test_a_lost_task_is_enqueued_again_only_when_nothing_says_it_is_alive(
    app: Newsletter,
    queue_settings: Settings,
    locks: WorkerLocks,
    other_engine: Engine,
    elsewhere: Engine,
) -> None:
    ids = [i.id for i in _issues(app.store)]
    locked, lost, done = ids
    broker = FakeBroker()
    assert _enqueue(app, queue_settings, broker, NOW).queued == PLANNED
    assert _task(app, MemoryMailer(), locks, done).result is TaskResult.SENT
    # Before requeue_after: nothing, even with an empty queue.
    soon = _enqueue(app, queue_settings, broker, NOW + REQUEUE_AFTER - timedelta(minutes=1))
    assert (soon.queued, soon.requeued) == (0, 0)
    # After it, but the broker still holds tasks: they may be those; nothing.
    late = NOW + REQUEUE_AFTER + timedelta(minutes=1)
    broker.waiting = 2
    waiting = _enqueue(app, queue_settings, broker, late)
    assert (waiting.queued, waiting.requeued) == (0, 0)
    assert broker.published == ids
    # Queue empty: the issue a worker holds the lock of is being sent; only the other goes.
    # A worker of another database sending its own issue with the lost one's id does not
    # count: advisory locks are per database.
    broker.waiting = 0
    other, stranger = WorkerLocks(other_engine), WorkerLocks(elsewhere)
    try:
        assert other.try_issue(locked)
        assert stranger.try_issue(lost)
        assert issues_being_sent(app.store.engine) == {locked}
        again = _enqueue(app, queue_settings, broker, late)
        once_more = _enqueue(app, queue_settings, broker, late + timedelta(minutes=1))
    finally:
        other.close()
        stranger.close()
    assert (again.queued, again.requeued) == (1, 1)
    assert (once_more.queued, once_more.requeued) == (0, 0)  # just handed over again
    assert broker.published == [*ids, lost]
    assert _queued_at(app.store) == {locked: NOW, lost: late, done: None}


def test_an_unavailable_broker_stops_the_pass_and_loses_nothing(
    app: Newsletter, queue_settings: Settings
) -> None:
    broker = FakeBroker()
    broker.down = True
    stopped = _enqueue(app, queue_settings, broker, NOW)
    assert (stopped.queued, broker.published) == (0, [])
    assert "did not take the tasks" in stopped.stopped
    assert "queued by the next pass" in stopped.stopped
    assert set(_queued_at(app.store).values()) == {None}
    broker.down = False
    later = NOW + timedelta(minutes=1)
    resumed = _enqueue(app, queue_settings, broker, later)
    assert (resumed.queued, resumed.stopped) == (PLANNED, "")
    assert set(_queued_at(app.store).values()) == {later}


def test_the_real_broker_unavailable_is_broker_unavailable_without_the_password(
    app: Newsletter, queue_settings: Settings
) -> None:
    pytest.importorskip("celery")
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"  # nobody listens there
    settings = queue_settings.model_copy(
        update={"queue": queue_settings.queue.model_copy(update={"broker_url": url})}
    )
    with Broker(settings.queue) as broker:
        with pytest.raises(BrokerUnavailable) as raised:
            broker.publish([1])
        result = enqueue_due(app.store, settings, broker, NOW)
    assert "hunter2secret" not in str(raised.value)
    assert "did not take the tasks" in str(raised.value)
    assert result.queued == 0
    assert "hunter2secret" not in result.stopped
    assert "did not take the tasks" in result.stopped
    assert set(_queued_at(app.store).values()) == {None}


def _redis_tasks(redis_url: str, queue: str) -> list[tuple[str, list[Any]]]:
    """The (task name, args) of the messages waiting in a Celery queue on Redis, oldest
    first (kombu's Redis transport keeps a queue as a list, newest at the head)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        found = []
        for raw in reversed(cast(list[bytes], client.lrange(queue, 0, -1))):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["task"], body[0]))
        return found
    finally:
        client.close()


def _drop_redis_queue(redis_url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        client.close()


def test_enqueue_on_real_redis_publishes_each_due_issue_once(
    app: Newsletter, queue_settings: Settings
) -> None:
    pytest.importorskip("celery")
    redis_url = _redis_url()
    queue = queue_settings.queue.model_copy(update={"broker_url": redis_url})
    settings = queue_settings.model_copy(update={"queue": queue})
    ids = [i.id for i in _issues(app.store)]
    try:
        with Broker(queue) as broker:
            assert broker.queue_length() == 0
            first = enqueue_due(app.store, settings, broker, NOW)
            second = enqueue_due(app.store, settings, broker, NOW + timedelta(minutes=1))
            assert (first.queued, second.queued) == (PLANNED, 0)
            assert broker.queue_length() == PLANNED
            assert _redis_tasks(redis_url, queue.name) == [(TASK_NAME, [i]) for i in ids]
            # Past requeue_after with the tasks still in the queue: nothing is added.
            late = NOW + REQUEUE_AFTER + timedelta(minutes=1)
            waiting = enqueue_due(app.store, settings, broker, late)
            assert (waiting.queued, broker.queue_length()) == (0, PLANNED)
            # Redis restarted without them (lost): handed over again, once each.
            _drop_redis_queue(redis_url, queue.name)
            assert broker.queue_length() == 0
            lost = enqueue_due(app.store, settings, broker, late)
            assert (lost.queued, lost.requeued) == (PLANNED, PLANNED)
            assert _redis_tasks(redis_url, queue.name) == [(TASK_NAME, [i]) for i in ids]
            direct = [101, 102]
            broker.publish(direct)
            assert broker.queue_length() == PLANNED + len(direct)
            assert _redis_tasks(redis_url, queue.name)[-2:] == [(TASK_NAME, [i]) for i in direct]
    finally:
        _drop_redis_queue(redis_url, queue.name)


def test_a_closed_broker_leaves_the_next_one_in_the_process_working() -> None:
    """Each Newsletter app has a Broker of its own, closed with the app: closing one must not
    close connections a later one on the same URL relies on (Celery's pools are per process)."""
    pytest.importorskip("celery")
    redis_url = _redis_url()
    names = [f"t_{uuid.uuid4().hex}" for _ in range(3)]
    try:
        for name in names:
            queue = QueueSettings(broker_url=redis_url, name=name)
            with Broker(queue) as broker:
                broker.publish([7])
                assert broker.queue_length() == 1
        assert [_redis_tasks(redis_url, name) for name in names] == [[(TASK_NAME, [7])]] * 3
    finally:
        for name in names:
            _drop_redis_queue(redis_url, name)


def test_the_broker_on_rabbitmq_publishes_ids_and_counts_its_queue() -> None:
    """No database here: the Broker alone, on a queue of its own, deleted afterwards."""
    pytest.importorskip("celery")
    url = os.environ.get(RABBITMQ_ENV)
    if not url:
        pytest.skip(f"RabbitMQ tests need {RABBITMQ_ENV}=amqp://guest:guest@127.0.0.1:5672//")
    queue = QueueSettings(broker_url=url, name=f"t_{uuid.uuid4().hex}")
    with Broker(queue) as broker:
        try:
            assert broker.queue_length() == 0  # not declared yet
            broker.publish([4, 5, 6])
            assert broker.queue_length() == 3
            found: list[tuple[str, list[Any]]] = []
            with broker.app.connection_for_write() as conn:
                channel = conn.default_channel
                while (message := channel.basic_get(queue.name, no_ack=True)) is not None:
                    found.append((message.headers["task"], json.loads(message.body)[0]))
            assert found == [(TASK_NAME, [4]), (TASK_NAME, [5]), (TASK_NAME, [6])]
            assert broker.queue_length() == 0
        finally:
            with broker.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue.name)


# ---------------------------------------------------------------------------- configuration


def _load(workdir: Path, database_url: str, **extra: object) -> Settings:
    return load_settings(CONFIG, environ=workspace_env(workdir, database_url, **extra))


PG = "postgresql://newsletter@db.example.org/newsletter"
REDIS = "redis://127.0.0.1:6379/0"


def test_the_broker_url_comes_from_the_environment(workdir: Path) -> None:
    settings = _load(workdir, PG, queue_broker_url=REDIS, queue_name="mail-eu")
    assert (settings.queue.broker_url, settings.queue.name) == (REDIS, "mail-eu")
    assert _load(workdir, PG).queue.broker_url is None
    assert _load(workdir, PG, queue_broker_url="").queue.broker_url is None


def test_a_broker_needs_a_postgresql_database(workdir: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(workdir, f"sqlite:///{workdir / 'x.db'}", queue_broker_url=REDIS)
    message = str(raised.value)
    assert "queue.broker_url" in message and "database_url" in message
    assert "NEWSLETTER_QUEUE_BROKER_URL" in message  # where the broker URL came from


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "sqs://queue", "redis://é@host/0"]
)
def test_a_broker_url_of_another_kind_is_refused(workdir: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="broker_url"):
        _load(workdir, PG, queue_broker_url=url)


def test_the_visibility_timeout_must_cover_twice_the_time_limit(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="visibility_timeout_seconds") as raised:
        _load(
            workdir,
            PG,
            queue_broker_url=REDIS,
            queue_task_time_limit_seconds=1000,
            queue_visibility_timeout_seconds=1999,
        )
    assert "task_time_limit_seconds" in str(raised.value)
    ok = _load(
        workdir,
        PG,
        queue_broker_url=REDIS,
        queue_task_time_limit_seconds=1000,
        queue_visibility_timeout_seconds=2000,
    )
    assert ok.queue.visibility_timeout_seconds == 2000


def test_the_time_limit_must_outlast_a_slow_smtp_send(workdir: Path) -> None:
    smtp = {"mailer": "smtp", "smtp_host": "127.0.0.1", "smtp_timeout_seconds": 30}
    # smtp.data_timeout_seconds (600) + 3 x smtp.timeout_seconds (30) = 690
    with pytest.raises(ConfigError, match="task_time_limit_seconds") as raised:
        _load(workdir, PG, queue_broker_url=REDIS, queue_task_time_limit_seconds=689, **smtp)
    assert "690" in str(raised.value)
    assert (
        _load(
            workdir, PG, queue_broker_url=REDIS, queue_task_time_limit_seconds=690, **smtp
        ).queue.task_time_limit_seconds
        == 690
    )
    # The outbox has no such timeouts.
    assert (
        _load(
            workdir, PG, queue_broker_url=REDIS, queue_task_time_limit_seconds=60
        ).queue.task_time_limit_seconds
        == 60
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:secret@host:5672//", "amqp://user:***@host:5672//"),
        ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "rediss://default:secret@cache.example.org:6380/1",
            "rediss://default:***@cache.example.org:6380/1",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (None, None),
    ],
)
def test_a_broker_url_is_shown_without_its_password(url: str | None, shown: str | None) -> None:
    assert masked_broker_url(url) == shown
    if url is not None:
        assert "secret" not in str(masked_broker_url(url))


# ---------------------------------------------------------------------------- published settings


def _scheduler_and_worker(
    workdir: Path, scheduler: dict[str, object], worker: dict[str, object]
) -> tuple[Settings, Settings]:
    sched = _load(workdir, PG, queue_broker_url=REDIS, **scheduler)
    own = _load(
        workdir,
        "postgresql://worker@db.example.org/newsletter",
        queue_broker_url="amqp://guest:guest@mq.example.org:5672//",
        queue_name="workers-eu",
        queue_task_time_limit_seconds=1200,
        **worker,
    )
    return sched, own


def test_a_worker_runs_with_the_schedulers_delivery_settings_and_its_own_connections(
    workdir: Path,
) -> None:
    scheduler = {
        "name": "Scheduler Digest",
        "base_url": "https://papers.example.org",
        "timezone": "America/New_York",
        "mail_from_address": "digest@mail.example.org",
        "mail_list_id": "digest.mail.example.org",
        "mailer": "smtp",
        "smtp_host": "smtp.example.org",
        "smtp_port": 2525,
        "smtp_username": "digest",
        "outbox_dir": workdir / "scheduler-outbox",
        "smtp_ca_file": workdir / "scheduler-ca.pem",
    }
    sched = load_settings(
        CONFIG,
        environ={
            **workspace_env(workdir, PG, queue_broker_url=REDIS, **scheduler),
            "NEWSLETTER_SMTP_PASSWORD": "scheduler-password",
        },
    )
    own = load_settings(
        CONFIG,
        environ={
            **workspace_env(
                workdir,
                "postgresql://worker@db.example.org/newsletter",
                queue_broker_url="amqp://guest:guest@mq.example.org:5672//",
                queue_name="workers-eu",
                queue_task_time_limit_seconds=1200,
                smtp_ca_file=workdir / "worker-ca.pem",
            ),
            "NEWSLETTER_SMTP_PASSWORD": "worker-password",
        },
    )
    text_ = published_json(sched)
    assert set(json.loads(text_)) == PUBLISHED_KEYS
    assert "scheduler-password" not in text_  # secrets never go into the database
    assert "scheduler-outbox" not in text_ and "scheduler-ca" not in text_  # nor its paths
    assert published_json(sched) == text_  # the same settings, the same text
    merged = apply_published(own, text_)
    assert merged.name == "Scheduler Digest"
    assert merged.base_url == sched.base_url
    assert merged.timezone == "America/New_York"
    assert merged.mail == sched.mail
    assert merged.mailer == "smtp"
    assert merged.smtp == sched.smtp.model_copy(update={"ca_file": own.smtp.ca_file})
    assert merged.smtp.ca_file == workdir / "worker-ca.pem"
    assert merged.outbox_dir == own.outbox_dir  # paths name the worker's own disk
    assert merged.database_url == own.database_url
    assert merged.queue == own.queue
    assert merged.smtp_password == "worker-password"
    assert published_json(merged) == text_
    legacy = json.loads(text_) | {"outbox_dir": "/scheduler/outbox"}  # the first version's row
    assert apply_published(own, json.dumps(legacy)).outbox_dir == own.outbox_dir


def test_published_smtp_login_needs_the_workers_own_password(workdir: Path) -> None:
    sched, own = _scheduler_and_worker(workdir, {}, {})
    sched = sched.model_copy(
        update={
            "mailer": "smtp",
            "smtp": sched.smtp.model_copy(update={"host": "smtp.example.org", "username": "bob"}),
        }
    )
    with pytest.raises(ConfigError) as raised:
        apply_published(own, published_json(sched))
    assert "NEWSLETTER_SMTP_PASSWORD" in str(raised.value)
    assert "smtp.example.org" in str(raised.value)


@pytest.mark.parametrize(
    "published",
    [
        '{"database_url": "postgresql://evil@elsewhere/db"}',
        '{"queue": {"broker_url": "redis://elsewhere:6379/0"}}',
        '{"name": "x", "log_level": "DEBUG"}',
        '{"name": 5, "timezone": "Not/AZone"}',
        "not json",
        '["name"]',
        "5",
        "null",
    ],
)
def test_published_settings_this_worker_does_not_understand_are_refused(
    workdir: Path, published: str
) -> None:
    _, own = _scheduler_and_worker(workdir, {}, {})
    with pytest.raises(ConfigError, match="not valid for this version"):
        apply_published(own, published)


# ---------------------------------------------------------------------------- locks


def test_live_workers_keep_an_in_process_sender_off_the_database(
    app: Newsletter, locks: WorkerLocks
) -> None:
    with pytest.raises(AlreadyRunning) as raised:
        SendLock(app.store.engine).acquire()
    assert "newsletter worker pid=" in str(raised.value)
    delivery = app.deliver(NOW)
    assert delivery.delivered == []
    assert "newsletter worker pid=" in delivery.stopped
    assert [i.state for i in _issues(app.store)] == [IssueState.PLANNED] * PLANNED
    assert cast(MemoryMailer, app.mailer).sent == []
    locks.close()  # the last worker stopped
    lock = SendLock(app.store.engine)
    lock.acquire()
    lock.release()
    assert len(app.deliver(NOW).delivered) == PLANNED


def test_closed_worker_locks_release_everything(app: Newsletter, other_engine: Engine) -> None:
    """``close()`` drops the shared send lock and the issue locks for every other session:
    what a worker process that stops leaves behind is nothing."""
    issue = _issues(app.store)[0]
    worker = WorkerLocks(app.store.engine)
    worker.start()
    assert worker.try_issue(issue.id)
    assert issues_being_sent(app.store.engine) == {issue.id}
    worker.close()
    assert issues_being_sent(app.store.engine) == set()
    other = WorkerLocks(other_engine)
    try:
        assert other.try_issue(issue.id)
    finally:
        other.close()
    lock = SendLock(other_engine)
    lock.acquire()  # no worker left: an in-process sender may run
    lock.release()


# ---------------------------------------------------------------------------- CLI


def test_worker_without_a_broker_says_what_is_missing(workdir: Path) -> None:
    done = run_cli(workspace_env(workdir, f"sqlite:///{workdir / 'w.db'}"), "worker")
    assert done.returncode == 1, done
    assert "newsletter worker needs queue.broker_url" in done.stderr
    assert "NEWSLETTER_QUEUE_BROKER_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_help_shows_an_example() -> None:
    done = run_cli({}, "worker", "-h")
    assert done.returncode == 0, done
    assert "Example:" in done.stdout
    assert "newsletter worker --concurrency 4" in done.stdout
    assert "--concurrency" in done.stdout and "--queues" in done.stdout


def test_run_once_hands_the_issues_to_the_workers_and_status_shows_them(
    workdir: Path, pg_url: str
) -> None:
    redis_url = _redis_url()
    pytest.importorskip("celery")
    queue = f"t_{uuid.uuid4().hex}"
    env = workspace_env(
        workdir, pg_url, queue_broker_url=redis_url, queue_name=queue, inbox_settle_seconds=0
    )
    try:
        done = run_cli(env, "run", "--once", "--json", "--now", NOW.isoformat())
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["issues_queued"], summary["issues_with_workers"]) == (PLANNED, PLANNED)
        assert (summary["issues_delivered"], summary["issues_pending"]) == (0, PLANNED)
        assert summary["delivery_stopped"] == ""
        assert [t for t, _ in _redis_tasks(redis_url, queue)] == [TASK_NAME] * PLANNED
        # status reads the database only; the broker URL it shows hides its password.
        masked_env = {**env, "NEWSLETTER_QUEUE_BROKER_URL": "redis://:s3cret@127.0.0.1:6379/0"}
        status = run_cli(masked_env, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["workers"] == {"queued": PLANNED, "in_flight": 0, "interrupted": 0}
        assert report["config"]["broker"] == "redis://:***@127.0.0.1:6379/0"
        assert "s3cret" not in status.stdout
        shown = run_cli(env, "status")
        assert shown.returncode == 0, shown.stderr
        assert f"with the workers: {PLANNED} queued, 0 being sent" in shown.stdout
        assert f"delivery: workers, broker {redis_url}" in shown.stdout
        # A second run hands nothing over again and still exits 0.
        again = run_cli(env, "run", "--once", "--json", "--now", NOW.isoformat())
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["issues_queued"] == 0
        assert len(_redis_tasks(redis_url, queue)) == PLANNED
    finally:
        _drop_redis_queue(redis_url, queue)


# ---------------------------------------------------------------------------- the Celery task


@pytest.mark.parametrize("junk", ["1", -1, 0, True, False, None, 1.5, [1], {"id": 1}])
def test_a_task_without_an_issue_id_is_rejected_without_touching_anything(
    junk: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_context() -> process.WorkerContext:
        raise AssertionError("a junk task must not build a worker context")

    monkeypatch.setattr(process, "_process_context", no_context)
    monkeypatch.setattr(process, "_context", None)
    assert process.run_task(junk) == "rejected"
    assert process._context is None
