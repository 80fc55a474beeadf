"""Feeds over HTTP: ``/feeds/all.atom|rss`` and ``/feeds/<feed token>.atom|rss``.

Feed readers poll every few minutes. A request first reads the feed's validator (one aggregate
query: :class:`~newsletter.domain.FeedVersion`); while it is unchanged the documents built
last time answer, and a conditional request that matches gets a 304 without any entry being
loaded. Each answer carries an ETag (a hash of the bytes; weak, ``W/``, for the gzip
encoding, which clients that send ``Accept-Encoding: gzip`` get, compressed once per build)
and a Last-Modified (the newest entry or paper update). The documents come from
:func:`newsletter.feeds.build_feeds` over the same window as the feed files
(``feeds.global_days``, ``feeds.max_entries``), so HTTP and files serve the same bytes, and a
feed's size is bounded however many papers are stored.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from newsletter.domain import Subscriber, SubscriberStatus
from newsletter.feeds import EMPTY_FEED_DATE, GLOBAL_STEM, build_feeds
from newsletter.web.context import WebContext

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
}
GLOBAL_CACHE_CONTROL = "public, max-age=300"
PRIVATE_CACHE_CONTROL = "private, max-age=300"


@dataclass(frozen=True)
class Served:
    """One feed document as served: its bytes, their gzip, and the ETag of each."""

    body: bytes
    etag: str
    gzipped: bytes
    gzip_etag: str

    @classmethod
    def of(cls, body: bytes) -> Served:
        etag = etag_of(body)
        # mtime=0: the same document always compresses to the same bytes
        return cls(body, etag, gzip.compress(body, compresslevel=6, mtime=0), "W/" + etag)


@dataclass(frozen=True)
class Built:
    """A feed's documents and the validator they were built under."""

    validator: tuple[object, ...]
    documents: Mapping[str, Served]


class FeedCache:
    """The last built documents per feed, reused while the feed's validator is unchanged.

    The validator (:class:`~newsletter.domain.FeedVersion` and whatever else the bytes depend
    on) is read with one aggregate query, so a request for an unchanged feed loads no entry:
    a 304 or the cached bytes answer it.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[str, Built] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, validator: tuple[object, ...]) -> Built | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found.validator != validator:
                return None
            self._entries.move_to_end(key)
            return found

    def put(self, key: str, built: Built) -> None:
        with self._lock:
            self._entries[key] = built
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def http_date(moment: datetime | None) -> datetime:
    """A Last-Modified value: whole seconds (HTTP dates have no fractions), UTC."""
    return (moment or EMPTY_FEED_DATE).astimezone(UTC).replace(microsecond=0)


def accepts_gzip(request: Request) -> bool:
    """Whether Accept-Encoding lists gzip (or ``*``) with a non-zero quality."""
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower().removeprefix("q=").strip()
        try:
            if quality and float(quality) <= 0:
                continue
        except ValueError:
            continue
        return True
    return False


def not_modified(request: Request, etag: str | None, last_modified: datetime) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present; else If-Modified-Since.

    ``etag`` None: not known yet (nothing built); an If-None-Match then does not match.
    """
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or (etag is not None and etag.removeprefix("W/") in tags)
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
    """``GET /feeds/<name>``: validator first, entries only when the feed must be built."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.cache = FeedCache()

    def __call__(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        stem, _, kind = name.rpartition(".")
        if kind not in CONTENT_TYPES or not stem:
            raise HTTPException(404)
        app = self.ctx.app
        window = app.feed_window()
        subscriber: Subscriber | None = None
        if stem == GLOBAL_STEM:
            version = app.global_feed_version(window)
            cache_control = GLOBAL_CACHE_CONTROL
            validator: tuple[object, ...] = (version, window.limit)
        else:
            subscriber = app.subscriber_by_feed_token(stem)
            if subscriber is None or subscriber.status is not SubscriberStatus.ACTIVE:
                raise HTTPException(404)
            version = app.subscriber_feed_version(subscriber, window)
            cache_control = PRIVATE_CACHE_CONTROL
            validator = (version, window.limit, subscriber.name)
        key = GLOBAL_STEM if subscriber is None else f"subscriber:{subscriber.id}"
        modified = http_date(version.last_modified)
        headers = {
            "last-modified": format_datetime(modified, usegmt=True),
            "cache-control": cache_control,
            "vary": "Accept-Encoding",
        }
        built = self.cache.get(key, validator)
        if built is None and "if-none-match" not in request.headers:
            if not_modified(request, None, modified):  # answered from the validator alone
                return Response(status_code=304, headers=headers)
        if built is None:
            if subscriber is None:
                items = app.global_feed_items(window)
            else:
                items = app.subscriber_feed_items(subscriber, window)
            documents = build_feeds(
                items,
                site=self.ctx.site,
                subscriber=subscriber,
                templates_dir=self.ctx.settings.templates_dir,
            )
            built = Built(validator, {k: Served.of(v) for k, v in documents.items()})
            self.cache.put(key, built)
        served = built.documents[kind]
        gzipped = accepts_gzip(request)
        headers["etag"] = served.gzip_etag if gzipped else served.etag
        if not_modified(request, headers["etag"], modified):
            return Response(status_code=304, headers=headers)
        headers["content-type"] = CONTENT_TYPES[kind]
        if gzipped:
            headers["content-encoding"] = "gzip"
            return Response(served.gzipped, headers=headers)
        return Response(served.body, headers=headers)
