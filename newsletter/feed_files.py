"""The feed files of a run: the global feed and the private feeds of the subscribers who have one.

A feed run (``run --once``, the daemon after an ingest, ``newsletter feeds``) keeps the feeds
folder in step with the database. It must cost little when little changed and stay bounded
with the audience:

* a feed is rebuilt only when its version changed since the last run wrote it (see
  :class:`~newsletter.feeds.FeedState`);
* a private feed pair is written only for a subscriber who has entries in the window, or
  whose files are there already (they had entries before). A subscriber who never got an
  issue has no file: 100,000 new subscribers at a daemon's first start cost no file at all,
  and the web serves their (empty) private feed from the database anyway
  (:mod:`newsletter.web.feeds`). A reader whose entries all left the window keeps a valid,
  empty feed rather than a file that disappears under their feed reader;
* files are replaced atomically without a sync each, then made durable with one
  :func:`~newsletter.feeds.sync_folder`, and only then is the feed state saved. A crash
  before that sync may lose the latest rewrite of some files (a reader sees the previous
  feed, or, for a file written for the first time, none), never a torn one on a journaling
  file system, and the state still holds the digests of the previous run, so the next run
  rebuilds exactly those feeds. The state never records a digest for a file that was lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

from newsletter import __version__, feeds
from newsletter.domain import FeedWindow, SiteInfo, SubscriberStatus
from newsletter.feeds import GLOBAL_STEM, KINDS, FeedState, feed_file_stems, version_digest
from newsletter.store import Store

log = logging.getLogger(__name__)

__all__ = ["FEED_BATCH", "write_all_feeds"]

#: Private feeds rebuilt per query of their entries: bounds the entries held in memory.
FEED_BATCH = 500


def write_all_feeds(
    store: Store,
    *,
    site: SiteInfo,
    directory: Path,
    templates_dir: Path | None,
    window: FeedWindow,
    force: bool = False,
    private_files: bool = True,
) -> int:
    """The global feed and the private pairs of active subscribers; returns files changed.

    Without ``private_files`` (setting ``feeds.private_files``, off by default) only the
    global feed is written, and private feed files left from earlier runs are removed (they
    would go stale): the web serves private feeds from the database.

    Each feed holds ``window``. A feed is rebuilt only when its version (entries counted and
    dated, read for all subscribers in one grouped query) or the subscriber's name changed
    since the last run wrote it, or its files are missing (see
    :class:`newsletter.feeds.FeedState`); ``force`` rebuilds all (``newsletter feeds``, e.g.
    after editing the templates). So a run after one delivery rebuilds the feeds of the
    subscribers who got an issue, not two files per subscriber. A subscriber with no entry in
    the window and no feed file yet gets none (the module's docstring says why). Feed files
    of anyone who is no longer active (unsubscribed, deleted, a replaced feed token) are
    removed: an unsubscribe also ends their feed.
    """
    fingerprint = version_digest(__version__, feeds.FORMAT, site, str(templates_dir), window.limit)
    state = FeedState.load(directory)
    known = {} if force or state.fingerprint != fingerprint else dict(state.digests)
    present = feed_file_stems(directory)
    digests: dict[str, str] = {}

    def stale(key: str, stem: str, digest: str) -> bool:
        digests[key] = digest
        return known.get(key) != digest or present.get(stem, set()) != set(KINDS)

    count = 0
    rebuilt_global = stale(
        GLOBAL_STEM, GLOBAL_STEM, version_digest(store.global_feed_version(window))
    )
    if rebuilt_global:
        count += len(
            feeds.write_feeds(
                store.global_feed_items(window),
                site=site,
                subscriber=None,
                directory=directory,
                templates_dir=templates_dir,
                durable=False,
            )
        )
    versions = store.subscriber_feed_versions(window) if private_files else {}
    active = store.active_feed_names() if private_files else {}
    rebuild = [
        sub_id
        for sub_id, (token, name) in active.items()
        if (sub_id in versions or token in present)
        and stale(str(sub_id), token, version_digest(versions.get(sub_id), name))
    ]
    for batch in range(0, len(rebuild), FEED_BATCH):
        ids = rebuild[batch : batch + FEED_BATCH]
        items = store.subscribers_feed_items(ids, window)
        subs = store.subscribers_by_id(ids, status=SubscriberStatus.ACTIVE).values()
        for sub in subs:
            count += len(
                feeds.write_feeds(
                    items.get(sub.id, []),
                    site=site,
                    subscriber=sub,
                    directory=directory,
                    templates_dir=templates_dir,
                    durable=False,
                )
            )
    keep = {GLOBAL_STEM} | {token for token, _ in active.values()}
    for stem, kinds in present.items():
        if stem not in keep:
            for kind in kinds:
                (directory / f"{stem}.{kind}").unlink(missing_ok=True)
                count += 1
    if count or rebuild or rebuilt_global:
        # Before the state, which must not outlive the files. Also when no byte changed: a
        # rebuilt feed found equal may be the unsynced write of a run that crashed.
        feeds.sync_folder(directory)
    FeedState(fingerprint, digests).save(directory)
    log.info(
        "feeds: %d of %d private feed(s) rebuilt (%d with entries), %d file(s) changed",
        len(rebuild),
        len(active),
        len(versions),
        count,
    )
    return count
