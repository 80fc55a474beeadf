"""Subscribe (double opt-in), confirm, unsubscribe and preferences pages.

Decisions, and why:

* **Unsubscribe** ``POST /unsubscribe/<token>`` unsubscribes at once, whatever the body: it is
  the RFC 8058 one-click target (``List-Unsubscribe=One-Click``, sent by mail providers with
  no cookies and no CSRF token) and the button of the ``GET`` page posts the same body. No CSRF
  token there: the secret token in the URL is the only authority, and anybody holding it could
  make the one-click POST anyway. ``GET`` never unsubscribes, because link scanners and
  prefetchers follow links in emails.
* **Confirm** ``GET /confirm/<token>`` shows a button; its ``POST`` activates. Corporate mail
  scanners open every link in a message: a confirming GET would let them subscribe an address
  whose owner never clicked, which is what double opt-in exists to prevent.
* **Subscribe** answers with the same "check your inbox" page whether the address is new,
  pending, active or was sent a confirmation within the hour, so the form does not reveal who
  is subscribed; at most one confirmation per mailbox (``+tag`` variants are one) per
  :data:`RESEND_AFTER`. The email is queued for the background sender
  (:mod:`newsletter.web.sender`), never sent on the request thread, so a slow SMTP server
  cannot hold up the site.
* **Abuse**: subscribe and confirm answer 429 with ``Retry-After`` beyond the request rate
  limits (per client address and in total, :mod:`newsletter.web.ratelimit`) and, for
  subscribe, once ``web.confirmations_per_hour`` emails went out in the last hour (counted in
  the database, for every address alike, so the 429 reveals nothing about the address).
* **Preferences** changes need a signed form (see :mod:`newsletter.web.security`).
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from newsletter.domain import Subscriber, SubscriberStatus
from newsletter.subscribers import WEEKDAYS
from newsletter.web.context import WebContext
from newsletter.web.forms import preferences_values, validate
from newsletter.web.mail import confirmation_message
from newsletter.web.ratelimit import CONFIRM, SUBSCRIBE, too_many
from newsletter.web.security import first, read_form

log = logging.getLogger(__name__)

PREFERENCES = "preferences"


def _subscriber(ctx: WebContext, request: Request) -> Subscriber:
    found = ctx.app.subscriber_by_token(str(request.path_params["token"]))
    if found is None:
        raise HTTPException(404)
    return found


# ---------------------------------------------------------------------- subscribe


def subscribe_form(ctx: WebContext, request: Request) -> Response:
    return ctx.page(
        "subscribe.html.j2",
        form={"timezone": ctx.settings.timezone},
        errors={},
        timezones=ctx.timezones,
    )


def _throttle(ctx: WebContext, request: Request, action: str) -> None:
    """429 beyond the request rate limits of ``action`` (before the body is read or the
    database asked: a refused request costs next to nothing)."""
    wait = ctx.limits.check(action, request.client.host if request.client else None)
    if wait is not None:
        log.info("%s: rate limit reached; answered 429 (retry after %d s)", action, wait)
        raise too_many(wait)


async def subscribe(ctx: WebContext, request: Request) -> Response:
    _throttle(ctx, request, SUBSCRIBE)
    form = await read_form(request)
    return await run_in_threadpool(_subscribe, ctx, form)


def _subscribe(ctx: WebContext, form: dict[str, list[str]]) -> Response:
    values = {name: first(form, name).strip() for name in ("email", "name", "profile", "timezone")}
    entry = {k: v for k, v in values.items() if v}
    result = validate(entry, ctx.app.defaults)
    if result.spec is None:
        return ctx.page(
            "subscribe.html.j2",
            status=400,
            form=values,
            errors=result.errors,
            timezones=ctx.timezones,
        )
    spec = result.spec
    # The email is queued, not sent: the page does not wait for the SMTP server.
    done = ctx.app.subscribe(spec, partial(confirmation_message, ctx), ctx.sender.submit)
    if done.retry_after is not None:  # the hourly cap on confirmation emails, whatever address
        log.warning("subscribe: the cap on confirmation emails is reached; answered 429")
        raise too_many(math.ceil(done.retry_after.total_seconds()))
    return ctx.page("check_inbox.html.j2", email=spec.email)


# ---------------------------------------------------------------------- confirm


def confirm_page(ctx: WebContext, request: Request) -> Response:
    _throttle(ctx, request, CONFIRM)
    token = str(request.path_params["token"])
    sub = ctx.app.pending_confirmation(token)
    if sub is None:
        return ctx.page("confirm.html.j2", status=404, state="invalid")
    return ctx.page("confirm.html.j2", state="ask", email=sub.email)


def confirm(ctx: WebContext, request: Request) -> Response:
    _throttle(ctx, request, CONFIRM)
    token = str(request.path_params["token"])
    sub = ctx.app.confirm(token)
    if sub is None:
        return ctx.page("confirm.html.j2", status=404, state="invalid")
    return ctx.page(
        "confirm.html.j2",
        state="done",
        email=sub.email,
        preferences_path=f"/preferences/{sub.token}",
    )


# ---------------------------------------------------------------------- unsubscribe


def unsubscribe_page(ctx: WebContext, request: Request) -> Response:
    sub = _subscriber(ctx, request)
    state = "done" if sub.status is SubscriberStatus.UNSUBSCRIBED else "ask"
    return ctx.page("unsubscribe.html.j2", state=state, email=sub.email)


def unsubscribe(ctx: WebContext, request: Request) -> Response:
    sub = _subscriber(ctx, request)
    ctx.app.unsubscribe(sub)
    return ctx.page("unsubscribe.html.j2", state="done", email=sub.email)


# ---------------------------------------------------------------------- preferences


def _preferences(
    ctx: WebContext,
    sub: Subscriber,
    form: dict[str, Any],
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    notice: str = "",
) -> Response:
    return ctx.page(
        "preferences.html.j2",
        status=status,
        sub=sub,
        form=form,
        errors=errors or {},
        notice=notice,
        weekdays=WEEKDAYS,
        timezones=ctx.timezones,
        csrf=ctx.signer.issue(PREFERENCES, sub.token, ctx.now()),
        # The run syncs config/subscribers.toml over its entries: say so rather than let a
        # saved change silently come undone.
        from_file=ctx.app.from_config_file(sub),
        action=f"/preferences/{sub.token}",
    )


def preferences_page(ctx: WebContext, request: Request) -> Response:
    sub = _subscriber(ctx, request)
    return _preferences(ctx, sub, preferences_values(sub))


async def save_preferences(ctx: WebContext, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_save_preferences, ctx, request, form)


def _save_preferences(ctx: WebContext, request: Request, form: dict[str, list[str]]) -> Response:
    sub = _subscriber(ctx, request)
    submitted: dict[str, Any] = {
        name: first(form, name).strip()
        for name in ("name", "profile", "timezone", "send_at", "max_papers")
    }
    submitted["days"] = [d for d in form.get("days", []) if d in WEEKDAYS]
    if not ctx.signer.check(first(form, "csrf"), PREFERENCES, sub.token, ctx.now()):
        log.warning("preferences: form signature refused for subscriber %s", sub.id)
        return _preferences(
            ctx,
            sub,
            submitted,
            status=403,
            notice="This form has expired or did not come from this site. Nothing was saved: "
            "check your changes and save again.",
        )
    entry = {
        "email": sub.email,
        "min_score": sub.min_score,
        "send_when_empty": sub.send_when_empty,
        **{k: v for k, v in submitted.items() if k != "days"},
        "days": list(form.get("days", [])),  # an unknown day is make_spec's to refuse
    }
    result = validate({k: v for k, v in entry.items() if v not in ("", None)}, ctx.app.defaults)
    if result.spec is None:
        return _preferences(ctx, sub, submitted, status=400, errors=result.errors)
    saved = ctx.app.update_preferences(sub, result.spec)
    if saved is None:
        raise HTTPException(404)
    log.info("preferences: subscriber %s saved", sub.id)
    return _preferences(ctx, saved, preferences_values(saved), notice="Saved.")
