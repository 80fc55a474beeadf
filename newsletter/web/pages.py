"""Public and archive pages: the index, one page per day of new papers, archived issues.

An archived issue is served as the HTML that was emailed (stored on the issue when it was
rendered), so the web view is exactly what the reader got; paper text in it was escaped or
sanitized by the renderer, and its page gets a CSP that allows inline styles and nothing
executable. Day pages are rendered here, with autoescaped templates.
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
from newsletter.render import authors_label
from newsletter.render_html import sanitize_abstract, strip_controls
from newsletter.web.context import WebContext
from newsletter.web.security import ARCHIVE_CSP

RECENT_DAYS = 14
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DAY_CACHE_CONTROL = "public, max-age=300"
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
    """What a template shows of a paper: one-line title, safe link, sanitized abstract."""
    return {
        "title": strip_controls(paper.title) or "(untitled)",
        # paper_url already drops digest links that are not http(s); this also covers a title
        # search template from the configuration
        "url": http_url(ctx.site.paper_url(paper)),
        "authors": authors_label(paper),
        "published": paper.published.isoformat() if paper.published else "",
        "upvotes": paper.upvotes,
        "abstract_html": Markup(sanitize_abstract(paper.abstract)),
    }


def index(ctx: WebContext, request: Request) -> Response:
    return ctx.page(
        "index.html.j2",
        days=ctx.app.recent_days(RECENT_DAYS),
        form={"timezone": ctx.settings.timezone},
        errors={},
        timezones=ctx.timezones,
    )


def day_page(ctx: WebContext, request: Request) -> Response:
    day = parse_day(str(request.path_params["day"]))
    papers = ctx.app.papers_first_seen_on(day)
    if not papers:
        return ctx.page("day.html.j2", status=404, day=day, papers=[])
    return ctx.page(
        "day.html.j2",
        day=day,
        papers=[paper_view(ctx, p) for p in papers],
        headers={"cache-control": DAY_CACHE_CONTROL},
    )


def archived_issue(ctx: WebContext, request: Request) -> Response:
    subscriber = ctx.app.subscriber_by_token(str(request.path_params["token"]))
    if subscriber is None:
        raise HTTPException(404)
    html = ctx.app.archived_issue_html(subscriber, parse_day(str(request.path_params["day"])))
    if html is None:
        raise HTTPException(404)
    return HTMLResponse(html, headers={"content-security-policy": ARCHIVE_CSP})
