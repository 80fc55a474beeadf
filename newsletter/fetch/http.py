"""The HTTP side of fetching: one polite, robust GET with httpx.

:class:`HttpFetcher` holds one ``httpx.Client`` (connection reuse, redirects followed, the
User-Agent ``newsletter/<version> (+<base_url>; <contact>)``) and does, per request:

* a conditional GET: ``If-None-Match`` and ``If-Modified-Since`` from the last answer's
  validators; a 304 is an answer with no body;
* spacing per host: a source may ask for a least time between requests to its host (the arXiv
  API's 3 seconds), counted across every source the fetcher serves, retries included;
* retries with exponential backoff and jitter on 429, 408, 5xx, timeouts and broken
  connections (a body shorter than its Content-Length included), honouring ``Retry-After``
  (seconds or an HTTP date), every wait capped at ``max_wait``;
* a size limit: a Content-Length over it is refused before reading, a body that grows past it
  is cut off (counted after decompression, so a small gzip bomb cannot fill the memory).

Any other 4xx, a redirect loop or an oversized body is permanent (:class:`FetchError`,
``transient=False``): retrying would get the same. The sleep, the monotonic clock, the wall
clock and the random source are injected, so tests assert the waits without waiting.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from newsletter import __version__
from newsletter.errors import NewsletterError

log = logging.getLogger(__name__)

#: The first backoff, doubled at each retry (plus up to as much again of random jitter).
BACKOFF_SECONDS = 1.0
#: Statuses worth another try: rate limited, request timeout, server errors.
RETRY_STATUSES = frozenset({408, 429})


class FetchError(NewsletterError):
    """A source could not be fetched. ``transient``: a later try may succeed (timeouts, 429,
    5xx, broken connections, after the retries); otherwise the same request fails again (a
    404, an oversized answer) until the configuration or the upstream changes."""

    def __init__(
        self, message: str, *, url: str, transient: bool, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class Answer:
    """A final answer: 200 with its body, or 304 (``body`` empty)."""

    status: int
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str | None
    attempts: int


class _Retry(Exception):
    """One attempt failed in a way worth another; ``retry_after`` as the server asked."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


def user_agent(base_url: str, contact: str) -> str:
    """``newsletter/0.1.0 (+https://papers.example.org; ops@example.org)``."""
    return f"newsletter/{__version__} (+{base_url}; {contact})"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None
    when absent or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class HttpFetcher:
    """GETs for ``newsletter fetch`` and the daemon; use as a context manager (or close())."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout: float = 30.0,
        retries: int = 3,
        max_wait: float = 300.0,
        max_bytes: int = 50 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.max_wait = max_wait
        self.max_bytes = max_bytes
        self.sleep = sleep
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self._last_request: dict[str, float] = {}  # host → monotonic end of its last request
        self.client = httpx.Client(
            headers={"User-Agent": user_agent},
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            max_redirects=5,
            transport=transport,
        )

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        spacing: float = 0.0,
    ) -> Answer:
        """GET ``url`` (conditionally when validators are given), retrying what is worth it;
        raise :class:`FetchError` when it cannot be had."""
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        host = urlsplit(url).netloc.lower()
        attempt = 0
        while True:
            attempt += 1
            self._keep_spacing(host, spacing)
            try:
                try:
                    return self._once(url, headers, attempt)
                finally:  # the spacing counts from the end of the request, before any wait
                    self._last_request[host] = self.monotonic()
            except _Retry as exc:
                if attempt > self.retries:
                    raise FetchError(
                        f"{url}: {exc} (after {attempt} attempts); tried again at the next fetch",
                        url=url,
                        transient=True,
                        status=exc.status,
                    ) from None
                wait = self._wait(attempt, exc.retry_after)
                log.warning("%s: %s; retry %d in %.1f s", url, exc, attempt, wait)
                self.sleep(wait)

    def _keep_spacing(self, host: str, spacing: float) -> None:
        last = self._last_request.get(host)
        if spacing > 0 and last is not None:
            left = spacing - (self.monotonic() - last)
            if left > 0:
                self.sleep(left)

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After when it gave one, else exponential backoff with jitter;
        at most ``max_wait``."""
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        base: float = BACKOFF_SECONDS * 2.0 ** (attempt - 1)
        return min(base + self.rng.uniform(0, base), self.max_wait)

    def _once(self, url: str, headers: Mapping[str, str], attempt: int) -> Answer:
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 429 or status in RETRY_STATUSES or status >= 500:
                    retry_after = parse_retry_after(
                        response.headers.get("retry-after"), self.wall_clock()
                    )
                    raise _Retry(f"HTTP {status}", status=status, retry_after=retry_after)
                if status == 304:
                    return self._answer(response, b"", attempt)
                if status != 200:
                    raise FetchError(
                        f"{url}: HTTP {status} {response.reason_phrase}: check the source's "
                        "url, categories or query",
                        url=url,
                        transient=False,
                        status=status,
                    )
                return self._answer(response, self._read(url, response), attempt)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # refused, reset, a body shorter than announced
            raise _Retry(f"connection failed: {exc}") from None
        except httpx.HTTPError as exc:  # too many redirects, an undecodable body
            raise FetchError(f"{url}: {exc}", url=url, transient=False) from None

    def _read(self, url: str, response: httpx.Response) -> bytes:
        too_big = FetchError(
            f"{url}: the answer is over max_digest_bytes ({self.max_bytes} bytes); raise it "
            "or ask for less (max_results, fewer categories)",
            url=url,
            transient=False,
            status=response.status_code,
        )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _answer(response: httpx.Response, body: bytes, attempt: int) -> Answer:
        return Answer(
            status=response.status_code,
            body=body,
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            content_type=response.headers.get("content-type"),
            attempts=attempt,
        )
