"""Request rate limits of the web side, per client address and for all clients together, on
the subscribe form and the confirmation links: the ``limits`` package's moving windows, kept
in this process's memory.

Why in memory: these limits stop one client, or one burst, from using the form as a mail
relay or from making the database work for every request. They need no agreement between
processes (each web worker counts its own requests, so N workers let up to N times the total
through). The promise that must hold across processes, how many confirmation emails leave
per hour, is kept in the database instead (``web.confirmations_per_hour``, see
:meth:`newsletter.accounts.AccountUseCases.subscribe`).

The client is ``request.client.host``: the TCP peer or, behind a reverse proxy, the address
uvicorn takes from ``X-Forwarded-For`` when the proxy is one it trusts (uvicorn reads proxy
headers by default and trusts the addresses in ``FORWARDED_ALLOW_IPS``, default 127.0.0.1).
An IPv6 client is counted by its /64 network: a host is commonly given a whole /64 and can
pick any address in it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException

from newsletter.config import WebSettings

__all__ = ["CONFIRM", "SUBSCRIBE", "RateLimits", "client_key", "too_many", "wait_text"]

SUBSCRIBE = "subscribe"
CONFIRM = "confirm"
#: The network an IPv6 client is counted by.
IPV6_PREFIX = 64


def client_key(host: str | None) -> str:
    """What a client is counted as: its IPv4 address, its IPv6 /64 network, or the host
    string the server gave (``unknown`` when there is none, as on a Unix socket)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def _items(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text)) if text.strip() else ()


@dataclass(frozen=True)
class _Rules:
    per_client: tuple[RateLimitItem, ...]
    total: tuple[RateLimitItem, ...]


class RateLimits:
    """The limits of one web process; thread-safe (the storage locks per key)."""

    def __init__(self, settings: WebSettings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rules = {
            SUBSCRIBE: _Rules(
                _items(settings.subscribe_limit_per_client), _items(settings.subscribe_limit_total)
            ),
            CONFIRM: _Rules(
                _items(settings.confirm_limit_per_client), _items(settings.confirm_limit_total)
            ),
        }

    def check(self, action: str, host: str | None) -> int | None:
        """Count one request for ``action`` from ``host``: None if it is within every limit,
        else the whole seconds until it would be (the Retry-After of the 429).

        Every limit is tested before any is counted, so a refused request costs nothing
        (a client that keeps trying while refused is not locked out longer); the hits that
        follow can still lose a race to another thread, and then refuse too."""
        rules = self._rules[action]
        client = (action, "client", client_key(host))
        everyone = (action, "all", "")
        checks = [(item, client) for item in rules.per_client]
        checks += [(item, everyone) for item in rules.total]
        for item, ids in checks:
            if not self._limiter.test(item, *ids):
                return self._wait(item, ids)
        for item, ids in checks:
            if not self._limiter.hit(item, *ids):
                return self._wait(item, ids)
        return None

    def _wait(self, item: RateLimitItem, ids: tuple[str, ...]) -> int:
        reset = self._limiter.get_window_stats(item, *ids).reset_time
        return max(1, math.ceil(reset - time.time()))


def wait_text(seconds: int) -> str:
    """``in 40 seconds``, ``in about 3 minutes``, ``in about 2 hours``: for the 429 page."""
    if seconds < 90:
        return f"in {seconds} second{'s' if seconds != 1 else ''}"
    if seconds < 90 * 60:
        return f"in about {round(seconds / 60)} minutes"
    return f"in about {round(seconds / 3600)} hours"


def too_many(seconds: int) -> HTTPException:
    """The 429 to raise: the app's error page says when to come back, and ``Retry-After``
    says it to programs (RFC 9110 §10.2.3: whole seconds)."""
    return HTTPException(429, headers={"retry-after": str(max(1, seconds))})
