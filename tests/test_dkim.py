"""DKIM signing (issue 17): every message the application sends carries a signature that
dkimpy verifies against the public key, looked up through a stub DNS that answers with the
record `newsletter doctor` prints. Issues go through a real SMTP server (aiosmtpd), the
confirmation and welcome emails through the web app and the same server; a mailer handed in by
the caller (as workers do) and the outbox are signed too. Keys are made with `cryptography`."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from newsletter.app import Newsletter, make_mailer
from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope, MemoryMailer, OutboxMailer
from newsletter.dkim import DkimSigner, SigningMailer, load_key
from newsletter.doctor import RecordKind, diagnose
from newsletter.errors import ConfigError
from newsletter.web import create_app
from tests.conftest import NOW, ROOT
from tests.factories import run_once, settings_env, workspace_env
from tests.smtp_server import HOST, SmtpServer
from tests.test_web import SECRET, Clock, WebClient

CONFIG = ROOT / "config" / "newsletter.toml"
SELECTOR = "mail2026"
DOMAIN = "papers.example.org"
SIGNED_H = (
    "from : to : subject : date : message-id : list-id : list-unsubscribe : "
    "list-unsubscribe-post : mime-version : content-type : from : to : subject : date : "
    "message-id : list-id : list-unsubscribe : list-unsubscribe-post"
)
#: A 512-bit RSA key (openssl genrsa 512): too short for DKIM. cryptography will not make one.
KEY_512 = b"""-----BEGIN PRIVATE KEY-----
MIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAp/zG7Zhb+v4DyTxs
4dLZHsdLFFJSigLkbUUTZDIwKwLQH06WI50Xqp6qf/w9mq8VoTeqGBdlPy7tntOP
1dKraQIDAQABAkBmPsuRd6ecaBlD1ZxsApqWSjTfZI/KYqJIA8AevxFkS3CJbEYA
dvUVGQl6vEaBz6c8amHbSC99Q+3cN5siiEWBAiEA0talf4t/urGv5ticpsz8E+CO
B1eJNT9P1iTHZIB6b9kCIQDL+GNEJKBhFfqZ9xWLlaoRCG95zwb9y+ddC3wlG3Ju
EQIgQfq0Deb80NLcRjSRSU2qsRm7uKZ3JLesZ0pZL6VZK3kCIFiMPXPgvqtHImLi
zDyrvYfldJeZ07wsYAWZrcxiLPwxAiEAgYFBGxWYIqh9OtKZT0SMjWk48xrltyt5
zQ5kCaG8Enc=
-----END PRIVATE KEY-----
"""


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "dkim.pem"
    path.write_bytes(pem(rsa_key))
    path.chmod(0o600)
    return path


def dkim_settings(settings: Settings, key_file: Path, **extra: object) -> Settings:
    """``settings`` with DKIM on, loaded as a deployment loads them (file + environment)."""
    env = settings_env(
        settings,
        mail_dkim_selector=SELECTOR,
        mail_dkim_domain=DOMAIN,
        mail_dkim_key_file=key_file,
        base_url="https://papers.example.org",
        **extra,
    )
    return load_settings(CONFIG, environ=env)


def smtp_dkim_settings(settings: Settings, key_file: Path, port: int) -> Settings:
    return dkim_settings(
        settings,
        key_file,
        mailer="smtp",
        smtp_host=HOST,
        smtp_port=port,
        smtp_security="none",
        smtp_timeout_seconds=5,
    )


def dns_of(settings: Settings) -> Callable[..., bytes | None]:
    """dkimpy's DNS lookup, answered with the DKIM record `newsletter doctor` prints."""
    (record,) = [r for r in diagnose(settings).records if r.kind is RecordKind.DKIM]
    assert record.name == f"{SELECTOR}._domainkey.{DOMAIN}"

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.value.encode("ascii") if name == f"{record.name}.".encode() else None

    return lookup


def signature_tags(raw: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    (header,) = msg.get_all("DKIM-Signature") or []
    unfolded = re.sub(r"\s+", " ", str(header))
    tags = {}
    for part in unfolded.split(";"):
        name, _, value = part.strip().partition("=")
        tags[name] = value.strip()
    return tags


def assert_signed(raw: bytes, dns: Callable[..., bytes | None], h: str) -> None:
    assert raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    tags = signature_tags(raw)
    assert (tags["a"], tags["c"], tags["d"], tags["s"], tags["h"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        DOMAIN,
        SELECTOR,
        h,
    )
    assert dkim.verify(raw, dnsfunc=dns) is True


def tamper_list_unsubscribe(raw: bytes) -> bytes:
    tampered = re.sub(rb"/unsubscribe/[A-Za-z0-9_-]+", b"/unsubscribe/attacker", raw, count=1)
    assert tampered != raw
    return tampered


def add_header(raw: bytes, line: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n" + line + b"\r\n\r\n" + body


# ---------------------------------------------------------------------- issues


def test_issues_sent_over_smtp_are_signed_and_verify(settings: Settings, key_file: Path) -> None:
    with SmtpServer() as server:
        configured = smtp_dkim_settings(settings, key_file, server.port)
        summary = run_once(configured, now=NOW)
    received = server.handler.received
    assert len(received) == len(summary.delivered) == 3
    dns = dns_of(configured)
    for got in received:
        raw = got.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as sent: CRLF
        assert_signed(raw, dns, SIGNED_H)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # RFC 8058: the signature covers List-Unsubscribe; changing it breaks verification.
        assert dkim.verify(tamper_list_unsubscribe(raw), dnsfunc=dns) is False
        # Over-signed: a second List-Unsubscribe (or From) added on the way breaks it too.
        extra = b"List-Unsubscribe: <https://evil.example/u>"
        assert dkim.verify(add_header(raw, extra), dnsfunc=dns) is False
        assert dkim.verify(add_header(raw, b"From: x@evil.example"), dnsfunc=dns) is False
        # A header the signature does not name may be added (relays add Received).
        assert dkim.verify(add_header(raw, b"X-Relay: seen"), dnsfunc=dns) is True


def test_a_mailer_handed_in_is_signed_too_and_the_key_is_read_once(
    settings: Settings, key_file: Path
) -> None:
    """Workers and tests hand their own mailer to Newsletter: it is wrapped as well. The key
    file is read when the mailer is made, not per message: removing it changes nothing."""
    configured = dkim_settings(settings, key_file)
    dns = dns_of(configured)
    memory = MemoryMailer()
    with Newsletter(configured, mailer=memory) as app:
        assert isinstance(app.mailer, SigningMailer) and app.mailer.inner is memory
        key_file.unlink()
        app.run_once(NOW)
    assert len(memory.sent) == 3
    for _envelope, raw in memory.sent:
        assert_signed(raw, dns, SIGNED_H)


def test_ed25519_key_signs_the_outbox_files(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "ed25519.pem"
    path.write_bytes(pem(ed25519.Ed25519PrivateKey.generate()))
    configured = dkim_settings(settings, path)
    mailer = make_mailer(configured)
    assert isinstance(mailer, SigningMailer) and isinstance(mailer.inner, OutboxMailer)
    run_once(configured, now=NOW)
    files = sorted(configured.outbox_dir.glob("*.eml"))
    assert len(files) == 3
    dns = dns_of(configured)
    for file in files:
        raw = file.read_bytes()
        tags = signature_tags(raw)
        assert (tags["a"], tags["c"], tags["h"]) == ("ed25519-sha256", "relaxed/relaxed", SIGNED_H)
        assert dkim.verify(raw, dnsfunc=dns) is True
        assert dkim.verify(tamper_list_unsubscribe(raw), dnsfunc=dns) is False


def test_a_celery_worker_process_signs_what_it_sends(
    workdir: Path, pg_url: str, key_file: Path
) -> None:
    """A worker's context (newsletter/workers/process.py, without Celery): the scheduler
    publishes its delivery settings, DKIM included; the worker reads the key at that path on
    its own machine and every issue it sends is signed."""
    from newsletter.domain import IssueState
    from newsletter.workers.deliver import TaskResult
    from newsletter.workers.process import WorkerContext
    from newsletter.workers.published import published_json

    own = load_settings(CONFIG, environ=workspace_env(workdir, pg_url))
    scheduler = dkim_settings(own, key_file)
    with Newsletter(scheduler, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW)
        app.sync_subscribers(NOW)
        app.plan_current_slots(NOW)
        app.store.publish_delivery_settings(published_json(scheduler), NOW)
        ids = [i.id for i in app.store.issues(states=[IssueState.PLANNED])]
    assert len(ids) == 3
    context = WorkerContext(own)
    try:
        outcomes = [context.deliver(issue_id) for issue_id in ids]
    finally:
        context.close()
    assert [o.result for o in outcomes] == [TaskResult.SENT] * 3
    files = sorted(own.outbox_dir.glob("*.eml"))
    assert len(files) == 3
    dns = dns_of(scheduler)
    for file in files:
        assert_signed(file.read_bytes(), dns, SIGNED_H)


def test_without_dkim_settings_messages_are_not_signed(settings: Settings) -> None:
    assert type(make_mailer(settings)) is OutboxMailer
    memory = MemoryMailer()
    with Newsletter(settings, mailer=memory) as app:
        assert app.mailer is memory
        app.run_once(NOW)
    assert memory.sent and not any(b"DKIM-Signature" in raw for _e, raw in memory.sent)


def test_signing_keeps_the_parallel_sessions_of_an_smtp_pool(
    settings: Settings, key_file: Path
) -> None:
    configured = dkim_settings(
        settings, key_file, mailer="smtp", smtp_host=HOST, smtp_connections=3
    )
    mailer = make_mailer(configured)
    assert isinstance(mailer, SigningMailer) and mailer.parallel_sessions == 3
    mailer.close()


# ---------------------------------------------------------------------- web emails


def test_confirmation_and_welcome_emails_are_signed(settings: Settings, key_file: Path) -> None:
    with SmtpServer() as server:
        configured = smtp_dkim_settings(settings, key_file, server.port)
        app = create_app(configured, clock=Clock(NOW), secret=SECRET)
        with WebClient(app, base_url="http://testserver", follow_redirects=False) as client:
            r = client.post("/subscribe", data={"email": "dee@example.org", "profile": "speech"})
            assert r.status_code == 200
            (confirmation,) = server.handler.received
            msg = email.message_from_bytes(confirmation.raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            body = msg.get_body(("plain",))
            assert body is not None
            text = body.get_content()
            link = re.search(r"https://papers\.example\.org(/confirm/[A-Za-z0-9_-]+)", text)
            assert link is not None
            assert client.post(link.group(1)).status_code == 200
        welcome = server.handler.received[1]
    dns = dns_of(configured)
    assert [r.recipient for r in server.handler.received] == ["dee@example.org"] * 2
    assert_signed(
        confirmation.raw,
        dns,
        "from : to : subject : date : message-id : auto-submitted : mime-version : "
        "content-type : content-transfer-encoding : from : to : subject : date : message-id",
    )
    assert_signed(
        welcome.raw,
        dns,
        "from : to : subject : date : message-id : list-unsubscribe : list-unsubscribe-post"
        " : auto-submitted : mime-version : content-type : content-transfer-encoding : from "
        ": to : subject : date : message-id : list-unsubscribe : list-unsubscribe-post",
    )
    assert dkim.verify(tamper_list_unsubscribe(welcome.raw), dnsfunc=dns) is False


# ---------------------------------------------------------------------- settings and keys


def test_dkim_settings_go_together(settings: Settings, key_file: Path) -> None:
    env = settings_env(settings, mail_dkim_selector=SELECTOR, mail_dkim_domain=DOMAIN)
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ=env)
    assert str(err.value) == (
        f"bad value for 'mail.dkim_key_file' in {CONFIG}: mail.dkim_selector, "
        "mail.dkim_domain and "
        "mail.dkim_key_file go together: set all three to sign with DKIM, or none"
    )
    env = settings_env(
        settings,
        mail_dkim_selector="mail 2026",
        mail_dkim_domain=DOMAIN,
        mail_dkim_key_file=key_file,
    )
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ=env)
    assert str(err.value) == (
        "bad value for 'mail.dkim_selector' in environment NEWSLETTER_MAIL_DKIM_SELECTOR: "
        "must be a DNS name such as mail2026 or example.org"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            KEY_512,
            "is an RSA key of 512 bits; DKIM needs at least 1024 (receivers ignore shorter "
            "ones), 2048 recommended",
        ),
        (
            b"not a key\n",
            "is not a PEM private key (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA "
            "PRIVATE KEY-----; make one with `openssl genpkey -algorithm RSA -pkeyopt "
            "rsa_keygen_bits:2048`)",
        ),
        (
            pem(ec.generate_private_key(ec.SECP256R1())),
            "is neither an RSA nor an Ed25519 key: DKIM signs with those two",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            "is encrypted: store it without a passphrase, readable by this user only",
        ),
        (None, "cannot be read: No such file or directory"),
    ],
    ids=["512-bit", "not-pem", "ec", "encrypted", "missing"],
)
def test_unusable_keys_are_refused_at_load(
    settings: Settings, tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        dkim_settings(settings, path)
    assert str(err.value) == (
        "bad value for 'mail.dkim_key_file' in environment NEWSLETTER_MAIL_DKIM_KEY_FILE: "
        f"DKIM key file {path}: {reason}"
    )


def test_pkcs1_key_and_signed_header_selection(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "pkcs1.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key = load_key(path)
    assert (key.type.value, key.bits) == ("rsa", 2048)
    assert "PRIVATE" not in repr(key)  # the private key never shows in a repr or a log
    signer = DkimSigner(SELECTOR, DOMAIN, key)
    message = (
        b"Received: from x\r\nFrom: a@papers.example.org\r\nTo: b@example.org\r\n"
        b"X-Other: 1\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    assert signer.headers_to_sign(message) == [
        b"from",
        b"to",
        b"subject",
        b"from",
        b"to",
        b"subject",
    ]
    signed = SigningMailer(MemoryMailer(), signer)
    envelope = Envelope("a@papers.example.org", "b@example.org", "<1@x>", "x")
    assert signed.send(envelope, message) == "memory #1"
    raw = signed.inner.sent[0][1]  # type: ignore[attr-defined]
    assert raw.endswith(message) and raw.startswith(b"DKIM-Signature: ")
