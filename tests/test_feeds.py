"""Feeds: valid RSS and Atom, exact entries and order, stable ids and bytes, atomic writes."""

from __future__ import annotations

import email.utils
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import feedparser
import pytest

from newsletter.domain import FeedItem, MatchField, Paper, Reason, SiteInfo, Subscriber
from newsletter.errors import NewsletterError
from newsletter.feeds import build_feeds, write_feeds
from tests.factories import make_paper, make_subscriber

SITE = SiteInfo(
    name="Paper Digest",
    from_address="digest@papers.example.org",
    from_name="Paper Digest",
    base_url="https://papers.example.org",
    list_id="papers.example.org",
    paper_url_template="https://arxiv.org/a/search?query={title}",
)
T0 = datetime(2025, 3, 10, 8, 0, tzinfo=UTC)
ADA = make_subscriber()  # private feed files "feed-ada.atom" and ".rss"


def paper(id: int, title: str, abstract: str = "An abstract.", **fields: Any) -> Paper:
    """A paper with arXiv id 2503.<id>: its link and its feed id follow from it."""
    return make_paper(id, title, abstract, arxiv_id=f"2503.{id:05d}", **fields)


def items() -> list[FeedItem]:
    """Given out of order; two share a timestamp (one issue: the order given is the issue's,
    #1 "Second" keeps the time, #2 "Third" gets a second less)."""
    return [
        FeedItem(
            paper(1, "Oldest", "*Diffusion* & R&D [bad](javascript:alert(1))"),
            T0 - timedelta(days=2),
            (Reason("diffusion", MatchField.ABSTRACT, 0.5),),
            0.5,
        ),
        FeedItem(paper(2, "Second"), T0, (Reason("diffusion", MatchField.TITLE, 0.9),), 0.9),
        FeedItem(
            paper(3, "Third", authors=("Ann One", "Bob Two")),
            T0,
            (Reason("diffusion", MatchField.TITLE, 1.234),),
            1.234,
        ),
        # T0 + 1 h, written in another timezone: feeds normalize to UTC
        FeedItem(
            paper(4, "Newest"), datetime(2025, 3, 10, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
        ),
    ]


EXPECTED_ORDER = [4, 2, 3, 1]


def guid(id: int) -> str:
    return paper(id, "x").guid


@pytest.mark.parametrize("subscriber_or_none", [None, ADA], ids=["global", "subscriber"])
@pytest.mark.parametrize("kind", ["atom", "rss"])
def test_feed_parses_with_exact_entries(kind: str, subscriber_or_none: Subscriber | None) -> None:
    data = build_feeds(items(), site=SITE, subscriber=subscriber_or_none)[kind]
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == ("atom10" if kind == "atom" else "rss20")
    assert [e.id for e in parsed.entries] == [guid(i) for i in EXPECTED_ORDER]
    assert [e.title for e in parsed.entries] == ["Newest", "Second", "Third", "Oldest"]
    assert [e.link for e in parsed.entries] == [
        f"https://arxiv.org/abs/2503.{i:05d}" for i in EXPECTED_ORDER
    ]
    feed_url = SITE.feed_url(subscriber_or_none, kind)
    self_links = [ln.href for ln in parsed.feed.links if ln.rel == "self"]
    assert self_links == [feed_url]
    if kind == "atom":
        assert parsed.feed.id == feed_url
        assert parsed.feed.updated == "2025-03-10T09:00:00+00:00"
        assert [e.updated for e in parsed.entries] == [
            "2025-03-10T09:00:00+00:00",
            "2025-03-10T08:00:00+00:00",
            "2025-03-10T07:59:59+00:00",
            "2025-03-08T08:00:00+00:00",
        ]
        stamps = [datetime.fromisoformat(e.published) for e in parsed.entries]
    else:
        assert parsed.feed.link == "https://papers.example.org"
        assert parsed.feed.updated == "Mon, 10 Mar 2025 09:00:00 +0000"
        assert all(e.guidislink is False for e in parsed.entries)
        stamps = [email.utils.parsedate_to_datetime(e.published) for e in parsed.entries]
    assert all(s.tzinfo is not None for s in stamps)
    assert stamps[0] == datetime(2025, 3, 10, 9, 0, tzinfo=UTC)


def test_feed_pins_generator_and_dates() -> None:
    atom = build_feeds(items(), site=SITE, subscriber=None)["atom"].decode()
    rss = build_feeds(items(), site=SITE, subscriber=None)["rss"].decode()
    assert '<generator version="0.1.0">newsletter</generator>' in atom
    assert "<generator>newsletter</generator>" in rss
    assert "python-feedgen" not in atom + rss
    assert "<lastBuildDate>Mon, 10 Mar 2025 09:00:00 +0000</lastBuildDate>" in rss


def test_building_twice_gives_identical_bytes() -> None:
    first = build_feeds(items(), site=SITE, subscriber=ADA)
    assert build_feeds(items(), site=SITE, subscriber=ADA) == first
    # items of different moments may come in any order; those of one moment keep theirs
    shuffled = [items()[i] for i in (3, 1, 0, 2)]
    assert build_feeds(shuffled, site=SITE, subscriber=ADA) == first


def test_empty_feed_is_valid_and_stable() -> None:
    feeds = build_feeds([], site=SITE, subscriber=None)
    assert feeds == build_feeds([], site=SITE, subscriber=None)
    atom = feedparser.parse(feeds["atom"])
    assert atom.bozo == 0 and atom.entries == []
    assert atom.feed.updated == "1970-01-01T00:00:00+00:00"
    rss = feedparser.parse(feeds["rss"])
    assert rss.bozo == 0 and rss.entries == []


def test_control_characters_are_stripped() -> None:
    bad = FeedItem(
        paper(
            9, "Bad\x0btitle\x1b here\x00", "Abstract\x1b with\x0c controls", authors=("Zoë\x07 Å",)
        ),
        T0,
    )
    feeds = build_feeds([bad], site=SITE, subscriber=None)
    for kind in ("atom", "rss"):
        parsed = feedparser.parse(feeds[kind])
        assert parsed.bozo == 0
        assert parsed.entries[0].title == "Bad title here"
        assert "<p>Abstract with controls</p>" in parsed.entries[0].description
    assert feedparser.parse(feeds["atom"]).entries[0].author == "Zoë Å"


def test_subscriber_feed_has_reasons_and_global_feed_does_not() -> None:
    private = feedparser.parse(build_feeds(items(), site=SITE, subscriber=ADA)["atom"])
    third = private.entries[2]
    assert third.title == "Third"
    content = third.content[0].value
    assert "<strong>Why you got this</strong> (score 1.23):" in content
    assert "<li>“diffusion” in title: +1.23</li>" in content
    assert "<p><em>Ann One, Bob Two</em></p>" in content
    assert [a.name for a in third.authors] == ["Ann One", "Bob Two"]
    assert private.feed.title == "Paper Digest for Ada"
    public = feedparser.parse(build_feeds(items(), site=SITE, subscriber=None)["atom"])
    assert all("Why you got this" not in e.content[0].value for e in public.entries)
    assert public.feed.title == "Paper Digest: all new papers"


def test_abstract_is_sanitized_html() -> None:
    rss = build_feeds(items(), site=SITE, subscriber=None)["rss"]
    oldest = feedparser.parse(rss).entries[3]
    assert oldest.title == "Oldest"
    assert "javascript" not in rss.decode()
    assert "<em>Diffusion</em> &amp; R&amp;D" in oldest.description
    rss_text = rss.decode()
    assert "<dc:creator>Ann One, Bob Two</dc:creator>" in rss_text


def test_naive_datetime_is_refused() -> None:
    naive = FeedItem(paper(1, "Naive"), datetime(2025, 3, 10, 8, 0))
    with pytest.raises(NewsletterError, match="timezone-aware"):
        build_feeds([naive], site=SITE, subscriber=None)


def test_write_feeds_atomically_and_only_when_changed(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    written = write_feeds(items(), site=SITE, subscriber=None, directory=out)
    assert written == [out / "all.atom", out / "all.rss"]
    expected = build_feeds(items(), site=SITE, subscriber=None)
    assert (out / "all.atom").read_bytes() == expected["atom"]
    assert (out / "all.rss").read_bytes() == expected["rss"]
    mtimes = [p.stat().st_mtime_ns for p in written]

    assert write_feeds(items(), site=SITE, subscriber=None, directory=out) == []
    assert [p.stat().st_mtime_ns for p in written] == mtimes

    more = items() + [FeedItem(paper(5, "Later"), T0 + timedelta(days=1))]
    assert write_feeds(more, site=SITE, subscriber=None, directory=out) == written
    assert feedparser.parse((out / "all.rss").read_bytes()).entries[0].title == "Later"

    mine = write_feeds(items(), site=SITE, subscriber=ADA, directory=out)
    assert mine == [out / "feed-ada.atom", out / "feed-ada.rss"]
    assert sorted(p.name for p in out.iterdir()) == [
        "all.atom",
        "all.rss",
        "feed-ada.atom",
        "feed-ada.rss",
    ]


@pytest.mark.parametrize("token", ["../evil", "all", "a/b", ""])
def test_unsafe_token_cannot_name_a_file(tmp_path: Path, token: str) -> None:
    sub = make_subscriber(feed_token=token)
    with pytest.raises(NewsletterError, match="cannot name a feed file"):
        write_feeds(items(), site=SITE, subscriber=sub, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_published_date_unused_but_paper_date_fields_do_not_break() -> None:
    item = FeedItem(paper(7, "Dated", published=date(2024, 1, 2), upvotes=3), T0)
    parsed = feedparser.parse(build_feeds([item], site=SITE, subscriber=None)["atom"])
    assert parsed.bozo == 0
    assert parsed.entries[0].published == "2025-03-10T08:00:00+00:00"
