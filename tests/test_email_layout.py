"""The email's layout in a real browser: Debian's chromium driven by Playwright, on the HTML
part of rendered issues loaded with ``page.set_content`` (no server).

* At a phone's width (390 px) with every ``<style>`` element removed (the Gmail app with
  non-Google accounts, some webmail keep only inline styles), nothing scrolls sideways.
* The dark-mode rules in ``<style>`` still apply with ``prefers-color-scheme: dark``.

Without /usr/bin/chromium or the playwright package these tests skip with the reason (the
launch follows tests/test_web_browser.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from newsletter.render import EmailRenderer
from tests.browser import launched, require_browser
from tests.test_render import SITE, hostile_big_issue, issue, three_papers

require_browser()

from playwright.sync_api import Browser, ViewportSize  # noqa: E402

PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launched()


def without_style(html: str) -> str:
    stripped = re.sub(r"<style\b[^>]*>.*?</style>", "", html, flags=re.S | re.I)
    assert "<style" not in stripped and "@media" not in stripped
    return stripped


def long_word_issue() -> str:
    """An issue whose title, authors and abstract hold very long unbroken words."""
    from newsletter.domain import MatchField, Reason, ScoredPaper
    from tests.factories import make_paper

    word = "Supercalifragilistic" * 12
    paper = make_paper(
        99,
        f"{word} diffusion",
        f"{word}. https://example.org/{word} and more text. Code at https://github.com/a/{word}.",
        authors=(word,),
        arxiv_id="2501.00099",
    )
    content = issue(
        [*three_papers(), ScoredPaper(paper, 1.0, (Reason(word, MatchField.TITLE, 1.0),))]
    )
    return EmailRenderer(None, SITE).render(content).html


@pytest.mark.parametrize("which", ["three", "fifty", "long_words"])
def test_no_sideways_scroll_at_390px_without_style(browser: Browser, which: str) -> None:
    renderer = EmailRenderer(None, SITE)
    html = {
        "three": lambda: renderer.render(issue(three_papers())).html,
        "fifty": lambda: renderer.render(issue(hostile_big_issue(50))).html,
        "long_words": long_word_issue,
    }[which]()
    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        page.set_content(without_style(html))
        assert page.evaluate("document.querySelectorAll('style').length") == 0
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        container = page.evaluate(
            "document.querySelector('table.container').getBoundingClientRect().width"
        )
        assert container <= 390
        # the titles list and the cards are there and visible
        assert page.locator("ol.toc li").count() >= 3
        assert page.locator("table.card").first.is_visible()
    finally:
        context.close()


def test_desktop_width_is_capped_at_600px(browser: Browser) -> None:
    html = EmailRenderer(None, SITE).render(issue(three_papers())).html
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        for document in (html, without_style(html)):
            page.set_content(document)
            width = page.evaluate(
                "document.querySelector('table.container').getBoundingClientRect().width"
            )
            assert width == 600
    finally:
        context.close()


def test_dark_mode_rules_apply(browser: Browser) -> None:
    html = EmailRenderer(None, SITE).render(issue(three_papers())).html
    colors = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=PHONE, color_scheme=scheme)
        try:
            page = context.new_page()
            page.set_content(html)
            colors[scheme] = page.evaluate(
                "[getComputedStyle(document.querySelector('table.container')).backgroundColor,"
                " getComputedStyle(document.querySelector('a.title')).color]"
            )
        finally:
            context.close()
    assert colors["light"] == ["rgb(255, 255, 255)", "rgb(29, 78, 216)"]
    assert colors["dark"] == ["rgb(31, 41, 55)", "rgb(147, 197, 253)"]
