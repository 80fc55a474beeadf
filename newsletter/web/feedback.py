"""Reader feedback pages: "more / less like this" of a paper, and muting a matched term.

Every paper in an email, archived issue and private feed links to
``/feedback/<token>/<paper id>/like`` and ``…/dislike``; every matched term of an email or
archived issue to ``/mute/<token>?term=…``. Decisions, and why:

* **GET only shows a page with one button.** Mail scanners and prefetchers open every link in
  a message: a recording GET would file a judgment for every paper of every issue. The button
  POSTs a signed form (:class:`~newsletter.web.security.FormSigner`, bound to this token and
  this paper and judgment, or this term), so a page on another site cannot record anything.
* **Which token.** Emails and archived issues carry the subscriber's token; private feeds
  their feed token, because feed URLs get pasted and shared: a feed's links can judge its
  papers, never mute a term (that changes the profile), unsubscribe or open preferences.
* **404** for an unknown token, paper or judgment, and for a pending subscriber (never sent
  a paper), like the other token pages. No rate limit: like unsubscribe and preferences, the
  secret in the URL is the authority, and a POST writes one row.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from newsletter.domain import Judgment, Paper, Subscriber, SubscriberStatus
from newsletter.errors import FeedbackError
from newsletter.web.context import WebContext
from newsletter.web.security import first, read_form

log = logging.getLogger(__name__)

FEEDBACK = "feedback"
MUTE = "mute"


def _judgment_target(ctx: WebContext, request: Request) -> tuple[Subscriber, bool, Paper, Judgment]:
    """The subscriber (and whether through the feed token), paper and judgment of a link."""
    try:
        judgment = Judgment(str(request.path_params["judgment"]))
    except ValueError:
        raise HTTPException(404) from None
    found = ctx.app.feedback_subscriber(str(request.path_params["token"]))
    if found is None or found[0].status is SubscriberStatus.PENDING:
        raise HTTPException(404)
    paper = ctx.app.paper(int(request.path_params["paper_id"]))
    if paper is None:
        raise HTTPException(404)
    return found[0], found[1], paper, judgment


def _feedback_page(
    ctx: WebContext,
    request: Request,
    state: str,
    paper: Paper,
    judgment: Judgment,
    *,
    via_feed: bool,
    sub: Subscriber,
    status: int = 200,
) -> Response:
    token = str(request.path_params["token"])
    return ctx.page(
        "feedback.html.j2",
        status=status,
        state=state,
        title=paper.title,
        paper_url=ctx.site.paper_url(paper),
        like=judgment is Judgment.LIKE,
        csrf=ctx.signer.issue(FEEDBACK, _feedback_subject(token, paper, judgment), ctx.now()),
        action=request.url.path,
        # Links back: the subscriber's preferences, unless this link came from a feed.
        preferences_path=None if via_feed else f"/preferences/{sub.token}",
    )


def _feedback_subject(token: str, paper: Paper, judgment: Judgment) -> str:
    """What a feedback form's signature is bound to: this link's token, paper and judgment."""
    return f"{token}/{paper.id}/{judgment.value}"


def feedback_page(ctx: WebContext, request: Request) -> Response:
    sub, via_feed, paper, judgment = _judgment_target(ctx, request)
    return _feedback_page(ctx, request, "ask", paper, judgment, via_feed=via_feed, sub=sub)


async def record_feedback(ctx: WebContext, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_record_feedback, ctx, request, form)


def _record_feedback(ctx: WebContext, request: Request, form: dict[str, list[str]]) -> Response:
    sub, via_feed, paper, judgment = _judgment_target(ctx, request)
    token = str(request.path_params["token"])
    subject = _feedback_subject(token, paper, judgment)
    if not ctx.signer.check(first(form, "csrf"), FEEDBACK, subject, ctx.now()):
        log.warning("feedback: form signature refused for subscriber %s", sub.id)
        return _feedback_page(
            ctx, request, "expired", paper, judgment, via_feed=via_feed, sub=sub, status=403
        )
    try:
        ctx.app.record_judgment(sub, paper.id, judgment)
    except FeedbackError:  # the paper or subscriber went away in between
        raise HTTPException(404) from None
    return _feedback_page(ctx, request, "done", paper, judgment, via_feed=via_feed, sub=sub)


# ---------------------------------------------------------------------- mute a term


def _mute_subscriber(ctx: WebContext, request: Request) -> Subscriber:
    sub = ctx.app.subscriber_by_token(str(request.path_params["token"]))
    if sub is None or sub.status is SubscriberStatus.PENDING:
        raise HTTPException(404)
    return sub


def _mute_page(
    ctx: WebContext, sub: Subscriber, term: str, *, state: str = "", status: int = 200
) -> Response:
    """The page for muting ``term``: what the profile becomes and one button, or why not."""
    try:
        plan = ctx.app.plan_mute(sub, term)
    except FeedbackError as exc:
        from_file = ctx.app.from_config_file(sub)
        return _mute_answer(
            ctx,
            sub,
            "from_file" if from_file else "invalid",
            status=status if state else (200 if from_file else 400),
            term=term,
            reason=str(exc),
        )
    return _mute_answer(
        ctx,
        sub,
        state or ("ask" if plan.changed else "already"),
        status=status,
        term=plan.term,
        profile=plan.profile,
        exclusion=plan.exclusion,
        csrf=ctx.signer.issue(MUTE, f"{sub.token}\n{plan.term}", ctx.now()),
    )


def _mute_answer(
    ctx: WebContext,
    sub: Subscriber,
    state: str,
    *,
    status: int = 200,
    term: str,
    profile: str | None = None,
    exclusion: str = "",
    reason: str = "",
    csrf: str = "",
) -> Response:
    return ctx.page(
        "mute.html.j2",
        status=status,
        state=state,
        term=term,
        profile=sub.profile if profile is None else profile,
        exclusion=exclusion,
        reason=reason,
        csrf=csrf,
        preferences_path=f"/preferences/{sub.token}",
    )


def mute_page(ctx: WebContext, request: Request) -> Response:
    sub = _mute_subscriber(ctx, request)
    return _mute_page(ctx, sub, request.query_params.get("term", ""))


async def mute(ctx: WebContext, request: Request) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_mute, ctx, request, form)


def _mute(ctx: WebContext, request: Request, form: dict[str, list[str]]) -> Response:
    sub = _mute_subscriber(ctx, request)
    term = first(form, "term")
    if not ctx.signer.check(first(form, "csrf"), MUTE, f"{sub.token}\n{term}", ctx.now()):
        log.warning("mute: form signature refused for subscriber %s", sub.id)
        return _mute_page(ctx, sub, term, state="expired", status=403)
    try:
        plan = ctx.app.mute_term(sub, term)
    except FeedbackError as exc:
        from_file = ctx.app.from_config_file(sub)
        return _mute_answer(
            ctx,
            sub,
            "from_file" if from_file else "invalid",
            status=409 if from_file else 400,
            term=term,
            reason=str(exc),
        )
    return _mute_answer(
        ctx,
        sub,
        "done" if plan.changed else "already",
        term=plan.term,
        profile=plan.profile,
        exclusion=plan.exclusion,
    )
