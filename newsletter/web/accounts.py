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
* **Welcome**: confirming queues a welcome email (:func:`newsletter.web.mail.welcome_message`)
  on the same background sender: what arrives, when, how to change it or leave, and the
  private feed; the confirmation page shows the same links.
* **Resubscribe**: the unsubscribe page, once unsubscribed, offers a button that posts a form
  signed for that token (``POST /resubscribe/<token>``); it makes the same subscriber active
  again (same token, feed and settings). A ``GET`` of either page changes nothing.
* **Preferences** changes need a signed form (see :mod:`newsletter.web.security`). Those of a
  subscriber of the subscribers file are shown read-only, and a post is refused (409): the
  next run would put the file's settings back, so "Saved." would be a lie.
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
from newsletter.web.forms import bounded, preferences_values, validate
from newsletter.web.mail import confirmation_message, schedule_text, welcome_message
from newsletter.web.ratelimit import CONFIRM, SUBSCRIBE, too_many
from newsletter.web.security import first, read_form

log = logging.getLogger(__name__)

PREFERENCES = "preferences"
RESUBSCRIBE = "resubscribe"
#: The fields of the subscribe form besides the days (checkboxes).
SUBSCRIBE_FIELDS = ("email", "name", "profile", "timezone", "send_at", "max_papers")


def _subscriber(ctx: WebContext, request: Request) -> Subscriber:
    found = ctx.app.subscriber_by_token(str(request.path_params["token"]))
    if found is None:
        raise HTTPException(404)
    return found


# ---------------------------------------------------------------------- subscribe


def subscribe_defaults(ctx: WebContext) -> dict[str, Any]:
    """The subscribe form's initial values: the settings' timezone, 07:00, every day, and
    ``ranking.default_max_papers``."""
    defaults = ctx.app.defaults
    return {
        "timezone": defaults.timezone,
        "send_at": defaults.send_at.strftime("%H:%M"),
        "days": [],
        "max_papers": str(defaults.max_papers),
    }


def subscribe_page(
    ctx: WebContext, form: dict[str, Any], errors: dict[str, str], *, status: int = 200
) -> Response:
    return ctx.page(
        "subscribe.html.j2",
        status=status,
        form=form,
        errors=errors,
        weekdays=WEEKDAYS,
        timezones=ctx.timezones,
    )


def subscribe_form(ctx: WebContext, request: Request) -> Response:
    return subscribe_page(ctx, subscribe_defaults(ctx), {})


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
    values: dict[str, Any] = {name: first(form, name).strip() for name in SUBSCRIBE_FIELDS}
    days = [bounded("days", d) for d in form.get("days", [])]
    entry: dict[str, Any] = {k: bounded(k, v) for k, v in values.items() if v}
    if days:
        entry["days"] = days  # an unknown day is make_spec's to refuse
    result = validate(entry, ctx.app.defaults)
    if result.spec is None:
        values["days"] = [d for d in days if d in WEEKDAYS]
        return subscribe_page(ctx, values, result.errors, status=400)
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
    # Only the owner of the mailbox has this link: show what they are about to confirm.
    return ctx.page(
        "confirm.html.j2", state="ask", email=sub.email, sub=sub, schedule=schedule_text(sub)
    )


def confirm(ctx: WebContext, request: Request) -> Response:
    _throttle(ctx, request, CONFIRM)
    token = str(request.path_params["token"])
    sub = ctx.app.confirm(token)
    if sub is None:
        return ctx.page("confirm.html.j2", status=404, state="invalid")
    welcome = ctx.app.send_welcome(sub, partial(welcome_message, ctx), ctx.sender.submit)
    return ctx.page(
        "confirm.html.j2",
        state="done",
        email=sub.email,
        sub=sub,
        schedule=schedule_text(sub),
        welcome=welcome,
        feeds=feed_links(ctx, sub),
        preferences_path=f"/preferences/{sub.token}",
        unsubscribe_path=f"/unsubscribe/{sub.token}",
    )


def feed_links(ctx: WebContext, sub: Subscriber) -> dict[str, str]:
    """The private feed's URLs (``atom``, ``rss``): the papers of this subscriber's issues."""
    return {kind: ctx.site.feed_url(sub, kind) for kind in ("atom", "rss")}


# ---------------------------------------------------------------------- unsubscribe


def _unsubscribe_page(
    ctx: WebContext, sub: Subscriber, state: str, *, status: int = 200
) -> Response:
    return ctx.page(
        "unsubscribe.html.j2",
        status=status,
        state=state,
        email=sub.email,
        # once unsubscribed: a button to come back, signed for this token
        csrf=ctx.signer.issue(RESUBSCRIBE, sub.token, ctx.now()) if state != "ask" else "",
        resubscribe_action=f"/resubscribe/{sub.token}",
        preferences_path=f"/preferences/{sub.token}",
    )


def unsubscribe_page(ctx: WebContext, request: Request) -> Response:
    sub = _subscriber(ctx, request)
    state = "done" if sub.status is SubscriberStatus.UNSUBSCRIBED else "ask"
    return _unsubscribe_page(ctx, sub, state)


def unsubscribe(ctx: WebContext, request: Request) -> Response:
    sub = _subscriber(ctx, request)
    ctx.app.unsubscribe(sub)
    return _unsubscribe_page(ctx, sub, "done")


async def resubscribe(ctx: WebContext, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_resubscribe, ctx, request, form)


def _resubscribe(ctx: WebContext, request: Request, form: dict[str, list[str]]) -> Response:
    """The unsubscribe page's "subscribe again" button: a signed form, so that nothing but
    that page (no link scanner, no other site) can undo an unsubscribe."""
    sub = _subscriber(ctx, request)
    if not ctx.signer.check(first(form, "csrf"), RESUBSCRIBE, sub.token, ctx.now()):
        log.warning("resubscribe: form signature refused for subscriber %s", sub.id)
        state = "expired" if sub.status is SubscriberStatus.UNSUBSCRIBED else "ask"
        return _unsubscribe_page(ctx, sub, state, status=403)
    if sub.status is SubscriberStatus.ACTIVE:
        return _unsubscribe_page(ctx, sub, "resubscribed")
    if sub.status is not SubscriberStatus.UNSUBSCRIBED or ctx.app.resubscribe(sub) is None:
        # a pending subscriber confirms by the link in its email, not here
        raise HTTPException(404)
    return _unsubscribe_page(ctx, sub, "resubscribed")


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
    # The run syncs config/subscribers.toml over its entries: such preferences are shown
    # read-only (no form to save), rather than "Saved." and undone by the next run.
    from_file = ctx.app.from_config_file(sub)
    return ctx.page(
        "preferences.html.j2",
        status=status,
        sub=sub,
        form=form,
        errors=errors or {},
        notice=notice,
        weekdays=WEEKDAYS,
        timezones=ctx.timezones,
        csrf="" if from_file else ctx.signer.issue(PREFERENCES, sub.token, ctx.now()),
        from_file=from_file,
        schedule=schedule_text(sub),
        feeds=feed_links(ctx, sub),
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
    if ctx.app.from_config_file(sub):
        log.info("preferences: subscriber %s is managed in the subscribers file: refused", sub.id)
        return _preferences(
            ctx,
            sub,
            preferences_values(sub),
            status=409,
            notice="Nothing was saved: your settings are managed in the subscribers file by "
            "the operator.",
        )
    submitted: dict[str, Any] = {
        name: bounded(name, first(form, name).strip())
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
        "days": [bounded("days", d) for d in form.get("days", [])],  # make_spec refuses unknown
    }
    result = validate({k: v for k, v in entry.items() if v not in ("", None)}, ctx.app.defaults)
    if result.spec is None:
        return _preferences(ctx, sub, submitted, status=400, errors=result.errors)
    saved = ctx.app.update_preferences(sub, result.spec)
    if saved is None:  # gone, or moved into the subscribers file meanwhile
        raise HTTPException(404)
    log.info("preferences: subscriber %s saved", sub.id)
    return _preferences(ctx, saved, preferences_values(saved), notice="Saved.")
