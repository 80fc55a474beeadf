"""Feed files off the hot path (issue 13): no private file before a first issue, one sync a run.

The end-to-end flow runs on SQLite and PostgreSQL; the sync counts use a small in-memory store
so that the number of subscribers can vary without delivering to them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import feedparser
import pytest

import newsletter.feeds
from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    FeedItem,
    FeedVersion,
    FeedWindow,
    SiteInfo,
    Subscriber,
    SubscriberStatus,
)
from newsletter.feed_files import write_all_feeds
from newsletter.feeds import state_path
from newsletter.store import Store
from tests.conftest import NOW
from tests.factories import make_paper, make_subscriber

SITE = SiteInfo(
    name="Paper Digest",
    from_address="digest@example.org",
    from_name="Paper Digest",
    base_url="https://papers.example.org",
    list_id="papers.example.org",
    paper_url_template="https://papers.example.org/search?q={title}",
)
WINDOW = FeedWindow.ending(NOW, days=7, limit=500)
SENT = NOW - timedelta(hours=1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests are about the private feed files: written (``feeds.private_files``)."""
    return settings.model_copy(
        update={"feeds": settings.feeds.model_copy(update={"private_files": True})}
    )


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def pair(sub: Subscriber) -> set[str]:
    return {f"{sub.feed_token}.atom", f"{sub.feed_token}.rss"}


# ---------------------------------------------------------------------- end to end


def test_private_feed_only_after_a_first_issue(settings: Settings) -> None:
    feeds = settings.feeds_dir
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW, two_scans=False)
        app.sync_subscribers(NOW)
        subs = app.store.subscribers_by_id(status=SubscriberStatus.ACTIVE)
        assert len(subs) == 3
        # nobody got an issue yet: the global feed only, however many subscribers
        assert app.write_feeds(NOW) == 2
        assert names(feeds) == {"all.atom", "all.rss"}
        state = json.loads(state_path(feeds).read_bytes())
        assert set(state["digests"]) == {"all"}

        app.plan_current_slots(NOW)
        assert len(app.deliver(NOW).delivered) == 3
        newcomer, created = app.add_subscriber(
            "new@example.org", {"name": "New", "profile": "speech"}, now=NOW
        )
        assert created and newcomer.status is SubscriberStatus.ACTIVE
        # their first issue: each of the three gets a pair; the newcomer, without one, none
        assert app.write_feeds(NOW) == 6
        expected = {"all.atom", "all.rss"} | {n for sub in subs.values() for n in pair(sub)}
        assert names(feeds) == expected
        state = json.loads(state_path(feeds).read_bytes())
        assert set(state["digests"]) == {"all"} | {str(i) for i in subs}
        ada = next(s for s in subs.values() if s.email == "ada@example.org")
        parsed = feedparser.parse((feeds / f"{ada.feed_token}.atom").read_bytes())
        assert parsed.bozo == 0 and len(parsed.entries) == 8

        # every entry leaves the window: the readers keep a valid, empty feed, not a 404
        later = NOW + timedelta(days=8)
        assert app.write_feeds(later) == 8
        assert names(feeds) == expected
        for kind in ("atom", "rss"):
            parsed = feedparser.parse((feeds / f"{ada.feed_token}.{kind}").read_bytes())
            assert parsed.bozo == 0 and parsed.entries == []
        assert app.write_feeds(later) == 0


# ---------------------------------------------------------------------- syncs per run


class FakeStore:
    """What a feed run reads, for ``n`` active subscribers of whom the even ids got an issue."""

    def __init__(self, n: int) -> None:
        self.subs = {
            i: make_subscriber(
                id=i, email=f"s{i}@example.org", token=f"tok-{i}", feed_token=f"feed-{i}"
            )
            for i in range(1, n + 1)
        }
        self.with_issue = [i for i in self.subs if i % 2 == 0]
        self.papers = [make_paper(i, f"Paper {i}", "An *abstract*.") for i in range(1, 4)]

    def global_feed_version(self, window: FeedWindow) -> FeedVersion:
        return FeedVersion(len(self.papers), SENT, SENT)

    def global_feed_items(self, window: FeedWindow) -> list[FeedItem]:
        return [FeedItem(p, SENT) for p in self.papers]

    def subscriber_feed_versions(self, window: FeedWindow) -> dict[int, FeedVersion]:
        return {i: FeedVersion(1, SENT, SENT) for i in self.with_issue}

    def active_feed_names(self) -> dict[int, tuple[str, str]]:
        return {i: (sub.feed_token, sub.name) for i, sub in self.subs.items()}

    def subscribers_by_id(
        self, ids: Iterable[int], *, status: SubscriberStatus
    ) -> Mapping[int, Subscriber]:
        return {i: self.subs[i] for i in ids}

    def subscribers_feed_items(
        self, subscriber_ids: Iterable[int], window: FeedWindow
    ) -> dict[int, list[FeedItem]]:
        return {
            i: [FeedItem(self.papers[i % 3], SENT, score=1.0)]
            for i in subscriber_ids
            if i in self.with_issue
        }


class SyncCounter:
    """Counts ``os.fsync`` and ``syncfs`` calls (and still makes them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsyncs = self.syncfs = 0
        real_fsync, real_syncfs = os.fsync, newsletter.feeds._syncfs

        def fsync(fd: int) -> None:
            self.fsyncs += 1
            real_fsync(fd)

        def syncfs(fd: int) -> bool:
            self.syncfs += 1
            return real_syncfs(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(newsletter.feeds, "_syncfs", syncfs)

    def take(self) -> tuple[int, int]:
        counts = (self.fsyncs, self.syncfs)
        self.fsyncs = self.syncfs = 0
        return counts


def run(store: FakeStore, folder: Path, *, force: bool = False) -> int:
    return write_all_feeds(
        cast(Store, store),
        site=SITE,
        directory=folder,
        templates_dir=None,
        window=WINDOW,
        force=force,
    )


@pytest.mark.parametrize("n", [10, 300])
def test_one_sync_per_feed_run(n: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore(n)
    counter = SyncCounter(monkeypatch)
    folder = tmp_path / "feeds"
    assert run(store, folder) == 2 + 2 * (n // 2)
    assert len(names(folder)) == 2 + 2 * (n // 2)  # the odd ids never got an issue: no file
    # one syncfs for every feed file; the state file and its folder: two fsyncs (Linux)
    fsyncs, syncs = counter.take()
    if syncs:
        assert (fsyncs, syncs) == (2, 1)
    else:  # no syncfs: os.sync and an fsync of the feeds folder
        assert fsyncs == 3
    assert run(store, folder) == 0
    assert counter.take() == (0, 0)  # nothing rebuilt: no sync, the state file unchanged
    assert run(store, folder, force=True) == 0
    assert counter.take()[0] == 0  # rebuilt, same bytes and state: synced, nothing written


def test_state_saved_only_after_the_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync that fails (a crash before it) records nothing: the next run rebuilds those
    feeds and syncs them, even though their bytes are already in place."""
    store = FakeStore(4)
    folder = tmp_path / "feeds"
    real_sync = newsletter.feeds.sync_folder

    def failing(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(newsletter.feeds, "sync_folder", failing)
    with pytest.raises(OSError):
        run(store, folder)
    assert len(names(folder)) == 2 + 2 * 2
    assert not state_path(folder).exists()

    synced: list[Path] = []

    def sync(directory: Path) -> None:
        synced.append(directory)
        real_sync(directory)

    monkeypatch.setattr(newsletter.feeds, "sync_folder", sync)
    assert run(store, folder) == 0  # the bytes are there already
    assert synced == [folder]
    state = json.loads(state_path(folder).read_bytes())
    assert set(state["digests"]) == {"all", "2", "4"}


def test_feed_run_without_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Elsewhere than Linux: ``os.sync`` once and an ``fsync`` of the folder."""
    monkeypatch.setattr(newsletter.feeds, "_syncfs", lambda fd: False)
    calls: list[str] = []
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    assert run(FakeStore(6), tmp_path / "feeds") == 2 + 2 * 3
    assert calls == ["sync"]


def test_sync_folder_on_this_machine(tmp_path: Path) -> None:
    (tmp_path / "a.atom").write_bytes(b"<feed/>")
    newsletter.feeds.sync_folder(tmp_path)  # syncfs on Linux, os.sync elsewhere: no error


def test_without_private_files_a_run_writes_the_global_feed_only(settings: Settings) -> None:
    """``feeds.private_files`` off (the default): the private pairs written while it was on
    are removed (they would go stale), and later runs write the global feed only."""
    feeds = settings.feeds_dir
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW, two_scans=False)
        app.sync_subscribers(NOW)
        app.plan_current_slots(NOW)
        assert len(app.deliver(NOW).delivered) == 3
        subs = app.store.subscribers_by_id(status=SubscriberStatus.ACTIVE)
        assert app.write_feeds(NOW) == 2 + 3 * 2
    # No feed file carries an unsubscribe token: a shared feed URL cannot unsubscribe anyone.
    for path in feeds.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not any(sub.token in text for sub in subs.values()), path.name
    off = settings.model_copy(
        update={"feeds": settings.feeds.model_copy(update={"private_files": False})}
    )
    with Newsletter(off, mailer=MemoryMailer()) as app:
        assert app.write_feeds(NOW) == 3 * 2  # the private files removed, the global kept
        assert names(feeds) == {"all.atom", "all.rss"}
        assert app.write_feeds(NOW) == 0
        assert names(feeds) == {"all.atom", "all.rss"}


def test_a_new_feed_format_rebuilds_every_feed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that changes what feeds are made of (``feeds.FORMAT``) rebuilds every feed at
    its first run, not only those whose entries changed; then nothing again."""
    store = FakeStore(6)
    folder = tmp_path / "feeds"
    assert run(store, folder) == 8  # the global pair and three private pairs
    assert run(store, folder) == 0
    built: list[str] = []
    real = newsletter.feeds.write_feeds

    def spy(items: Any, **kwargs: Any) -> Any:
        built.append("all" if kwargs["subscriber"] is None else kwargs["subscriber"].email)
        return real(items, **kwargs)

    monkeypatch.setattr(newsletter.feeds, "write_feeds", spy)
    monkeypatch.setattr(newsletter.feeds, "FORMAT", newsletter.feeds.FORMAT + 1)
    assert run(store, folder) == 0  # same bytes here: the format number alone changed
    assert built == ["all", "s2@example.org", "s4@example.org", "s6@example.org"]
    built.clear()
    assert run(store, folder) == 0 and built == []
