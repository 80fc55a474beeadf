"""Feeds over HTTP: ``/feeds/all.atom|rss`` and ``/feeds/<feed token>.atom|rss``.

Feed readers poll every few minutes. Each answer carries an ETag (a hash of the bytes) and a
Last-Modified (the newest entry's date), and a conditional request that matches gets a 304
with no body. The documents come from :func:`newsletter.feeds.build_feeds`, the same function
that writes the feed files, so HTTP and files serve the same bytes; building them is the
expensive part, so the last documents of each feed are kept while its items do not change.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from newsletter.domain import FeedItem, Subscriber, SubscriberStatus
from newsletter.feeds import EMPTY_FEED_DATE, build_feeds
from newsletter.web.context import WebContext

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
}
GLOBAL_CACHE_CONTROL = "public, max-age=300"
PRIVATE_CACHE_CONTROL = "private, max-age=300"


class FeedCache:
    """The last built documents per feed, reused while the feed's items compare equal."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[tuple[FeedItem, ...], dict[str, bytes]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: str, items: tuple[FeedItem, ...]) -> dict[str, bytes] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != items:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: str, items: tuple[FeedItem, ...], documents: dict[str, bytes]) -> None:
        with self._lock:
            self._entries[key] = (items, documents)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def last_modified_of(items: Sequence[FeedItem]) -> datetime:
    """The newest entry's date, whole seconds (HTTP dates have no fractions)."""
    newest = max((i.when.astimezone(UTC) for i in items), default=EMPTY_FEED_DATE)
    return newest.replace(microsecond=0)


def not_modified(request: Request, etag: str, last_modified: datetime) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present; else If-Modified-Since."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return last_modified <= since
    return False


class FeedHandler:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.cache = FeedCache()

    def __call__(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        stem, _, kind = name.rpartition(".")
        if kind not in CONTENT_TYPES or not stem:
            raise HTTPException(404)
        subscriber: Subscriber | None = None
        if stem == "all":
            items = tuple(self.ctx.app.global_feed_items())
            cache_control = GLOBAL_CACHE_CONTROL
        else:
            subscriber = self.ctx.app.subscriber_by_feed_token(stem)
            if subscriber is None or subscriber.status is not SubscriberStatus.ACTIVE:
                raise HTTPException(404)
            items = tuple(self.ctx.app.subscriber_feed_items(subscriber))
            cache_control = PRIVATE_CACHE_CONTROL
        key = "all" if subscriber is None else f"subscriber:{subscriber.id}"
        documents = self.cache.get(key, items)
        if documents is None:
            documents = build_feeds(
                items,
                site=self.ctx.site,
                subscriber=subscriber,
                templates_dir=self.ctx.settings.templates_dir,
            )
            self.cache.put(key, items, documents)
        body = documents[kind]
        etag = etag_of(body)
        modified = last_modified_of(items)
        headers = {
            "etag": etag,
            "last-modified": format_datetime(modified, usegmt=True),
            "cache-control": cache_control,
        }
        if not_modified(request, etag, modified):
            return Response(status_code=304, headers=headers)
        headers["content-type"] = CONTENT_TYPES[kind]
        return Response(body, headers=headers)
