"""Recognize an HTML page saved in place of a digest (an error, login or rate-limit page).

Scrapers save whatever the server answered. An HTML page is never a digest we can read, and
its <title> ("502 Bad Gateway", "Just a moment...") is the best one-line reason to show.
"""

from __future__ import annotations

import html
import re
from datetime import date

from newsletter.domain import ParsedDigest
from newsletter.errors import ParseError

FORMAT = "html"
_HTML = re.compile(r"<!doctype\s+html|<html[\s>]", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def sniff(text: str) -> bool:
    head = text.lstrip()[:2048]
    return head.startswith("<") and bool(_HTML.search(head))


def parse(text: str, *, name: str, today: date) -> ParsedDigest:
    match = _TITLE.search(text[:65536])
    title = " ".join(html.unescape(match.group(1)).split())[:80] if match else ""
    shown = f" titled {title!r}" if title else ""
    raise ParseError(
        f"{name}: an HTML page{shown}, not a digest; the scraper probably saved an error "
        "or login page"
    )
