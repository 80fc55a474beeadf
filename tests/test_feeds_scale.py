"""Feeds and day pages that scale with history (issue 13, part 5).

Windowed and capped feeds (exact entries, order, the window's boundary), feed runs that
rebuild only what changed, the web's 304 answered from the validator alone (statements
counted with a ``before_cursor_execute`` hook), gzip, and paginated day pages.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import feedparser
import pytest
from starlette.testclient import TestClient

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import FeedWindow, ParsedPaper, SubscriberStatus
from newsletter.feeds import state_path
from newsletter.store import KeyedPaper, Store
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import run_once, sql_statements

SECRET = b"test-secret-test-secret-0123456789"
DAY = "2026-11-23"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests are about the private feed files: written (``feeds.private_files``)."""
    return settings.model_copy(
        update={"feeds": settings.feeds.model_copy(update={"private_files": True})}
    )


def add_papers(store: Store, days_ago: int, titles: list[str], upvotes: int = 0) -> None:
    """Papers first seen ``days_ago`` days before NOW, in one digest."""
    seen = NOW - timedelta(days=days_ago)
    store.record_digest(
        path=f"d{days_ago}.json",
        content_hash=f"h{days_ago}-{titles[0]}",
        size=1,
        seen_at=seen,
        papers=[
            KeyedPaper(f"title:{t}", ParsedPaper(title=t, upvotes=upvotes), title_key=t)
            for t in titles
        ],
    )


# ---------------------------------------------------------------------- store windows


def test_global_feed_window_boundary_order_and_cap(store: Store) -> None:
    add_papers(store, 8, ["old"])
    add_papers(store, 7, ["boundary-b", "boundary-a"])  # exactly at the window's start
    add_papers(store, 1, ["new-1", "new-2", "new-3"])
    window = FeedWindow.ending(NOW, days=7, limit=500)
    titles = [i.paper.title for i in store.global_feed_items(window)]
    # newest first; equal dates by paper id (insertion order)
    assert titles == ["new-1", "new-2", "new-3", "boundary-b", "boundary-a"]
    capped = FeedWindow.ending(NOW, days=7, limit=4)
    assert [i.paper.title for i in store.global_feed_items(capped)] == titles[:4]
    version = store.global_feed_version(window)
    assert (version.count, version.oldest, version.newest) == (
        5,
        NOW - timedelta(days=7),
        NOW - timedelta(days=1),
    )
    later = FeedWindow.ending(NOW + timedelta(seconds=1), days=7, limit=500)
    assert [i.paper.title for i in store.global_feed_items(later)] == titles[:3]
    assert store.global_feed_version(later).count == 3


def test_private_feed_window_and_cap(settings: Settings) -> None:
    run_once(settings, now=NOW, mailer=MemoryMailer())
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        (issue,) = [i for i in app.store.issues() if i.subscriber_id == ada.id]
        window = FeedWindow.ending(NOW, days=7, limit=500)
        items = app.store.subscriber_feed_items(ada.id, window)
        assert sorted(i.paper.id for i in items) == sorted(issue.paper_ids)
        assert [i.paper.id for i in items] == list(issue.paper_ids)  # one issue: its order
        capped = app.store.subscriber_feed_items(ada.id, FeedWindow.ending(NOW, days=7, limit=3))
        assert [i.paper.id for i in capped] == list(issue.paper_ids)[:3]
        version = app.store.subscriber_feed_version(ada.id, window)
        assert version.count == len(issue.paper_ids) == 8
        gone = FeedWindow.ending(NOW + timedelta(days=8), days=7, limit=500)
        assert app.store.subscriber_feed_items(ada.id, gone) == []
        assert app.store.subscriber_feed_version(ada.id, gone).count == 0
        assert app.store.subscriber_feed_versions(gone) == {}
        assert set(app.store.subscriber_feed_versions(window)) == {
            i.subscriber_id for i in app.store.issues()
        }


# ---------------------------------------------------------------------- feed runs


def test_feed_run_rebuilds_only_what_changed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_once(settings, now=NOW, mailer=MemoryMailer())
    feeds = settings.feeds_dir
    assert state_path(feeds).exists() and state_path(feeds).parent == feeds.absolute().parent
    assert sorted(p.suffix for p in feeds.iterdir()).count(".json") == 0
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in feeds.iterdir()}

    import newsletter.feeds

    built: list[str] = []
    real = newsletter.feeds.write_feeds

    def spy(items: Any, **kwargs: Any) -> Any:
        built.append("all" if kwargs["subscriber"] is None else kwargs["subscriber"].email)
        return real(items, **kwargs)

    monkeypatch.setattr(newsletter.feeds, "write_feeds", spy)
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        assert app.write_feeds(NOW + timedelta(hours=1)) == 0
        assert built == []  # nothing changed: no feed built, no file touched
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in feeds.iterdir()}
        assert after == before

        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        (feeds / f"{ada.feed_token}.rss").unlink()
        assert app.write_feeds(NOW + timedelta(hours=1)) == 1
        assert built == ["ada@example.org"]  # only the feed with a missing file

        built.clear()
        app.store.set_subscriber_status("grace@example.org", SubscriberStatus.UNSUBSCRIBED, NOW)
        grace = app.store.subscriber("grace@example.org")
        assert grace is not None
        assert app.write_feeds(NOW + timedelta(hours=1)) == 2  # her two files removed
        assert built == []
        assert not (feeds / f"{grace.feed_token}.atom").exists()

        # a week later every entry has left the window: all feeds are rebuilt, empty
        assert app.write_feeds(NOW + timedelta(days=8)) > 0
        assert built[0] == "all" and len(built) == 1 + len(
            app.store.subscribers_by_id(status=SubscriberStatus.ACTIVE)
        )
        parsed = feedparser.parse((feeds / "all.atom").read_bytes())
        assert parsed.bozo == 0 and parsed.entries == []

        built.clear()
        assert app.write_feeds(NOW + timedelta(days=8), force=True) == 0  # same bytes
        assert len(built) == 1 + len(app.store.subscribers_by_id(status=SubscriberStatus.ACTIVE))


# ---------------------------------------------------------------------- web


@pytest.fixture
def web(settings: Settings) -> Iterator[tuple[TestClient, Newsletter]]:
    run_once(settings, now=NOW, mailer=MemoryMailer())
    asgi = create_app(settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    with TestClient(asgi, base_url="http://testserver", follow_redirects=False) as client:
        yield client, asgi.state.web.app


def test_304_loads_no_entry_and_gzip(web: tuple[TestClient, Newsletter]) -> None:
    client, app = web
    plain = client.get("/feeds/all.atom", headers={"accept-encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    zipped = client.get("/feeds/all.atom", headers={"accept-encoding": "gzip"}, extensions={})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # httpx decodes
    assert zipped.headers["etag"] == "W/" + plain.headers["etag"]
    assert len(feedparser.parse(plain.content).entries) == 380
    raw = gzip.compress(plain.content, compresslevel=6, mtime=0)
    assert int(zipped.headers["content-length"]) == len(raw) < len(plain.content) // 3

    with sql_statements(app.store, with_transactions=False) as statements:
        again = client.get("/feeds/all.atom", headers={"if-none-match": plain.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert len(statements) == 1 and "count" in statements[0].lower()  # the validator only
    assert "LIMIT" not in statements[0].upper()
    with sql_statements(app.store, with_transactions=False) as statements:
        cached = client.get("/feeds/all.atom", headers={"accept-encoding": "identity"})
    assert cached.content == plain.content and len(statements) == 1  # built once

    # a cold cache (a new process): If-Modified-Since is answered from the validator too
    fresh = create_app(app.settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    with TestClient(fresh, base_url="http://testserver") as other:
        other_app = fresh.state.web.app
        since = {"if-modified-since": plain.headers["last-modified"]}
        with sql_statements(other_app.store, with_transactions=False) as statements:
            assert other.get("/feeds/all.atom", headers=since).status_code == 304
        assert len(statements) == 1


def test_private_feed_304_and_window(web: tuple[TestClient, Newsletter]) -> None:
    client, app = web
    ada = app.store.subscriber("ada@example.org")
    assert ada is not None
    first = client.get(f"/feeds/{ada.feed_token}.rss")
    assert len(feedparser.parse(first.content).entries) == 8
    with sql_statements(app.store, with_transactions=False) as statements:
        again = client.get(
            f"/feeds/{ada.feed_token}.rss", headers={"if-none-match": first.headers["etag"]}
        )
    assert again.status_code == 304
    assert len(statements) == 2  # the subscriber by feed token, the validator


def test_day_pages_paginate(web: tuple[TestClient, Newsletter]) -> None:
    client, app = web
    with sql_statements(app.store, with_transactions=False) as statements:
        last = client.get(f"/days/{DAY}?page=4")
    assert last.status_code == 200
    assert last.text.count('<li class="paper card">') == 80
    assert "Page 4 of 4." in last.text and '<ol class="papers" start="301">' in last.text
    assert f'<a rel="prev" href="/days/{DAY}?page=3">Previous page</a>' in last.text
    assert 'rel="next"' not in last.text
    assert len(statements) == 2 and "LIMIT" in statements[1].upper()
    second = client.get(f"/days/{DAY}?page=2")
    assert f'<a rel="prev" href="/days/{DAY}">Previous page</a>' in second.text
    assert f'<a rel="next" href="/days/{DAY}?page=3">Next page</a>' in second.text
    pages = [client.get(f"/days/{DAY}?page={n}").text for n in (1, 2, 3, 4)]
    titles = [t for page in pages for t in page.split('<li class="paper card">')[1:]]
    assert len(titles) == len(set(titles)) == 380  # every paper on exactly one page
    for query in ("?page=5", "?page=0", "?page=-1", "?page=x", "?page=01", "?page=1000000"):
        assert client.get(f"/days/{DAY}{query}").status_code == 404, query
