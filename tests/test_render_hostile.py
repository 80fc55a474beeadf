"""Hostile paper text and names cannot change the markup of an email, a feed or a web page.

Issue 12: a title holding a slot token injected a ``style`` attribute into the archived page,
an author named like a slot token made every issue holding that paper fail (KeyError), and
``javascript:`` links reached the email and the feeds. The renderer is now injection-proof by
construction (templates are cut at their slots before any value exists; values are joined in
escaped and never scanned again) and only http(s) links from digests become links. The
property tests put arbitrary text, slot tokens, Jinja syntax, quotes, HTML and non-http URLs
into every paper field and the subscriber's name, and check the structure of what comes out.
"""

from __future__ import annotations

import email
import email.policy
import functools
import html as html_module
import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from newsletter.config import load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    FeedItem,
    IssueContent,
    MatchField,
    Paper,
    Reason,
    RenderedIssue,
    ScoredPaper,
    SiteInfo,
)
from newsletter.feeds import build_feeds
from newsletter.limits import http_url
from newsletter.profile import parse_profile
from newsletter.render import EmailRenderer, authors_label
from newsletter.render_html import (
    ABSTRACT_TAGS,
    abstract_plain_text,
    sanitize_abstract,
    slot,
    strip_controls,
    title_html,
)
from newsletter.web.context import WebContext
from newsletter.web.pages import paper_view
from tests.conftest import NOW, ROOT
from tests.factories import make_paper, make_subscriber, run_once

BASE_URL = "https://papers.example.org"
SITE = SiteInfo(
    name="Paper Digest",
    from_address="digest@papers.example.org",
    from_name="Paper Digest",
    base_url=BASE_URL,
    list_id="papers.example.org",
    paper_url_template="https://arxiv.org/a/search?query={title}",
)
SLOT_DATE = date(2025, 3, 12)
CREATED = datetime(2025, 3, 12, 6, 0, tzinfo=UTC)
PROFILE = parse_profile('diffusion "language model"')
LINK_REL = "noopener noreferrer nofollow"

#: Pieces that have broken, or could break, a renderer that trusted its input.
NASTY = [
    slot("title"),
    slot("abstract"),
    slot("url"),
    slot("meta"),
    slot("reasons"),
    slot("cards"),
    slot("no_such_slot"),
    "ZZNLSLOT",
    "ZZ",
    "{{ 7 * 7 }}",
    "{% for x in y %}",
    "{# c #}",
    "{{ slots.title }}",
    '"',
    "'",
    "`",
    '" style="position:fixed;top:0;width:100%;height:100%" x="',
    "' onmouseover='alert(1)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)" style="color:red" title="t" onclick="x()">a</a>',
    "<style>body{display:none}</style>",
    "</a></div></td></tr></table>",
    "<!--",
    "-->",
    "]]>",
    "&amp;",
    "&#34;",
    "&",
    "<",
    ">",
    "[x](javascript:alert(1))",
    "[y](https://ok.example/a?b=1&c=2)",
    "[z](/relative/link)",
    "[w](//evil.example/x)",
    "\n[ref]: javascript:alert(2)\n",
    "<https://auto.example/>",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https://ok.example/?q=\"'<>",
    "\x00",
    "\x1b[31m",
    "\r\n",
    "\n\n",
    "\t",
    "\u2028",
    "\x85",
    "\ud800",
    "\ufeff",
    "diffusion",
    "language model",
    "Diffusion",
    " ",
]

#: Paper URLs that must never become a link; each is also distinctive enough to look for.
BAD_URLS = [
    "javascript:alert('url')",
    "JavaScript:alert('url')",
    " javascript:alert('url')",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgndXJsJyk8L3NjcmlwdD4=",
    "vbscript:msgbox('url')",
    "/relative/path-only",
    "//evil.example/protocol-relative",
    "http:no-host-here",
    "https://has space.example/",
    "https://ok.example/\x00nul",
    "https://ok.example/\ud800surrogate",
]
GOOD_URLS = [
    "https://papers.example.net/p/1",
    "http://example.org/a?b=1&c=%22quoted%22",
    "https://example.org/a\"b'c<d>e",
]


def hostile_text(max_pieces: int = 6) -> st.SearchStrategy[str]:
    """Arbitrary text mixed with the pieces above, bounded in size."""
    piece = st.one_of(st.text(max_size=30), st.sampled_from(NASTY))
    return st.lists(piece, max_size=max_pieces).map("".join)


@st.composite
def hostile_papers(draw: st.DrawFn, paper_id: int) -> Paper:
    url = draw(st.one_of(st.none(), st.sampled_from(BAD_URLS + GOOD_URLS), hostile_text(3)))
    return make_paper(
        paper_id,
        draw(hostile_text()),
        draw(hostile_text(12)),
        authors=tuple(draw(st.lists(hostile_text(3), max_size=4))),
        arxiv_id=draw(st.one_of(st.none(), hostile_text(2))),
        url=url,
        key=f"hostile:{paper_id}",
    )


@st.composite
def hostile_issues(draw: st.DrawFn) -> IssueContent:
    papers = [draw(hostile_papers(i)) for i in range(1, draw(st.integers(0, 3)) + 1)]
    scored = [
        ScoredPaper(paper=p, score=2.0 - i / 10, reasons=(Reason(draw(hostile_text(2)), f, 0.5),))
        for i, (p, f) in enumerate(
            zip(papers, [MatchField.TITLE, MatchField.ABSTRACT, MatchField.TITLE], strict=False)
        )
    ]
    sub = make_subscriber(name=draw(hostile_text(4)), email="eve@example.com", token="tok-eve")
    return IssueContent(
        subscriber=sub,
        slot_date=SLOT_DATE,
        papers=tuple(scored),
        profile=PROFILE,
        created_at=CREATED,
    )


@functools.cache
def renderer(max_html_bytes: int) -> EmailRenderer:
    """One renderer per budget for the whole module, as a run keeps one (cards are cached)."""
    return EmailRenderer(None, SITE, max_html_bytes=max_html_bytes)


# ----------------------------------------------------------------------------- HTML structure


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of the elements the checks read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cards: list[dict[str, Any]] = []  # per card: title text, link, byline
        self.texts: dict[str, list[str]] = {}  # class -> text of each element of that class
        self._open: list[tuple[str, str | None]] = []  # (tag, class) of the open elements
        self._capture: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        assert len(attributes) == len(attrs), f"repeated attribute on <{tag}>: {attrs}"
        self.tags.append((tag, attributes))
        if tag in ("meta", "br"):  # void elements of the template
            return
        cls = attributes.get("class")
        self._open.append((tag, cls))
        if cls in ("title", "meta", "brand", "intro", "issue-date"):
            self._capture.append([])
            if cls == "title":
                self.cards.append({"href": attributes.get("href"), "meta": None})

    def handle_endtag(self, tag: str) -> None:
        assert self._open, f"</{tag}> without an open element"
        open_tag, cls = self._open.pop()
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"
        if cls in ("title", "meta", "brand", "intro", "issue-date"):
            text = "".join(self._capture.pop())
            self.texts.setdefault(cls, []).append(text)
            if cls == "title":
                self.cards[-1]["title"] = text
            elif cls == "meta":
                self.cards[-1]["meta"] = text

    def handle_data(self, data: str) -> None:
        for captured in self._capture:
            captured.append(data)


def elements(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    parser.close()
    assert not parser._open, f"unclosed elements: {parser._open}"
    return parser


@functools.cache
def benign_styles() -> tuple[frozenset[tuple[str, str | None, str]], frozenset[str]]:
    """The (tag, class, style) triples and the tags of a harmless issue with every feature:
    cards with and without a byline, highlights, a "more papers" block, formatted abstracts."""
    papers = [
        ScoredPaper(
            make_paper(
                i,
                f"Diffusion language model {i}",
                "A *diffusion* [link](https://example.org/x) `code` **bold**\n\n- one\n- two",
                authors=("Ann One",) if i % 2 else (),
            ),
            3.0 - i / 10,
            (Reason("diffusion", MatchField.TITLE, 1.0),),
        )
        for i in range(1, 40)
    ]
    tags: list[tuple[str, dict[str, str | None]]] = []
    for shown in (papers, []):
        content = IssueContent(
            subscriber=make_subscriber(),
            slot_date=SLOT_DATE,
            papers=tuple(shown),
            profile=PROFILE,
            created_at=CREATED,
        )
        tags += elements(renderer(20_000).render(content).html).tags
    found = {attrs.get("class") for _, attrs in tags}
    assert {"more-link", "meta", "hl", "empty"} <= found
    styled = frozenset(
        (tag, attrs.get("class"), attrs["style"] or "") for tag, attrs in tags if "style" in attrs
    )
    return styled, frozenset(tag for tag, _ in tags)


def check_html(html: str, content: IssueContent, shown: Sequence[ScoredPaper]) -> None:
    """The HTML part has the template's structure, whatever the values were."""
    styled, template_tags = benign_styles()
    parsed = elements(html)
    for tag, attrs in parsed.tags:
        assert tag in template_tags | ABSTRACT_TAGS, tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "src" not in attrs, (tag, attrs)
        if "style" in attrs:
            assert (tag, attrs.get("class"), attrs["style"]) in styled, (tag, attrs)
        if tag == "a":
            href = attrs.get("href")
            if "class" in attrs:  # the template's links
                assert attrs["class"] in (
                    "title",
                    "footer-link",
                    "more-link",
                    "feedback-link",
                    "mute-link",
                    "paper-link",
                    "full-link",
                ), attrs
                assert set(attrs) == {"class", "href", "style"}, attrs
                assert href is not None
                if attrs["class"] in ("feedback-link", "mute-link"):  # our pages, with a token
                    assert href.startswith((BASE_URL + "/feedback/", BASE_URL + "/mute/")), href
            elif set(attrs) == {"href"} and href is not None and "#paper-" in href:
                # the titles list: the card's anchor, or the paper's in the web archive
                archive = rf"{re.escape(BASE_URL)}/issues/[\w-]+/{SLOT_DATE.isoformat()}"
                assert re.fullmatch(rf"({archive})?#paper-[1-9][0-9]*", href), href
                continue
            else:  # a link kept by the abstract sanitizer
                assert attrs.get("rel") == LINK_REL, attrs
                assert set(attrs) <= {"href", "rel"}, attrs
            if href is not None:
                assert href.startswith(BASE_URL + "/") or http_url(href) == href, href
                assert urlsplit(href).scheme in ("http", "https"), href
        else:
            assert "href" not in attrs, (tag, attrs)
    assert len(parsed.cards) == len(shown)
    for card, scored in zip(parsed.cards, shown, strict=True):
        paper = scored.paper
        assert card["href"] == SITE.paper_url(paper)
        assert card["title"] == html_module.unescape(
            re.sub(r"<[^>]*>", "", title_html(paper.title))
        )
        assert card["meta"] == (authors_label(paper) or None)
    name = strip_controls(content.subscriber.name)
    (intro,) = parsed.texts["intro"]
    if name:
        assert intro.startswith(f"Hello {name},")
    else:
        assert not intro.startswith("Hello")
    assert parsed.texts["brand"] == ["Paper Digest"]


def check_links(text: str, html: str, shown: Sequence[ScoredPaper]) -> None:
    """The text part puts each card's http(s) link on a line of its own, and a paper URL that
    is not http(s) is in neither part."""
    lines = text.split("\n")
    for rank, scored in enumerate(shown, start=1):
        paper = scored.paper
        link = SITE.paper_url(paper)
        assert http_url(link) == link
        label = "Abstract" if paper.arxiv_id or link == paper.url else "Search arXiv"
        assert " " * len(f"{rank}. ") + f"{label}: {link}" in lines
        if paper.url in BAD_URLS:
            bad = paper.url.strip()
            if bad not in "".join([paper.title, paper.abstract, *paper.authors]):
                assert bad not in text and str(escape(bad)) not in html


def parse_message(rendered: RenderedIssue) -> tuple[EmailMessage, str, str]:
    msg = email.message_from_bytes(rendered.message, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    return msg, plain.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


# ----------------------------------------------------------------------------- properties


@settings(max_examples=75, deadline=None)
@given(content=hostile_issues(), budget=st.sampled_from([100_000, 9_000]))
def test_any_paper_text_renders_an_email_with_the_templates_structure(
    content: IssueContent, budget: int
) -> None:
    rendered = renderer(budget).render(content)
    msg, text, html = parse_message(rendered)
    assert html == rendered.html.replace("\r\n", "\n")
    assert text == rendered.text
    (to,) = msg["To"].addresses
    assert to.addr_spec == "eve@example.com"
    assert msg["Subject"] == rendered.subject
    assert msg["Bcc"] is None and msg["Cc"] is None
    n_shown = html.count('<a class="title"')
    assert 0 <= n_shown <= len(content.papers)
    if budget == 100_000:
        assert n_shown == len(content.papers)
    shown = content.papers[:n_shown]
    check_html(html, content, shown)
    check_links(text, html, shown)


@settings(max_examples=75, deadline=None)
@given(papers=st.lists(st.integers(1, 3).flatmap(hostile_papers), max_size=3), name=hostile_text(4))
def test_any_paper_text_gives_feeds_with_http_links_only(papers: list[Paper], name: str) -> None:
    items = [
        FeedItem(
            paper=p,
            when=datetime(2025, 3, 12, i, tzinfo=UTC),
            reasons=(Reason(name, MatchField.TITLE, 1.0),),
            score=1.0,
        )
        for i, p in enumerate({p.id: p for p in papers}.values())
    ]
    sub = make_subscriber(name=name)
    for subscriber in (None, sub):
        documents = build_feeds(items, site=SITE, subscriber=subscriber)
        atom = ElementTree.fromstring(documents["atom"])
        ns = {"a": "http://www.w3.org/2005/Atom"}
        hrefs = [link.get("href") or "" for link in atom.iter("{http://www.w3.org/2005/Atom}link")]
        assert all(http_url(h) == h for h in hrefs), hrefs
        entries = atom.findall("a:entry", ns)
        assert len(entries) == len(items)
        for entry in entries:
            content = entry.findtext("a:content", default="", namespaces=ns)
            for tag, attrs in elements(content).tags:
                assert tag in ABSTRACT_TAGS, tag
                if tag == "a":
                    assert attrs.get("rel") == LINK_REL and set(attrs) <= {"href", "rel"}
                    href = attrs.get("href")
                    assert href is None or http_url(href) == href
                else:
                    assert not attrs, (tag, attrs)
        rss = ElementTree.fromstring(documents["rss"])
        for link in rss.iter("link"):
            assert http_url(link.text or "") == link.text


@settings(max_examples=75, deadline=None)
@given(abstract=hostile_text(12))
def test_sanitized_abstract_keeps_only_safe_markup(abstract: str) -> None:
    safe = sanitize_abstract(abstract)
    for tag, attrs in elements(safe).tags:
        assert tag in ABSTRACT_TAGS, tag
        if tag == "a":
            assert attrs.get("rel") == LINK_REL and set(attrs) <= {"href", "rel"}, attrs
            href = attrs.get("href")
            assert href is None or http_url(href) == href, href
        else:
            assert not attrs, (tag, attrs)
    # outside tags, quotes are entities (kept links have "<", ">" and quotes percent-encoded)
    outside_tags = re.sub(r"<[^<>]*>", "", safe)
    assert "<" not in outside_tags and ">" not in outside_tags
    assert '"' not in outside_tags and "'" not in outside_tags


# ----------------------------------------------------------------------------- the issue's cases


def marker_papers() -> list[ScoredPaper]:
    """The issue's two papers: a title holding slot tokens (its link is the title search, so
    the tokens reach the URL too), and an author named like a slot token."""
    return [
        ScoredPaper(
            make_paper(
                1,
                f'Diffusion {slot("abstract")} " style="position:fixed" {slot("title")}',
                "An abstract.",
            ),
            2.0,
            (Reason("diffusion", MatchField.TITLE, 2.0),),
        ),
        ScoredPaper(
            make_paper(
                2,
                "Diffusion, plainly",
                f"Abstract naming {slot('reasons')}.",
                authors=(slot("no_such_slot"), slot("title"), "Ann One"),
                url="javascript:alert(document.cookie)",
                arxiv_id="2601.00002",
            ),
            1.0,
            (Reason("diffusion", MatchField.TITLE, 1.0),),
        ),
    ]


def test_slot_tokens_in_titles_and_authors_are_plain_text() -> None:
    fresh = EmailRenderer(None, SITE)
    for sub in (make_subscriber(), make_subscriber(id=2, email="bo@example.com", token="tok-bo")):
        content = IssueContent(
            subscriber=sub,
            slot_date=SLOT_DATE,
            papers=tuple(marker_papers()),
            profile=PROFILE,
            created_at=CREATED,
        )
        rendered = fresh.render(content)  # the second subscriber uses the cached cards
        _, text, html = parse_message(rendered)
        check_html(html, content, content.papers)
        check_links(text, html, content.papers)
        title_query = (
            "Diffusion+ZZNLSLOTabstractZZ+%22+style%3D%22position%3Afixed%22+ZZNLSLOTtitleZZ"
        )
        assert f'href="https://arxiv.org/a/search?query={title_query}"' in html
        assert (
            ">Diffusion</mark> ZZNLSLOTabstractZZ &#34; style=&#34;position:fixed&#34; "
            "ZZNLSLOTtitleZZ</a>"
        ) in html
        assert ">ZZNLSLOTno_such_slotZZ, ZZNLSLOTtitleZZ, Ann One</div>" in html
        assert 'href="https://arxiv.org/abs/2601.00002"' in html
        assert ">Abstract naming ZZNLSLOTreasonsZZ.</div>" in html
        assert "<p>Abstract naming ZZNLSLOTreasonsZZ.</p>" in fresh.render_page(content)
        assert "javascript" not in html and "javascript" not in text
        assert "   Abstract: https://arxiv.org/abs/2601.00002\n" in text
        assert "   ZZNLSLOTno_such_slotZZ, ZZNLSLOTtitleZZ, Ann One\n" in text


def test_a_dropped_paper_url_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    paper = make_paper(1, "Diffusion", url="data:text/html,logged-once-test", arxiv_id="2601.1")
    fresh = EmailRenderer(None, SITE)
    with caplog.at_level(logging.WARNING, logger="newsletter.domain"):
        for i in range(1, 4):
            sub = make_subscriber(id=i, email=f"s{i}@example.com", token=f"tok-{i}")
            content = IssueContent(
                subscriber=sub,
                slot_date=SLOT_DATE,
                papers=(ScoredPaper(paper, 1.0, ()),),
                profile=PROFILE,
                created_at=CREATED,
            )
            assert "https://arxiv.org/abs/2601.1" in fresh.render(content).text
        build_feeds([FeedItem(paper=paper, when=CREATED)], site=SITE, subscriber=None)
    assert [r.getMessage() for r in caplog.records] == [
        f"paper {paper.guid}: URL 'data:text/html,logged-once-test' is not an http(s) link; "
        "linking to arXiv or the title search instead"
    ]


def test_paper_links_fall_back_and_are_encoded() -> None:
    assert SITE.paper_url(make_paper(1, "T", url="https://ok.example/p")) == "https://ok.example/p"
    assert SITE.paper_url(make_paper(1, "T", url="javascript:x()", arxiv_id=" 2601.00001v2 ")) == (
        "https://arxiv.org/abs/2601.00001v2"
    )
    assert SITE.paper_url(make_paper(1, "T", arxiv_id='hep-th/9901001"><b>')) == (
        "https://arxiv.org/abs/hep-th/9901001%22%3E%3Cb%3E"
    )
    assert SITE.paper_url(make_paper(1, 'A "b" & c', url="data:,x")) == (
        "https://arxiv.org/a/search?query=A+%22b%22+%26+c"
    )


def test_abstract_links_keep_only_http_href_and_rel() -> None:
    abstract = (
        '<a href="https://ok.example/a" title="t" lang="en" style="color:red" id="i">ok</a> '
        "[rel](/relative) [proto](//evil.example/x) [js](javascript:alert(1)) "
        "<a href='https://ok.example/?q=\"x\"&lt;'>quote</a> He said \"hi\" & 'bye'"
    )
    assert sanitize_abstract(abstract) == (
        f'<p><a href="https://ok.example/a" rel="{LINK_REL}">ok</a> '
        f'<a rel="{LINK_REL}">rel</a> <a rel="{LINK_REL}">proto</a> <a rel="{LINK_REL}">js</a> '
        f'<a href="https://ok.example/?q=%22x%22%3C" rel="{LINK_REL}">quote</a> '
        "He said &#34;hi&#34; &amp; &#39;bye&#39;</p>"
    )
    assert abstract_plain_text("See [js](javascript:alert(1)) and [ok](https://ok.example/).") == (
        "See js and [ok](https://ok.example/)."
    )
    assert abstract_plain_text("Text.\n\n[r]: javascript:alert(1)\n[s]: https://ok.example/") == (
        "Text.\n\n[s]: https://ok.example/"
    )


def test_day_page_links_only_http() -> None:
    ctx = cast(WebContext, SimpleNamespace(site=SITE))
    assert paper_view(ctx, make_paper(1, "T", url="javascript:alert(1)"))["url"] == (
        "https://arxiv.org/a/search?query=T"
    )
    assert paper_view(ctx, make_paper(1, "T", url="https://ok.example/"))["url"] == (
        "https://ok.example/"
    )


def test_an_issue_holding_the_issues_papers_is_delivered(tmp_path: Path, database_url: str) -> None:
    """End to end: the papers that made every issue fail are ingested, planned and sent."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    digest = [
        {
            "paper": {
                "title": f'Diffusion {slot("abstract")} " style="x" {slot("title")}',
                "summary": "About diffusion.",
                "upvotes": 3,
            }
        },
        {
            "paper": {
                "id": "2601.00002",
                "title": "Diffusion, plainly",
                "summary": "Diffusion.",
                "authors": [{"name": slot("no_such_slot")}, {"name": slot("title")}],
            }
        },
    ]
    (inbox / "markers.json").write_text(json.dumps(digest), encoding="utf-8")
    subscribers = tmp_path / "subscribers.toml"
    subscribers.write_text(
        '[[subscriber]]\nemail = "ada@example.org"\nname = "Ada ZZNLSLOTintroZZ"\n'
        'profile = "diffusion"\nmin_score = 0.0\n',
        encoding="utf-8",
    )
    config = load_settings(
        ROOT / "config" / "newsletter.toml",
        environ={
            "NEWSLETTER_DATABASE_URL": database_url,
            "NEWSLETTER_INBOX": str(inbox),
            "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox"),
            "NEWSLETTER_FEEDS_DIR": str(tmp_path / "feeds"),
            "NEWSLETTER_SUBSCRIBERS_FILE": str(subscribers),
            "NEWSLETTER_INBOX_SETTLE_SECONDS": "0",
        },
    )
    mailer = MemoryMailer()
    summary = run_once(config, now=NOW, mailer=mailer)
    assert (summary.papers_new, summary.issues_delivered) == (2, 1)
    ((_, raw),) = mailer.sent
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html_part = msg.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    html = html_part.get_content()
    assert "ZZNLSLOTabstractZZ &#34; style=&#34;x&#34; ZZNLSLOTtitleZZ</a>" in html
    assert ">ZZNLSLOTno_such_slotZZ, ZZNLSLOTtitleZZ</div>" in html
    assert ">Hello Ada ZZNLSLOTintroZZ,</div>" in html
    assert ">Here are 2 papers matching your profile.</div>" in html
    assert "Diffusion+ZZNLSLOTabstractZZ+%22+style%3D%22x%22+ZZNLSLOTtitleZZ" in html
