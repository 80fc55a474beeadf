"""Batched delivery: a batch of issues costs a fixed number of transactions, and stopping or
crashing in the middle of one loses nothing.

The transactions and statements are counted with SQLAlchemy hooks (``commit``, and
``before_cursor_execute`` as in test_planning.py), on SQLite and PostgreSQL. The crash tests
stop the sender between two messages of a batch: in process (a stop request, an outage, an
exception no handler catches) and for real (SIGKILL of ``python -m newsletter run --once``
talking to an aiosmtpd server), then check that every issue arrives, and that the only
messages that arrive twice are those sent since the last commit, with the same Message-ID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from newsletter import pipeline
from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope, MailerUnavailable, MemoryMailer
from newsletter.domain import IssueState, SubscriberSource, SubscriberSpec
from tests.conftest import NOW, ROOT, SEEDS
from tests.factories import clean_environ, run_cli, workspace_env
from tests.smtp_server import Recorder, SmtpServer, cli_env
from tests.test_exactly_once import DIGEST, assert_duplicates_within_windows

BATCH = 10


@dataclass
class Counted:
    """What one delivery sent to the database."""

    statements: list[str] = field(default_factory=list)
    commits: int = 0

    def writes(self, prefix: str) -> int:
        return sum(1 for s in self.statements if s.lstrip().upper().startswith(prefix))


@contextmanager
def counted(app: Newsletter) -> Iterator[Counted]:
    seen = Counted()

    def statement(_conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        if not text.startswith("BEGIN"):  # SQLite's explicit BEGIN: counted as commits
            seen.statements.append(text)

    def commit(_conn: Any) -> None:
        seen.commits += 1

    event.listen(app.store.engine, "before_cursor_execute", statement)
    event.listen(app.store.engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(app.store.engine, "before_cursor_execute", statement)
        event.remove(app.store.engine, "commit", commit)


def _batched(settings: Settings) -> Settings:
    return settings.model_copy(update={"delivery_batch_size": BATCH})


def _add_readers(app: Newsletter, first: int, last: int) -> None:
    for n in range(first, last):
        app.store.upsert_subscriber(
            SubscriberSpec(
                email=f"reader{n:03d}@example.org",
                profile="speech, language",
                max_papers=3,
                min_score=0.0,
            ),
            source=SubscriberSource.CLI,
            now=NOW,
        )


def _states(app: Newsletter) -> list[tuple[IssueState, int, str | None]]:
    return [(i.state, i.attempts, i.last_reply) for i in app.store.issues()]


def test_transactions_grow_with_batches_not_with_messages(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 issues (one batch), then 25 (three batches): each batch adds one read of its papers,
    one claim and one commit of the outcomes, whatever its number of messages."""
    monkeypatch.setattr(pipeline, "COMMIT_SECONDS", 3600.0)  # only batch ends commit
    mailer = MemoryMailer()
    with Newsletter(_batched(settings), mailer=mailer) as app:
        app.ingest([SEEDS], now=NOW)
        _add_readers(app, 0, 5)
        assert app.plan_current_slots(NOW).planned == 5
        with counted(app) as small:
            first = app.deliver(NOW)
        later = NOW + timedelta(days=1)
        _add_readers(app, 5, 25)
        assert app.plan_current_slots(later).planned == 25
        with counted(app) as large:
            second = app.deliver(later)
        issues = app.store.issues()
        sent_log = app.store.sent_log()
    assert (len(first.delivered), len(second.delivered), len(mailer.sent)) == (5, 25, 30)
    assert {i.state for i in issues} == {IssueState.SENT}
    assert sent_log == sorted((i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids)
    # Per batch: one claim (UPDATE … RETURNING) and one batched UPDATE of the outcomes, one
    # multi-row INSERT of the sent log (30 rows here, at most 1,000 per statement); per pass,
    # one multi-row upsert of the delivery counters (/metrics).
    assert (small.writes("UPDATE"), small.writes("INSERT")) == (2, 1 + 1)
    assert (large.writes("UPDATE"), large.writes("INSERT")) == (6, 3 + 1)
    # Two batches more: two more papers reads, claims and outcome commits.
    assert large.commits - small.commits == 2 * 3
    assert len(large.statements) - len(small.statements) == 2 * 4


def test_a_commit_is_due_every_commit_seconds_within_a_batch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the time bound at 0 every message is committed on its own: the bound caps what a
    crash can re-send even when a batch is slow."""
    monkeypatch.setattr(pipeline, "COMMIT_SECONDS", 0.0)
    with Newsletter(_batched(settings), mailer=MemoryMailer()) as app:
        app.ingest([SEEDS], now=NOW)
        _add_readers(app, 0, 5)
        app.plan_current_slots(NOW)
        with counted(app) as seen:
            delivery = app.deliver(NOW)
    assert len(delivery.delivered) == 5
    # + one upsert of the delivery counters at the end of the pass (/metrics)
    assert (seen.writes("UPDATE"), seen.writes("INSERT")) == (1 + 5, 5 + 1)


class DownAfter(MemoryMailer):
    """Takes ``good`` messages, then finds the server gone."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def send(self, envelope: Envelope, message: bytes) -> str:
        if len(self.sent) >= self.good:
            raise MailerUnavailable("SMTP server unreachable: connection refused")
        return super().send(envelope, message)


def test_an_outage_mid_batch_hands_back_the_untried_issues_untouched(settings: Settings) -> None:
    mailer = DownAfter(good=1)
    with Newsletter(_batched(settings), mailer=mailer) as app:
        summary = app.run_once(NOW)
        states = _states(app)
        mailer.good = 10
        later = app.run_once(NOW + timedelta(minutes=1))
        final = _states(app)
    assert summary.delivery_stopped == "SMTP server unreachable: connection refused"
    assert states == [
        (IssueState.SENT, 1, "memory #1"),
        # Tried while the server was down: its attempt not counted, the reason kept.
        (IssueState.RENDERED, 0, "not sent yet: SMTP server unreachable: connection refused"),
        # Claimed with the batch but never tried: exactly as it was before the claim.
        (IssueState.PLANNED, 0, None),
    ]
    assert [d["email"] for d in later.delivered] == ["grace@example.org", "karen@example.org"]
    assert final == [
        (IssueState.SENT, 1, "memory #1"),
        (IssueState.SENT, 1, "memory #2"),
        (IssueState.SENT, 1, "memory #3"),
    ]


def test_a_stop_request_mid_batch_keeps_what_was_sent_and_hands_back_the_rest(
    settings: Settings,
) -> None:
    mailer = MemoryMailer()
    with Newsletter(_batched(settings), mailer=mailer) as app:
        app.ingest(now=NOW)
        app.sync_subscribers(NOW)
        app.plan_current_slots(NOW)
        delivery = app.deliver(NOW, should_stop=lambda: len(mailer.sent) >= 1)
        states = _states(app)
        sent_log = app.store.sent_log()
        issues = app.store.issues()
    assert [d["email"] for d in delivery.delivered] == ["ada@example.org"]
    assert states == [
        (IssueState.SENT, 1, "memory #1"),
        (IssueState.PLANNED, 0, None),
        (IssueState.PLANNED, 0, None),
    ]
    ada = issues[0]
    assert sent_log == sorted((ada.subscriber_id, p, ada.id) for p in ada.paper_ids)


class Crash(BaseException):
    """What no handler in the pipeline catches: the process dying between two messages."""


class CrashAfter(MemoryMailer):
    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def send(self, envelope: Envelope, message: bytes) -> str:
        if len(self.sent) >= self.good:
            raise Crash
        return super().send(envelope, message)


def test_a_crash_mid_batch_resends_only_the_uncommitted_messages_with_their_ids(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "COMMIT_SECONDS", 3600.0)
    crashing = CrashAfter(good=2)
    with Newsletter(_batched(settings), mailer=crashing) as app:
        app.ingest(now=NOW)
        app.sync_subscribers(NOW)
        app.plan_current_slots(NOW)
        with pytest.raises(Crash):
            app.deliver(NOW)
        # Nothing was committed after the claim: all three are "sending", attempt counted.
        assert _states(app) == [(IssueState.SENDING, 1, None)] * 3
        assert app.store.sent_log() == []
    mailer = MemoryMailer()
    with Newsletter(_batched(settings), mailer=mailer) as app:
        later = app.deliver(NOW + timedelta(minutes=1))
        states = _states(app)
        issues = app.store.issues()
        sent_log = app.store.sent_log()
    assert len(later.delivered) == 3
    assert states == [(IssueState.SENT, 2, f"memory #{n}") for n in (1, 2, 3)]
    first = [(e.recipient, e.message_id) for e, _ in crashing.sent]
    again = [(e.recipient, e.message_id) for e, _ in mailer.sent]
    assert again[:2] == first  # the two in flight at the crash: same recipients, same ids
    assert [i.message_id for i in issues] == [mid for _, mid in again]
    assert sent_log == sorted((i.subscriber_id, p, i.id) for i in issues for p in i.paper_ids)


# ------------------------------------------------------------------ SIGKILL, real SMTP

READERS = 120
KILLS = 4
RATE = 80.0  # messages per second: 120 issues take at least 1.5 s of sending
KILL_BATCH = 15


def test_sigkill_mid_batch_resends_only_the_uncommitted_window(
    tmp_path: Path, database_url: str
) -> None:
    """Batches of 15 at 80 messages a second; each kill lands 0.05–0.5 s after this
    process's first message, so mostly inside a batch. A message may arrive twice only if
    it was among the last batch of arrivals before a kill (sent, not yet committed)."""
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
    delays = [0.05, 0.5, 0.2, 0.35]
    with SmtpServer(Recorder(log_file=arrivals)) as server:
        env = cli_env(
            settings,
            server.port,
            smtp_rate_per_second=RATE,
            inbox_settle_seconds=0,
            delivery_batch_size=KILL_BATCH,
        )
        args = ["run", "--once", "--now", NOW.isoformat()]
        for delay in delays[:KILLS]:
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
    rows = [line.split("\t") for line in arrivals.read_text(encoding="utf-8").splitlines()]
    copies = Counter(rcpt for rcpt, _ in rows)
    backend = database_url.split(":", 1)[0]
    print(
        f"\nmid-batch kills [{backend}]: kills={len(at_kill)} at arrivals {at_kill}, "
        f"messages={len(rows)}, duplicates={sum(n - 1 for n in copies.values())}"
    )
    assert len(at_kill) == KILLS
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
