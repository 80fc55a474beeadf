"""The web side through Starlette's TestClient, on SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import feedparser
import httpx2
import pytest
from click.testing import CliRunner
from markupsafe import escape
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from newsletter.config import Settings, load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    FeedWindow,
    Subscriber,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.feeds import build_feeds
from newsletter.store import Store
from newsletter.web import create_app
from newsletter.web.context import WebContext
from newsletter.web.security import ARCHIVE_CSP, PAGE_CSP, FormSigner
from tests.conftest import NOW, ROOT
from tests.factories import head_revision, open_store, run_once

SECRET = b"test-secret-test-secret-0123456789"
DAY = "2026-11-23"
XSS_TITLE = "<script>alert(1)</script>"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


def web_context(app: object) -> WebContext:
    assert isinstance(app, Starlette)
    ctx = app.state.web
    assert isinstance(ctx, WebContext)
    return ctx


class WebClient(TestClient):
    """A TestClient that, after each request, waits until the app's background sender has
    sent every confirmation email queued so far (the web never sends on the request thread),
    so a test can look at the mailer right after a POST."""

    def request(self, *args: Any, **kwargs: Any) -> httpx2.Response:
        response = super().request(*args, **kwargs)
        assert web_context(self.app).sender.wait_idle(30), "confirmation sender stuck"
        return response


def make_client(settings: Settings, mailer: MemoryMailer, clock: Clock) -> TestClient:
    app = create_app(settings, mailer=mailer, clock=clock, secret=SECRET)
    return WebClient(app, base_url="http://testserver", follow_redirects=False)


@pytest.fixture
def client(settings: Settings, mailer: MemoryMailer, clock: Clock) -> Iterator[TestClient]:
    """The app on an empty database (schema only)."""
    with make_client(settings, mailer, clock) as c:
        yield c


@pytest.fixture
def delivered(settings: Settings, mailer: MemoryMailer, clock: Clock) -> Iterator[TestClient]:
    """The app after one run: 380 papers, one sent issue each for Ada, Grace and Karen."""
    run_once(settings, now=NOW, mailer=MemoryMailer())
    with make_client(settings, mailer, clock) as c:
        yield c


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings)
    yield s
    s.close()


def subscriber(store: Store, address: str) -> Subscriber:
    found = store.subscriber(address)
    assert found is not None
    return found


def xss_settings(
    tmp_path: Path, database_url: str, base_url: str = "http://127.0.0.1:8080"
) -> Settings:
    """An inbox with one paper whose title is a script tag, and one subscriber who wants it."""
    inbox = tmp_path / "xss-inbox"
    inbox.mkdir()
    paper = {
        "id": "2601.00001",
        "title": XSS_TITLE,
        "summary": "Alert fatigue <img src=x onerror=alert(2)> [click](javascript:alert(3)).",
        "authors": [{"name": "Eve <b>Evil</b>"}],
        "publishedAt": "2026-11-20T00:00:00Z",
        "upvotes": 5,
    }
    (inbox / "xss.json").write_text(json.dumps([{"paper": paper}]), encoding="utf-8")
    subscribers = tmp_path / "xss-subscribers.toml"
    subscribers.write_text(
        '[[subscriber]]\nemail = "mallory@example.org"\nname = "<b>Mallory</b>"\n'
        'profile = "alert^2"\n',
        encoding="utf-8",
    )
    return load_settings(
        ROOT / "config" / "newsletter.toml",
        environ={
            "NEWSLETTER_DATABASE_URL": database_url,
            "NEWSLETTER_INBOX": str(inbox),
            "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "xss-outbox"),
            "NEWSLETTER_FEEDS_DIR": str(tmp_path / "xss-feeds"),
            "NEWSLETTER_SUBSCRIBERS_FILE": str(subscribers),
            "NEWSLETTER_INBOX_SETTLE_SECONDS": "0",
            "NEWSLETTER_BASE_URL": base_url,
        },
    )


def field_errors(page: str) -> dict[str, str]:
    """The error shown next to each form field: ``<p class="error" id="error-FIELD">``."""
    found = re.findall(r'<p class="error" id="error-([a-z_]+)">(.*?)</p>', page, flags=re.S)
    return {name: html.unescape(message) for name, message in found}


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no csrf field in the page"
    return match[1]


def confirm_links(mailer: MemoryMailer) -> list[str]:
    links = []
    for _envelope, raw in mailer.sent:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(("plain",))
        assert body is not None
        links += re.findall(r"http://\S+/confirm/[A-Za-z0-9_-]+", body.get_content())
    return links


def subjects(mailer: MemoryMailer) -> list[str]:
    return [
        str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        for _envelope, raw in mailer.sent
    ]


def subscribe_form(address: str, **extra: str) -> dict[str, str]:
    return {"email": address, "name": "Hedy", "profile": "speech", "timezone": "UTC", **extra}


# ---------------------------------------------------------------------- headers, routing


def test_every_response_carries_the_security_headers(delivered: TestClient) -> None:
    for path in ("/", f"/days/{DAY}", "/feeds/all.atom", "/subscribe", "/nothing-here"):
        r = delivered.get(path)
        assert r.headers["content-security-policy"] == PAGE_CSP, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["x-frame-options"] == "DENY", path
    assert "script-src" not in PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    assert PAGE_CSP.startswith("default-src 'none';")
    css = delivered.get("/static/site.css")
    assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"


def test_no_redirects_not_even_for_a_trailing_slash(delivered: TestClient) -> None:
    for path in (f"/days/{DAY}/", "/subscribe/", "/feeds/all.atom/"):
        r = delivered.get(path)
        assert r.status_code == 404 and "location" not in r.headers, path


def test_form_bodies_are_bounded_and_url_encoded(client: TestClient) -> None:
    big = client.post(
        "/subscribe",
        content=b"email=" + b"a" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    as_json = client.post("/subscribe", json={"email": "a@example.org"})
    assert as_json.status_code == 415


# ---------------------------------------------------------------------- feeds


def test_global_feeds_are_the_built_documents(delivered: TestClient, settings: Settings) -> None:
    store = open_store(settings)
    try:
        window = FeedWindow.ending(NOW, days=7, limit=500)
        expected = build_feeds(store.global_feed_items(window), site=settings.site, subscriber=None)
    finally:
        store.close()
    for kind, content_type in (
        ("atom", "application/atom+xml; charset=utf-8"),
        ("rss", "application/rss+xml; charset=utf-8"),
    ):
        r = delivered.get(f"/feeds/all.{kind}", headers={"accept-encoding": "identity"})
        assert r.status_code == 200
        assert "content-encoding" not in r.headers
        assert r.headers["content-type"] == content_type
        assert r.content == expected[kind]
        assert r.headers["etag"] == '"' + hashlib.sha256(r.content).hexdigest()[:40] + '"'
        assert r.headers["last-modified"] == "Mon, 23 Nov 2026 09:00:00 GMT"
        assert r.headers["cache-control"] == "public, max-age=300"
        parsed = feedparser.parse(r.content)
        assert parsed.bozo == 0 and len(parsed.entries) == 380


def test_feed_conditional_requests(delivered: TestClient) -> None:
    first = delivered.get("/feeds/all.atom", headers={"accept-encoding": "identity"})
    etag = first.headers["etag"]
    same = delivered.get("/feeds/all.atom", headers={"if-none-match": etag})
    # the gzip encoding (the client asks for it) has the weak form of the same tag
    assert (same.status_code, same.content, same.headers["etag"]) == (304, b"", f"W/{etag}")
    weak = delivered.get("/feeds/all.atom", headers={"if-none-match": f'"x", W/{etag}'})
    assert weak.status_code == 304
    other = delivered.get("/feeds/all.atom", headers={"if-none-match": '"stale"'})
    assert other.status_code == 200 and other.content == first.content
    # The RSS document has other bytes, hence another ETag.
    assert delivered.get("/feeds/all.rss", headers={"if-none-match": etag}).status_code == 200
    since = {"if-modified-since": "Mon, 23 Nov 2026 09:00:00 GMT"}
    assert delivered.get("/feeds/all.atom", headers=since).status_code == 304
    later = {"if-modified-since": "Tue, 24 Nov 2026 00:00:00 GMT"}
    assert delivered.get("/feeds/all.atom", headers=later).status_code == 304
    earlier = {"if-modified-since": "Mon, 23 Nov 2026 08:59:59 GMT"}
    assert delivered.get("/feeds/all.atom", headers=earlier).status_code == 200
    # If-None-Match decides when both are sent (RFC 9110): a stale tag means 200.
    both = {"if-none-match": '"stale"', **since}
    assert delivered.get("/feeds/all.atom", headers=both).status_code == 200
    assert (
        delivered.get("/feeds/all.atom", headers={"if-modified-since": "junk"}).status_code == 200
    )


def test_private_feeds(delivered: TestClient, settings: Settings, store: Store) -> None:
    ada = subscriber(store, "ada@example.org")
    (issue,) = [i for i in store.issues() if i.subscriber_id == ada.id]
    for kind in ("atom", "rss"):
        r = delivered.get(f"/feeds/{ada.feed_token}.{kind}")
        assert r.status_code == 200
        assert r.headers["cache-control"] == "private, max-age=300"
        assert len(feedparser.parse(r.content).entries) == len(issue.paper_ids) == 8
        assert ada.token.encode() not in r.content
    # The unsubscribe token is not a feed token, and nothing else is either.
    for name in (f"{ada.token}.atom", "nobody.atom", f"{ada.feed_token}.json", ".atom", "all"):
        assert delivered.get(f"/feeds/{name}").status_code == 404, name
    assert delivered.post(f"/unsubscribe/{ada.token}").status_code == 200
    assert delivered.get(f"/feeds/{ada.feed_token}.atom").status_code == 404


# ---------------------------------------------------------------------- archive and day pages


def test_archived_issue_is_the_whole_issue(settings: Settings, clock: Clock) -> None:
    """Every paper of the sent issue, in its order, under the anchors the email links to
    (tests/test_web_archive.py checks a 50-paper issue paper by paper)."""
    sent = MemoryMailer()
    run_once(settings, now=NOW, mailer=sent)
    store = open_store(settings)
    ada = subscriber(store, "ada@example.org")
    issue = store.sent_issue(ada.id, NOW.date())
    store.close()
    assert issue is not None and len(issue.papers) == 8
    (raw,) = [m for e, m in sent.sent if e.recipient == "ada@example.org"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html_part = msg.get_body(("html",))
    assert html_part is not None
    assert f"/issues/{ada.token}/{DAY}" in html_part.get_content()  # the email links here
    with make_client(settings, MemoryMailer(), clock) as client:
        r = client.get(f"/issues/{ada.token}/{DAY}")
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == ARCHIVE_CSP
        assert r.headers["cache-control"] == "no-store"
        anchors = re.findall(r'<table role="presentation" class="card" id="paper-(\d+)"', r.text)
        assert anchors == [str(n) for n in range(1, 9)]
        titles = re.findall(r'<a class="title" href="[^"]+"[^>]*>(.*?)</a>', r.text)
        assert [html.unescape(re.sub("<[^>]+>", "", t)) for t in titles] == [
            sp.paper.title for sp in issue.papers
        ]
        for path in (
            f"/issues/{ada.token}/2026-11-22",
            f"/issues/{ada.token}/2026-13-01",
            f"/issues/{ada.token}/20261123",
            f"/issues/{ada.feed_token}/{DAY}",
            f"/issues/unknown-token/{DAY}",
        ):
            assert client.get(path).status_code == 404, path


def test_day_page_and_index(delivered: TestClient, settings: Settings, store: Store) -> None:
    r = delivered.get(f"/days/{DAY}")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.text.count('<li class="paper card">') == 100  # the first of 4 pages
    papers = store.papers()
    top = max(papers, key=lambda p: p.upvotes or 0)
    link = html.escape(settings.site.paper_url(top), quote=True)
    title = html.escape(top.title, quote=True)
    expected = f'<a href="{link}" rel="noopener noreferrer nofollow">{title}</a>'
    first_card = r.text.index('<li class="paper card">')
    second_card = r.text.index('<li class="paper card">', first_card + 1)
    assert first_card < r.text.index(expected) < second_card  # most upvoted first
    assert "380 papers first seen on this day (UTC), most upvoted first. Page 1 of 4." in r.text
    assert f'<a rel="next" href="/days/{DAY}?page=2">Next page</a>' in r.text
    for path in ("/days/2026-11-22", "/days/20261123", "/days/2026-02-30", "/days/x"):
        assert delivered.get(path).status_code == 404, path
    index = delivered.get("/")
    assert index.status_code == 200
    assert f'<a href="/days/{DAY}">Mon 23 Nov 2026</a> <span class="count">380 new papers' in (
        index.text
    )
    assert '<form class="card" method="post" action="/subscribe"' in index.text


def test_paper_text_is_escaped_everywhere(tmp_path: Path, database_url: str) -> None:
    settings = xss_settings(tmp_path, database_url)
    run_once(settings, now=NOW, mailer=MemoryMailer())
    store = open_store(settings)
    mallory = subscriber(store, "mallory@example.org")
    store.close()
    with make_client(settings, MemoryMailer(), Clock(NOW)) as client:
        for path in (f"/days/{DAY}", f"/issues/{mallory.token}/{DAY}"):
            page = client.get(path).text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
            assert "<script" not in page and "onerror" not in page, path
            assert "javascript:" not in page, path
        prefs = client.get(f"/preferences/{mallory.token}").text
        assert 'value="&lt;b&gt;Mallory&lt;/b&gt;"' in prefs and "<b>Mallory" not in prefs


# ---------------------------------------------------------------------- unsubscribe


def test_one_click_unsubscribe(delivered: TestClient, settings: Settings, store: Store) -> None:
    ada = subscriber(store, "ada@example.org")
    assert ada.status is SubscriberStatus.ACTIVE
    delivered.cookies.clear()
    r = delivered.post(
        f"/unsubscribe/{ada.token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert "<h1>You are unsubscribed</h1>" in r.text and "ada@example.org" in r.text
    assert subscriber(store, "ada@example.org").status is SubscriberStatus.UNSUBSCRIBED
    # Again: same page, nothing else changes.
    assert delivered.post(f"/unsubscribe/{ada.token}").status_code == 200
    later = MemoryMailer()
    run_once(settings, now=NOW + timedelta(days=1), mailer=later)
    assert sorted(e.recipient for e, _ in later.sent) == ["grace@example.org", "karen@example.org"]


def test_unsubscribe_get_asks_first(delivered: TestClient, store: Store) -> None:
    ada = subscriber(store, "ada@example.org")
    r = delivered.get(f"/unsubscribe/{ada.token}")
    assert r.status_code == 200
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in r.text
    assert '<button type="submit">Unsubscribe</button>' in r.text
    assert subscriber(store, "ada@example.org").status is SubscriberStatus.ACTIVE
    delivered.post(f"/unsubscribe/{ada.token}", data={"List-Unsubscribe": "One-Click"})
    again = delivered.get(f"/unsubscribe/{ada.token}")
    assert "<h1>You are unsubscribed</h1>" in again.text
    # the only button left is "Subscribe again" (tests/test_web_accounts.py)
    assert re.findall(r"<button[^>]*>(.*?)</button>", again.text) == ["Subscribe again"]


def test_unknown_tokens_get_404_and_change_nothing(delivered: TestClient, store: Store) -> None:
    before = store.subscribers()
    ada = before[0]
    for token in ("x" * 32, ada.feed_token, ada.token[:-1], ada.token + "A", "y" * 500):
        for method, path in (
            ("GET", f"/unsubscribe/{token}"),
            ("POST", f"/unsubscribe/{token}"),
            ("GET", f"/preferences/{token}"),
            ("POST", f"/preferences/{token}"),
            ("GET", f"/issues/{token}/{DAY}"),
            ("GET", f"/confirm/{token}"),
            ("POST", f"/confirm/{token}"),
        ):
            r = delivered.request(method, path, data={"profile": "x"} if method == "POST" else None)
            assert r.status_code == 404, (method, path)
    assert store.subscribers() == before


# ---------------------------------------------------------------------- preferences


def web_subscriber(store: Store, address: str = "lin@example.org") -> Subscriber:
    """An active subscriber who signed up on the web (the file does not manage it)."""
    spec = SubscriberSpec(
        email=address,
        name="Lin",
        profile="speech",
        timezone="Europe/London",
        send_at=time(7, 30),
        max_papers=8,
    )
    sub, _ = store.upsert_subscriber(spec, source=SubscriberSource.WEB, now=NOW)
    return sub


def test_preferences_page_shows_the_stored_settings(delivered: TestClient, store: Store) -> None:
    lin = web_subscriber(store)
    r = delivered.get(f"/preferences/{lin.token}")
    assert r.status_code == 200
    assert '<input id="pref-send_at" name="send_at" type="text"' in r.text
    assert 'value="07:30"' in r.text and 'value="Europe/London"' in r.text
    assert str(escape(lin.profile)) in r.text and 'value="8"' in r.text
    assert f'action="/preferences/{lin.token}"' in r.text
    assert 'id="file-notice"' not in r.text
    signer = FormSigner(SECRET)
    assert signer.check(csrf_of(r.text), "preferences", lin.token, NOW)


def test_preferences_validation_errors(delivered: TestClient, store: Store) -> None:
    lin = web_subscriber(store)
    page = delivered.get(f"/preferences/{lin.token}").text
    r = delivered.post(
        f"/preferences/{lin.token}",
        data={
            "csrf": csrf_of(page),
            "name": "Lin",
            "profile": '"unclosed',
            "send_at": "25:00",
            "days": ["mon", "someday"],
            "timezone": "Mars/Olympus_Mons",
            "max_papers": "0",
        },
    )
    assert r.status_code == 400
    assert field_errors(r.text) == {
        "profile": "unclosed quote in '\"unclosed': close the phrase with a second \" "
        '(e.g. "gaussian splatting").',
        "send_at": "send_at '25:00' is not a time of day like 07:30 (24-hour HH:MM)",
        "days": "days: 'someday' is not a weekday; use mon, tue, … sun",
        "timezone": "unknown timezone 'Mars/Olympus_Mons': use an IANA name such as "
        "Europe/Berlin or UTC",
        "max_papers": "max_papers must be between 1 and 500, not 0",
    }
    assert "Nothing was saved" in r.text
    assert 'value="25:00"' in r.text  # the visitor's input is kept for correction
    assert subscriber(store, "lin@example.org") == lin


def test_preferences_saved_and_used_by_the_next_slot(
    client: TestClient, settings: Settings, store: Store
) -> None:
    lin = web_subscriber(store)
    page = client.get(f"/preferences/{lin.token}").text
    assert 'id="file-notice"' not in page
    r = client.post(
        f"/preferences/{lin.token}",
        data={
            "csrf": csrf_of(page),
            "name": "Lin Y.",
            "profile": '"speech recognition"^2, asr',
            "send_at": "06:15",
            "days": ["mon", "thu"],
            "timezone": "Asia/Tokyo",
            "max_papers": "3",
        },
    )
    assert r.status_code == 200
    assert '<p class="notice" id="notice" role="status">Saved.</p>' in r.text
    assert field_errors(r.text) == {}
    saved = subscriber(store, "lin@example.org")
    assert (
        saved.name,
        saved.profile,
        saved.send_at.isoformat(),
        saved.weekdays,
        saved.timezone,
        saved.max_papers,
        saved.min_score,
        saved.status,
        saved.token,
    ) == (
        "Lin Y.",
        '"speech recognition"^2, asr',
        "06:15:00",
        (0, 3),
        "Asia/Tokyo",
        3,
        1.0,
        SubscriberStatus.ACTIVE,
        lin.token,
    )
    sent = MemoryMailer()
    run_once(settings, now=NOW, mailer=sent)  # Monday 23 Nov 2026, 18:00 in Tokyo
    (issue,) = [i for i in store.issues() if i.subscriber_id == lin.id]
    assert (issue.slot_date.isoformat(), len(issue.paper_ids)) == (DAY, 3)
    thursday = MemoryMailer()
    run_once(settings, now=NOW + timedelta(days=1), mailer=thursday)  # Tuesday: not a send day
    assert "lin@example.org" not in [e.recipient for e, _ in thursday.sent]


def test_preferences_refuse_a_form_without_a_valid_signature(
    delivered: TestClient, store: Store, clock: Clock
) -> None:
    lin, kim = web_subscriber(store), web_subscriber(store, "kim@example.org")
    values = {"profile": "speech", "send_at": "09:00", "timezone": "UTC", "max_papers": "5"}
    kim_form = csrf_of(delivered.get(f"/preferences/{kim.token}").text)
    other_secret = FormSigner(b"another-secret-another-secret").issue("preferences", lin.token, NOW)
    stale = csrf_of(delivered.get(f"/preferences/{lin.token}").text)
    for csrf in ("", "garbage", "a.1.b", kim_form, other_secret):
        r = delivered.post(f"/preferences/{lin.token}", data={**values, "csrf": csrf})
        assert r.status_code == 403, csrf
        assert "Nothing was saved" in r.text and 'value="09:00"' in r.text
        assert csrf_of(r.text) != csrf  # a fresh signature to save again with
    clock.now = NOW + timedelta(hours=12, seconds=1)
    assert (
        delivered.post(f"/preferences/{lin.token}", data={**values, "csrf": stale}).status_code
        == 403
    )
    assert subscriber(store, "lin@example.org") == lin


# ---------------------------------------------------------------------- subscribe and confirm


def test_subscribe_sends_one_confirmation(
    client: TestClient, mailer: MemoryMailer, store: Store, clock: Clock, settings: Settings
) -> None:
    r = client.post("/subscribe", data=subscribe_form("Hedy@Example.org"))
    assert r.status_code == 200 and "<h1>Check your inbox</h1>" in r.text
    assert len(mailer.sent) == 1
    envelope, raw = mailer.sent[0]
    assert (envelope.sender, envelope.recipient) == (
        "digest@papers.example.org",
        "hedy@example.org",
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert (str(msg["From"]), str(msg["To"]), str(msg["Subject"])) == (
        "Paper Digest <digest@papers.example.org>",
        "hedy@example.org",  # no name from the form, not even in the header
        "Confirm your subscription to Paper Digest",
    )
    (link,) = confirm_links(mailer)
    token = link.rsplit("/", 1)[1]
    assert link == f"{settings.base_url}/confirm/{token}" and len(token) >= 32
    hedy = subscriber(store, "hedy@example.org")
    assert (hedy.status, hedy.profile, hedy.timezone) == (SubscriberStatus.PENDING, "speech", "UTC")
    # Again within the hour: the same page, no second email.
    again = client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    assert again.status_code == 200 and again.text == r.text
    clock.now = NOW + timedelta(minutes=59)
    client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    assert len(mailer.sent) == 1
    # After an hour a new link may go out; the old one is then void.
    clock.now = NOW + timedelta(hours=1)
    client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    assert len(mailer.sent) == 2
    old, new = confirm_links(mailer)
    assert client.get(f"/confirm/{old.rsplit('/', 1)[1]}").status_code == 404
    assert client.get(f"/confirm/{new.rsplit('/', 1)[1]}").status_code == 200


def test_subscribe_reveals_nothing_about_active_addresses(
    delivered: TestClient, mailer: MemoryMailer, store: Store
) -> None:
    ada = subscriber(store, "ada@example.org")
    active = delivered.post("/subscribe", data=subscribe_form("ada@example.org"))
    fresh = delivered.post("/subscribe", data=subscribe_form("zed@example.org"))
    assert active.status_code == fresh.status_code == 200
    assert active.text == fresh.text.replace("zed@example.org", "ada@example.org")
    assert [e.recipient for e, _ in mailer.sent] == ["zed@example.org"]
    assert subscriber(store, "ada@example.org") == ada  # not touched by the form


def test_subscribe_form_errors(client: TestClient, mailer: MemoryMailer, store: Store) -> None:
    r = client.post(
        "/subscribe", data={"email": "not-an-address", "profile": "-survey", "timezone": "Mars"}
    )
    assert r.status_code == 400
    assert field_errors(r.text) == {
        "email": "invalid email address 'not-an-address': An email address must have an @-sign.",
        "timezone": "unknown timezone 'Mars': use an IANA name such as Europe/Berlin or UTC",
        "profile": "the profile has only exclusions (-survey): nothing to match. Add at least "
        "one term without '-', e.g. speech, \"diffusion transformer\"^2, -survey.",
    }
    assert 'value="not-an-address"' in r.text
    assert mailer.sent == [] and store.subscribers() == []


def test_confirm_activates_once(
    client: TestClient, mailer: MemoryMailer, store: Store, clock: Clock
) -> None:
    client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    (link,) = confirm_links(mailer)
    path = link.removeprefix("http://127.0.0.1:8080")
    page = client.get(path)
    assert page.status_code == 200
    assert '<form method="post"><button type="submit">Confirm subscription</button>' in page.text
    assert subscriber(store, "hedy@example.org").status is SubscriberStatus.PENDING
    done = client.post(path)
    hedy = subscriber(store, "hedy@example.org")
    assert done.status_code == 200 and hedy.status is SubscriberStatus.ACTIVE
    assert "<h1>You are subscribed</h1>" in done.text
    assert f'href="/preferences/{hedy.token}"' in done.text
    # Single use.
    assert client.post(path).status_code == 404
    assert client.get(path).status_code == 404
    # Unsubscribing and subscribing again needs a new confirmation.
    client.post(f"/unsubscribe/{hedy.token}")
    client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    # within the hour of the first one: no second confirmation (the other is the welcome)
    assert subjects(mailer) == [
        "Confirm your subscription to Paper Digest",
        "Welcome to Paper Digest",
    ]
    clock.now = NOW + timedelta(hours=2)
    client.post("/subscribe", data=subscribe_form("hedy@example.org"))
    assert subscriber(store, "hedy@example.org").status is SubscriberStatus.UNSUBSCRIBED
    _first, second = confirm_links(mailer)
    clock.now = NOW + timedelta(days=9, hours=2, seconds=1)  # more than seven days later
    assert client.post(second.removeprefix("http://127.0.0.1:8080")).status_code == 404
    assert subscriber(store, "hedy@example.org").status is SubscriberStatus.UNSUBSCRIBED


def test_unconfirmed_address_gets_no_issue(
    client: TestClient, mailer: MemoryMailer, settings: Settings, store: Store
) -> None:
    client.post("/subscribe", data=subscribe_form("hedy@example.org", profile="speech"))
    first = MemoryMailer()
    run_once(settings, now=NOW, mailer=first)
    assert sorted(e.recipient for e, _ in first.sent) == [
        "ada@example.org",
        "grace@example.org",
        "karen@example.org",
    ]
    hedy = subscriber(store, "hedy@example.org")
    assert [i for i in store.issues() if i.subscriber_id == hedy.id] == []
    (link,) = confirm_links(mailer)
    client.post(link.removeprefix("http://127.0.0.1:8080"))
    second = MemoryMailer()
    run_once(settings, now=NOW + timedelta(days=1), mailer=second)
    assert "hedy@example.org" in [e.recipient for e, _ in second.sent]


# ---------------------------------------------------------------------- storage, command


def test_migration_0004_hashes_existing_tokens(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.migrate("0003")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO subscribers (email, name, timezone, send_at, weekdays, profile,"
                    " max_papers, min_score, send_when_empty, status, token, feed_token, source,"
                    " created_at, updated_at) VALUES ('old@example.org', '', 'UTC', '07:00', '',"
                    " 'speech', 10, 1.0, false, 'active', 'old-token', 'old-feed', 'config',"
                    " :now, :now)"
                ),
                {"now": NOW},
            )
        assert store.migrate() == head_revision()
        with store.engine.connect() as conn:
            row = conn.execute(
                text("SELECT token_hash, feed_token_hash, confirm_token_hash FROM subscribers")
            ).one()
        assert tuple(row) == (
            hashlib.sha256(b"old-token").hexdigest(),
            hashlib.sha256(b"old-feed").hexdigest(),
            None,
        )
    finally:
        store.close()


def test_serve_command_runs_uvicorn(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    import uvicorn

    import newsletter.cli.web  # noqa: F401  (registers the command)
    from newsletter.cli import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    env = {
        "NEWSLETTER_CONFIG": str(ROOT / "config" / "newsletter.toml"),
        "NEWSLETTER_DATABASE_URL": settings.database_url,
    }
    result = CliRunner().invoke(cli, ["serve", "--port", "8181"], env=env)
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert (call["host"], call["port"], call["access_log"]) == ("127.0.0.1", 8181, False)
    assert type(call["app"]).__name__ == "Starlette"
    call["app"].state.web.close()  # the app owns its configured mailer: closed with it
    help_text = CliRunner().invoke(cli, ["serve", "-h"]).output
    assert "Example:" in help_text and "--port" in help_text
