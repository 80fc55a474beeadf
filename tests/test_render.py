"""Email rendering: MIME structure, exact headers, escaping and sanitizing, CSS inlining done
once, the Gmail size budget, and a golden plain-text part.

Regenerate the golden file after an intended change with
``UPDATE_GOLDEN=1 pytest tests/test_render.py``.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import premailer
import pytest

from newsletter.domain import (
    IssueContent,
    MatchField,
    Paper,
    Profile,
    Reason,
    RenderedIssue,
    ScoredPaper,
    SiteInfo,
    Subscriber,
)
from newsletter.profile import parse_profile
from newsletter.render import EmailRenderer
from tests.factories import make_paper, make_subscriber

TEMPLATES: Path | None = None  # no override folder: the templates shipped in the package
GOLDEN = Path(__file__).resolve().parent / "golden"

SITE = SiteInfo(
    name="Paper Digest",
    from_address="digest@papers.example.org",
    from_name="Paper Digest",
    base_url="https://papers.example.org",
    list_id="papers.example.org",
    paper_url_template="https://arxiv.org/a/search?query={title}",
)
SLOT = date(2025, 3, 12)
CREATED = datetime(2025, 3, 12, 6, 0, tzinfo=UTC)
PROFILE = parse_profile('diffusion "language model"')


def subscriber(**fields: Any) -> Subscriber:
    """Ada Lovelace with this module's profile (as the golden file shows her)."""
    fields = {"name": "Ada Lovelace", "profile": 'diffusion "language model"', **fields}
    return make_subscriber(**fields)


def scored(p: Paper, score: float = 1.0, *reasons: Reason) -> ScoredPaper:
    return ScoredPaper(
        paper=p, score=score, reasons=reasons or (Reason("diffusion", MatchField.TITLE, score),)
    )


def issue(
    papers: list[ScoredPaper], sub: Subscriber | None = None, profile: Profile = PROFILE
) -> IssueContent:
    return IssueContent(
        subscriber=sub or subscriber(),
        slot_date=SLOT,
        papers=tuple(papers),
        profile=profile,
        created_at=CREATED,
    )


def three_papers() -> list[ScoredPaper]:
    return [
        scored(
            make_paper(
                1,
                "Diffusion Language Models Are Few-Shot Learners",
                "We train a *diffusion* language model on R&D text.\n\n"
                "Second paragraph with `code` "
                "and a [link](https://example.org/x).",
                authors=("Ann One", "Bob Two", "Cy Three", "Di Four", "Ed Five", "Flo Six"),
                published=date(2024, 9, 5),
                upvotes=12,
                arxiv_id="2409.01234",
            ),
            2.3456,
            Reason("diffusion", MatchField.TITLE, 1.5),
            Reason("language model", MatchField.ABSTRACT, 0.8456),
        ),
        scored(
            make_paper(
                2,
                "Sparse Attention at Scale",
                "Attention, but sparse; diffusion of ideas.",
                author_count=12,
                upvotes=1,
                url="https://papers.example.org/p/2",
            ),
            0.5,
            Reason("diffusion", MatchField.ABSTRACT, 0.5),
        ),
        scored(make_paper(3, "A Paper With No Metadata"), 0.25),
    ]


@pytest.fixture
def renderer() -> EmailRenderer:
    return EmailRenderer(TEMPLATES, SITE)


def parse(rendered: RenderedIssue) -> EmailMessage:
    msg = email.message_from_bytes(rendered.message, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    plain, html = list(msg.iter_parts())
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    return plain, html


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


# ----------------------------------------------------------------------------- structure


def test_multipart_alternative_text_then_html(renderer: EmailRenderer) -> None:
    rendered = renderer.render(issue(three_papers()))
    msg = parse(rendered)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    plain, html = parts(msg)
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html.replace("\r\n", "\n")


def test_headers_exact(renderer: EmailRenderer) -> None:
    sub = subscriber()
    rendered = renderer.render(issue(three_papers(), sub))
    msg = parse(rendered)
    assert msg["From"] == "Paper Digest <digest@papers.example.org>"
    assert msg["To"] == "Ada Lovelace <ada@example.com>"
    assert msg["Subject"] == "Paper Digest: 3 papers for Wed 12 Mar 2025"
    assert rendered.subject == "Paper Digest: 3 papers for Wed 12 Mar 2025"
    assert msg["Date"] == "Wed, 12 Mar 2025 06:00:00 +0000"
    assert msg["Message-ID"] == SITE.message_id(sub, SLOT) == rendered.message_id
    assert msg["List-Id"] == "Paper Digest <papers.example.org>"
    assert msg["List-Unsubscribe"] == "<https://papers.example.org/unsubscribe/tok-ada>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["MIME-Version"] == "1.0"


def test_subject_singular_and_empty(renderer: EmailRenderer) -> None:
    one = renderer.render(issue(three_papers()[:1]))
    assert one.subject == "Paper Digest: 1 paper for Wed 12 Mar 2025"
    none = renderer.render(issue([]))
    assert none.subject == "Paper Digest: 0 papers for Wed 12 Mar 2025"
    assert "No new papers matched your profile" in none.html
    assert "No new papers matched your profile" in none.text


def test_lines_crlf_and_at_most_998_octets(renderer: EmailRenderer) -> None:
    long_abstract = "diffusion " * 2000  # one 20,000-character line
    rendered = renderer.render(issue([scored(make_paper(1, "Long", long_abstract))]))
    raw = rendered.message
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    raw.decode("ascii")  # 7-bit clean: quoted-printable bodies, RFC 2047 headers


def test_render_twice_is_byte_identical(renderer: EmailRenderer) -> None:
    content = issue(three_papers())
    assert renderer.render(content).message == renderer.render(content).message
    assert (
        EmailRenderer(TEMPLATES, SITE).render(content).message == renderer.render(content).message
    )


# ----------------------------------------------------------------------------- HTML content


def test_html_inlined_and_keeps_dark_mode(renderer: EmailRenderer) -> None:
    html = renderer.render(issue(three_papers())).html
    cards = re.findall(r'<table role="presentation" class="card"[^>]*>', html)
    assert len(cards) == 3
    assert all('style="' in c for c in cards)
    assert re.search(
        r'<a class="title" href="https://arxiv.org/abs/2409.01234" style="[^"]*font-size:17px', html
    )
    style_block = html.split("<style", 1)[1].split("</style>", 1)[0]
    assert "@media (prefers-color-scheme: dark)" in style_block
    assert ".hl { background-color: #854d0e !important;" in style_block
    assert re.search(r'<mark class="hl" style="[^"]*background-color:#fef08a', html)
    assert '<div class="preheader" style="display:none' in html


def test_html_card_fields(renderer: EmailRenderer) -> None:
    html = renderer.render(issue(three_papers())).html
    assert ">#1</div>" in html and ">#2</div>" in html and ">#3</div>" in html
    assert (
        ">Ann One, Bob Two, Cy Three, Di Four, Ed Five et al. · 5 Sep 2024 · 12 upvotes</div>"
        in html
    )
    assert ">12 authors · 1 upvote</div>" in html
    assert 'href="https://papers.example.org/p/2"' in html
    assert 'href="https://arxiv.org/a/search?query=A+Paper+With+No+Metadata"' in html
    assert "Why you got this (score 2.35)" in html
    assert "“diffusion” in title: +1.50 <a " in html
    assert "“language model” in abstract: +0.85 <a " in html
    assert "Sent Wed 12 Mar 2025, 07:00 CET" in html
    assert '<div class="greeting" style="padding-bottom:4px">Hello Ada Lovelace,</div>' in html
    assert ">Here are 3 papers matching your profile.</div>" in html
    assert 'href="https://papers.example.org/unsubscribe/tok-ada"' in html
    assert 'href="https://papers.example.org/preferences/tok-ada"' in html
    assert 'href="https://papers.example.org/issues/tok-ada/2025-03-12"' in html
    # the preheader lists the first titles
    assert (
        "Diffusion Language Models Are Few-Shot Learners · Sparse Attention at Scale · A Paper"
        in html
    )


def test_highlighting_wraps_matches_and_keeps_entities(renderer: EmailRenderer) -> None:
    html = renderer.render(issue(three_papers())).html
    mark_open = re.search(r'<mark class="hl" style="[^"]*"[^>]*>', html)
    assert mark_open is not None
    m = mark_open.group(0)
    # title: single word and phrase matches
    assert f">{m}Diffusion</mark> {m}Language Models</mark> Are Few-Shot Learners</a>" in html
    # abstract: inside markdown's <em>, next to an entity that must stay intact
    # (the email shows the abstract's first sentences as text: markdown applied, no tags)
    assert (
        f"We train a {m}diffusion</mark> {m}language model</mark> on R&amp;D text. "
        f"Second paragraph with code and a link.</div>" in html
    )
    assert "&amp;amp;" not in html
    # the web archive's page shows the whole abstract, markup kept, highlights inside it
    page = renderer.render_page(issue(three_papers()))
    assert (
        f"<p>We train a <em>{m}diffusion</mark></em> {m}language model</mark> on R&amp;D text.</p>"
        in page
    )
    assert '<a href="https://example.org/x" rel="noopener noreferrer nofollow">link</a>' in page


def test_hostile_titles_are_harmless(renderer: EmailRenderer) -> None:
    papers = [
        scored(make_paper(1, "<script>alert(1)</script> diffusion")),
        scored(make_paper(2, "Nice title\r\nBcc: evil@example.com")),
    ]
    rendered = renderer.render(issue(papers))
    msg = parse(rendered)
    assert "<script" not in rendered.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert msg["Bcc"] is None
    assert b"Bcc" not in header_block(rendered.message)
    assert msg["Subject"] == "Paper Digest: 2 papers for Wed 12 Mar 2025"
    assert "2. Nice title Bcc: evil@example.com\n" in rendered.text


def test_abstract_is_sanitized_after_markdown(renderer: EmailRenderer) -> None:
    abstract = (
        'Click [x](javascript:alert(1)) or <img src=x onerror="alert(1)"> or '
        '<a href="https://ok.example/" onclick="evil()">ok</a> <script>bad()</script> AT&T.'
    )
    content = issue([scored(make_paper(1, "Sanitize me", abstract))])
    rendered = renderer.render(content)
    html = rendered.html
    page = renderer.render_page(content)
    for bad in ("javascript:", "onerror", "<img", "onclick", "<script", "bad()"):
        assert bad not in html, bad
        assert bad not in page, bad
    # the email's short abstract is the sanitized abstract's text; the page keeps its links
    assert ">Click x or or ok AT&amp;T.</div>" in html
    assert '<a rel="noopener noreferrer nofollow">x</a>' in page
    assert '<a href="https://ok.example/" rel="noopener noreferrer nofollow">ok</a>' in page
    assert "AT&amp;T." in page
    assert "<img" not in rendered.text and "<script" not in rendered.text
    # the text part has the same text, no tags, and no link whose target is not http(s)
    assert "Click x or or ok AT&T." in " ".join(rendered.text.split())
    assert "javascript" not in rendered.text


# ----------------------------------------------------------------------------- headers from names


def test_name_with_crlf_cannot_inject_a_header(renderer: EmailRenderer) -> None:
    sub = subscriber(name="Eve\r\nBcc: evil@example.com", email="eve@example.com")
    rendered = renderer.render(issue(three_papers(), sub))
    msg = parse(rendered)
    assert msg["Bcc"] is None
    to = msg["To"]
    assert len(to.addresses) == 1
    assert to.addresses[0].addr_spec == "eve@example.com"
    # RFC 5322 specials become spaces in the header (see render.header_display_name)
    assert to.addresses[0].display_name == "Eve Bcc evil example com"
    assert b"\r\nBcc" not in header_block(rendered.message)
    assert "Hello Eve Bcc: evil@example.com," in rendered.html


def test_non_ascii_name_and_subject_are_rfc2047_encoded() -> None:
    site = SiteInfo(
        name="Papiers du Zoé",
        from_address="digest@papers.example.org",
        from_name="Zoé Digest",
        base_url=SITE.base_url,
        list_id=SITE.list_id,
        paper_url_template=SITE.paper_url_template,
    )
    sub = subscriber(name="Zoë Ångström", email="zoe@example.com")
    rendered = EmailRenderer(TEMPLATES, site).render(issue(three_papers(), sub))
    headers = header_block(rendered.message).decode("ascii")
    to_line = re.search(r"^To: (.*(?:\r\n .*)*)", headers, re.M)
    assert to_line is not None and "=?utf-8?" in to_line.group(1)
    subject_line = re.search(r"^Subject: (.*(?:\r\n .*)*)", headers, re.M)
    assert subject_line is not None and "=?utf-8?" in subject_line.group(1)
    msg = parse(rendered)
    assert msg["To"].addresses[0].display_name == "Zoë Ångström"
    assert msg["From"].addresses[0].display_name == "Zoé Digest"
    assert msg["Subject"] == "Papiers du Zoé: 3 papers for Wed 12 Mar 2025"
    assert "Hello Zoë Ångström," in rendered.html


# ----------------------------------------------------------------------------- performance shape


def test_premailer_runs_per_template_and_card_not_per_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    original: Callable[..., Any] = premailer.Premailer.transform

    def counting(self: premailer.Premailer, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(premailer.Premailer, "transform", counting)
    papers = [
        scored(make_paper(i, f"Diffusion paper {i}", "About diffusion.")) for i in range(1, 11)
    ]
    renderer = EmailRenderer(TEMPLATES, SITE)
    renderer.render(issue(papers, subscriber(id=1, token="tok-1")))
    # shell, view link, greeting, titles list, "more papers" line, <mark>, reason row, paper
    # link, and the card (papers without a byline): templates are inlined with slot tokens
    # only, so a paper's card never runs premailer
    assert calls == 9
    for i in range(2, 51):
        renderer.render(
            issue(papers, subscriber(id=i, email=f"s{i}@example.com", token=f"tok-{i}"))
        )
    assert calls == 9
    renderer.render(issue(papers + [scored(make_paper(11, "A new one"))]))
    assert calls == 9
    renderer.render(issue([scored(make_paper(12, "With a byline", upvotes=3))]))
    assert calls == 10  # the card with a byline, once
    renderer.render(issue([scored(make_paper(13, "Another byline", authors=("Ann One",)))]))
    assert calls == 10


# ----------------------------------------------------------------------------- size budget


def test_large_issue_is_cut_below_100kb_with_honest_more_link(renderer: EmailRenderer) -> None:
    abstract = ("We study diffusion models for language modeling at scale. " * 20).strip()
    papers = [
        scored(
            make_paper(
                i, f"Diffusion study number {i}", abstract, authors=("A. Author", "B. Author")
            ),
            3.0 - i / 1000,
        )
        for i in range(1, 301)
    ]
    rendered = renderer.render(issue(papers))
    html = rendered.html
    assert len(html.encode("utf-8")) <= 100_000
    shown = len(re.findall(r'class="card"', html))
    assert 10 <= shown < 300
    assert f">#{shown}</div>" in html and f">#{shown + 1}</div>" not in html
    more = 300 - shown
    issue_url = "https://papers.example.org/issues/tok-ada/2025-03-12"
    links = re.findall(
        rf'<a class="more-link" href="{re.escape(issue_url)}"[^>]*>'
        rf"{more} more papers in the full issue on the web</a>",
        html,
    )
    assert len(links) == 2  # under the titles list and after the cards
    assert f">{shown} of 300 papers here; {more} more in the full issue on the web.</div>" in html
    # every title is listed, in order
    items = re.findall(r"<li>(?:<a [^>]*>)?(Diffusion study number \d+)(?:</a>)?</li>", html)
    assert items == [f"Diffusion study number {i}" for i in range(1, 301)]
    assert rendered.subject == "Paper Digest: 300 papers for Wed 12 Mar 2025"
    assert f"\n{more} more papers in the full issue on the web: {issue_url}\n" in rendered.text
    assert f"\n{shown}. Diffusion study number {shown}\n" in rendered.text
    assert f"#paper-{shown + 1}\n" in rendered.text
    assert max(len(line) for line in rendered.message.split(b"\r\n")) <= 998


def test_small_budget_still_links_everything(renderer: EmailRenderer) -> None:
    small = EmailRenderer(TEMPLATES, SITE, max_html_bytes=1)
    rendered = small.render(issue(three_papers()))
    assert 'class="card"' not in rendered.html
    assert "3 more papers in the full issue on the web</a>" in rendered.html
    assert ">0 of 3 papers here; 3 more in the full issue on the web.</div>" in rendered.html


# ----------------------------------------------------------------------------- golden text part


def test_text_part_matches_golden(renderer: EmailRenderer) -> None:
    text = renderer.render(issue(three_papers())).text
    golden = GOLDEN / "issue.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert "<" not in text.replace("<https", "")
    assert max(len(line) for line in text.splitlines()) <= 78


def test_author_and_feedback_reasons_carry_their_sign_and_no_mute_link(
    renderer: EmailRenderer,
) -> None:
    paper = make_paper(7, "Diffusion for speech", "Abstract.", authors=("Ada Lovelace",))
    reasons = (
        Reason("diffusion", MatchField.TITLE, 3.0),
        Reason("Ada Lovelace", MatchField.AUTHORS, 1.5),
        Reason("unlike papers you marked less: X", MatchField.FEEDBACK, -2.0),
    )
    rendered = renderer.render(issue([scored(paper, 2.5, *reasons)]))
    text, html = (p.get_content() for p in parts(parse(rendered)))
    assert "\u201cdiffusion\u201d in title: +3.00" in text
    assert "\u201cAda Lovelace\u201d in authors: +1.50" in text
    assert "\u201cunlike papers you marked less: X\u201d in feedback: -2.00" in text
    reason_divs = re.findall(r'<div class="reason"[^>]*>(.*?)</div>', html, re.S)
    assert len(reason_divs) == 3
    diffusion, author, feedback = reason_divs
    assert "+3.00" in diffusion and "mute" in diffusion
    assert "in authors: +1.50" in author and "mute" not in author
    assert "in feedback: -2.00" in feedback and "mute" not in feedback


# ----------------------------------------------------------------------------- issue 16: layout


def toc_links(html: str) -> list[tuple[str | None, str]]:
    """The titles list's items: (href or None, text), in order."""
    toc = html.split('<ol class="toc"', 1)[1].split("</ol>", 1)[0]
    items = re.findall(r"<li>(.*?)</li>", toc)
    out: list[tuple[str | None, str]] = []
    for item in items:
        link = re.fullmatch(r'<a href="([^"]*)">(.*)</a>', item)
        out.append((link.group(1), link.group(2)) if link else (None, item))
    return out


def test_titles_list_opens_the_email_in_issue_order_with_card_anchors(
    renderer: EmailRenderer,
) -> None:
    rendered = renderer.render(issue(three_papers()))
    html = rendered.html
    assert toc_links(html) == [
        ("#paper-1", "Diffusion Language Models Are Few-Shot Learners"),
        ("#paper-2", "Sparse Attention at Scale"),
        ("#paper-3", "A Paper With No Metadata"),
    ]
    assert html.index('<ol class="toc"') < html.index('class="card"')
    anchors = re.findall(r'<table role="presentation" class="card" id="(paper-\d+)"', html)
    assert anchors == ["paper-1", "paper-2", "paper-3"]
    assert "more papers in the full issue" not in html
    text = rendered.text
    assert text.index("In this issue:\n1. Diffusion Language") < text.index(
        "\n1. Diffusion Language Models Are Few-Shot Learners\n   Ann One"
    )


def test_card_links_per_paper(renderer: EmailRenderer) -> None:
    code = make_paper(
        4,
        "Code paper",
        "We release it. Code is available at https://github.com/ada/engine.",
        arxiv_id="2501.00004v2",
    )
    html = renderer.render(issue([*three_papers(), scored(code)])).html
    rows = re.findall(r'<div class="links"[^>]*>(.*?)</div>', html)
    links = [re.findall(r'<a class="paper-link" href="([^"]+)"[^>]*>([^<]+)</a>', r) for r in rows]
    assert links == [
        [
            ("https://arxiv.org/abs/2409.01234", "Abstract"),
            ("https://arxiv.org/pdf/2409.01234", "PDF"),
            ("https://huggingface.co/papers/2409.01234", "Hugging Face"),
        ],
        [("https://papers.example.org/p/2", "Abstract")],
        [("https://arxiv.org/a/search?query=A+Paper+With+No+Metadata", "Search arXiv")],
        [
            ("https://arxiv.org/abs/2501.00004v2", "Abstract"),
            ("https://arxiv.org/pdf/2501.00004", "PDF"),
            ("https://huggingface.co/papers/2501.00004", "Hugging Face"),
            ("https://github.com/ada/engine", "Code"),
        ],
    ]


SENTENCES = (
    "We compare e.g. transformers and SSMs, following Smith et al. on 3.5 billion tokens. "
    "Our model gains 14\\% on $L_2$ error. "
    "PaccMann$^{RL}$ is the baseline. "
    "A fourth sentence is only in the full abstract."
)


def test_short_abstract_cuts_at_sentences_and_links_the_whole_one(
    renderer: EmailRenderer,
) -> None:
    paper = make_paper(1, "PaccMann$^{RL}$ beats 14\\% of $L_2$ baselines", SENTENCES)
    content = issue([scored(paper)])
    rendered = renderer.render(content)
    html, text = rendered.html, rendered.text
    full_link = "https://papers.example.org/issues/tok-ada/2025-03-12#paper-1"
    assert (
        ">We compare e.g. transformers and SSMs, following Smith et al. on 3.5 billion tokens. "
        "Our model gains 14% on L<sub>2</sub> error. PaccMann<sup>RL</sup> is the baseline. "
        f'<a class="full-link" href="{full_link}"'
    ) in html
    assert "fourth sentence" not in html and "fourth sentence" not in text
    assert ">PaccMann<sup>RL</sup> beats 14% of L<sub>2</sub> baselines</a>" in html
    assert "\n1. PaccMann^RL beats 14% of L₂ baselines\n" in text
    assert "Our model gains 14% on L₂ error. PaccMann^RL is the baseline." in " ".join(text.split())
    assert f"   Full abstract: {full_link}\n" in text
    for part in (html, text):
        assert "\\" not in part and "$" not in part
    page = renderer.render_page(content)
    assert "A fourth sentence is only in the full abstract." in page
    assert 'class="full-link"' not in page


def test_a_short_abstract_has_no_full_abstract_link(renderer: EmailRenderer) -> None:
    rendered = renderer.render(issue(three_papers()))
    assert 'class="full-link"' not in rendered.html
    assert "Full abstract:" not in rendered.text


def test_layout_is_fluid_inline() -> None:
    html = EmailRenderer(TEMPLATES, SITE).render(issue(three_papers())).html
    body = html.split("</style>", 1)[1]
    styles = re.findall(r'style="([^"]*)"', body)
    assert not any(re.search(r"(?<!max-)width:\s*600px", s) for s in styles)
    container = re.search(r'<table role="presentation" class="container"[^>]*style="([^"]*)"', html)
    assert container is not None
    assert "width:100%" in container.group(1).replace(" ", "")
    assert "max-width:600px" in container.group(1).replace(" ", "")


@pytest.mark.parametrize(
    ("name", "greeting"),
    [("Ada Lovelace", "Hello Ada Lovelace,"), ("ada", "Hello ada,"), ("", None)],
)
def test_greeting_uses_the_name_as_given_or_none(
    renderer: EmailRenderer, name: str, greeting: str | None
) -> None:
    rendered = renderer.render(issue(three_papers(), subscriber(name=name)))
    page = renderer.render_page(issue(three_papers(), subscriber(name=name)))
    if greeting is None:
        assert "Hello" not in rendered.html and "Hello" not in rendered.text
        assert 'class="greeting"' not in rendered.html and "Hello" not in page
        assert "Mar 2025, 07:00 CET\n\nHere are 3 papers matching your profile.\n" in rendered.text
    else:
        assert f'<div class="greeting" style="padding-bottom:4px">{greeting}</div>' in rendered.html
        assert f"\n\n{greeting}\n\nHere are 3 papers matching your profile.\n" in rendered.text
        assert f">{greeting}</div>" in page


def test_footer_links_the_private_feed(renderer: EmailRenderer) -> None:
    feed = "https://papers.example.org/feeds/feed-ada.atom"
    assert feed == SITE.feed_url(subscriber(), "atom")
    rendered = renderer.render(issue(three_papers()))
    assert f'<a class="footer-link" href="{feed}" style="' in rendered.html
    assert f"\nYour private feed (Atom): {feed}\n" in rendered.text
    assert f'href="{feed}"' in renderer.render_page(issue(three_papers()))


def hostile_big_issue(n: int) -> list[ScoredPaper]:
    """n papers with long abstracts and titles full of markup, LaTeX and entities."""
    abstract = " ".join(
        f"Sentence {k} on diffusion & <b>bold</b> claims with 14\\% gains, $x^{{2}}$ and e.g. "
        f"\"quotes\" 'too' at 0.{k} scale."
        for k in range(40)
    )
    return [
        scored(
            make_paper(
                i,
                f'Diffusion <script>alert("{i}")</script> & $L_{{{i}}}$ paper {i:03d} '
                f"with a title of realistic length",
                abstract,
                authors=tuple(f"Author {k} O'Neil" for k in range(8)),
                arxiv_id=f"2501.{i:05d}",
                published=date(2025, 1, 2),
            ),
            5.0 - i / 1000,
            Reason("diffusion", MatchField.TITLE, 1.0),
            Reason("language model", MatchField.ABSTRACT, 0.5),
        )
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize("n", [50, 500])
def test_any_issue_size_fits_and_lists_every_title(renderer: EmailRenderer, n: int) -> None:
    papers = hostile_big_issue(n)
    rendered = renderer.render(issue(papers))
    html, text = rendered.html, rendered.text
    html_part = parts(parse(rendered))[1].get_content()
    assert len(html_part.encode("utf-8")) == len(html.replace("\n", "\r\n").encode("utf-8"))
    assert len(html_part.encode("utf-8")) < 100_000  # as delivered: CRLF line endings
    cards = re.findall(r'class="card" id="paper-(\d+)"', html)
    shown = len(cards)
    assert cards == [str(r) for r in range(1, shown + 1)]
    assert shown >= (10 if n <= 50 else 5)  # 500 long hostile titles take most of the room
    items = toc_links(html)
    assert len(items) == n
    archive = "https://papers.example.org/issues/tok-ada/2025-03-12"
    for rank, ((href, title), sp) in enumerate(zip(items, papers, strict=True), start=1):
        expected = (
            f"Diffusion &lt;script&gt;alert(&#34;{rank}&#34;)&lt;/script&gt; &amp; "
            f"L<sub>{rank}</sub> paper {rank:03d} with a title of realistic length"
        )
        assert title == expected
        if rank <= shown:
            assert href == f"#paper-{rank}"
        else:
            assert href in (f"{archive}#paper-{rank}", None)  # linked, or text under the link
        plain = f'Diffusion <script>alert("{rank}")</script> & L_{rank} paper {rank:03d}'
        assert plain.replace(f"L_{rank}", "L" + str(rank).translate(SUBSCRIPTS)) in text
        assert sp.paper.title not in text  # LaTeX converted
    if shown < n:
        assert (
            f">{shown} of {n} papers here; {n - shown} more in the full issue on the web." in html
        )
        assert f"{n - shown} more papers in the full issue on the web</a>" in html
    for part in (html, text):
        assert "\\" not in part and "$" not in part
        assert "<script" not in html


SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def test_page_shows_every_paper_with_its_whole_abstract(renderer: EmailRenderer) -> None:
    papers = hostile_big_issue(60)
    page = renderer.render_page(issue(papers))
    anchors = re.findall(r'class="card" id="paper-(\d+)"', page)
    assert anchors == [str(r) for r in range(1, 61)]
    assert [href for href, _ in toc_links(page)] == [f"#paper-{r}" for r in range(1, 61)]
    assert page.count("Sentence 39 on ") == 60
    assert ">Here are all 60 papers of this issue.</div>" in page
    assert "more papers in the full issue" not in page and "View in browser" not in page
    assert len(re.findall(r'class="feedback-link"', page)) == 120
    assert len(re.findall(r'class="mute-link"', page)) == 120
    assert "\\" not in page and "$" not in page
