"""Feeds keep an issue's order in readers (issue 16, must-show 4).

Readers sort entries by date, newest first. Every entry gets a time of its own (an issue's #1
at the issue's send time, #2 a second earlier, …; papers first seen together likewise), so the
tests parse the feeds with feedparser, shuffle the entries, sort them by
``updated_parsed``/``published_parsed`` as a reader does, and expect the issue's order; and no
two Atom entries share ``updated``, in private feeds and in the global feed of the 380 seed
papers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import feedparser
import pytest
from starlette.testclient import TestClient

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import FeedItem, MatchField, Paper, Reason, ScoredPaper, Subscriber
from newsletter.feeds import entry_times
from newsletter.latex import latex_to_text
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import make_paper, run_once

SECRET = b"test-secret-test-secret-0123456789"
DATE_FIELD = {"atom": "updated_parsed", "rss": "published_parsed"}


def feed_title(paper: Paper) -> str:
    """The title a reader sees: one line, inline LaTeX as text."""
    return " ".join(latex_to_text(" ".join(paper.title.split())).split())


def in_date_order(entries: Sequence[Any], kind: str) -> list[Any]:
    """As a reader lists them: newest first by the entry's date (shuffled first, so that the
    document's own order cannot decide ties)."""
    shuffled = list(entries)
    random.Random(16).shuffle(shuffled)
    return sorted(shuffled, key=lambda e: e[DATE_FIELD[kind]], reverse=True)


def fetch(client: TestClient, path: str) -> Any:
    response = client.get(path, headers={"accept-encoding": "identity"})
    assert response.status_code == 200, path
    parsed = feedparser.parse(response.content)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    return parsed


def distinct_updated(parsed: Any) -> None:
    stamps = [e.updated for e in parsed.entries]
    assert len(set(stamps)) == len(stamps), "two entries share `updated`"


@pytest.fixture
def web(settings: Settings) -> Iterator[tuple[TestClient, Newsletter]]:
    """The web side over the seeds after one real run: 380 papers, three sent issues."""
    run_once(settings, now=NOW, mailer=MemoryMailer())
    asgi = create_app(settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    with TestClient(asgi, base_url="http://testserver", follow_redirects=False) as client:
        yield client, asgi.state.web.app


def test_private_feeds_list_each_issue_in_its_order(
    web: tuple[TestClient, Newsletter],
) -> None:
    client, app = web
    issues = app.store.issues()
    assert len(issues) == 3
    for issue in issues:
        (sub,) = [s for s in app.subscribers() if s.id == issue.subscriber_id]
        papers = app.store.papers_by_id(issue.paper_ids)
        expected = [feed_title(papers[i]) for i in issue.paper_ids]
        assert len(expected) > 1
        for kind in ("atom", "rss"):
            parsed = fetch(client, f"/feeds/{sub.feed_token}.{kind}")
            assert len(parsed.entries) == len(issue.paper_ids)
            # the document lists them in the issue's order, and so does a reader sorting by date
            assert [e.title for e in parsed.entries] == expected, (sub.email, kind)
            assert [e.title for e in in_date_order(parsed.entries, kind)] == expected
            assert [e.id for e in in_date_order(parsed.entries, kind)] == [
                papers[i].guid for i in issue.paper_ids
            ]
            dates = [e[DATE_FIELD[kind]] for e in parsed.entries]
            assert len(set(dates)) == len(dates)
        distinct_updated(fetch(client, f"/feeds/{sub.feed_token}.atom"))


def test_global_feed_of_the_seeds_has_no_shared_updated(
    web: tuple[TestClient, Newsletter],
) -> None:
    client, app = web
    stored = app.global_feed_items(app.feed_window(NOW))
    assert len(stored) == 380
    for kind in ("atom", "rss"):
        parsed = fetch(client, f"/feeds/all.{kind}")
        assert len(parsed.entries) == 380
        assert [e.id for e in parsed.entries] == [i.paper.guid for i in stored]
        assert [e.id for e in in_date_order(parsed.entries, kind)] == [i.paper.guid for i in stored]
        dates = [e[DATE_FIELD[kind]] for e in parsed.entries]
        assert len(set(dates)) == 380
    atom = fetch(client, "/feeds/all.atom")
    distinct_updated(atom)
    # the newest paper keeps the moment it was first seen; the feed's updated is that
    newest = stored[0].when.replace(microsecond=0)
    assert atom.entries[0].updated == newest.isoformat()
    assert atom.feed.updated == newest.isoformat()


def scored(papers: Sequence[Paper], scores: Sequence[float]) -> list[ScoredPaper]:
    return [
        ScoredPaper(p, s, (Reason("speech", MatchField.TITLE, s),))
        for p, s in zip(papers, scores, strict=True)
    ]


def test_issue_order_not_ids_or_scores_decides(settings: Settings) -> None:
    """Two issues whose order is neither the papers' ids nor their scores: readers list the
    newer issue first, each in its own order; the older issue's entries keep their times
    when the newer one arrives (feeds change only where something changed)."""
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW - timedelta(days=2))
        app.sync_subscribers(NOW - timedelta(days=2))
        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        papers = app.store.papers_by_id([50, 3, 200, 17, 120, 9, 77, 31])
        first = [papers[i] for i in (50, 3, 200, 17, 120)]
        second = [papers[i] for i in (9, 77, 31)]
        day1, day2 = NOW - timedelta(days=1), NOW
        issue1 = app.store.plan_issue(ada.id, day1.date(), scored(first, [1, 5, 2, 4, 3]), day1)
        assert issue1 is not None
        app.store.mark_sent(issue1.id, sent_at=day1)
        before = private_feed(settings, ada, day1 + timedelta(hours=1))
        issue2 = app.store.plan_issue(ada.id, day2.date(), scored(second, [1, 3, 2]), day2)
        assert issue2 is not None
        app.store.mark_sent(issue2.id, sent_at=day2)
        after = private_feed(settings, ada, day2 + timedelta(hours=1))

    expected = [feed_title(p) for p in second + first]
    for kind in ("atom", "rss"):
        assert [e.title for e in in_date_order(after[kind].entries, kind)] == expected
        assert [e.title for e in in_date_order(before[kind].entries, kind)] == expected[3:]
    atom = after["atom"]
    distinct_updated(atom)
    assert [e.updated for e in atom.entries] == [
        "2026-11-23T09:00:00+00:00",
        "2026-11-23T08:59:59+00:00",
        "2026-11-23T08:59:58+00:00",
        "2026-11-22T09:00:00+00:00",
        "2026-11-22T08:59:59+00:00",
        "2026-11-22T08:59:58+00:00",
        "2026-11-22T08:59:57+00:00",
        "2026-11-22T08:59:56+00:00",
    ]
    assert [e.updated for e in before["atom"].entries] == [e.updated for e in atom.entries[3:]]
    assert [e.published for e in after["rss"].entries][:2] == [
        "Mon, 23 Nov 2026 09:00:00 +0000",
        "Mon, 23 Nov 2026 08:59:59 +0000",
    ]


def private_feed(settings: Settings, sub: Subscriber, now: Any) -> dict[str, Any]:
    """Both documents of a private feed as the web serves them at ``now``."""
    asgi = create_app(settings, mailer=MemoryMailer(), clock=lambda: now, secret=SECRET)
    with TestClient(asgi, base_url="http://testserver") as client:
        return {kind: fetch(client, f"/feeds/{sub.feed_token}.{kind}") for kind in ("atom", "rss")}


def test_entry_times_whole_seconds_strictly_decreasing() -> None:
    """One moment shared by three papers, a second moment 1.5 s earlier (closer than the
    first one's spread), fractions of seconds: every time whole, each below the one above."""
    t = NOW + timedelta(microseconds=700_000)
    moments = [t, t, t, t - timedelta(seconds=1.5), t - timedelta(seconds=1.5)]
    items = [FeedItem(make_paper(i, f"P{i}"), m) for i, m in enumerate(moments, start=1)]
    assert [NOW - x for x in entry_times(items)] == [timedelta(seconds=s) for s in range(5)]
    # a newer issue on top changes nothing below it
    newer = [FeedItem(make_paper(9, "P9"), NOW + timedelta(days=1))]
    assert entry_times(newer + items)[1:] == entry_times(items)
    assert entry_times([]) == []
