"""Parallel SMTP sessions (``smtp.connections`` > 1) under one shared rate limit.

Against a real aiosmtpd server on loopback (tests/smtp_server.py) whose handler holds each
DATA for a while and records, per session, when MAIL FROM came and when DATA started and
ended: several sessions really send at the same time, no more than ``smtp.connections`` are
opened, the rate limit spaces the starts of all sessions together, and every exactly-once
rule of delivery holds as with one session: an outage on one session, a stop request and a
crash mid-batch lose nothing and send nothing twice (a crash: only what was in flight, with
the same Message-ID). On SQLite and PostgreSQL (``NEWSLETTER_TEST_POSTGRES_URL``).

The rate limit's exact spacing across threads is a unit test on :class:`RateLimiter` with a
fake clock; on the wire only spacing is asserted (never a total duration), with a tolerance
for the scheduling of the sending threads.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as ServerEnvelope

from newsletter import pipeline
from newsletter.app import Newsletter, make_mailer
from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope, MemoryMailer
from newsletter.domain import IssueState, SubscriberSource, SubscriberSpec
from newsletter.errors import ConfigError
from newsletter.smtp import RateLimiter, SmtpMailer, SmtpPool
from tests.conftest import NOW, ROOT, SEEDS
from tests.factories import clean_environ, run_cli, workspace_env
from tests.smtp_server import HOST, Recorder, SmtpServer, cli_env, smtp_settings
from tests.test_exactly_once import DIGEST, assert_duplicates_within_windows

CONNECTIONS = 3
HOLD = 0.05  # seconds the server takes over each DATA: long enough for sends to overlap


@dataclass
class Timed(Recorder):
    """A :class:`Recorder` that holds each DATA for ``hold`` seconds (other sessions go on
    meanwhile: aiosmtpd serves them on one event loop) and records, per session number,
    when each MAIL FROM came and each DATA began and ended. While ``refuse_session`` is set,
    that session (numbered by its first MAIL FROM) gets ``421`` to MAIL FROM."""

    hold: float = 0.0
    refuse_session: int | None = None
    mail_at: list[tuple[int, float]] = field(default_factory=list)
    data_spans: list[tuple[int, float, float]] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: ServerEnvelope, address: str, options: Any
    ) -> str:
        with self.lock:
            number = self._session_number(session)
            self.mail_at.append((number, time.monotonic()))
        if number == self.refuse_session:
            return "421 4.3.2 Service not available, closing transmission channel"
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: ServerEnvelope) -> str:
        begin = time.monotonic()
        await asyncio.sleep(self.hold)
        reply = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.data_spans.append((self._session_number(session), begin, time.monotonic()))
        return reply


def _parallel(settings: Settings, port: int, **smtp: Any) -> Settings:
    """SMTP on the test server with :data:`CONNECTIONS` sessions, batches of 10."""
    values = {"connections": CONNECTIONS, **smtp}
    return smtp_settings(settings, port, **values).model_copy(update={"delivery_batch_size": 10})


def _plan(app: Newsletter, readers: int) -> None:
    app.ingest([SEEDS], now=NOW)
    for n in range(readers):
        spec = SubscriberSpec(
            email=f"reader{n:03d}@example.org",
            profile="speech, language",
            max_papers=3,
            min_score=0.0,
        )
        app.store.upsert_subscriber(spec, source=SubscriberSource.CLI, now=NOW)
    assert app.plan_current_slots(NOW).planned == readers


def _check_all_sent_once(app: Newsletter, handler: Recorder, readers: int) -> None:
    """Every issue ``sent`` (attempt counted once) with its sent log; each reader got exactly
    one message, carrying its issue's Message-ID."""
    issues = app.store.issues()
    emails = {s.id: s.email for s in app.store.subscribers()}
    copies = Counter(r.recipient for r in handler.received)
    assert copies == Counter(f"reader{n:03d}@example.org" for n in range(readers))
    assert {i.state for i in issues} == {IssueState.SENT}
    assert {i.attempts for i in issues} == {1}
    ids = {r.recipient: r.message_id for r in handler.received}
    assert {emails[i.subscriber_id]: i.message_id for i in issues} == ids
    assert app.store.sent_log() == sorted(
        (i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids
    )


# ---------------------------------------------------------------------- the rate limiter


def test_the_rate_limiter_gives_threads_distinct_evenly_spaced_starts() -> None:
    """A fake clock that never moves: each wait() sleeps until its own start, so the starts
    are exactly now, now + interval, now + 2 × interval… whichever thread asks first."""
    slept: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    limiter = RateLimiter(4.0, clock=lambda: 100.0, sleep=sleep)  # 0.25 s: exact in binary
    threads, calls = 8, 5
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(calls):
            limiter.wait()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    # The first start is now (no sleep); every other one a distinct multiple of the interval.
    assert sorted(slept) == [0.25 * k for k in range(1, threads * calls)]


def test_the_rate_limiter_does_not_wait_once_the_interval_has_passed() -> None:
    now = [0.0]
    slept: list[float] = []
    limiter = RateLimiter(10.0, clock=lambda: now[0], sleep=slept.append)
    limiter.wait()
    now[0] = 0.04
    limiter.wait()  # 0.06 s early: sleeps until 0.1
    now[0] = 0.5
    limiter.wait()  # long after: starts now, the next one not before 0.6
    now[0] = 0.55
    limiter.wait()
    assert slept == pytest.approx([0.06, 0.05])


# ---------------------------------------------------------------------- the pool


def _message(n: int) -> tuple[Envelope, bytes]:
    mid = f"<{n}@papers.example.org>"
    raw = (
        f"From: digest@papers.example.org\r\nTo: reader{n}@example.org\r\n"
        f"Message-ID: {mid}\r\nSubject: m{n}\r\n\r\nbody {n}\r\n"
    ).encode()
    return Envelope("digest@papers.example.org", f"reader{n}@example.org", mid, "x"), raw


def test_the_pool_opens_sessions_only_as_senders_need_them() -> None:
    """One thread at a time: one session for everything. Three at once: three sessions,
    never more, however many threads ask."""
    with SmtpServer(Timed(hold=HOLD)) as server:
        pool = SmtpPool(HOST, server.port, size=CONNECTIONS, security="none")
        for n in range(5):
            pool.send(*_message(n))
        assert (pool.connections, server.handler.connections) == (1, 1)
        threads = [threading.Thread(target=pool.send, args=_message(n)) for n in range(5, 5 + 12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pool.close()
    assert len(server.handler.received) == 17
    assert pool.connections == server.handler.connections == CONNECTIONS
    assert pool.parallel_sessions == CONNECTIONS and SmtpMailer.parallel_sessions == 1


def test_connections_setting_selects_the_pool_and_is_bounded(tmp_path: Path) -> None:
    base = {"NEWSLETTER_MAILER": "smtp", "NEWSLETTER_SMTP_HOST": "mail.example.org"}
    config = ROOT / "config" / "newsletter.toml"
    single = load_settings(config, environ=base)
    assert single.smtp.connections == 1
    assert type(make_mailer(single)) is SmtpMailer  # one session: exactly as before
    several = load_settings(config, environ={**base, "NEWSLETTER_SMTP_CONNECTIONS": "4"})
    mailer = make_mailer(several)
    assert isinstance(mailer, SmtpPool) and mailer.parallel_sessions == 4
    assert mailer.connections == 0  # nothing opened before the first message
    for bad in ("0", "33"):
        with pytest.raises(ConfigError, match="'smtp.connections' in environment"):
            load_settings(config, environ={**base, "NEWSLETTER_SMTP_CONNECTIONS": bad})


# ---------------------------------------------------------------------- delivery


def test_parallel_sessions_deliver_every_issue_once(settings: Settings) -> None:
    readers = 30
    with SmtpServer(Timed(hold=HOLD)) as server:
        with Newsletter(_parallel(settings, server.port)) as app:
            _plan(app, readers)
            delivery = app.deliver(NOW)
            mailer = app.mailer
            assert isinstance(mailer, SmtpPool)
            opened = mailer.connections
            _check_all_sent_once(app, server.handler, readers)
    handler = server.handler
    assert isinstance(handler, Timed)
    assert not delivery.stopped and len(delivery.delivered) == readers
    assert len({r.message_id for r in handler.received}) == readers
    assert 2 <= handler.connections <= CONNECTIONS and opened <= CONNECTIONS
    overlapping = [
        (a, b)
        for a in handler.data_spans
        for b in handler.data_spans
        if a[0] < b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert overlapping, "no two sessions were ever in DATA at the same time"


def test_the_rate_limit_spaces_message_starts_across_all_sessions(settings: Settings) -> None:
    readers, rate = 12, 20.0
    interval = 1 / rate
    tolerance = 0.025  # the sending thread's scheduling between its start and MAIL FROM
    with SmtpServer(Timed(hold=2 * interval)) as server:
        with Newsletter(_parallel(settings, server.port, rate_per_second=rate)) as app:
            _plan(app, readers)
            app.deliver(NOW)
            _check_all_sent_once(app, server.handler, readers)
    handler = server.handler
    assert isinstance(handler, Timed)
    # DATA takes two intervals, so the limit is what paces: several sessions take turns.
    assert len({session for session, _ in handler.mail_at}) >= 2
    starts = sorted(at for _, at in handler.mail_at)
    assert len(starts) == readers
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= interval - tolerance, gaps
    for k, at in enumerate(starts):
        assert at - starts[0] >= k * interval - tolerance  # never a burst, even over a run


def test_one_session_refused_stops_the_pass_and_loses_nothing(settings: Settings) -> None:
    """The second session gets 421 to MAIL FROM: that issue goes back (attempt not
    counted), the sends in flight on the other sessions finish and count, nothing more is
    handed out, and the next run (server healthy) sends the rest, each message once."""
    readers = 20
    handler = Timed(hold=HOLD, refuse_session=2)
    with SmtpServer(handler) as server:
        with Newsletter(_parallel(settings, server.port)) as app:
            _plan(app, readers)
            first = app.deliver(NOW)
            issues = app.store.issues()
            handler.refuse_session = None
            second = app.deliver(NOW + timedelta(minutes=1))
            _check_all_sent_once(app, handler, readers)
    assert "421 4.3.2 Service not available" in first.stopped
    assert "not taking mail now" in first.stopped
    states = Counter(i.state for i in issues)
    sent = {i.id for i in issues if i.state is IssueState.SENT}
    back = [i for i in issues if i.state is IssueState.RENDERED]
    assert len(back) == 1 and back[0].attempts == 0
    assert (back[0].last_reply or "").startswith("not sent yet: SMTP server")
    assert states[IssueState.PLANNED] == readers - len(sent) - 1
    assert all(i.attempts == 0 for i in issues if i.state is IssueState.PLANNED)
    assert 1 <= len(sent) < readers and len(first.delivered) == len(sent)
    assert len(second.delivered) == readers - len(sent) and not second.stopped


def test_a_stop_request_mid_batch_finishes_the_sends_in_flight_only(settings: Settings) -> None:
    readers = 24
    with SmtpServer(Timed(hold=HOLD)) as server:
        received = server.handler.received
        with Newsletter(_parallel(settings, server.port)) as app:
            _plan(app, readers)
            first = app.deliver(NOW, should_stop=lambda: len(received) >= 5)
            issues = app.store.issues()
            got = len(received)
            second = app.deliver(NOW + timedelta(minutes=1))
            _check_all_sent_once(app, server.handler, readers)
    # What arrived was noted sent; at most one message per session was still in flight.
    assert len(first.delivered) == got and 5 <= got < 5 + CONNECTIONS
    sent = [i for i in issues if i.state is IssueState.SENT]
    rest = [i for i in issues if i.state is not IssueState.SENT]
    assert len(sent) == got
    assert {(i.state, i.attempts, i.last_reply) for i in rest} == {(IssueState.PLANNED, 0, None)}
    assert len(second.delivered) == readers - got


class Crash(BaseException):
    """What no handler in the pipeline catches: the process dying mid-batch."""


class ParallelCrashAfter(MemoryMailer):
    """A thread-safe memory mailer declaring three sessions; the process "dies" in the send
    after the first ``good`` messages."""

    parallel_sessions = CONNECTIONS

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good
        self.lock = threading.Lock()

    def send(self, envelope: Envelope, message: bytes) -> str:
        with self.lock:
            if len(self.sent) >= self.good:
                raise Crash
            return super().send(envelope, message)


def test_a_crash_mid_batch_resends_only_uncommitted_messages_with_their_ids(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "COMMIT_SECONDS", 3600.0)  # only batch ends commit
    readers = 20  # batches of 10: the crash comes in the second one, after three of it
    crashing = ParallelCrashAfter(good=13)
    parallel = settings.model_copy(update={"delivery_batch_size": 10})
    with Newsletter(parallel, mailer=crashing) as app:
        _plan(app, readers)
        with pytest.raises(Crash):
            app.deliver(NOW)
        states = Counter((i.state, i.attempts) for i in app.store.issues())
    # The first batch was committed; the second is "sending" (claimed), nothing noted.
    assert states == Counter({(IssueState.SENT, 1): 10, (IssueState.SENDING, 1): 10})
    again = MemoryMailer()
    with Newsletter(parallel, mailer=again) as app:
        later = app.deliver(NOW + timedelta(minutes=1))
        issues = app.store.issues()
    assert len(crashing.sent) == 13 and len(later.delivered) == 10
    first = {e.recipient: e.message_id for e, _ in crashing.sent}
    resent = {e.recipient: e.message_id for e, _ in again.sent}
    # Only the crashed batch's sends (three went out) come again, with the same ids.
    assert len(set(first) & set(resent)) == 3
    assert all(first[r] == mid for r, mid in resent.items() if r in first)
    assert {i.state for i in issues} == {IssueState.SENT}


def test_web_confirmations_go_through_the_pool(settings: Settings) -> None:
    """``send_message`` (the web's confirmation emails) uses the same mailer, from the web's
    worker threads."""
    with SmtpServer(Timed(hold=HOLD)) as server:
        with Newsletter(_parallel(settings, server.port)) as app:
            threads = [
                threading.Thread(target=app.send_message, args=_message(n)) for n in range(6)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert sorted(r.message_id for r in server.handler.received) == sorted(
        f"<{n}@papers.example.org>" for n in range(6)
    )


# ------------------------------------------------------------------ SIGKILL, real SMTP

READERS = 90
KILL_BATCH = 15


def test_sigkill_with_parallel_sessions_resends_only_the_uncommitted_window(
    tmp_path: Path, database_url: str
) -> None:
    """``python -m newsletter run --once`` with three sessions, killed twice mid-run: every
    reader gets the issue; a copy arrives twice only if its first copy was among the last
    batch of arrivals before a kill, with the same Message-ID."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "today.txt").write_text(DIGEST, encoding="utf-8")
    entries = [
        f'[[subscriber]]\nemail = "reader{i:03d}@example.org"\nprofile = "quantum"\n'
        "max_papers = 3\nmin_score = 0.01\n"
        for i in range(READERS)
    ]
    (tmp_path / "subscribers.toml").write_text("\n".join(entries), encoding="utf-8")
    arrivals = tmp_path / "arrivals.tsv"
    arrivals.touch()
    environ = workspace_env(tmp_path, database_url, subscribers_file=tmp_path / "subscribers.toml")
    settings = load_settings(ROOT / "config" / "newsletter.toml", environ=environ)
    at_kill: list[int] = []
    with SmtpServer(Timed(hold=0.02, log_file=arrivals)) as server:
        env = cli_env(
            settings,
            server.port,
            smtp_rate_per_second=60,
            smtp_connections=CONNECTIONS,
            inbox_settle_seconds=0,
            delivery_batch_size=KILL_BATCH,
        )
        args = ["run", "--once", "--now", NOW.isoformat()]
        for delay in (0.1, 0.4):
            before = len(server.handler.received)
            proc = subprocess.Popen(
                [sys.executable, "-m", "newsletter", *args],
                env=clean_environ(env),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while len(server.handler.received) == before and proc.poll() is None:
                assert time.monotonic() < deadline, "the sender made no progress"
                time.sleep(0.01)
            time.sleep(delay)
            if proc.poll() is not None:
                break  # finished before its kill
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.2)  # a message whose last byte was out may still be taken
            at_kill.append(len(server.handler.received))
        final = run_cli(env, *args)
        assert final.returncode == 0, final.stderr
        sessions = server.handler.connections
    rows = [line.split("\t") for line in arrivals.read_text(encoding="utf-8").splitlines()]
    copies = Counter(rcpt for rcpt, _ in rows)
    assert len(at_kill) == 2
    assert sessions > len(at_kill) + 1  # more than one session per process did send
    assert set(copies) == {f"reader{i:03d}@example.org" for i in range(READERS)}
    assert_duplicates_within_windows(rows, at_kill, KILL_BATCH)
    ids: dict[str, set[str]] = defaultdict(set)
    for rcpt, message_id in rows:
        ids[rcpt].add(message_id)
    with Newsletter(settings) as app:
        issues = app.store.issues()
        emails = {s.id: s.email for s in app.store.subscribers()}
        sent_log = app.store.sent_log()
    assert {i.state for i in issues} == {IssueState.SENT}
    assert {emails[i.subscriber_id]: {i.message_id} for i in issues} == ids
    assert sent_log == sorted((i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids)
