"""Bounces and complaints (issue 17, must-show 4): real DSN (RFC 3464) and ARF (RFC 5965)
messages built with the ``email`` package, read from a maildir, an mbox and a real IMAP
server (Debian's dovecot, over TLS); the VERP return path checked on a real SMTP server
(aiosmtpd); a 5xx to RCPT TO counted as a hard bounce.

The seed subscribers are Ada, Grace and Karen (config/subscribers.toml).
"""

from __future__ import annotations

import email
import imaplib
import json
import mailbox
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime
from pathlib import Path

import pytest
import trustme

from newsletter.app import Newsletter
from newsletter.bounces import (
    BouncePolicy,
    MailboxMessage,
    Outcome,
    ReportType,
    parse_report,
    process_messages,
    read_mailbox,
)
from newsletter.config import Settings, load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    IssueState,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
    bounce_token,
)
from newsletter.errors import ConfigError
from newsletter.store import BounceKind, Store
from tests.conftest import NOW
from tests.factories import CONFIG, open_store, run_cli, run_once, settings_env
from tests.smtp_server import Recorder, SmtpServer, free_port, smtp_settings

ADA, GRACE, KAREN = "ada@example.org", "grace@example.org", "karen@example.org"
BOUNCE_ADDRESS = "bounces+{token}@papers.example.org"


# --------------------------------------------------------------------------- messages


def original(message_id: str, to: str = ADA) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Paper Digest <digest@papers.example.org>"
    msg["To"] = to
    msg["Subject"] = "Paper Digest"
    msg["Message-ID"] = message_id
    msg.set_content("papers")
    return msg


def dsn(
    report_id: str,
    *,
    to: str,
    recipient: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str | None = "smtp; 550 5.1.1 user unknown",
    original_id: str | None = None,
    date: datetime = NOW,
) -> bytes:
    """A delivery status notification as an MTA writes it: multipart/report with a text part,
    a message/delivery-status part (per-message and per-recipient blocks) and the original."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.example.net>"
    report["To"] = to
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(date)
    report["Message-ID"] = report_id
    report.attach(MIMEText("Your message could not be delivered.\n"))
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    if diagnostic:
        per_recipient["Diagnostic-Code"] = diagnostic
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    if original_id:
        report.attach(MIMEMessage(original(original_id, recipient)))
    return report.as_bytes()


def arf(
    report_id: str,
    *,
    feedback_type: str = "abuse",
    mail_from: str | None = None,
    rcpt_to: str | None = None,
    original_id: str | None = None,
) -> bytes:
    """A feedback-loop report: multipart/report with message/feedback-report and the
    original's headers (text/rfc822-headers)."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "fbl@isp.example.net"
    report["To"] = "abuse@papers.example.org"
    report["Subject"] = "FW: Paper Digest"
    report["Message-ID"] = report_id
    report.attach(MIMEText("This is an email abuse report.\n"))
    fields = Message()
    fields["Feedback-Type"] = feedback_type
    fields["User-Agent"] = "ExampleFBL/1.0"
    fields["Version"] = "1"
    if mail_from:
        fields["Original-Mail-From"] = f"<{mail_from}>"
    if rcpt_to:
        fields["Original-Rcpt-To"] = f"<{rcpt_to}>"
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload([fields])
    report.attach(feedback)
    if original_id:
        headers = original(original_id).as_string().split("\n\n", 1)[0] + "\n"
        report.attach(MIMEText(headers, "rfc822-headers"))
    return report.as_bytes()


def auto_reply() -> bytes:
    msg = EmailMessage()
    msg["From"] = "ada@example.org"
    msg["To"] = "digest@papers.example.org"
    msg["Subject"] = "Out of office"
    msg["Message-ID"] = "<ooo-1@example.org>"
    msg.set_content("I am away.")
    return msg.as_bytes()


# --------------------------------------------------------------------------- parsing


def test_reports_are_read_by_their_fields() -> None:
    hard = parse_report(
        dsn(
            "<d1@mx>",
            to="x@y.org",
            recipient="Ada@Example.org",
            diagnostic="smtp; 550 5.1.1 <ada@example.org>: user unknown",
            original_id="<issue-1@papers.example.org>",
        )
    )
    assert (hard.type, hard.kind, hard.status, hard.detail) == (
        ReportType.DSN,
        BounceKind.HARD,
        "5.1.1",
        "<ada@example.org>: user unknown",
    )
    assert hard.recipients == (ADA,)
    assert hard.original_message_id == "<issue-1@papers.example.org>"
    assert hard.report_id == "<d1@mx>" and hard.date == NOW
    assert hard.reason == "hard bounce 5.1.1 <ada@example.org>: user unknown"

    full = parse_report(
        dsn("<d2@mx>", to="x@y.org", recipient=ADA, status="4.2.2", diagnostic=None)
    )
    assert (full.kind, full.status, full.reason) == (BounceKind.SOFT, "4.2.2", "soft bounce 4.2.2")
    delayed = parse_report(dsn("<d3@mx>", to="x@y.org", recipient=ADA, action="delayed"))
    assert delayed.kind is BounceKind.SOFT
    delivered = parse_report(dsn("<d4@mx>", to="x@y.org", recipient=ADA, action="delivered"))
    assert (delivered.kind, delivered.detail) == (None, "no failed or delayed recipient")

    complaint = parse_report(arf("<a1@isp>", rcpt_to=ADA, original_id="<issue-2@p.org>"))
    assert (complaint.type, complaint.kind, complaint.reason) == (
        ReportType.ARF,
        BounceKind.COMPLAINT,
        "complaint (abuse)",
    )
    assert complaint.recipients == (ADA,) and complaint.original_message_id == "<issue-2@p.org>"
    not_spam = parse_report(arf("<a2@isp>", feedback_type="not-spam", rcpt_to=ADA))
    assert (not_spam.kind, not_spam.detail) == (None, "not-spam")
    other = parse_report(auto_reply())
    assert (other.type, other.kind) == (ReportType.OTHER, None)


def test_bounce_address_must_hold_the_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mail\.bounce_address.*\{token\}"):
        load_settings(CONFIG, environ={"NEWSLETTER_MAIL_BOUNCE_ADDRESS": "bounces@example.org"})
    settings = load_settings(CONFIG, environ={"NEWSLETTER_MAIL_BOUNCE_ADDRESS": BOUNCE_ADDRESS})
    assert settings.site.bounce_address == BOUNCE_ADDRESS


# --------------------------------------------------------------------------- end to end


def _verp(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"mail": settings.mail.model_copy(update={"bounce_address": BOUNCE_ADDRESS})}
    )


def _subscribers(settings: Settings) -> dict[str, tuple[SubscriberStatus, str | None]]:
    store = open_store(settings)
    try:
        suppressed = store.suppressions()
        return {
            s.email: (s.status, suppressed[s.id].reason if s.id in suppressed else None)
            for s in store.subscribers()
        }
    finally:
        store.close()


def test_maildir_bounces_and_complaints_suppress_and_count_once(settings: Settings) -> None:
    settings = _verp(settings)
    mailer = MemoryMailer()
    first = run_once(settings, now=NOW, mailer=mailer)
    assert first.issues_delivered == 3
    sent = {envelope.recipient: (envelope, raw) for envelope, raw in mailer.sent}
    store = open_store(settings)
    subs = {s.email: s for s in store.subscribers()}
    store.close()
    for address, (envelope, raw) in sent.items():
        # The envelope sender is the subscriber's VERP address; the header From is not.
        assert envelope.sender == f"bounces+{bounce_token(subs[address])}@papers.example.org"
        assert subs[address].token not in envelope.sender
        assert email.message_from_bytes(raw)["From"] == "Paper Digest <digest@papers.example.org>"
    grace_id = email.message_from_bytes(sent[GRACE][1])["Message-ID"]

    box_path = settings.inbox.parent / "bounces"
    box = mailbox.Maildir(box_path, create=True)
    # Ada: a hard bounce sent back to her VERP address (no other clue).
    box.add(dsn("<dsn-ada@mx>", to=sent[ADA][0].sender, recipient="someone@elsewhere.org"))
    # Grace: a complaint naming only the issue's Message-ID.
    box.add(arf("<arf-grace@isp>", original_id=grace_id))
    # Karen: one soft bounce, matched by Final-Recipient: under the limit.
    box.add(
        dsn(
            "<dsn-karen@mx>",
            to="digest@papers.example.org",
            recipient=KAREN,
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 mailbox full",
        )
    )
    # Nobody we know, a forged VERP address, and an auto-reply.
    box.add(dsn("<dsn-who@mx>", to="x@y.org", recipient="who@nowhere.org"))
    forged = BOUNCE_ADDRESS.replace("{token}", f"{subs[KAREN].id}-0000000000000000")
    box.add(dsn("<dsn-forged@mx>", to=forged, recipient="someone@elsewhere.org"))
    box.add(auto_reply())
    box.close()

    env = settings_env(settings, mail_bounce_address=BOUNCE_ADDRESS)
    done = run_cli(env, "bounces", str(box_path), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    by_report = {m["report_id"]: m for m in out["messages"]}
    assert {r: (m["outcome"], m["email"], m["matched_by"]) for r, m in by_report.items()} == {
        "<dsn-ada@mx>": ("suppressed", ADA, "verp"),
        "<arf-grace@isp>": ("suppressed", GRACE, "message-id"),
        "<dsn-karen@mx>": ("recorded", KAREN, "recipient"),
        "<dsn-who@mx>": ("unmatched", None, None),
        "<dsn-forged@mx>": ("unmatched", None, None),
        "<ooo-1@example.org>": ("ignored", None, None),
    }
    assert (
        by_report["<dsn-karen@mx>"]["note"] == "soft bounce 4.2.2 mailbox full (1 of 3 in 7 days)"
    )
    assert out["summary"] == {
        "read": 6,
        "suppressed": 2,
        "recorded": 1,
        "duplicate": 0,
        "unmatched": 2,
        "ignored": 1,
    }
    assert _subscribers(settings) == {
        ADA: (SubscriberStatus.SUPPRESSED, "hard bounce 5.1.1 user unknown"),
        GRACE: (SubscriberStatus.SUPPRESSED, "complaint (abuse)"),
        KAREN: (SubscriberStatus.ACTIVE, None),
    }

    again = run_cli(env, "bounces", str(box_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == (
        "read 6 message(s): 0 suppressed, 0 recorded, 3 processed before, 2 unmatched, "
        "1 not bounces"
    )

    status = run_cli(env, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "subscribers: (2 suppressed by bounces or complaints)" in lines
    ada_line = next(line for line in lines if line.startswith(f"  {ADA}"))
    assert "suppressed" in ada_line.split()[1]
    assert ada_line.endswith("; suppressed: hard bounce 5.1.1 user unknown")
    listed = json.loads(run_cli(env, "subscriber", "list", "--json").stdout)
    assert {s["email"]: (s["status"], s["suppressed"]) for s in listed} == {
        ADA: ("suppressed", "hard bounce 5.1.1 user unknown"),
        GRACE: ("suppressed", "complaint (abuse)"),
        KAREN: ("active", None),
    }

    # No more issues for them: the next day plans and sends Karen's only.
    mailer2 = MemoryMailer()
    run_once(settings, now=NOW + timedelta(days=1), mailer=mailer2)
    assert [e.recipient for e, _ in mailer2.sent] == [KAREN]

    # Only the operator's `subscriber add` clears it (the config sync does not).
    added = run_cli(env, "subscriber", "add", ADA)
    assert added.returncode == 0, added.stderr
    assert _subscribers(settings)[ADA] == (SubscriberStatus.ACTIVE, None)


def test_soft_bounces_suppress_after_n_in_m_days_from_an_mbox(store: Store, tmp_path: Path) -> None:
    sub, _ = store.upsert_subscriber(
        SubscriberSpec(email=ADA, profile="speech"), source=SubscriberSource.CLI, now=NOW
    )
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path, create=True)

    def soft(n: int, days_ago: float, original_id: str) -> None:
        box.add(
            dsn(
                f"<soft-{n}@mx>",
                to="x@y.org",
                recipient=ADA,
                action="delayed",
                status="4.4.7",
                diagnostic="smtp; 452 4.2.2 mailbox full",
                original_id=original_id,
                date=NOW - timedelta(days=days_ago),
            )
        )

    soft(1, 20, "<issue-a@p>")  # outside the 7-day window
    soft(2, 3, "<issue-b@p>")
    soft(3, 2.5, "<issue-b@p>")  # the same issue delayed again: counts once
    soft(4, 1, "<issue-c@p>")
    box.flush()
    box.close()
    policy = BouncePolicy(soft_limit=3, soft_days=7)
    site = load_settings(CONFIG, environ={}).site
    run = process_messages(store, read_mailbox(str(path)), site=site, policy=policy, now=NOW)
    assert [(m.outcome, m.note) for m in run.messages] == [
        (Outcome.RECORDED, "soft bounce 4.4.7 mailbox full (0 of 3 in 7 days)"),
        (Outcome.RECORDED, "soft bounce 4.4.7 mailbox full (1 of 3 in 7 days)"),
        (Outcome.RECORDED, "soft bounce 4.4.7 mailbox full (1 of 3 in 7 days)"),
        (Outcome.RECORDED, "soft bounce 4.4.7 mailbox full (2 of 3 in 7 days)"),
    ]
    assert store.subscriber(ADA).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    third = MailboxMessage(
        "x",
        dsn(
            "<soft-5@mx>",
            to="x@y.org",
            recipient=ADA,
            action="failed",
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 mailbox full",
            original_id="<issue-d@p>",
            date=NOW,
        ),
    )
    run = process_messages(store, [third], site=site, policy=policy, now=NOW)
    reason = "3 soft bounces in 7 days (last: soft bounce 4.2.2 mailbox full)"
    assert [(m.outcome, m.note) for m in run.messages] == [(Outcome.SUPPRESSED, reason)]
    assert store.subscriber(ADA).status is SubscriberStatus.SUPPRESSED  # type: ignore[union-attr]
    assert store.suppressions()[sub.id].reason == reason

    # Unsubscribing and resubscribing from the web does not undo it; the operator does.
    assert store.unsubscribe(sub.id, NOW)
    assert not store.resubscribe(sub.id, NOW)
    request = store.request_confirmation(
        SubscriberSpec(email=ADA, profile="speech"), NOW, resend_after=timedelta(hours=1)
    )
    assert (request.token, request.reason) == (None, "suppressed address")
    assert store.set_subscriber_status(ADA, SubscriberStatus.ACTIVE, NOW)
    assert store.suppressions() == {}


def test_a_5xx_to_rcpt_is_a_hard_bounce_and_mail_from_is_the_verp_address(
    settings: Settings,
) -> None:
    refusal = "550 5.1.1 <grace@example.org>: user unknown"
    with SmtpServer(Recorder(refuse={GRACE: refusal})) as server:
        smtp = smtp_settings(_verp(settings), server.port)
        summary = run_once(smtp, now=NOW)
        assert summary.issues_failed == 1
        store = open_store(settings)
        subs = {s.email: s for s in store.subscribers()}
        store.close()
        assert [(r.recipient, r.sender) for r in server.handler.received] == [
            (address, f"bounces+{bounce_token(subs[address])}@papers.example.org")
            for address in (ADA, KAREN)
        ]
        # The header From is unchanged.
        assert all(
            email.message_from_bytes(r.raw)["From"] == "Paper Digest <digest@papers.example.org>"
            for r in server.handler.received
        )
        assert _subscribers(settings)[GRACE] == (
            SubscriberStatus.SUPPRESSED,
            "hard bounce 5.1.1 <grace@example.org>: user unknown",
        )
        store = open_store(settings)
        grace_issue = store.issue(subs[GRACE].id, NOW.date())
        store.close()
        assert grace_issue is not None and grace_issue.state is IssueState.FAILED
        # The next day: Grace is not tried again.
        run_once(smtp, now=NOW + timedelta(days=1))
        assert [r.recipient for r in server.handler.received] == [ADA, KAREN, ADA, KAREN]


# --------------------------------------------------------------------------- IMAP (dovecot)


DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
IMAP_USER, IMAP_PASSWORD = "bounces", "imap-test-password"


@pytest.fixture
def dovecot() -> Iterator[tuple[int, Path]]:
    """Debian's dovecot on 127.0.0.1 (IMAP over TLS only, a trustme certificate, one
    passwd-file user), run as this user, or as the dovecot user when the tests run as root;
    yields (port, CA file)."""
    if DOVECOT is None:
        pytest.skip("IMAP tests need dovecot: sudo apt-get install dovecot-imapd")
    folder = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    folder.chmod(0o755)  # the mail process (another user under root) must reach its home
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    (folder / "home" / IMAP_USER).mkdir(parents=True)
    (folder / "passwd").write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASSWORD}::::::\n")
    if os.getuid() == 0:
        mail_user = pwd.getpwnam("dovecot")
        internal, login = "dovecot", "dovenull"
        shutil.chown(folder / "home" / IMAP_USER, mail_user.pw_uid, mail_user.pw_gid)
        uid, gid = mail_user.pw_uid, mail_user.pw_gid
    else:
        me = pwd.getpwuid(os.getuid())
        internal = login = me.pw_name
        uid, gid = os.getuid(), os.getgid()
    port = free_port()
    (folder / "dovecot.conf").write_text(
        f"""
base_dir = {folder}/run
state_dir = {folder}/run
log_path = {folder}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={folder}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""
    )
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(folder / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        for _ in range(100):  # until it listens (a readiness wait, not a timing assertion)
            try:
                imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=5).logout()
                break
            except OSError:
                time.sleep(0.1)
        else:
            log = (folder / "dovecot.log").read_text() if (folder / "dovecot.log").exists() else ""
            pytest.fail(f"dovecot did not start: {log}")
        yield port, folder / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_imap_mailbox_over_tls(dovecot: tuple[int, Path], settings: Settings) -> None:
    port, ca_file = dovecot
    settings = _verp(settings)
    mailer = MemoryMailer()
    run_once(settings, now=NOW, mailer=mailer)
    karen_sender = next(e.sender for e, _ in mailer.sent if e.recipient == KAREN)
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
    conn.login(IMAP_USER, IMAP_PASSWORD)
    for raw in (
        dsn("<imap-karen@mx>", to=karen_sender, recipient="k@elsewhere.org"),
        arf("<imap-ada@isp>", rcpt_to=ADA),
    ):
        assert conn.append("INBOX", None, None, raw)[0] == "OK"
    conn.logout()

    source = f"imaps://{IMAP_USER}@localhost:{port}/INBOX"
    env = {
        **settings_env(settings, mail_bounce_address=BOUNCE_ADDRESS),
        "NEWSLETTER_IMAP_PASSWORD": IMAP_PASSWORD,
    }
    done = run_cli(env, "-vv", "bounces", source, "--ca-file", str(ca_file), "--json")
    assert done.returncode == 0, done.stderr
    assert IMAP_PASSWORD not in done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert [(m["key"], m["outcome"], m["email"], m["matched_by"]) for m in out["messages"]] == [
        ("1", "suppressed", KAREN, "verp"),
        ("2", "suppressed", ADA, "recipient"),
    ]
    assert _subscribers(settings)[KAREN] == (
        SubscriberStatus.SUPPRESSED,
        "hard bounce 5.1.1 user unknown",
    )
    # Read only: the messages are still there, and a second pass counts nothing again.
    again = run_cli(env, "bounces", source, "--ca-file", str(ca_file), "--json")
    assert json.loads(again.stdout)["summary"]["duplicate"] == 2

    wrong = run_cli(
        {**env, "NEWSLETTER_IMAP_PASSWORD": "wrong"}, "bounces", source, "--ca-file", str(ca_file)
    )
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"error: imaps://{IMAP_USER}@localhost:{port}/INBOX: the server refused the login of "
        f"'{IMAP_USER}'"
    )


def test_app_level_use_without_bounce_address_keeps_from_address(settings: Settings) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:
        app.run_once(NOW)
    assert {e.sender for e, _ in mailer.sent} == {"digest@papers.example.org"}
