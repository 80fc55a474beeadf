"""What a feed entry shows (issue 16, must-shows 3 and 4): inline LaTeX made readable in
titles (plain text) and content (``<sup>``/``<sub>``), the paper's links next to its main one
(PDF, Hugging Face, code), and authors in RSS too (``dc:creator``, which feedparser reads as
``author``), never an invented name for a paper known only by its author count.

Parsed with feedparser, from :func:`~newsletter.feeds.build_feeds` and, end to end, from a
Hugging Face API digest ingested and served over HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest
from starlette.testclient import TestClient

from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import FeedItem, Paper, SiteInfo
from newsletter.feeds import build_feeds
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import make_paper, make_subscriber, run_once

SITE = SiteInfo(
    name="Paper Digest",
    from_address="digest@papers.example.org",
    from_name="Paper Digest",
    base_url="https://papers.example.org",
    list_id="papers.example.org",
    paper_url_template="https://arxiv.org/a/search?query={title}",
)
T0 = datetime(2025, 3, 10, 8, 0, tzinfo=UTC)
SECRET = b"test-secret-test-secret-0123456789"

LATEX_TITLE = r"PaccMann$^{RL}$: 14\% better"
LATEX_ABSTRACT = (
    r"We cut the $L_2$ error by 14\% with $a*b$ and $c*d$ terms in $\mathcal{O}(n \log n)$. "
    "Code is available at https://github.com/example/paccmann-rl."
)
# What a reader sees instead of the LaTeX above.
TITLE_TEXT = "PaccMann^RL: 14% better"
TITLE_HTML = "PaccMann<sup>RL</sup>: 14% better"
ABSTRACT_HTML = (
    "<p>We cut the L<sub>2</sub> error by 14% with a*b and c*d terms in 𝒪(n log n). "
    "Code is available at https://github.com/example/paccmann-rl.</p>"
)
RAW_LATEX = re.compile(r"\\|\$[^$]*\$")


def latex_paper(id: int = 1, **fields: Any) -> Paper:
    values: dict[str, Any] = {
        "arxiv_id": "2503.01234",
        "authors": ("Jannis Born", "Matteo Manica"),
    }
    values.update(fields)
    return make_paper(id, LATEX_TITLE, LATEX_ABSTRACT, **values)


def parse(data: bytes) -> Any:
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    return parsed


def links_of(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<a href="([^"]+)" rel="noopener noreferrer nofollow">([^<]+)</a>', html)


@pytest.mark.parametrize("private", [False, True], ids=["global", "private"])
def test_latex_title_and_content(private: bool) -> None:
    docs = build_feeds(
        [FeedItem(latex_paper(), T0)],
        site=SITE,
        subscriber=make_subscriber() if private else None,
    )
    atom, rss = parse(docs["atom"]).entries[0], parse(docs["rss"]).entries[0]
    assert atom.title == rss.title == TITLE_TEXT
    content = atom.content[0].value
    assert content == rss.description
    assert f"<p><strong>{TITLE_HTML}</strong></p>" in content
    assert ABSTRACT_HTML in content
    assert not RAW_LATEX.search(content), content
    for raw in (docs["atom"].decode(), docs["rss"].decode()):
        assert "$^{RL}$" not in raw and "14\\%" not in raw and "$L_2$" not in raw


def test_paper_links_next_to_the_main_link() -> None:
    with_code = latex_paper()
    scrape = make_paper(2, "Title only", "No code here.")  # no arXiv id: title search only
    docs = build_feeds([FeedItem(with_code, T0), FeedItem(scrape, T0)], site=SITE, subscriber=None)
    first, second = parse(docs["atom"]).entries
    assert links_of(first.content[0].value) == [
        ("https://arxiv.org/abs/2503.01234", "Abstract"),
        ("https://arxiv.org/pdf/2503.01234", "PDF"),
        ("https://huggingface.co/papers/2503.01234", "Hugging Face"),
        ("https://github.com/example/paccmann-rl", "Code"),
    ]
    assert first.link == "https://arxiv.org/abs/2503.01234"
    assert links_of(second.content[0].value) == [
        ("https://arxiv.org/a/search?query=Title+only", "Abstract")
    ]


def test_rss_items_carry_authors_and_never_an_invented_one() -> None:
    named = latex_paper(1)
    counted = make_paper(2, "Counted", "x", author_count=7)
    unknown = make_paper(3, "Unknown", "x")
    docs = build_feeds(
        [FeedItem(p, T0) for p in (named, counted, unknown)], site=SITE, subscriber=None
    )
    rss = parse(docs["rss"]).entries
    assert [e.get("author") for e in rss] == ["Jannis Born, Matteo Manica", None, None]
    assert docs["rss"].decode().count("<dc:creator>") == 1
    atom = parse(docs["atom"]).entries
    assert [[a.name for a in e.get("authors", [])] for e in atom] == [
        ["Jannis Born", "Matteo Manica"],
        [],
        [],
    ]
    # the count is said in the content, as the email says it
    assert "<p><em>7 authors</em></p>" in atom[1].content[0].value
    assert "<em>" not in atom[2].content[0].value


# ---------------------------------------------------------------------- end to end


@pytest.fixture
def hf_settings(settings: Settings, tmp_path: Path) -> Settings:
    """An inbox with one Hugging Face API digest: the LaTeX paper and two others."""
    inbox = tmp_path / "hf-inbox"
    inbox.mkdir()
    entries = [
        {
            "paper": {
                "id": "2511.01234",
                "title": LATEX_TITLE,
                "summary": LATEX_ABSTRACT,
                "authors": [{"name": "Jannis Born"}, {"name": "Matteo Manica"}],
                "publishedAt": "2026-11-20T00:00:00Z",
                "upvotes": 9,
            }
        },
        *(
            {
                "paper": {
                    "id": f"2511.0000{i}",
                    "title": f"Speech recognition study {i}",
                    "summary": "Speech recognition with a new model.",
                    "authors": [{"name": f"Author {i}"}],
                    "publishedAt": "2026-11-20T00:00:00Z",
                    "upvotes": i,
                }
            }
            for i in (1, 2)
        ),
    ]
    (inbox / "hf.json").write_text(json.dumps(entries), encoding="utf-8")
    return settings.model_copy(update={"inbox": inbox})


@pytest.fixture
def served(hf_settings: Settings) -> Iterator[TestClient]:
    run_once(hf_settings, now=NOW, mailer=MemoryMailer())
    asgi = create_app(hf_settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    with TestClient(asgi, base_url="http://testserver") as client:
        yield client


def test_ingested_latex_paper_over_http(served: TestClient) -> None:
    atom = parse(served.get("/feeds/all.atom").content)
    rss = parse(served.get("/feeds/all.rss").content)
    assert len(atom.entries) == len(rss.entries) == 3
    (entry,) = [e for e in atom.entries if e.title == TITLE_TEXT]
    content = entry.content[0].value
    assert f"<p><strong>{TITLE_HTML}</strong></p>" in content
    assert ABSTRACT_HTML in content
    assert not RAW_LATEX.search(content)
    assert ("https://arxiv.org/pdf/2511.01234", "PDF") in links_of(content)
    assert ("https://github.com/example/paccmann-rl", "Code") in links_of(content)
    assert {e.title: e.get("author") for e in rss.entries} == {
        TITLE_TEXT: "Jannis Born, Matteo Manica",
        "Speech recognition study 1": "Author 1",
        "Speech recognition study 2": "Author 2",
    }
    assert all(not RAW_LATEX.search(e.title) for e in atom.entries + rss.entries)
