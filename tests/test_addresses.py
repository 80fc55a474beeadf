"""One address rule for every way an address comes in, and delivery that no address can stop.

The rule (:func:`newsletter.subscribers.normalize_email`): addresses are stored and sent in
ASCII, lower case; an internationalized domain is kept in its IDNA (``xn--``) form, a
non-ASCII local part is refused, a dotless domain (``user@localhost``) needs
``mail.allow_local_domains``. The tests check the rule on a table, then that the subscribers
file, ``subscriber add``, a CSV import, the web form and ``mail.from_address`` all apply it,
with and without the setting.

Delivery runs against real SMTP servers on loopback (aiosmtpd): an address that smtplib
cannot write (a row stored before the rule) fails its own issue, with a reason that names the
address; the transaction is reset and the session goes on for everyone else, in a run and in
the web's confirmation sender.
"""

from __future__ import annotations

import email
import email.policy
import logging
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any, AnyStr

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope as MailEnvelope
from newsletter.deliver import MailerUnavailable, MemoryMailer
from newsletter.domain import IssueState, SubscriberSource, SubscriberSpec
from newsletter.errors import ConfigError, DeliveryError
from newsletter.smtp import SmtpMailer
from newsletter.subscribers import normalize_email
from newsletter.web import create_app
from newsletter.web.mail import confirmation_message
from newsletter.web.sender import ConfirmationSender
from tests.conftest import NOW, ROOT
from tests.factories import open_store, run_cli, run_once, settings_env
from tests.smtp_server import HOST, Recorder, SmtpServer, free_port, smtp_settings
from tests.test_web import SECRET, Clock, WebClient, field_errors, subscribe_form, web_context
from tests.test_web_sender import DEADLINE, confirm_hash, job

CONFIG = ROOT / "config" / "newsletter.toml"
#: A Cyrillic look-alike of "paypal.com" (р а у р а, then a Latin l).
HOMOGLYPH = "\u0440\u0430\u0443\u0440\u0430l.com"


def local_refused(raw: str, domain: str) -> str:
    return (
        f"invalid email address {raw!r}: the domain {domain!r} has no dot, so it reaches only "
        "a local mail system; set mail.allow_local_domains = true "
        "(NEWSLETTER_MAIL_ALLOW_LOCAL_DOMAINS) if that is the set-up"
    )


UTF8_LOCAL = (
    "invalid email address 'jürgen@example.org': Internationalized characters before the "
    "@-sign are not supported: 'ü'."
)

# ---------------------------------------------------------------------- the rule

#: (address as given, mail.allow_local_domains, what the rule makes of it: the stored
#: address, or the error).
RULE = [
    ("Ada@Example.ORG", False, "ada@example.org"),
    ("  grace@example.org\t", False, "grace@example.org"),
    ("user@bücher.example", False, "user@xn--bcher-kva.example"),
    ("User@BÜCHER.Example", False, "user@xn--bcher-kva.example"),
    ("user@xn--bcher-kva.example", False, "user@xn--bcher-kva.example"),
    (f"user@{HOMOGLYPH}", False, "user@xn--l-7sba6dbr.com"),
    ("jürgen@example.org", False, UTF8_LOCAL),
    ("jürgen@example.org", True, UTF8_LOCAL),
    ("root@localhost", False, local_refused("root@localhost", "localhost")),
    ("root@LocalHost", True, "root@localhost"),
    ("mail@mailhost", False, local_refused("mail@mailhost", "mailhost")),
    ("mail@mailhost", True, "mail@mailhost"),
    ("user@bücher", True, "user@xn--bcher-kva"),
    (
        "user@sub.localhost",
        True,
        "invalid email address 'user@sub.localhost': The part after the @-sign is a "
        "special-use or reserved name that cannot be used with email.",
    ),
    (
        "user@[127.0.0.1]",
        True,
        "invalid email address 'user@[127.0.0.1]': A bracketed IP address after the @-sign "
        "is not allowed here.",
    ),
    (
        '"a b"@example.org',
        False,
        "invalid email address '\"a b\"@example.org': Quoting the part before the @-sign is "
        "not allowed here.",
    ),
    (
        "Ada <ada@example.org>",
        False,
        "invalid email address 'Ada <ada@example.org>': A display name and angle brackets "
        "around the email address are not permitted here.",
    ),
    (
        "user@xn--zz.com",
        False,
        "invalid email address 'user@xn--zz.com': The part after the @-sign is not valid "
        "IDNA (Invalid A-label).",
    ),
    (
        "root@",
        True,
        "invalid email address 'root@': There must be something after the @-sign.",
    ),
]


def outcome(raw: str, allow_local: bool) -> str:
    try:
        return normalize_email(raw, allow_local=allow_local)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("raw,allow_local,expected", RULE)
def test_the_address_rule(raw: str, allow_local: bool, expected: str) -> None:
    assert outcome(raw, allow_local) == expected
    if not expected.startswith("invalid"):
        assert expected.isascii()
        assert normalize_email(expected, allow_local=allow_local) == expected  # idempotent


# ---------------------------------------------------------------------- every entry point

#: What every entry point is given, in this order.
ADDRESSES = ["Ada@Bücher.Example", "root@LocalHost", "jürgen@example.org", f"grace@{HOMOGLYPH}"]
STORED = {
    False: {
        "Ada@Bücher.Example": "ada@xn--bcher-kva.example",
        ADDRESSES[3]: "grace@xn--l-7sba6dbr.com",
    },
    True: {
        "Ada@Bücher.Example": "ada@xn--bcher-kva.example",
        "root@LocalHost": "root@localhost",
        ADDRESSES[3]: "grace@xn--l-7sba6dbr.com",
    },
}
REFUSED = {
    False: {
        "root@LocalHost": local_refused("root@LocalHost", "LocalHost"),
        "jürgen@example.org": UTF8_LOCAL,
    },
    True: {"jürgen@example.org": UTF8_LOCAL},
}


@pytest.fixture(params=[False, True], ids=["default", "allow_local_domains"])
def allow_local(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def with_flag(settings: Settings, allow_local: bool) -> Settings:
    """The test settings with ``mail.allow_local_domains`` set and no subscribers file."""
    mail = settings.mail.model_copy(update={"allow_local_domains": allow_local})
    return settings.model_copy(update={"mail": mail, "subscribers_file": None})


def cli_env(settings: Settings, allow_local: bool) -> dict[str, str]:
    flag = {"mail_allow_local_domains": "true"} if allow_local else {}
    return settings_env(settings, **flag)


def stored(settings: Settings) -> list[str]:
    store = open_store(settings)
    try:
        return sorted(s.email for s in store.subscribers())
    finally:
        store.close()


def test_table_and_entry_points_agree(allow_local: bool) -> None:
    """The expectations below are the rule's own outcomes (so the entry point tests check
    that each entry point applies this rule, not another one)."""
    for raw in ADDRESSES:
        expected = STORED[allow_local].get(raw) or REFUSED[allow_local][raw]
        assert outcome(raw, allow_local) == expected


def test_subscribers_file_entries(settings: Settings, allow_local: bool, tmp_path: Path) -> None:
    path = tmp_path / "subscribers.toml"
    path.write_text(
        "".join(f'[[subscriber]]\nemail = "{raw}"\nprofile = "speech"\n\n' for raw in ADDRESSES),
        encoding="utf-8",
    )
    flagged = with_flag(settings, allow_local).model_copy(update={"subscribers_file": path})
    with Newsletter(flagged, mailer=MemoryMailer()) as app:
        result = app.sync_subscribers(NOW)
    lines = {raw: 1 + 4 * i for i, raw in enumerate(ADDRESSES)}
    assert result.errors == tuple(
        f"{path}, line {lines[raw]}: email: {message}"
        for raw, message in REFUSED[allow_local].items()
    )
    assert result.synced == len(STORED[allow_local])
    assert stored(settings) == sorted(STORED[allow_local].values())


def test_cli_subscriber_add(settings: Settings, allow_local: bool) -> None:
    env = cli_env(settings, allow_local)
    for raw in ADDRESSES:
        out = run_cli(env, "subscriber", "add", raw, "--profile", "speech")
        if raw in REFUSED[allow_local]:
            assert (out.returncode, out.stdout) == (1, ""), raw
            assert out.stderr == f"error: subscriber add: email: {REFUSED[allow_local][raw]}\n"
        else:
            assert (out.returncode, out.stderr) == (0, ""), out.stderr
            assert out.stdout == f"added {STORED[allow_local][raw]} (sends 07:00 UTC)\n"
    assert stored(settings) == sorted(STORED[allow_local].values())


def test_cli_subscriber_add_finds_a_known_address_by_its_stored_form(settings: Settings) -> None:
    env = cli_env(settings, False)
    assert run_cli(env, "subscriber", "add", "ada@bücher.example", "--profile", "a").returncode == 0
    again = run_cli(env, "subscriber", "add", "ADA@xn--BCHER-kva.example", "--profile", "b")
    assert again.stdout == "updated ada@xn--bcher-kva.example (sends 07:00 UTC)\n"
    removed = run_cli(env, "subscriber", "remove", "Ada@Bücher.Example")
    assert removed.stdout == "unsubscribed ada@xn--bcher-kva.example (history kept)\n"


def test_csv_import(settings: Settings, allow_local: bool, tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,profile\n" + "".join(f"{raw},speech\n" for raw in ADDRESSES), encoding="utf-8"
    )
    out = run_cli(cli_env(settings, allow_local), "subscriber", "import", str(csv_file))
    assert out.returncode == 0, out.stderr
    added, skipped = len(STORED[allow_local]), len(REFUSED[allow_local])
    assert out.stdout.splitlines()[-1] == (
        f"imported {csv_file}: {added} added, 0 updated, {skipped} skipped"
    )
    lines = {raw: 2 + i for i, raw in enumerate(ADDRESSES)}
    assert out.stderr.splitlines() == [
        f"skipped: {csv_file}, line {lines[raw]}: email: {message}"
        for raw, message in REFUSED[allow_local].items()
    ]
    assert stored(settings) == sorted(STORED[allow_local].values())


def test_web_form(settings: Settings, allow_local: bool) -> None:
    mailer = MemoryMailer()
    app = create_app(
        with_flag(settings, allow_local), mailer=mailer, clock=Clock(NOW), secret=SECRET
    )
    with WebClient(app, base_url="http://testserver", follow_redirects=False) as client:
        for raw in ADDRESSES:
            page = client.post("/subscribe", data=subscribe_form(raw))
            if raw in REFUSED[allow_local]:
                assert page.status_code == 400, raw
                assert field_errors(page.text) == {"email": REFUSED[allow_local][raw]}
            else:
                assert page.status_code == 200, raw
                assert "<h1>Check your inbox</h1>" in page.text
                assert STORED[allow_local][raw] in page.text
    assert [e.recipient for e, _ in mailer.sent] == list(STORED[allow_local].values())
    for _envelope, raw_message in mailer.sent:
        assert raw_message.isascii()
    assert stored(settings) == sorted(STORED[allow_local].values())


@pytest.mark.parametrize("source", ["environment", "file"])
def test_from_address_follows_the_rule(source: str, tmp_path: Path) -> None:
    local = {"NEWSLETTER_MAIL_FROM_ADDRESS": "digest@localhost"}
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ=local)
    assert str(err.value) == (
        "bad value for 'mail.from_address' in environment NEWSLETTER_MAIL_FROM_ADDRESS: must "
        "be an email address such as digest@example.org: the domain 'localhost' has no dot, "
        "so it reaches only a local mail system; set mail.allow_local_domains = true "
        "(NEWSLETTER_MAIL_ALLOW_LOCAL_DOMAINS) if that is the set-up"
    )
    if source == "environment":
        allowed = load_settings(
            CONFIG, environ={**local, "NEWSLETTER_MAIL_ALLOW_LOCAL_DOMAINS": "true"}
        )
    else:
        path = tmp_path / "n.toml"
        path.write_text('[mail]\nallow_local_domains = true\nfrom_address = "digest@localhost"\n')
        allowed = load_settings(path, environ={})
    assert (allowed.mail.allow_local_domains, allowed.mail.from_address) == (
        True,
        "digest@localhost",
    )
    assert load_settings(CONFIG, environ={}).mail.allow_local_domains is False


# ---------------------------------------------------------------------- delivery


@dataclass
class Transcript(Recorder):
    """A :class:`Recorder` that also notes, in order, each transaction command it handled
    (``MAIL <from>``, ``RCPT <to>``, ``DATA``, ``RSET``) and every reply the server sent."""

    events: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.events.append(f"MAIL {address}")
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.events.append(f"RCPT {address}")
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("DATA")
        return await super().handle_DATA(server, session, envelope)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("RSET")
        return "250 OK"


class _ReplyLog(SMTP):
    """aiosmtpd's protocol, noting every reply it sends (a ``503`` would show here)."""

    transcript: Transcript

    async def push(self, status: AnyStr) -> None:
        reply = status.decode() if isinstance(status, bytes) else str(status)
        self.transcript.replies.append(reply)
        await super().push(status)


class TranscriptServer(Controller):
    """An aiosmtpd server on 127.0.0.1 whose handler is a :class:`Transcript`."""

    def __init__(self) -> None:
        self.transcript = Transcript()
        super().__init__(self.transcript, hostname=HOST, port=free_port())

    def factory(self) -> SMTP:
        protocol = _ReplyLog(self.handler, **self.SMTP_kwargs)
        protocol.transcript = self.transcript
        return protocol

    def __enter__(self) -> TranscriptServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def not_ascii_reason(address: str) -> str:
    return (
        f"cannot send to the recipient address {address!r}: it is not ASCII, and SMTP without "
        "SMTPUTF8 carries only ASCII addresses; `newsletter subscriber remove` it and add it "
        "again (a Unicode domain is then stored in its IDNA xn-- form); not retried"
    )


def _message(recipient: str) -> tuple[MailEnvelope, bytes]:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "digest@papers.example.org"
    msg["Subject"] = "hello"
    msg.set_content("body\n")
    envelope = MailEnvelope("digest@papers.example.org", recipient, "<1@papers.example.org>", "x")
    return envelope, msg.as_bytes()


def test_the_mailer_resets_after_a_recipient_it_cannot_write_and_goes_on() -> None:
    with TranscriptServer() as server:
        mailer = SmtpMailer(HOST, server.port, security="none")
        for bad in ("zoë@example.org", "legacy@bücher.example"):
            with pytest.raises(DeliveryError) as err:
                mailer.send(*_message(bad))
            assert not isinstance(err.value, MailerUnavailable)
            assert (err.value.permanent, str(err.value)) == (True, not_ascii_reason(bad))
        assert mailer.send(*_message("ok@example.org")) == "250 2.0.0 Ok: queued as 1"
        mailer.close()
    sender = "MAIL digest@papers.example.org"
    assert server.transcript.events == [
        sender,
        "RSET",
        sender,
        "RSET",
        sender,
        "RCPT ok@example.org",
        "DATA",
    ]
    assert mailer.connections == 1 and server.transcript.connections == 1
    assert not [r for r in server.transcript.replies if r.startswith("503")]


def test_a_legacy_address_fails_only_its_issue_and_the_run_goes_on(settings: Settings) -> None:
    base = settings.model_copy(update={"subscribers_file": None})
    legacy, good = "legacy@bücher.example", "good@example.org"
    store = open_store(base)
    for address in (legacy, good):  # the first as the old rule stored it: a Unicode domain
        spec = SubscriberSpec(email=address, profile="speech", min_score=0.0)
        store.upsert_subscriber(spec, source=SubscriberSource.CLI, now=NOW)
    store.close()
    with TranscriptServer() as server:
        summary = run_once(smtp_settings(base, server.port), now=NOW)
    reason = not_ascii_reason(legacy)
    assert summary.delivery_stopped == ""
    assert summary.failed_now == [
        {"email": legacy, "slot": "2026-11-23", "state": "failed", "reason": reason}
    ]
    assert [d["email"] for d in summary.delivered] == [good]
    assert summary.exit_status == 1
    transcript = server.transcript
    sender = f"MAIL {base.mail.from_address}"
    assert transcript.events == [sender, "RSET", sender, f"RCPT {good}", "DATA"]
    assert [r.recipient for r in transcript.received] == [good]
    assert transcript.connections == 1  # one session carried both issues
    assert not [r for r in transcript.replies if r.startswith("503")]
    store = open_store(base)
    try:
        subs = {s.id: s.email for s in store.subscribers()}
        issues = {subs[i.subscriber_id]: i for i in store.issues()}
    finally:
        store.close()
    assert (issues[legacy].state, issues[legacy].attempts, issues[legacy].last_reply) == (
        IssueState.FAILED,
        1,
        reason,
    )
    assert issues[good].state is IssueState.SENT


def test_idn_and_local_addresses_are_delivered_in_their_stored_ascii_form(
    settings: Settings,
) -> None:
    base = with_flag(settings, True)
    with Newsletter(base, mailer=MemoryMailer()) as app:
        for raw in ("Zoe@Bücher.Example", "root@LocalHost"):
            app.add_subscriber(raw, {"profile": "speech", "min_score": 0.0}, now=NOW)
    with SmtpServer() as server:
        summary = run_once(smtp_settings(base, server.port), now=NOW)
    expected = ["root@localhost", "zoe@xn--bcher-kva.example"]
    assert (summary.delivery_stopped, summary.failed_now) == ("", [])
    assert sorted(r.recipient for r in server.handler.received) == expected  # RCPT TO
    for got in server.handler.received:
        assert got.raw.isascii()
        msg = email.message_from_bytes(got.raw, policy=email.policy.default)
        (to,) = msg.get_all("To") or []
        assert [a.addr_spec for a in to.addresses] == [got.recipient]


def test_web_confirmations_go_on_after_an_address_the_client_cannot_send(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    legacy = "legacy@bücher.example"
    with SmtpServer() as smtp:
        app = create_app(smtp_settings(settings, smtp.port), clock=Clock(NOW), secret=SECRET)
        with WebClient(app, base_url="http://testserver", follow_redirects=False) as client:
            ctx = web_context(app)
            first = client.post("/subscribe", data=subscribe_form("Hedy@Bücher.Example"))
            assert first.status_code == 200 and "hedy@xn--bcher-kva.example" in first.text
            # A request that skipped the rule (as a row from before it): its confirmation
            # cannot be written as RCPT TO ...
            spec = SubscriberSpec(email=legacy, profile="speech")
            ctx.app.subscribe(spec, partial(confirmation_message, ctx), ctx.sender.submit)
            assert ctx.sender.wait_idle(DEADLINE)
            # ... and the next visitor's confirmation still goes out, on the same session.
            second = client.post("/subscribe", data=subscribe_form("next@example.org"))
            assert second.status_code == 200
    received = smtp.handler.received
    assert [m.recipient for m in received] == ["hedy@xn--bcher-kva.example", "next@example.org"]
    assert smtp.handler.connections == 1
    store = open_store(settings)
    try:
        assert confirm_hash(store, legacy) is None  # withdrawn: it may ask again at once
        sub = store.subscriber(legacy)
        assert sub is not None
    finally:
        store.close()
    assert (
        f"confirmation for subscriber {sub.id} not sent (send failed: "
        f"{not_ascii_reason(legacy)}): token withdrawn"
    ) in caplog.text


def test_an_unexpected_error_in_one_confirmation_withdraws_its_token_and_the_next_is_sent() -> None:
    sent: list[int] = []
    withdrawn: list[tuple[int, str]] = []

    def send(j: Any) -> None:
        if j.subscriber_id == 1:
            raise UnicodeEncodeError("ascii", "zoë", 2, 3, "ordinal not in range(128)")
        sent.append(j.subscriber_id)

    sender = ConfirmationSender(send, lambda j, why: withdrawn.append((j.subscriber_id, why)))
    try:
        assert sender.submit(job(1)) and sender.submit(job(2))
        assert sender.wait_idle(DEADLINE)
    finally:
        sender.close()
    assert sent == [2]
    assert withdrawn == [
        (
            1,
            "send failed unexpectedly: UnicodeEncodeError: 'ascii' codec can't encode character "
            "'\\xeb' in position 2: ordinal not in range(128)",
        )
    ]
