"""The ASGI application: ``create_app(settings)`` wires routes, headers and error pages.

The web side shares the daemon's database and nothing else: it reads issues and papers,
writes subscriber rows, and sends only the account emails (double opt-in, welcome), from a
background thread (:mod:`newsletter.web.sender`), never while a request waits. Every URL it
serves is one that :class:`newsletter.domain.SiteInfo` builds into emails and feeds.

The app never redirects (trailing-slash redirects are switched off too), so no URL taken
from a request can send a visitor elsewhere.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter.app import Clock, Newsletter, utc_now
from newsletter.config import Settings
from newsletter.deliver import Mailer
from newsletter.observe import (
    CONTENT_TYPE_LATEST,
    metrics_registry,
    metrics_text,
    readiness,
    redact_tokens,
)
from newsletter.resources import read_resource
from newsletter.web import accounts, feedback, pages
from newsletter.web.context import WebContext
from newsletter.web.feeds import FeedHandler
from newsletter.web.ratelimit import wait_text
from newsletter.web.security import DEFAULT_HEADERS, FormSigner, SecurityHeaders

log = logging.getLogger(__name__)

__all__ = ["create_app"]

STYLESHEET = "site.css"
ERROR_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported form",
    429: "Too many requests",
}


def create_app(
    settings: Settings,
    *,
    mailer: Mailer | None = None,
    clock: Clock | None = None,
    secret: bytes | None = None,
) -> Starlette:
    """Build the app on the settings' database (migrated to the current schema).

    ``mailer`` sends confirmation emails (default: the configured outbox or SMTP mailer,
    created on first use and closed at shutdown; a given one is the caller's to close).
    ``clock`` is for tests. ``secret`` signs forms; the default is the settings' secret key
    (``NEWSLETTER_SECRET_KEY``), else a random key per process, so forms served before a
    restart are refused once (the page says to save again): all workers of one deployment
    must share a configured secret.
    """
    newsletter = Newsletter(settings, mailer=mailer, clock=clock or utc_now)
    fixed = newsletter.backfill_token_hashes()
    if fixed:
        log.info("web: hashed the tokens of %d subscriber(s)", fixed)
    key = secret or settings.secret_key
    ctx = WebContext(app=newsletter, signer=FormSigner(key or secrets.token_bytes(32)))
    stylesheet = read_resource(f"web/{STYLESHEET}", settings.templates_dir)

    def bind(
        handler: Callable[[WebContext, Request], Response | Awaitable[Response]],
    ) -> Callable[[Request], Response | Awaitable[Response]]:
        """Give a handler its context. Starlette runs sync handlers (database work) in its
        thread pool; async ones read the body first and hand the rest to the pool."""
        return partial(handler, ctx)

    def css(_request: Request) -> Response:
        return Response(
            stylesheet,
            media_type="text/css; charset=utf-8",
            headers={"cache-control": "public, max-age=3600"},
        )

    registry = metrics_registry(newsletter.store)

    def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n", headers={"cache-control": "no-store"})

    def readyz(_request: Request) -> Response:
        answer = readiness(newsletter.store, settings)
        return JSONResponse(
            answer.as_json(),
            status_code=200 if answer.ready else 503,
            headers={"cache-control": "no-store"},
        )

    def metrics(_request: Request) -> Response:
        return Response(
            metrics_text(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"cache-control": "no-store"},
        )

    routes = [
        # Monitoring (newsletter/observe.py): liveness, readiness, Prometheus metrics.
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", bind(pages.index), methods=["GET"]),
        Route(f"/static/{STYLESHEET}", css, methods=["GET"]),
        Route("/feeds/{name}", FeedHandler(ctx).__call__, methods=["GET"]),
        Route("/days/{day}", bind(pages.day_page), methods=["GET"]),
        Route("/issues/{token}/{day}", bind(pages.archived_issue), methods=["GET"]),
        Route("/subscribe", bind(accounts.subscribe_form), methods=["GET"]),
        Route("/subscribe", bind(accounts.subscribe), methods=["POST"]),
        Route("/confirm/{token}", bind(accounts.confirm_page), methods=["GET"]),
        Route("/confirm/{token}", bind(accounts.confirm), methods=["POST"]),
        Route("/unsubscribe/{token}", bind(accounts.unsubscribe_page), methods=["GET"]),
        Route("/unsubscribe/{token}", bind(accounts.unsubscribe), methods=["POST"]),
        Route("/resubscribe/{token}", bind(accounts.resubscribe), methods=["POST"]),
        Route("/preferences/{token}", bind(accounts.preferences_page), methods=["GET"]),
        Route("/preferences/{token}", bind(accounts.save_preferences), methods=["POST"]),
        Route(
            "/feedback/{token}/{paper_id:int}/{judgment}",
            bind(feedback.feedback_page),
            methods=["GET"],
        ),
        Route(
            "/feedback/{token}/{paper_id:int}/{judgment}",
            bind(feedback.record_feedback),
            methods=["POST"],
        ),
        Route("/mute/{token}", bind(feedback.mute_page), methods=["GET"]),
        Route("/mute/{token}", bind(feedback.mute), methods=["POST"]),
    ]

    def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 500:
            path = redact_tokens(request.url.path)  # no subscriber's token in the log
            log.exception("web: %s %s failed", request.method, path, exc_info=exc)
        # A 500 is answered outside the header middleware: set the headers here too.
        headers = dict(DEFAULT_HEADERS)
        if isinstance(exc, HTTPException):
            headers.update(exc.headers or {})
        retry_after = headers.get("retry-after", "")
        return ctx.page(
            "error.html.j2",
            status=status,
            headers=headers,
            title=ERROR_TITLES.get(status, "Something went wrong"),
            status_code=status,
            wait=wait_text(int(retry_after)) if retry_after.isdigit() else "later",
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # The confirmation sender starts with the first subscribe; at shutdown it gets a
        # bounded wait to send what is queued (in a thread: the event loop keeps running).
        yield
        await run_in_threadpool(ctx.close)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.web = ctx
    return app
