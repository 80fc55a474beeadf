"""Outages never spend attempts; a late final reply is waited for, and a missing one is unknown.

Issue 11. Against real servers on loopback: aiosmtpd (``tests.smtp_server.Outage``) for
refusals of EHLO/HELO and MAIL FROM, a hand-written socket server
(``tests.smtp_server.ScriptedServer``) for servers that go silent or answer the end of DATA
late, a refused port, and a real full or read-only file system (a small tmpfs, when we may
mount one) under the outbox. Each outage goes through the real pipeline (``run_once``): nothing
delivered, every issue still pending with ``attempts == 0``, delivery stopped; then, with the
server or file system healthy again, the next run delivers each issue exactly once.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.deliver import Envelope, MailerUnavailable, OutboxMailer, OutcomeUnknown
from newsletter.domain import IssueState
from newsletter.reports import RunSummary
from newsletter.smtp import SmtpMailer
from tests.conftest import NOW
from tests.factories import open_store, run_once
from tests.smtp_server import (
    HOST,
    Outage,
    ScriptedServer,
    SmtpServer,
    Step,
    free_port,
    smtp_settings,
)

SUBSCRIBERS = ["ada@example.org", "grace@example.org", "karen@example.org"]
LATER = NOW + timedelta(minutes=1)


def _issues(settings: Settings) -> list[tuple[str, IssueState, int]]:
    store = open_store(settings)
    try:
        emails = {s.id: s.email for s in store.subscribers()}
        return sorted((emails[i.subscriber_id], i.state, i.attempts) for i in store.issues())
    finally:
        store.close()


def _assert_outage(settings: Settings, summary: RunSummary, reason: str | None = None) -> None:
    """Nothing went out, delivery stopped, and no issue had an attempt counted."""
    assert summary.issues_delivered == 0
    assert summary.delivery_stopped
    if reason is not None:
        assert summary.delivery_stopped == reason
    issues = _issues(settings)
    assert [email for email, _, _ in issues] == SUBSCRIBERS
    for _, state, attempts in issues:
        assert state in (IssueState.PLANNED, IssueState.RENDERED)
        assert attempts == 0


def _assert_all_sent_once(settings: Settings, summary: RunSummary) -> None:
    assert summary.delivery_stopped == ""
    assert sorted(str(d["email"]) for d in summary.delivered) == SUBSCRIBERS
    assert _issues(settings) == [(email, IssueState.SENT, 1) for email in SUBSCRIBERS]


# ---------------------------------------------------------------------- SMTP outages


def test_a_refused_connection_is_an_outage(settings: Settings) -> None:
    port = free_port()
    smtp = smtp_settings(settings, port)
    _assert_outage(settings, run_once(smtp, now=NOW))
    with SmtpServer(port=port) as server:
        back = run_once(smtp, now=LATER)
    _assert_all_sent_once(settings, back)
    assert sorted(r.recipient for r in server.handler.received) == SUBSCRIBERS


@pytest.mark.parametrize(
    "step,reply",
    [
        ("helo", "421 4.3.2 Service not available"),
        ("helo", "451 4.3.0 Temporary local problem"),
        ("mail", "421 4.7.0 Try again later"),
        ("mail", "451 4.3.0 Temporary local problem"),
        ("mail", "452 4.3.1 Insufficient system storage"),
    ],
)
def test_a_4xx_to_helo_or_mail_from_is_an_outage(settings: Settings, step: str, reply: str) -> None:
    handler = Outage(helo_reply=reply if step == "helo" else None)
    handler.mail_reply = reply if step == "mail" else None
    with SmtpServer(handler) as server:
        smtp = smtp_settings(settings, server.port)
        address = f"{HOST}:{server.port}"
        down = run_once(smtp, now=NOW)
        if step == "helo":
            reason = f"SMTP server unreachable: {address} answered {reply} (reply to HELO)"
        else:
            reason = f"SMTP server {address} is not taking mail now: {reply} (reply to MAIL FROM)"
        _assert_outage(settings, down, reason)
        # Still refusing: a second run changes nothing either.
        _assert_outage(settings, run_once(smtp, now=LATER), reason)
        assert handler.received == []
        handler.helo_reply = handler.mail_reply = None
        back = run_once(smtp, now=LATER + timedelta(minutes=1))
    _assert_all_sent_once(settings, back)
    assert sorted(r.recipient for r in handler.received) == SUBSCRIBERS


@pytest.mark.parametrize("step", ["greeting", "EHLO", "MAIL"])
def test_a_server_that_stalls_before_mail_from_is_answered_is_an_outage(
    settings: Settings, step: Step
) -> None:
    with ScriptedServer(stall_at=step) as server:
        smtp = smtp_settings(settings, server.port, timeout_seconds=0.5)
        address = f"{HOST}:{server.port}"
        down = run_once(smtp, now=NOW)
        if step == "MAIL":
            reason = f"SMTP server {address} stalled: no reply to MAIL FROM within 0.5 s"
        else:
            reason = (
                f"SMTP server unreachable: cannot connect to {address} "
                "(Connection unexpectedly closed: timed out)"
            )
        _assert_outage(settings, down, reason)
        assert server.connections == 1 and server.received == []
        server.stall_at = None
        back = run_once(smtp, now=LATER)
    _assert_all_sent_once(settings, back)
    assert sorted(r.recipient for r in server.received) == SUBSCRIBERS


# ---------------------------------------------------------------------- the outbox


def _fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system is full; return the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@contextmanager
def _tmpfs(directory: Path, *options: str) -> Iterator[None]:
    """A 1 MiB tmpfs mounted on ``directory`` for the block (root only; skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a real full or read-only outbox needs root to mount a tmpfs")
    directory.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=1m", "mode=0755", *options))
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_full_outbox_file_system_is_an_outage(settings: Settings) -> None:
    outbox = settings.outbox_dir
    with _tmpfs(outbox):
        filler = _fill(outbox)
        down = run_once(settings, now=NOW)
        _assert_outage(settings, down)
        assert "No space left on device (ENOSPC)" in down.delivery_stopped
        assert sorted(p.name for p in outbox.iterdir()) == ["filler"]  # no temp file left
        filler.unlink()
        back = run_once(settings, now=LATER)
        _assert_all_sent_once(settings, back)
        assert len(list(outbox.glob("*.eml"))) == 3


def test_a_read_only_outbox_file_system_is_an_outage(settings: Settings) -> None:
    outbox = settings.outbox_dir
    with _tmpfs(outbox, "ro"):
        down = run_once(settings, now=NOW)
        _assert_outage(settings, down)
        assert "Read-only file system (EROFS)" in down.delivery_stopped
        subprocess.run(["mount", "-o", "remount,rw", str(outbox)], check=True)
        back = run_once(settings, now=LATER)
        _assert_all_sent_once(settings, back)
        assert len(list(outbox.glob("*.eml"))) == 3


def test_an_outbox_path_that_is_a_file_is_an_outage(settings: Settings) -> None:
    settings.outbox_dir.write_text("not a folder", encoding="utf-8")
    _assert_outage(settings, run_once(settings, now=NOW))
    settings.outbox_dir.unlink()
    _assert_all_sent_once(settings, run_once(settings, now=LATER))


def test_eio_writing_the_outbox_is_an_outage(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO cannot be produced for real here: fsync of a file in the outbox fails as a dying
    disk's would (other files, e.g. the run's lock file, are synced for real)."""
    real_fsync = os.fsync
    outbox = str(settings.outbox_dir) + os.sep

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(outbox):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    down = run_once(settings, now=NOW)
    _assert_outage(settings, down)
    assert "Input/output error (EIO)" in down.delivery_stopped
    assert list(settings.outbox_dir.iterdir()) == []  # the temp file was removed
    monkeypatch.undo()
    _assert_all_sent_once(settings, run_once(settings, now=LATER))


def test_an_outbox_error_about_the_message_stays_per_issue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(os, "fsync", fsync)  # nothing else syncs during this test
    envelope = Envelope("a@example.org", "b@example.org", "<1@example.org>", "x")
    with pytest.raises(OSError) as raised:
        OutboxMailer(tmp_path / "out").send(envelope, b"Subject: x\r\n\r\nbody\r\n")
    assert raised.type is OSError and raised.value.errno == errno.EFBIG


# ---------------------------------------------------------------------- end of DATA

MESSAGE = b"Subject: dots\r\nMessage-ID: <1@example.org>\r\n\r\n.one dot\r\n..two dots\r\nend"
ON_THE_WIRE = (
    b"Subject: dots\r\nMessage-ID: <1@example.org>\r\n\r\n..one dot\r\n...two dots\r\nend\r\n.\r\n"
)


def _envelope() -> Envelope:
    return Envelope("digest@example.org", "reader@example.org", "<1@example.org>", "x")


def test_a_slow_reply_to_the_end_of_data_is_waited_for(settings: Settings) -> None:
    with ScriptedServer(data_reply_delay=1.0) as server:
        smtp = smtp_settings(settings, server.port, timeout_seconds=0.5, data_timeout_seconds=5)
        summary = run_once(smtp, now=NOW)
    _assert_all_sent_once(settings, summary)
    assert sorted(r.recipient for r in server.received) == SUBSCRIBERS
    assert server.connections == 1


def test_the_data_timeout_is_only_for_the_end_of_data(tmp_path: Path) -> None:
    with ScriptedServer(data_reply_delay=1.0) as server:
        mailer = SmtpMailer(HOST, server.port, security="none", timeout=0.5, data_timeout=5)
        try:
            assert mailer.send(_envelope(), MESSAGE) == "250 2.0.0 Ok: queued as 1"
            # Every other command is back on the ordinary timeout.
            conn = mailer._conn
            assert conn is not None and conn.sock is not None
            assert conn.sock.gettimeout() == 0.5
        finally:
            mailer.close()
    # The bytes are exactly what smtplib's data() sends: dots doubled, CRLF, the lone dot.
    assert [(r.wire, r.data) for r in server.received] == [(ON_THE_WIRE, MESSAGE + b"\r\n")]


def test_no_reply_to_the_end_of_data_is_an_unknown_outcome() -> None:
    with ScriptedServer(data_reply_delay=10.0) as server:
        mailer = SmtpMailer(HOST, server.port, security="none", timeout=0.5, data_timeout=1.0)
        try:
            with pytest.raises(OutcomeUnknown) as raised:
                mailer.send(_envelope(), MESSAGE)
            assert not isinstance(raised.value, MailerUnavailable)
            assert str(raised.value) == (
                f"no reply from {HOST}:{server.port} within 1 s after the end of DATA: the "
                "message went out and may have been accepted; not re-sent automatically"
            )
            assert mailer._conn is None  # the connection was discarded, not reused
        finally:
            mailer.close()
        assert [r.wire for r in server.received] == [ON_THE_WIRE]  # once: no re-send
        assert (server.connections, mailer.connections) == (1, 1)


def test_issues_whose_end_of_data_reply_never_came_are_unknown_and_not_resent(
    settings: Settings,
) -> None:
    with ScriptedServer(data_reply_delay=10.0) as server:
        smtp = smtp_settings(settings, server.port, timeout_seconds=0.5, data_timeout_seconds=1)
        first = run_once(smtp, now=NOW)
        assert (first.issues_delivered, first.issues_unknown) == (0, 3)
        assert _issues(settings) == [(email, IssueState.UNKNOWN, 1) for email in SUBSCRIBERS]
        server.data_reply_delay = 0.0
        later = run_once(smtp, now=NOW + timedelta(hours=1))
        assert later.issues_delivered == 0
    assert sorted(r.recipient for r in server.received) == SUBSCRIBERS  # each once: no re-send
    assert server.connections == 3  # each connection dropped after its unknown outcome
    assert _issues(settings) == [(email, IssueState.UNKNOWN, 1) for email in SUBSCRIBERS]
