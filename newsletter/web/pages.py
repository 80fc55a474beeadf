"""Public and archive pages: the index, one page per day of new papers, archived issues.

An archived issue (``/issues/<token>/<date>``, the email's "view in browser" and "full
abstract" links) is the whole issue, rendered by the email renderer's page mode from the
issue's stored papers, scores and reasons (``Newsletter.archived_issue_html``; a sent issue
keeps no HTML): the titles first, then every paper with its full abstract, links, reasons with
their "mute" links and the "more / less like this" links, under the anchors ``paper-N`` (N =
rank, from 1) that the email links to, and the private feed. The email may shorten abstracts
and stop at its size limit; this page never does. Paper text in it is escaped or sanitized by
the renderer, and its page gets a CSP that allows inline styles and nothing executable.

Day pages are rendered here, with autoescaped templates; titles and abstracts read well
(inline LaTeX as text, ``<sup>`` and ``<sub>``: :func:`~newsletter.render_html.title_html`,
:func:`~newsletter.render_html.abstract_views`), and each paper has its links (abstract
page, PDF, Hugging Face, code: :func:`~newsletter.links.paper_links`).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from newsletter.domain import Paper
from newsletter.limits import http_url
from newsletter.links import paper_links
from newsletter.render import authors_label
from newsletter.render_html import abstract_views, title_html
from newsletter.subscribers import WEEKDAYS
from newsletter.web.accounts import subscribe_defaults
from newsletter.web.context import WebContext
from newsletter.web.security import ARCHIVE_CSP

RECENT_DAYS = 14
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DAY_CACHE_CONTROL = "public, max-age=300"
#: Papers per day page.
DAY_PAGE_SIZE = 100
#: A page number: 1 to 999999 (no sign, no leading zero).
_PAGE = re.compile(r"^[1-9][0-9]{0,5}$")
#: The days a page can be about. Nothing is first seen or sent before 1970, and a day is
#: looked up as [day, next day): the last date Python has, 9999-12-31, has no next day
#: (``/days/9999-12-31`` was a 500).
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date.max - timedelta(days=1)


def parse_day(text: str) -> date:
    """A YYYY-MM-DD path segment within [FIRST_DAY, LAST_DAY], else 404 (fromisoformat alone
    also takes 20261123)."""
    if not _ISO_DATE.match(text):
        raise HTTPException(404)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise HTTPException(404) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise HTTPException(404)
    return day


def paper_view(ctx: WebContext, paper: Paper) -> dict[str, Any]:
    """What a template shows of a paper: one-line title, safe links, sanitized abstract."""
    url = http_url(ctx.site.paper_url(paper))
    derived = paper_links(paper)
    links = [
        (label, link)
        for label, link in (
            ("Abstract page", url),
            ("PDF", derived.pdf),
            ("Hugging Face", derived.huggingface),
            ("Code", derived.code),
        )
        if link
    ]
    return {
        "title": Markup(title_html(paper.title) or "(untitled)"),
        # paper_url already drops digest links that are not http(s); this also covers a title
        # search template from the configuration
        "url": url,
        "links": links,
        "authors": authors_label(paper),
        "published": paper.published.isoformat() if paper.published else "",
        "upvotes": paper.upvotes,
        "abstract_html": Markup(abstract_views(paper.abstract).full_html),
    }


def index(ctx: WebContext, request: Request) -> Response:
    return ctx.page(
        "index.html.j2",
        days=ctx.app.recent_days(RECENT_DAYS),
        form=subscribe_defaults(ctx),
        errors={},
        weekdays=WEEKDAYS,
        timezones=ctx.timezones,
    )


def day_page(ctx: WebContext, request: Request) -> Response:
    """One page of a day's papers (``?page=N``, :data:`DAY_PAGE_SIZE` each): a count and
    one LIMIT/OFFSET query, so a day with thousands of papers never loads them all. Past the
    last page, or a day without papers, is a 404."""
    day = parse_day(str(request.path_params["day"]))
    page = parse_page(request.query_params.get("page"))
    total = ctx.app.count_papers_first_seen_on(day)
    pages = -(-total // DAY_PAGE_SIZE)
    if page > pages:
        return ctx.page("day.html.j2", status=404, day=day, papers=[])
    papers = ctx.app.papers_first_seen_on(
        day, offset=(page - 1) * DAY_PAGE_SIZE, limit=DAY_PAGE_SIZE
    )
    return ctx.page(
        "day.html.j2",
        day=day,
        papers=[paper_view(ctx, p) for p in papers],
        total=total,
        page=page,
        pages=pages,
        first=(page - 1) * DAY_PAGE_SIZE + 1,
        day_url=f"/days/{day.isoformat()}",
        headers={"cache-control": DAY_CACHE_CONTROL},
    )


def parse_page(text: str | None) -> int:
    """``?page=N``: absent is 1; anything but a plain positive number is a 404 (so no huge
    number reaches the OFFSET)."""
    if text is None:
        return 1
    if not _PAGE.match(text):
        raise HTTPException(404)
    return int(text)


def archived_issue(ctx: WebContext, request: Request) -> Response:
    subscriber = ctx.app.subscriber_by_token(str(request.path_params["token"]))
    if subscriber is None:
        raise HTTPException(404)
    html = ctx.app.archived_issue_html(subscriber, parse_day(str(request.path_params["day"])))
    if html is None:
        raise HTTPException(404)
    return HTMLResponse(html, headers={"content-security-policy": ARCHIVE_CSP})
