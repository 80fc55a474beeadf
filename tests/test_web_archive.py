"""The archived issue on the web is the whole issue (issue 16): every paper with its full
abstract under the anchors the email links to, the private feed, the feedback links; and
inline LaTeX reads well on web pages. On SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from starlette.testclient import TestClient

from newsletter.config import Settings, load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import Judgment, Subscriber
from newsletter.web import create_app
from newsletter.web.security import ARCHIVE_CSP
from tests.conftest import NOW, ROOT
from tests.factories import open_store, run_once
from tests.test_storage_bounded import html_of

SECRET = b"test-secret-test-secret-0123456789"
DAY = NOW.date().isoformat()
N_PAPERS = 50
LATEX_TITLE = r"PaccMann$^{RL}$: Policy gradients for alpha design, 14\% better"
LATEX_ABSTRACT = (
    r"We train PaccMann$^{RL}$ with an $L_2$ penalty and gain 14\% on alpha benchmarks; "
    r"the cost is $\mathcal{O}(n \log n)$ and a prize of $5 and $10 stays as written."
)


def abstract_of(n: int) -> str:
    """A long abstract (longer than any email shows of it) whose last words are unique."""
    body = " ".join(
        f"Sentence {k} of paper {n} says more about alpha retrieval and its evaluation."
        for k in range(1, 16)
    )
    return f"{body} The end of abstract number {n}."


def settings_with(tmp_path: Path, database_url: str, papers: list[dict[str, object]]) -> Settings:
    """An inbox with ``papers`` (Hugging Face API JSON) and one subscriber of the file who
    wants up to 50 papers matching "alpha"."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "papers.json").write_text(json.dumps([{"paper": p} for p in papers]), encoding="utf-8")
    subscribers = tmp_path / "subscribers.toml"
    subscribers.write_text(
        '[[subscriber]]\nemail = "ada@example.org"\nname = "Ada Lovelace"\n'
        'profile = "alpha"\nmax_papers = 50\nmin_score = 0\n',
        encoding="utf-8",
    )
    return load_settings(
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


def api_paper(n: int, title: str, abstract: str) -> dict[str, object]:
    return {
        "id": f"2611.{n:05d}",
        "title": title,
        "summary": abstract,
        "authors": [{"name": f"Author {n}"}],
        "publishedAt": "2026-11-20T00:00:00Z",
        "upvotes": n,
    }


def client_for(settings: Settings) -> TestClient:
    app = create_app(settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


def ada_of(settings: Settings) -> Subscriber:
    store = open_store(settings)
    try:
        ada = store.subscriber("ada@example.org")
        assert ada is not None
        return ada
    finally:
        store.close()


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def test_archive_of_a_50_paper_issue_shows_every_paper_whole(
    tmp_path: Path, database_url: str
) -> None:
    papers = [
        api_paper(n, f"Alpha paper number {n}", abstract_of(n)) for n in range(1, N_PAPERS + 1)
    ]
    settings = settings_with(tmp_path, database_url, papers)
    sent = MemoryMailer()
    run_once(settings, now=NOW, mailer=sent)
    ((envelope, raw),) = sent.sent
    assert envelope.recipient == "ada@example.org"
    ada = ada_of(settings)
    store = open_store(settings)
    try:
        issue = store.sent_issue(ada.id, NOW.date())
    finally:
        store.close()
    assert issue is not None and len(issue.papers) == N_PAPERS
    in_order = [sp.paper for sp in issue.papers]

    with client_for(settings) as client:
        r = client.get(f"/issues/{ada.token}/{DAY}")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == ARCHIVE_CSP  # inline styles, no script
    page = r.text
    emailed = html_of(raw)
    assert "The end of abstract number" not in emailed  # the email shortens abstracts

    # The titles first, each linked to its card, in the issue's order.
    toc = re.search(r'<ol class="toc"[^>]*>(.*?)</ol>', page, re.S)
    assert toc is not None
    assert [
        (rank, text_of(title))
        for rank, title in re.findall(r'<a href="#paper-(\d+)">(.*?)</a>', toc[1])
    ] == [(str(rank), p.title) for rank, p in enumerate(in_order, 1)]
    # Then every card, anchors paper-1 .. paper-50, with the whole abstract.
    pieces = re.split(r'<table role="presentation" class="card" id="paper-(\d+)"', page)
    anchors, cards = pieces[1::2], pieces[2::2]
    assert anchors == [str(n) for n in range(1, N_PAPERS + 1)]
    site = settings.site
    for card, paper in zip(cards, in_order, strict=True):
        title = re.search(r'<a class="title" href="([^"]+)"[^>]*>(.*?)</a>', card)
        assert title is not None
        assert (html.unescape(title[1]), text_of(title[2])) == (site.paper_url(paper), paper.title)
        abstract = re.search(r'<div class="abstract"[^>]*>(.*?)</div>', card, re.S)
        assert abstract is not None and text_of(abstract[1]) == paper.abstract
        arxiv = paper.arxiv_id
        assert f'href="https://arxiv.org/pdf/{arxiv}"' in card
        assert f'href="https://huggingface.co/papers/{arxiv}"' in card
        for judgment in (Judgment.LIKE, Judgment.DISLIKE):
            assert f'href="{html.escape(site.feedback_url(ada, paper.id, judgment))}"' in card
        assert f'href="{html.escape(site.mute_url(ada, "alpha"))}"' in card
        reasons = re.findall(r"“(\w+)” in (\w+): \+\d+\.\d\d mute", text_of(card))
        assert sorted(reasons) == [("alpha", "abstract"), ("alpha", "title")]
    assert page.count("The end of abstract number") == N_PAPERS
    # The private feed, and the account links.
    atom = site.feed_url(ada, "atom")
    assert atom == f"{settings.base_url}/feeds/{ada.feed_token}.atom"
    assert f'href="{atom}"' in page
    assert f'href="{site.preferences_url(ada)}"' in page
    assert f'href="{site.unsubscribe_url(ada)}"' in page


def test_latex_reads_well_on_day_and_archive_pages(tmp_path: Path, database_url: str) -> None:
    settings = settings_with(tmp_path, database_url, [api_paper(1, LATEX_TITLE, LATEX_ABSTRACT)])
    run_once(settings, now=NOW, mailer=MemoryMailer())
    ada = ada_of(settings)
    with client_for(settings) as client:
        pages = {
            "day": client.get(f"/days/{DAY}"),
            "archive": client.get(f"/issues/{ada.token}/{DAY}"),
        }
    for where, r in pages.items():
        assert r.status_code == 200, where
        page = re.sub(r"</?mark[^>]*>", "", r.text)  # the archive highlights profile terms
        assert "\\" not in page, where  # no raw backslash anywhere on the page
        assert "$^{RL}$" not in page and "$L_2$" not in page, where
        assert "PaccMann<sup>RL</sup>: Policy gradients for alpha design, 14% better" in page
        assert (
            "We train PaccMann<sup>RL</sup> with an L<sub>2</sub> penalty and gain 14% on alpha "
            "benchmarks; the cost is 𝒪(n log n) and a prize of $5 and $10 stays as written."
        ) in page, where
