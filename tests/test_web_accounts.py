"""Subscribing, welcome, resubscribe and file-managed preferences on the web (issue 16), through
Starlette's TestClient with the web's real background sender and an in-memory mailer; on
SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import time
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from starlette.testclient import TestClient

from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import SubscriberSource, SubscriberSpec, SubscriberStatus
from newsletter.store import Store
from newsletter.web.security import FormSigner
from tests.conftest import NOW
from tests.test_web import (
    SECRET,
    Clock,
    client,
    clock,
    confirm_links,
    csrf_of,
    delivered,
    field_errors,
    mailer,
    store,
    subjects,
    subscriber,
)

__all__ = ["client", "clock", "delivered", "mailer", "store"]  # fixtures used here

BASE = "http://127.0.0.1:8080"


def message(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def confirm_path(mailer: MemoryMailer) -> str:
    (link,) = confirm_links(mailer)
    return link.removeprefix(BASE)


def buttons(page: str) -> list[str]:
    return re.findall(r"<button[^>]*>(.*?)</button>", page)


# ---------------------------------------------------------------------- the subscribe form


def test_subscribe_form_takes_send_time_days_and_size_with_defaults(
    client: TestClient, store: Store
) -> None:
    page = client.get("/subscribe").text
    assert '<input id="sub-send_at" name="send_at" type="text"' in page
    assert re.search(r'id="sub-send_at"[^>]*value="07:00"', page)
    assert re.search(r'id="sub-max_papers"[^>]*value="10"', page)  # ranking.default_max_papers
    days = re.findall(r'<input type="checkbox" name="days" value="(\w+)"( checked)?>', page)
    assert days == [(d, "") for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")]
    assert "Days (none ticked: every day)" in page
    assert re.search(r'id="sub-send_at"', client.get("/").text)  # the index has the form too

    # Nothing given: the defaults.
    r = client.post("/subscribe", data={"email": "dee@example.org", "profile": "speech"})
    assert r.status_code == 200 and "<h1>Check your inbox</h1>" in r.text
    dee = subscriber(store, "dee@example.org")
    assert (dee.send_at, dee.weekdays, dee.max_papers, dee.timezone) == (time(7), (), 10, "UTC")
    # Given: stored as given (the subscriber stays pending until confirmed).
    r = client.post(
        "/subscribe",
        data={
            "email": "hedy@example.org",
            "profile": "speech",
            "timezone": "Europe/Vienna",
            "send_at": "06:30",
            "days": ["thu", "mon"],
            "max_papers": "5",
        },
    )
    assert r.status_code == 200
    hedy = subscriber(store, "hedy@example.org")
    assert (hedy.status, hedy.send_at, hedy.weekdays, hedy.max_papers, hedy.timezone) == (
        SubscriberStatus.PENDING,
        time(6, 30),
        (0, 3),
        5,
        "Europe/Vienna",
    )


HOSTILE = [
    ("send_at", "25:00", "send_at '25:00' is not a time of day like 07:30 (24-hour HH:MM)"),
    ("send_at", "7pm", "send_at '7pm' is not a time of day like 07:30 (24-hour HH:MM)"),
    (
        "send_at",
        "07:00\r\nBcc: eve@example.org",
        "send_at '07:00\\r\\nBcc: eve@…' is not a time of day like 07:30 (24-hour HH:MM)",
    ),
    (
        "send_at",
        "0" * 5000,
        "send_at '0000000000000000…' is not a time of day like 07:30 (24-hour HH:MM)",
    ),
    ("max_papers", "0", "max_papers must be between 1 and 500, not 0"),
    ("max_papers", "501", "max_papers must be between 1 and 500, not 501"),
    ("max_papers", "-3", "max_papers must be between 1 and 500, not -3"),
    ("max_papers", "2.5", "'2.5' is not a whole number"),
    ("max_papers", "1e3", "'1e3' is not a whole number"),
    ("max_papers", "ten", "'ten' is not a whole number"),
    ("max_papers", "9" * 40, "'9999999999999999…' is not a whole number"),
    ("days", "someday", "days: 'someday' is not a weekday; use mon, tue, … sun"),
    ("days", '"><script>x', "days: '\"><script>x' is not a weekday; use mon, tue, … sun"),
]


@pytest.mark.parametrize(("field", "value", "error"), HOSTILE)
def test_subscribe_refuses_hostile_schedule_and_size_values(
    client: TestClient, mailer: MemoryMailer, store: Store, field: str, value: str, error: str
) -> None:
    form = {"email": "hedy@example.org", "profile": "speech", field: value}
    r = client.post("/subscribe", data=form)
    assert r.status_code == 400
    assert field_errors(r.text) == {field: error}
    assert "<script>" not in r.text  # the value is escaped where it is shown
    assert mailer.sent == [] and store.subscribers() == []


def test_every_bad_field_of_the_subscribe_form_gets_its_error(
    client: TestClient, store: Store
) -> None:
    r = client.post(
        "/subscribe",
        data={
            "email": "hedy@example.org",
            "profile": "speech",
            "send_at": "24:00",
            "days": ["mon", "funday"],
            "max_papers": "0",
        },
    )
    assert r.status_code == 400
    assert sorted(field_errors(r.text)) == ["days", "max_papers", "send_at"]
    # the visitor's input is kept for correction (the known day stays ticked)
    assert re.search(r'id="sub-send_at"[^>]*value="24:00"', r.text)
    assert '<input type="checkbox" name="days" value="mon" checked>' in r.text
    assert store.subscribers() == []


# ---------------------------------------------------------------------- confirm and welcome


def test_confirming_sends_a_welcome_email_and_shows_the_private_feed(
    client: TestClient, mailer: MemoryMailer, store: Store
) -> None:
    client.post(
        "/subscribe",
        data={
            "email": "hedy@example.org",
            "name": "Hedy Lamarr",
            "profile": '"speech recognition"^2, asr',
            "timezone": "Europe/Vienna",
            "send_at": "06:30",
            "days": ["mon", "thu"],
            "max_papers": "5",
        },
    )
    path = confirm_path(mailer)
    ask = client.get(path).text  # the owner sees what they confirm
    assert "<code>&#34;speech recognition&#34;^2, asr</code>" in ask
    assert "on Mondays and Thursdays at 06:30 (Europe/Vienna time)" in ask
    done = client.post(path)
    assert done.status_code == 200
    hedy = subscriber(store, "hedy@example.org")
    assert hedy.status is SubscriberStatus.ACTIVE
    atom = f"{BASE}/feeds/{hedy.feed_token}.atom"
    rss = f"{BASE}/feeds/{hedy.feed_token}.rss"
    assert f'<a id="feed-atom" href="{atom}">Atom</a>' in done.text
    assert f'<a id="feed-rss" href="{rss}">RSS</a>' in done.text
    assert f'<a id="preferences-link" href="/preferences/{hedy.token}">' in done.text
    assert f'<a id="unsubscribe-link" href="/unsubscribe/{hedy.token}">' in done.text
    assert "A welcome email with\nthese links is on its way." in done.text

    assert subjects(mailer) == [
        "Confirm your subscription to Paper Digest",
        "Welcome to Paper Digest",
    ]
    envelope, raw = mailer.sent[1]
    assert (envelope.sender, envelope.recipient) == ("digest@papers.example.org", hedy.email)
    msg = message(raw)
    preferences = f"{BASE}/preferences/{hedy.token}"
    unsubscribe = f"{BASE}/unsubscribe/{hedy.token}"
    assert {k: str(msg[k]) for k in ("From", "To", "Subject", "Date", "Auto-Submitted")} == {
        "From": "Paper Digest <digest@papers.example.org>",
        "To": "hedy@example.org",
        "Subject": "Welcome to Paper Digest",
        "Date": format_datetime(NOW),
        "Auto-Submitted": "auto-generated",
    }
    assert str(msg["List-Unsubscribe"]) == f"<{unsubscribe}>"
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<[^@>]+welcome[^@>]*@papers\.example\.org>", str(msg["Message-ID"]))
    assert not msg.is_multipart() and msg.get_content_type() == "text/plain"
    body = msg.get_content().replace("\r\n", "\n")  # CRLF: the SMTP policy
    assert body == (
        "Hello Hedy Lamarr,\n"
        "\n"
        "hedy@example.org is now subscribed to Paper Digest.\n"
        "\n"
        "What arrives: the new research papers that match your profile, best\n"
        "first, at most 5 per issue, each with the reasons it was picked.\n"
        "Your profile:\n"
        "\n"
        '    "speech recognition"^2, asr\n'
        "\n"
        "When: on Mondays and Thursdays at 06:30 (Europe/Vienna time). A day\n"
        "without a new matching paper brings no email.\n"
        "\n"
        "Your private feed has the same papers, for a feed reader:\n"
        "\n"
        f"    Atom: {atom}\n"
        f"    RSS:  {rss}\n"
        "\n"
        "To change your profile, send time, days, timezone or the number of\n"
        "papers, open your preferences:\n"
        "\n"
        f"    {preferences}\n"
        "\n"
        "To stop receiving Paper Digest, unsubscribe here (one click):\n"
        "\n"
        f"    {unsubscribe}\n"
        "\n"
        "-- \n"
        "Paper Digest\n"
        f"{BASE}\n"
    )
    # The links work: the preferences page is the subscriber's own.
    assert client.get(preferences.removeprefix(BASE)).status_code == 200


def test_the_welcome_email_greets_without_a_name_and_says_every_day(
    client: TestClient, mailer: MemoryMailer
) -> None:
    client.post("/subscribe", data={"email": "anon@example.org", "profile": "speech"})
    client.post(confirm_path(mailer))
    body = message(mailer.sent[1][1]).get_content().replace("\r\n", "\n")
    assert body.startswith("Hello,\n\nanon@example.org is now subscribed to Paper Digest.\n")
    assert "at most 10 per issue" in body
    assert "When: every day at 07:00 (UTC time)." in body


# ---------------------------------------------------------------------- resubscribe


def web_subscriber(store: Store, address: str = "lin@example.org") -> SubscriberSpec:
    spec = SubscriberSpec(
        email=address, name="Lin", profile="speech", send_at=time(6, 15), weekdays=(1,)
    )
    store.upsert_subscriber(spec, source=SubscriberSource.WEB, now=NOW)
    return spec


def test_the_unsubscribe_page_offers_to_resubscribe_with_a_signed_form(
    client: TestClient, store: Store, clock: Clock
) -> None:
    web_subscriber(store)
    web_subscriber(store, "kim@example.org")
    lin, kim = subscriber(store, "lin@example.org"), subscriber(store, "kim@example.org")
    done = client.post(f"/unsubscribe/{lin.token}")
    assert subscriber(store, lin.email).status is SubscriberStatus.UNSUBSCRIBED
    assert f'<form method="post" action="/resubscribe/{lin.token}" id="resubscribe">' in done.text
    assert buttons(done.text) == ["Subscribe again"]
    page = client.get(f"/unsubscribe/{lin.token}").text
    assert buttons(page) == ["Subscribe again"]
    signer = FormSigner(SECRET)
    assert signer.check(csrf_of(page), "resubscribe", lin.token, NOW)

    # A link scanner's GET does nothing (the only way back is the form's POST).
    assert client.get(f"/resubscribe/{lin.token}").status_code == 405
    assert subscriber(store, lin.email).status is SubscriberStatus.UNSUBSCRIBED
    # Unsigned, signed for another purpose or subscriber, or by another secret: refused.
    client.post(f"/unsubscribe/{kim.token}")
    for csrf in (
        "",
        "garbage",
        signer.issue("preferences", lin.token, NOW),
        csrf_of(client.get(f"/unsubscribe/{kim.token}").text),
        FormSigner(b"another-secret-another-secret").issue("resubscribe", lin.token, NOW),
    ):
        r = client.post(f"/resubscribe/{lin.token}", data={"csrf": csrf})
        assert r.status_code == 403, csrf
        assert 'id="notice"' in r.text and buttons(r.text) == ["Subscribe again"]
    assert client.post(f"/resubscribe/{lin.token}").status_code == 415  # no form at all
    assert subscriber(store, lin.email).status is SubscriberStatus.UNSUBSCRIBED

    r = client.post(f"/resubscribe/{lin.token}", data={"csrf": csrf_of(page)})
    assert r.status_code == 200 and "<h1>You are subscribed again</h1>" in r.text
    back = subscriber(store, lin.email)
    assert back == lin  # the same subscriber: token, feed, settings, and active
    assert subscriber(store, kim.email).status is SubscriberStatus.UNSUBSCRIBED
    # Pressing it twice changes nothing more.
    again = client.post(f"/resubscribe/{lin.token}", data={"csrf": csrf_of(page)})
    assert again.status_code == 200 and subscriber(store, lin.email) == lin


def test_resubscribe_does_not_activate_a_pending_subscriber(
    client: TestClient, mailer: MemoryMailer, store: Store
) -> None:
    client.post("/subscribe", data={"email": "hedy@example.org", "profile": "speech"})
    hedy = subscriber(store, "hedy@example.org")
    csrf = FormSigner(SECRET).issue("resubscribe", hedy.token, NOW)
    assert client.post(f"/resubscribe/{hedy.token}", data={"csrf": csrf}).status_code == 404
    assert subscriber(store, hedy.email).status is SubscriberStatus.PENDING
    assert confirm_links(mailer)  # its confirmation link still works
    assert client.post(confirm_path(mailer)).status_code == 200


# ---------------------------------------------------------------------- preferences


def test_preferences_of_a_file_subscriber_are_read_only_and_never_saved(
    delivered: TestClient, settings: Settings, store: Store
) -> None:
    ada = subscriber(store, "ada@example.org")
    page = delivered.get(f"/preferences/{ada.token}")
    assert page.status_code == 200
    assert (
        '<p class="notice" id="file-notice">These settings are managed in the subscribers file '
        "by the operator (<code>config/subscribers.toml</code>), so they are shown read-only "
        "here: ask the operator to change them.</p>"
    ) in page.text
    assert '<fieldset class="plain" disabled>' in page.text
    assert 'method="post"' not in page.text and buttons(page.text) == []
    assert 'name="csrf"' not in page.text
    assert 'value="07:30"' in page.text and 'value="Europe/London"' in page.text
    assert "Issues go out every day at 07:30 (Europe/London time), with at most 8 papers." in (
        page.text
    )
    assert f'href="{settings.site.feed_url(ada, "atom")}"' in page.text

    # A post, even signed, saves nothing and says so: never "Saved.".
    csrf = FormSigner(SECRET).issue("preferences", ada.token, NOW)
    form = {"csrf": csrf, "profile": "speech", "send_at": "09:00", "timezone": "UTC"}
    r = delivered.post(f"/preferences/{ada.token}", data=form)
    assert r.status_code == 409
    assert (
        '<p class="notice error" id="notice" role="status">Nothing was saved: your settings are '
        "managed in the subscribers file by the operator.</p>"
    ) in r.text
    assert "Saved." not in r.text and 'value="07:30"' in r.text
    assert subscriber(store, "ada@example.org") == ada


def test_preferences_page_shows_the_private_feed_and_the_schedule(
    client: TestClient, settings: Settings, store: Store
) -> None:
    web_subscriber(store)
    lin = subscriber(store, "lin@example.org")
    page = client.get(f"/preferences/{lin.token}").text
    atom, rss = settings.site.feed_url(lin, "atom"), settings.site.feed_url(lin, "rss")
    assert atom == f"{BASE}/feeds/{lin.feed_token}.atom"
    assert f'<a id="feed-atom" href="{atom}">Atom</a>' in page
    assert f'<a id="feed-rss" href="{rss}">RSS</a>' in page
    assert f"<code>{atom}</code><br><code>{rss}</code>" in page
    assert "Issues go out on Tuesdays at 06:15 (UTC time), with at most 10 papers." in page
    assert 'id="file-notice"' not in page and buttons(page) == ["Save"]
