"""Delivery failures against a real SMTP server on loopback (aiosmtpd) with injected faults.

Each run below is a fresh ``run_once`` (new store, new mailer, like a new process) or a real
``python -m newsletter`` subprocess, with ``now`` advanced by hand to walk the retry schedule.
The seed subscribers are Ada, Grace and Karen; Grace is the one the server mistreats.
"""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta

import pytest

from newsletter.config import Settings
from newsletter.domain import IssueRecord, IssueState
from tests.conftest import NOW
from tests.factories import open_store, run_cli, run_once
from tests.smtp_server import HOST, Recorder, SmtpServer, cli_env, free_port, smtp_settings

ADA, GRACE, KAREN = "ada@example.org", "grace@example.org", "karen@example.org"


def _issue(settings: Settings, email: str) -> IssueRecord:
    store = open_store(settings)
    try:
        sub = store.subscriber(email)
        assert sub is not None
        issue = store.issue(sub.id, NOW.date())
        assert issue is not None
        return issue
    finally:
        store.close()


def _state(settings: Settings, email: str) -> tuple[IssueState, int, object, str | None]:
    i = _issue(settings, email)
    return (i.state, i.attempts, i.next_retry_at, i.last_reply)


def test_550_for_one_recipient_fails_that_issue_and_the_others_go_out(
    settings: Settings,
) -> None:
    refusal = "550 5.1.1 <grace@example.org>: user unknown"
    with SmtpServer(Recorder(refuse={GRACE: refusal})) as server:
        summary = run_once(smtp_settings(settings, server.port), now=NOW)
    assert [r.recipient for r in server.handler.received] == [ADA, KAREN]
    assert [d["email"] for d in summary.delivered] == [ADA, KAREN]
    assert [d["where"] for d in summary.delivered] == [
        "250 2.0.0 Ok: queued as 1",
        "250 2.0.0 Ok: queued as 2",
    ]
    assert (summary.issues_failed, summary.issues_pending) == (1, 0)
    assert _state(settings, GRACE) == (
        IssueState.FAILED,
        1,
        None,
        "550 5.1.1 <grace@example.org>: user unknown (reply to RCPT TO)",
    )
    assert _state(settings, ADA) == (IssueState.SENT, 1, None, "250 2.0.0 Ok: queued as 1")
    # The refusal is answered with RSET and the same session carries on.
    assert server.handler.connections == 1
    store = open_store(settings)
    grace = store.subscriber(GRACE)
    assert grace is not None and store.sent_paper_ids(grace.id) == set()
    store.close()


@pytest.mark.parametrize(
    "reply,connections",
    [
        ("451 4.3.0 Mail server temporarily rejected message", 1),
        # 421 means the server closes the session: Karen's issue needs a new connection.
        ("421 4.7.0 Try again later", 2),
    ],
)
def test_4xx_at_data_is_retried_with_backoff_across_restarts(
    settings: Settings, reply: str, connections: int
) -> None:
    handler = Recorder(data_replies={GRACE: [reply] * 3})
    server = SmtpServer(handler).start()
    try:
        smtp = smtp_settings(settings, server.port)
        first = run_once(smtp, now=NOW)
        assert [d["email"] for d in first.delivered] == [ADA, KAREN]
        assert handler.connections == connections
        refused = f"{reply} (reply to end of DATA)"
        assert _state(settings, GRACE) == (
            IssueState.RENDERED,
            1,
            NOW + timedelta(minutes=5),
            refused,
        )
        # Not before the retry time.
        assert run_once(smtp, now=NOW + timedelta(minutes=4)).issues_delivered == 0
        assert _issue(settings, GRACE).attempts == 1
        # 5 min, then 10, then 20: doubling.
        run_once(smtp, now=NOW + timedelta(minutes=5))
        assert _state(settings, GRACE) == (
            IssueState.RENDERED,
            2,
            NOW + timedelta(minutes=15),
            refused,
        )
        run_once(smtp, now=NOW + timedelta(minutes=15))
        assert _state(settings, GRACE) == (
            IssueState.RENDERED,
            3,
            NOW + timedelta(minutes=35),
            refused,
        )
        # The fourth try runs in a new process, from the environment alone.
        out = run_cli(
            cli_env(settings, server.port),
            "run",
            "--once",
            "--json",
            "--now",
            (NOW + timedelta(minutes=35)).isoformat(),
        )
        assert out.returncode == 0, out.stderr
        assert [d["email"] for d in json.loads(out.stdout)["delivered"]] == [GRACE]
    finally:
        server.stop()
    assert _state(settings, GRACE) == (IssueState.SENT, 4, None, "250 2.0.0 Ok: queued as 3")
    assert [r.recipient for r in handler.received] == [ADA, KAREN, GRACE]


def test_retries_are_bounded_then_status_shows_it_and_retry_requeues(
    settings: Settings,
) -> None:
    handler = Recorder(data_replies={GRACE: ["421 4.7.0 Try again later"] * 5})
    with SmtpServer(handler) as server:
        smtp = smtp_settings(settings, server.port)
        for minutes in (0, 5, 15, 35, 75):
            run_once(smtp, now=NOW + timedelta(minutes=minutes))
        assert _state(settings, GRACE) == (
            IssueState.FAILED,
            5,
            None,
            "421 4.7.0 Try again later (reply to end of DATA)",
        )
        # A failed issue is not tried again by later runs...
        run_once(smtp, now=NOW + timedelta(hours=6))
        assert _issue(settings, GRACE).attempts == 5
        env = cli_env(settings, server.port)
        status = run_cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["pending"] == []
        assert data["failed"] == [
            {
                "email": GRACE,
                "slot": "2026-11-23",
                "attempts": 5,
                "reason": "421 4.7.0 Try again later (reply to end of DATA)",
            }
        ]
        assert [(s["email"], s["last_sent"], s["last_reply"]) for s in data["subscribers"]] == [
            (ADA, "2026-11-23", "250 2.0.0 Ok: queued as 1"),
            (GRACE, None, None),
            (KAREN, "2026-11-23", "250 2.0.0 Ok: queued as 2"),
        ]
        text = run_cli(env, "status")
        assert (
            "  failed: grace@example.org 2026-11-23 after 5 attempt(s): "
            "421 4.7.0 Try again later (reply to end of DATA)\n"
        ) in text.stdout
        # ...until the operator requeues it: attempts reset, the reason kept until the next try.
        nobody = run_cli(env, "retry", "--subscriber", ADA, "--json")
        assert json.loads(nobody.stdout) == {"requeued": 0, "issues": []}
        requeued = run_cli(env, "retry")
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout == (
            "  requeued: grace@example.org 2026-11-23\n"
            "requeued 1 failed issue(s); they go out on the next `newsletter run --once`\n"
        )
        assert _state(settings, GRACE) == (
            IssueState.RENDERED,
            0,
            None,
            "421 4.7.0 Try again later (reply to end of DATA)",
        )
        later = run_once(smtp, now=NOW + timedelta(hours=7))
    assert [d["email"] for d in later.delivered] == [GRACE]
    assert _state(settings, GRACE) == (IssueState.SENT, 1, None, "250 2.0.0 Ok: queued as 3")
    assert [r.recipient for r in handler.received] == [ADA, KAREN, GRACE]


def test_retry_leaves_issues_of_unsubscribed_people_failed(settings: Settings) -> None:
    from newsletter.domain import SubscriberStatus

    handler = Recorder(refuse={GRACE: "550 5.1.1 <grace@example.org>: user unknown"})
    with SmtpServer(handler) as server:
        run_once(smtp_settings(settings, server.port), now=NOW)
        store = open_store(settings)
        store.set_subscriber_status(GRACE, SubscriberStatus.UNSUBSCRIBED, NOW)
        store.close()
        env = cli_env(settings, server.port)
        out = run_cli(env, "retry", "--json")
        assert json.loads(out.stdout) == {"requeued": 0, "issues": []}
        unknown = run_cli(env, "retry", "--subscriber", "nobody@example.org")
        assert (unknown.returncode, unknown.stderr) == (
            1,
            "error: retry: no subscriber 'nobody@example.org': see "
            "`newsletter subscriber list --all`\n",
        )
    assert _issue(settings, GRACE).state is IssueState.FAILED


def test_one_dropped_connection_is_resent_at_once_on_a_new_connection(
    settings: Settings,
) -> None:
    handler = Recorder(drops={GRACE: 1})
    with SmtpServer(handler) as server:
        summary = run_once(smtp_settings(settings, server.port), now=NOW)
    assert [d["email"] for d in summary.delivered] == [ADA, GRACE, KAREN]
    assert handler.connections == 2
    assert [(r.recipient, r.session) for r in handler.received] == [
        (ADA, 1),
        (GRACE, 2),
        (KAREN, 2),
    ]
    assert _state(settings, GRACE) == (IssueState.SENT, 1, None, "250 2.0.0 Ok: queued as 2")


def test_repeated_drops_back_off_like_any_transient_error(settings: Settings) -> None:
    handler = Recorder(drops={GRACE: 3})
    with SmtpServer(handler) as server:
        smtp = smtp_settings(settings, server.port)
        first = run_once(smtp, now=NOW)
        assert [d["email"] for d in first.delivered] == [ADA, KAREN]
        assert _state(settings, GRACE) == (
            IssueState.RENDERED,
            1,
            NOW + timedelta(minutes=5),
            f"connection to {HOST}:{server.port} lost again after reconnecting "
            "(Connection unexpectedly closed); will retry",
        )
        second = run_once(smtp, now=NOW + timedelta(minutes=5))
    assert [d["email"] for d in second.delivered] == [GRACE]
    assert _state(settings, GRACE) == (IssueState.SENT, 2, None, "250 2.0.0 Ok: queued as 3")
    assert [r.recipient for r in handler.received] == [ADA, KAREN, GRACE]


def test_server_down_leaves_every_issue_pending_until_it_is_back(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    smtp = smtp_settings(settings, port)
    with caplog.at_level(logging.WARNING):
        down = run_once(smtp, now=NOW)
    reason = (
        f"SMTP server unreachable: cannot connect to {HOST}:{port} ([Errno 111] Connection refused)"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{reason}; delivery stopped, 3 issue(s) left pending for the next run"
    ]
    assert (down.issues_delivered, down.issues_failed, down.issues_pending) == (0, 0, 3)
    assert down.delivery_stopped == reason
    # The claimed issue is handed back uncounted; the others were not touched at all.
    assert _state(settings, ADA) == (IssueState.RENDERED, 0, None, f"not sent yet: {reason}")
    assert _state(settings, GRACE) == (IssueState.PLANNED, 0, None, None)
    assert _state(settings, KAREN) == (IssueState.PLANNED, 0, None, None)
    # A second run while it is still down changes nothing either.
    run_once(smtp, now=NOW + timedelta(minutes=1))
    assert _issue(settings, ADA).attempts == 0
    with SmtpServer(port=port) as server:
        back = run_once(smtp, now=NOW + timedelta(minutes=2))
    assert [d["email"] for d in back.delivered] == [ADA, GRACE, KAREN]
    assert [r.recipient for r in server.handler.received] == [ADA, GRACE, KAREN]
    assert [_state(settings, e)[:3] for e in (ADA, GRACE, KAREN)] == [
        (IssueState.SENT, 1, None)
    ] * 3


def test_a_server_that_accepts_but_never_greets_times_out_as_unreachable(
    settings: Settings,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((HOST, 0))
        silent.listen(8)  # the kernel completes connections; nobody ever answers
        port = silent.getsockname()[1]
        summary = run_once(smtp_settings(settings, port, timeout_seconds=0.5), now=NOW)
    assert summary.delivery_stopped == (
        f"SMTP server unreachable: cannot connect to {HOST}:{port} "
        "(Connection unexpectedly closed: timed out)"
    )
    assert (summary.issues_delivered, summary.issues_pending) == (0, 3)
    assert _issue(settings, ADA).attempts == 0
