"""SMTP delivery against a real server on loopback (aiosmtpd): what arrives, and how.

Headers and size of the received messages (parsed with the ``email`` package), STARTTLS and
implicit TLS with AUTH (trustme certificates, password from the environment only), one session
for many messages, reconnecting after a drop, the rate limit, and the settings that select all
of this.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope, MailerUnavailable
from newsletter.domain import SubscriberSource, SubscriberSpec
from newsletter.errors import ConfigError
from newsletter.render import MAX_HTML_BYTES
from newsletter.smtp import SmtpMailer
from tests.conftest import NOW, ROOT
from tests.factories import open_store, run_once, settings_env
from tests.smtp_server import HOST, SmtpServer, smtp_settings

PASSWORD = "s3cret-only-in-the-environment"
CONFIG = ROOT / "config" / "newsletter.toml"


def _message(n: int) -> tuple[Envelope, bytes]:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "digest@papers.example.org"
    msg["To"] = f"reader{n}@example.org"
    msg["Subject"] = f"message {n}"
    msg["Message-ID"] = f"<{n}@papers.example.org>"
    msg.set_content(f"body {n}\n.a line starting with a dot\n")
    envelope = Envelope(
        "digest@papers.example.org", f"reader{n}@example.org", f"<{n}@papers.example.org>", "x"
    )
    return envelope, msg.as_bytes()


# ---------------------------------------------------------------------- what arrives

EVIL_DIGEST = [
    {
        "paper": {
            "id": "2611.00001",
            "title": "Speech recognition for everyone\r\nBcc: victim@evil.example",
            "summary": "Speech recognition and speech synthesis, speech recognition again.\r\n"
            "Bcc: victim@evil.example",
            "authors": [{"name": "Eve\r\nBcc: eve@evil.example"}],
            "publishedAt": "2026-11-20T08:00:00.000Z",
            "upvotes": 999,
        }
    }
]


def test_received_messages_have_safe_encoded_headers_and_bounded_size(
    settings: Settings, workdir: Path
) -> None:
    (workdir / "inbox" / "evil.json").write_text(json.dumps(EVIL_DIGEST), encoding="utf-8")
    name = "Papiers du Jour — Überblick"
    base = settings.model_copy(update={"name": name, "base_url": "https://papers.example.org"})
    store = open_store(base)
    extra = [
        SubscriberSpec(
            email="mallory@example.org",
            name="Mallory\r\nBcc: spy@evil.example",
            profile="speech",
            max_papers=3,
            min_score=0.5,
        ),
        SubscriberSpec(
            email="big@example.org",
            name="Big Reader",
            profile="model, models, learning, language, data, training, image, video",
            max_papers=300,
            min_score=0.01,
        ),
    ]
    for spec in extra:
        store.upsert_subscriber(spec, source=SubscriberSource.WEB, now=NOW)
    store.close()
    with SmtpServer() as server:
        summary = run_once(smtp_settings(base, server.port), now=NOW)
    store = open_store(base)
    subs = {s.email: s for s in store.subscribers()}
    issues = {i.subscriber_id: i for i in store.issues()}
    store.close()
    received = {r.recipient: r for r in server.handler.received}
    assert sorted(received) == sorted(subs) == sorted(str(d["email"]) for d in summary.delivered)
    assert server.handler.connections == 1
    headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "MIME-Version",
        "Content-Type",
    ]
    for address, got in received.items():
        sub = subs[address]
        raw = got.raw
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        # No header from paper or subscriber text: exactly these, one To with one address.
        assert list(msg.keys()) == headers, address
        (to,) = msg.get_all("To") or []
        assert [a.addr_spec for a in to.addresses] == [address]
        # Folded after the colon when name + URL pass 78 columns; unfolding leaves the space.
        assert (
            msg["List-Unsubscribe"].strip()
            == f"<https://papers.example.org/unsubscribe/{sub.token}>"
        )
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == f"{name} <daily.papers.example.org>"
        n = len(issues[sub.id].paper_ids)
        assert msg["Subject"] == (
            f"{name}: {n} {'paper' if n == 1 else 'papers'} for Mon 23 Nov 2026"
        )
        assert got.message_id == issues[sub.id].message_id
        head = raw.split(b"\r\n\r\n", 1)[0]
        subject_lines = re.search(rb"^Subject:.*(?:\r\n[ \t].*)*", head, re.MULTILINE)
        assert subject_lines is not None and b"=?utf-8?" in subject_lines.group(0)
        assert raw.isascii()
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    karen = email.message_from_bytes(received["karen@example.org"].raw, policy=email.policy.default)
    assert karen["To"].addresses[0].display_name == "Karen Spärck Jones"
    assert b"\r\nTo: Karen =?utf-8?q?Sp=C3=A4rck?= Jones <karen@example.org>\r\n" in (
        received["karen@example.org"].raw
    )
    mallory = email.message_from_bytes(
        received["mallory@example.org"].raw, policy=email.policy.default
    )
    assert "Bcc" not in mallory and "Bcc" not in mallory["To"].addresses[0].display_name.split()[0]

    # The big issue: HTML under the limit, the rest honestly counted and linked.
    big = subs["big@example.org"]
    n_total = len(issues[big.id].paper_ids)
    msg = email.message_from_bytes(received["big@example.org"].raw, policy=email.policy.default)
    html_part = msg.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert len(html.encode("utf-8")) < MAX_HTML_BYTES
    ranks = [int(r) for r in re.findall(r">#(\d+)</div>", html)]
    shown = len(ranks)
    assert ranks == list(range(1, shown + 1))
    assert 0 < shown < n_total
    issue_url = f"https://papers.example.org/issues/{big.token}/2026-11-23"
    more = re.search(r'<a [^>]*href="([^"]+)"[^>]*>(\d+) more papers', html)
    assert more is not None
    assert (more.group(1), int(more.group(2))) == (issue_url, n_total - shown)


# ---------------------------------------------------------------------- TLS and AUTH


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture
def tls_server(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[SmtpServer]:
    context = _server_context(ca)
    kind = request.param
    kwargs = {"ssl_context": context} if kind == "ssl" else {"tls_context": context}
    with SmtpServer(users={"digest": PASSWORD}, **kwargs) as server:  # type: ignore[arg-type]
        yield server


@pytest.mark.parametrize("tls_server", ["starttls", "ssl"], indirect=True)
def test_tls_and_auth_with_the_password_from_the_environment(
    settings: Settings,
    tls_server: SmtpServer,
    ca_file: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    security = request.node.callspec.params["tls_server"]
    environ = {
        **settings_env(settings),  # the environment the ``settings`` fixture was loaded from
        "NEWSLETTER_MAILER": "smtp",
        "NEWSLETTER_SMTP_HOST": HOST,
        "NEWSLETTER_SMTP_PORT": str(tls_server.port),
        "NEWSLETTER_SMTP_SECURITY": security,
        "NEWSLETTER_SMTP_USERNAME": "digest",
        "NEWSLETTER_SMTP_PASSWORD": PASSWORD,
        "NEWSLETTER_SMTP_CA_FILE": str(ca_file),
    }
    smtp = load_settings(CONFIG, environ=environ)
    assert (smtp.mailer, smtp.smtp.security, smtp.smtp_password) == ("smtp", security, PASSWORD)
    assert PASSWORD not in repr(smtp) and PASSWORD not in str(smtp)
    with caplog.at_level(logging.DEBUG):
        summary = run_once(smtp, now=NOW)
    assert sorted(r.recipient for r in tls_server.handler.received) == [
        "ada@example.org",
        "grace@example.org",
        "karen@example.org",
    ]
    assert summary.issues_delivered == 3
    # One login on one connection, with exactly the password from NEWSLETTER_SMTP_PASSWORD.
    assert tls_server.handler.logins == [("PLAIN", "digest", PASSWORD)]
    assert tls_server.handler.connections == 1
    assert f"connected to SMTP server {HOST}:{tls_server.port} ({security}, as digest)" in (
        caplog.text
    )
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("tls_server", ["starttls"], indirect=True)
def test_wrong_password_stops_delivery_and_keeps_issues_pending(
    settings: Settings, tls_server: SmtpServer, ca_file: Path
) -> None:
    wrong = "not-the-password"
    smtp = smtp_settings(
        settings, tls_server.port, security="starttls", username="digest", ca_file=ca_file
    )
    smtp._smtp_password = load_settings(
        CONFIG, environ={"NEWSLETTER_SMTP_PASSWORD": wrong}
    )._smtp_password
    summary = run_once(smtp, now=NOW)
    assert (summary.issues_delivered, summary.issues_pending) == (0, 3)
    assert summary.delivery_stopped == (
        f"SMTP server {HOST}:{tls_server.port} refused the login of 'digest': "
        "535 5.7.8 Authentication credentials invalid; check smtp.username and "
        "NEWSLETTER_SMTP_PASSWORD"
    )
    assert wrong not in summary.delivery_stopped
    assert tls_server.handler.received == []


@pytest.mark.parametrize("tls_server", ["ssl"], indirect=True)
def test_an_untrusted_certificate_is_refused(tls_server: SmtpServer) -> None:
    mailer = SmtpMailer(HOST, tls_server.port, security="ssl", username="digest", password="x")
    with pytest.raises(MailerUnavailable) as err:
        mailer.send(*_message(1))
    assert str(err.value).startswith(
        f"TLS with SMTP server {HOST}:{tls_server.port} failed: [SSL: CERTIFICATE_VERIFY_FAILED]"
    )


def test_starttls_required_but_not_offered_is_unavailable() -> None:
    with SmtpServer() as server:
        mailer = SmtpMailer(HOST, server.port, security="starttls")
        with pytest.raises(MailerUnavailable) as err:
            mailer.send(*_message(1))
    assert str(err.value) == (
        f"SMTP server {HOST}:{server.port} does not support what we need (STARTTLS extension "
        "not supported by server.); check smtp.security and smtp.username"
    )


# ---------------------------------------------------------------------- session and pace


def test_one_connection_carries_many_messages() -> None:
    with SmtpServer() as server:
        mailer = SmtpMailer(HOST, server.port, security="none")
        replies = [mailer.send(*_message(n)) for n in range(25)]
        mailer.close()
    assert replies == [f"250 2.0.0 Ok: queued as {n}" for n in range(1, 26)]
    assert server.handler.connections == 1 and mailer.connections == 1
    assert [r.message_id for r in server.handler.received] == [
        f"<{n}@papers.example.org>" for n in range(25)
    ]
    # Dot-stuffing: a body line starting with "." arrives intact.
    body = email.message_from_bytes(server.handler.received[0].raw, policy=email.policy.default)
    assert body.get_content() == "body 0\r\n.a line starting with a dot\r\n"


def test_a_connection_dropped_between_messages_is_reopened_within_the_send() -> None:
    with SmtpServer() as server:
        mailer = SmtpMailer(HOST, server.port, security="none")
        mailer.send(*_message(1))
        server.close_transports()  # e.g. the server's idle timeout
        time.sleep(0.05)
        assert mailer.send(*_message(2)) == "250 2.0.0 Ok: queued as 2"
        mailer.close()
    assert [r.message_id for r in server.handler.received] == [
        "<1@papers.example.org>",
        "<2@papers.example.org>",
    ]
    assert (server.handler.connections, mailer.connections) == (2, 2)


def test_rate_limit_spaces_messages() -> None:
    n, rate = 8, 20.0
    with SmtpServer() as server:
        mailer = SmtpMailer(HOST, server.port, security="none", rate_per_second=rate)
        start = time.monotonic()
        for i in range(n):
            mailer.send(*_message(i))
        elapsed = time.monotonic() - start
        mailer.close()
    assert len(server.handler.received) == n
    assert elapsed >= (n - 1) / rate  # a lower bound only: slow machines are fine


# ---------------------------------------------------------------------- settings


def test_smtp_is_selected_by_environment_alone() -> None:
    s = load_settings(
        CONFIG,
        environ={
            "NEWSLETTER_MAILER": "smtp",
            "NEWSLETTER_SMTP_HOST": "mail.example.org",
            "NEWSLETTER_SMTP_PORT": "465",
            "NEWSLETTER_SMTP_SECURITY": "ssl",
            "NEWSLETTER_SMTP_USERNAME": "digest",
            "NEWSLETTER_SMTP_PASSWORD": PASSWORD,
            "NEWSLETTER_SMTP_TIMEOUT_SECONDS": "12.5",
            "NEWSLETTER_SMTP_RATE_PER_SECOND": "3",
        },
    )
    assert (s.mailer, s.smtp.host, s.smtp.port, s.smtp.security, s.smtp.username) == (
        "smtp",
        "mail.example.org",
        465,
        "ssl",
        "digest",
    )
    assert (s.smtp.timeout_seconds, s.smtp.rate_per_second, s.smtp_password) == (
        12.5,
        3.0,
        PASSWORD,
    )
    outbox = load_settings(CONFIG, environ={"NEWSLETTER_MAILER": "outbox"})
    assert (outbox.mailer, outbox.smtp_password) == ("outbox", None)


@pytest.mark.parametrize(
    "environ,message",
    [
        (
            {"NEWSLETTER_MAILER": "smtp"},
            "mailer is 'smtp' (from environment NEWSLETTER_MAILER) but 'smtp.host' is not set: "
            "set host in the [smtp] table or NEWSLETTER_SMTP_HOST",
        ),
        (
            {
                "NEWSLETTER_MAILER": "smtp",
                "NEWSLETTER_SMTP_HOST": "mail.example.org",
                "NEWSLETTER_SMTP_USERNAME": "digest",
            },
            "'smtp.username' is set but NEWSLETTER_SMTP_PASSWORD is not: export the SMTP "
            "password in NEWSLETTER_SMTP_PASSWORD (it is never read from the settings file)",
        ),
        (
            {"NEWSLETTER_MAILER": "pigeon"},
            "bad value for 'mailer' in environment NEWSLETTER_MAILER: Input should be 'outbox' "
            "or 'smtp'",
        ),
        (
            {"NEWSLETTER_SMTP_SECURITY": "tls"},
            "bad value for 'smtp.security' in environment NEWSLETTER_SMTP_SECURITY: Input "
            "should be 'none', 'starttls' or 'ssl'",
        ),
    ],
)
def test_smtp_settings_errors_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ=environ)
    assert str(err.value) == message


def test_password_is_never_a_file_key_and_mailer_moved(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text('mailer = "smtp"\n[smtp]\nhost = "h"\npassword = "oops"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == (
        f"{path}: remove 'smtp.password': the SMTP password is read only from the environment "
        "variable NEWSLETTER_SMTP_PASSWORD, never from a settings file"
    )
    path.write_text('[mail]\nmailer = "outbox"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == (
        f"unknown key 'mail.mailer' in {path}: remove it or fix its spelling "
        "(it is now the top-level key 'mailer')"
    )
