"""Ingest: format detection by content, metadata, identity across formats, encodings.

Complements tests/test_ingest.py (entry counts per seed layout, the all-seeds merge counts,
the identity helpers): here every format is read under a misleading file name, each field a
parser yields is checked exactly, the same paper arriving in two formats is one stored paper,
and the seeds read the same in every encoding and line-ending convention we accept.
"""

from __future__ import annotations

import codecs
import json
from datetime import date
from pathlib import Path

import pytest

from newsletter.domain import ParsedPaper
from newsletter.ingest import FileReport, ingest_file, ingest_paths, parse_bytes
from newsletter.ingest.identity import paper_key, title_key
from newsletter.store import Store
from tests.conftest import NOW, SEED_COUNTS, SEEDS

TODAY = NOW.date()
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX = 1 << 20
SEED_003 = "003_48e8e8a7bd500b11.txt"
SEED_004 = "004_8f615052814f5bfc.txt"


def _ingest(store: Store, path: Path, data: bytes | str) -> FileReport:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return ingest_file(store, path, now=NOW, max_bytes=MAX)


def _counts(r: FileReport) -> tuple[str, str | None, int, int, int]:
    return (r.status, r.format, r.entries, r.papers_new, r.papers_merged)


# ------------------------------------------------------------------ detection by content


def test_seed_layouts_without_suffix_are_read_as_text_scrapes(store: Store, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in SEED_COUNTS:
        (inbox / name.split("_")[0]).write_bytes((SEEDS / name).read_bytes())  # "000", ...
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [(Path(r.path).name, r.status, r.format, r.entries) for r in reports] == [
        (name.split("_")[0], "ingested", "hf-text", count)
        for name, count in sorted(SEED_COUNTS.items())
    ]
    assert store.count_papers() == 380
    assert [d.digest_date for d in store.list_digests()] == [
        date(2026, 3, 12),
        date(2026, 5, 16),
        date(2026, 8, 11),
        None,  # layout 003 states no page date
        date(2025, 12, 9),
    ]


def test_hf_api_records_named_txt_are_read_as_json(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "daily_papers.txt"
    report = _ingest(store, path, (FIXTURES / "hf_api.json").read_bytes())
    assert _counts(report) == ("ingested", "hf-json", 2, 2, 0)
    assert report.skipped == (f"{path}: item 2: no paper title, skipped",)
    first, second = store.papers()
    assert (first.key, first.title, first.arxiv_id, first.url) == (
        "arxiv:2509.04664",
        "Why Language Models Hallucinate",  # white space inside the title collapsed
        "2509.04664",
        "https://arxiv.org/abs/2509.04664",
    )
    assert first.abstract == (
        "Like students facing hard exam questions, large language models sometimes guess when "
        "uncertain, producing plausible yet incorrect statements instead of admitting "
        "uncertainty."
    )
    assert first.authors == (
        "Adam Tauman Kalai",
        "Ofir Nachum",
        "Santosh S. Vempala",
        "Edwin Zhang",
    )
    # The paper's own publishedAt wins over the daily-papers record's.
    assert (first.author_count, first.published, first.upvotes) == (4, date(2025, 9, 4), 12)
    # Version suffix dropped; a blank author name is not an author; 0 upvotes is kept as 0.
    assert (second.key, second.arxiv_id, second.authors, second.upvotes, second.published) == (
        "arxiv:2509.01001",
        "2509.01001",
        ("Ana Lima",),
        0,
        date(2025, 9, 1),
    )
    (record,) = store.list_digests()
    assert (record.state, record.format, record.entries, record.digest_date) == (
        "ingested",
        "hf-json",
        2,
        None,
    )


def test_hf_api_inner_paper_objects() -> None:
    digest = parse_bytes(
        (FIXTURES / "hf_api_inner.json").read_bytes(), name="inner.json", today=TODAY
    )
    assert (digest.format, digest.skipped, digest.digest_date) == ("hf-json", (), None)
    assert digest.papers == (
        ParsedPaper(
            title="Precise Zero-Shot Dense Retrieval without Relevance Labels",
            abstract="While dense retrieval has been shown effective and efficient across tasks "
            "and languages.",
            authors=("Luyu Gao", "Xueguang Ma", "Jimmy Lin", "Jamie Callan"),
            author_count=4,
            published=date(2022, 12, 20),
            upvotes=7,
            arxiv_id="2212.10496",
            url="https://arxiv.org/abs/2212.10496",
        ),
        ParsedPaper(
            title="A Paper Without an arXiv Identifier",
            abstract="Only a title key identifies it.",
            authors=("Jane Roe", "John Doe"),  # plain strings as authors
            author_count=2,
            published=None,  # "not a date"
        ),
    )


@pytest.mark.parametrize("wrapper", ["papers", "data", "items"])
def test_hf_json_wrapped_list_and_single_object(wrapper: str) -> None:
    inner = json.loads((FIXTURES / "hf_api_inner.json").read_text())
    wrapped = parse_bytes(json.dumps({wrapper: inner}).encode(), name="w.json", today=TODAY)
    assert [p.title for p in wrapped.papers] == [
        "Precise Zero-Shot Dense Retrieval without Relevance Labels",
        "A Paper Without an arXiv Identifier",
    ]
    single = parse_bytes(json.dumps(inner[0]).encode(), name="one", today=TODAY)
    assert [(p.arxiv_id, p.upvotes) for p in single.papers] == [("2212.10496", 7)]


def test_arxiv_atom_named_json_is_read_as_a_feed(store: Store, tmp_path: Path) -> None:
    report = _ingest(store, tmp_path / "export.json", (FIXTURES / "arxiv_api.atom").read_bytes())
    assert _counts(report) == ("ingested", "arxiv-feed", 3, 3, 0)
    papers = store.papers()
    assert [(p.key, p.title, p.published, p.url) for p in papers] == [
        (
            "arxiv:2004.04906",
            "Dense Passage Retrieval for Open-Domain Question Answering",
            date(2020, 4, 10),
            "https://arxiv.org/abs/2004.04906",
        ),
        (
            "arxiv:2212.10496",
            "Precise Zero-Shot Dense Retrieval without Relevance Labels",
            date(2022, 12, 20),
            "https://arxiv.org/abs/2212.10496",
        ),
        (
            "arxiv:hep-th/9901001",
            "An Old-Style Identifier Paper",  # the line break inside <title> collapsed
            date(1999, 1, 4),
            "https://arxiv.org/abs/hep-th/9901001",
        ),
    ]
    assert [p.authors for p in papers] == [
        ("Vladimir Karpukhin", "Barlas Oğuz", "Sewon Min"),
        ("Luyu Gao", "Xueguang Ma", "Jimmy Lin", "Jamie Callan"),
        ("A. Physicist",),
    ]
    assert papers[0].abstract == (
        "Open-domain question answering relies on efficient passage retrieval to select "
        "candidate contexts, where traditional sparse vector space models, such as TF-IDF or "
        "BM25, are the de facto method. In this work, we show that retrieval can be practically "
        "implemented using dense representations alone."
    )
    (record,) = store.list_digests()
    assert record.digest_date == date(2025, 9, 8)  # the feed's <updated>


def test_arxiv_rss_listing(store: Store, tmp_path: Path) -> None:
    report = _ingest(store, tmp_path / "cs.CL", (FIXTURES / "arxiv_list.rss").read_bytes())
    assert _counts(report) == ("ingested", "arxiv-feed", 2, 2, 0)
    first, second = store.papers()
    assert (first.key, first.arxiv_id, first.title, first.url, first.published) == (
        "arxiv:2509.04664",
        "2509.04664",
        "Why Language Models Hallucinate",
        "https://arxiv.org/abs/2509.04664",
        date(2025, 9, 5),
    )
    # "arXiv:… Announce Type: new Abstract:" is not part of the abstract.
    assert first.abstract == (
        "Like students facing hard exam questions, large language models sometimes guess when "
        "uncertain, producing plausible yet incorrect statements instead of admitting "
        "uncertainty."
    )
    assert first.authors == (
        "Adam Tauman Kalai",
        "Ofir Nachum",
        "Santosh S. Vempala",
        "Edwin Zhang",
    )
    assert (second.arxiv_id, second.authors, second.author_count, second.abstract) == (
        "2509.01001",
        ("Ana Lima",),
        1,
        "We study speech recognition with models under ten million parameters.",
    )
    (record,) = store.list_digests()
    assert record.digest_date == date(2025, 9, 5)


def test_rss_and_hf_json_of_the_same_papers_merge(store: Store, tmp_path: Path) -> None:
    rss = _ingest(store, tmp_path / "a.rss", (FIXTURES / "arxiv_list.rss").read_bytes())
    hf = _ingest(store, tmp_path / "b.json", (FIXTURES / "hf_api.json").read_bytes())
    assert (_counts(rss), _counts(hf)) == (
        ("ingested", "arxiv-feed", 2, 2, 0),
        ("ingested", "hf-json", 2, 0, 2),
    )
    assert store.count_papers() == 2
    first, second = store.papers()
    # Fields the feed lacked come from the JSON; the first published date seen stays.
    assert (first.upvotes, first.published, second.upvotes) == (12, date(2025, 9, 5), 0)


# ------------------------------------------------------------------ metadata


YEAR_END = (
    "Jan 3\n\n"
    "Looking Back at the Year\n\nAn abstract of the first paper.\n\n"
    "  • 3 authors\n·\nDec 30\n\n"
    "Upvoted Paper\n\nAn abstract of the second paper.\n\n"
    "  • 12 authors\n·\nJan 2 15\n\n"
    "Dated Paper\n\nAn abstract of the third paper.\n\n"
    "  • 1 author\n·\nFeb 29, 2024 7\n\n"
    "Bare Paper\n\nAn abstract of the fourth paper.\n"
)


def test_year_less_dates_resolve_against_the_page_date() -> None:
    digest = parse_bytes(YEAR_END.encode(), name="jan3.txt", today=TODAY)
    assert digest.digest_date == date(2026, 1, 3)  # latest Jan 3 not after 2026-11-23
    assert [(p.title, p.author_count, p.published, p.upvotes, p.line) for p in digest.papers] == [
        ("Looking Back at the Year", 3, date(2025, 12, 30), None, 3),  # not 2026-12-30
        ("Upvoted Paper", 12, date(2026, 1, 2), 15, 11),
        ("Dated Paper", 1, date(2024, 2, 29), 7, 19),
        ("Bare Paper", None, None, None, 27),
    ]


def test_year_less_dates_without_page_date_resolve_against_today() -> None:
    text = "Looking Back\n\nAbstract.\n\n  • 2 authors\n·\nDec 30\n"
    (paper,) = parse_bytes(text.encode(), name="x", today=date(2027, 1, 5)).papers
    assert paper.published == date(2026, 12, 30)


def test_page_date_and_metadata_are_stored(store: Store, tmp_path: Path) -> None:
    report = _ingest(store, tmp_path / "jan3.txt", YEAR_END)
    assert _counts(report) == ("ingested", "hf-text", 4, 4, 0)
    (record,) = store.list_digests()
    assert record.digest_date == date(2026, 1, 3)
    assert [(p.key, p.author_count, p.published, p.upvotes, p.url) for p in store.papers()] == [
        ("title:lookingbackattheyear", 3, date(2025, 12, 30), None, None),
        ("title:upvotedpaper", 12, date(2026, 1, 2), 15, None),
        ("title:datedpaper", 1, date(2024, 2, 29), 7, None),
        ("title:barepaper", None, None, None, None),
    ]


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    "variant",
    [
        "graph neural networks for pre-training: a survey",  # case
        "Graph Neural Networks for Pre-Training - A Survey!",  # punctuation
        "Graph  Neural\tNetworks for  Pre-Training:   A Survey",  # white space
        "Graph Neural Networks for Pretraining: A Survey",  # hyphenation
        "Graph Neural Networks for Pre‐training: A Survey",  # U+2010 hyphen
        "\\textbf{Graph} Neural Networks for Pre-Training: A Survey",  # LaTeX command
        "Graph Neural Networks for Pre-Training: A $\\mathrm{Survey}$",  # LaTeX math
    ],
)
def test_title_key_variants_are_one_paper(variant: str) -> None:
    original = "Graph Neural Networks for Pre-Training: A Survey"
    assert title_key(variant) == title_key(original) == "graphneuralnetworksforpretrainingasurvey"


def test_unicode_forms_and_latex_markup_are_one_key() -> None:
    nfc, nfd = "Réseaux à Café", "Re\u0301seaux a\u0300 Cafe\u0301"
    assert nfc != nfd and title_key(nfc) == title_key(nfd) == "réseauxàcafé"
    assert title_key("E$^{2}$-GAN") == title_key("E2GAN") == "e2gan"
    assert title_key("ﬁne-tuning") == "finetuning"  # compatibility ligature (NFKC)
    assert paper_key(ParsedPaper(title="Ignored", arxiv_id="2509.04664v3")) == "arxiv:2509.04664"
    assert paper_key(ParsedPaper(title="Ignored", arxiv_id="ARXIV:2509.04664")) == (
        "arxiv:2509.04664"
    )


TEXT_VERSION = (
    "Mar 3\n\n"
    "Self-Supervised Pre-Training of Robot Policies\n\n"
    "A short abstract.\n\n"
    "  • 3 authors\n·\nMar 1 9\n"
)
JSON_VERSION = [
    {
        "paper": {
            "id": "2503.00042v2",
            "title": "self-supervised pretraining of robot policies",
            "summary": "A much longer abstract of the same paper, from the API.",
            "authors": [{"name": "A. One"}, {"name": "B. Two"}, {"name": "C. Three"}],
            "publishedAt": "2025-02-27T10:00:00.000Z",
            "upvotes": 4,
        },
        "numComments": 0,
    }
]


@pytest.mark.parametrize("order", ["text-then-json", "json-then-text"])
def test_same_paper_as_text_and_json_is_one_paper(store: Store, tmp_path: Path, order: str) -> None:
    files = [("a.txt", TEXT_VERSION), ("b.json", json.dumps(JSON_VERSION))]
    if order == "json-then-text":
        files.reverse()
    reports = [_ingest(store, tmp_path / name, data) for name, data in files]
    assert [(r.papers_new, r.papers_merged) for r in reports] == [(1, 0), (0, 1)]
    assert store.count_papers() == 1
    (paper,) = store.papers()
    assert (paper.arxiv_id, paper.url, paper.authors) == (
        "2503.00042",
        "https://arxiv.org/abs/2503.00042",
        ("A. One", "B. Two", "C. Three"),
    )
    assert paper.abstract == "A much longer abstract of the same paper, from the API."
    assert (paper.author_count, paper.upvotes) == (3, 9)  # the larger upvote count
    first_title, first_date = (
        ("Self-Supervised Pre-Training of Robot Policies", date(2026, 3, 1))
        if order == "text-then-json"
        else ("self-supervised pretraining of robot policies", date(2025, 2, 27))
    )
    assert (paper.title, paper.published) == (first_title, first_date)  # first seen stays


def test_merge_never_blanks_a_field(store: Store, tmp_path: Path) -> None:
    _ingest(store, tmp_path / "full.json", json.dumps(JSON_VERSION))
    bare = [{"id": "2503.00042", "title": "Self-supervised pre-training of robot policies"}]
    report = _ingest(store, tmp_path / "bare.json", json.dumps(bare))
    assert (report.papers_new, report.papers_merged) == (0, 1)
    (paper,) = store.papers()
    assert (paper.abstract, paper.authors, paper.published, paper.upvotes) == (
        "A much longer abstract of the same paper, from the API.",
        ("A. One", "B. Two", "C. Three"),
        date(2025, 2, 27),
        4,
    )


def test_different_arxiv_ids_with_one_title_stay_two_papers(store: Store, tmp_path: Path) -> None:
    items = [
        {"id": "2401.00001", "title": "Attention Is All You Need", "summary": "First."},
        {"id": "2402.00002v1", "title": "attention is all you need", "summary": "Second."},
    ]
    report = _ingest(store, tmp_path / "two.json", json.dumps(items))
    assert (report.entries, report.papers_new, report.papers_merged) == (2, 2, 0)
    # A text entry with that title merges into one of them and creates nothing.
    text = _ingest(store, tmp_path / "t.txt", "Attention Is All You Need\n\nThe abstract.\n")
    assert (text.papers_new, text.papers_merged) == (0, 1)
    assert sorted(p.arxiv_id or "" for p in store.papers()) == ["2401.00001", "2402.00002"]
    assert store.count_papers() == 2


def test_version_suffixes_are_one_paper(store: Store, tmp_path: Path) -> None:
    v1 = [{"id": "2509.04664v1", "title": "Old Title", "summary": "Abstract v1."}]
    v3 = [
        {"id": "arXiv:2509.04664v3", "title": "A Renamed Title", "summary": "A revised abstract."}
    ]
    _ingest(store, tmp_path / "v1.json", json.dumps(v1))
    report = _ingest(store, tmp_path / "v3.json", json.dumps(v3))
    assert (report.papers_new, report.papers_merged) == (0, 1)
    (paper,) = store.papers()
    # A newer version's title and abstract replace the stored ones (issue 18;
    # tests/test_versions.py).
    assert (paper.key, paper.title, paper.abstract) == (
        "arxiv:2509.04664",
        "A Renamed Title",
        "A revised abstract.",
    )


def test_a_paper_listed_twice_in_one_file_is_one_paper(store: Store, tmp_path: Path) -> None:
    text = "Twice Listed\n\nShort.\n\nTWICE  LISTED!\n\nA longer abstract.\n"
    report = _ingest(store, tmp_path / "twice.txt", text)
    assert (report.entries, report.papers_new, report.papers_merged) == (2, 1, 0)
    (paper,) = store.papers()
    assert (paper.title, paper.abstract) == ("Twice Listed", "A longer abstract.")


# ------------------------------------------------------------------ encodings, line endings


def _seed_text(name: str) -> str:
    return (SEEDS / name).read_text(encoding="utf-8")


def _parse(data: bytes) -> tuple[ParsedPaper, ...]:
    return parse_bytes(data, name="seed", today=TODAY).papers


ENCODINGS = {
    "utf-8-bom": lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    "utf-16-le-bom": lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"),
    "utf-16-be-bom": lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
    "crlf": lambda t: t.replace("\n", "\r\n").encode("utf-8"),
    "cr": lambda t: t.replace("\n", "\r").encode("utf-8"),
    "utf-16-le-bom-crlf": lambda t: (
        codecs.BOM_UTF16_LE + t.replace("\n", "\r\n").encode("utf-16-le")
    ),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("seed", [SEED_003, SEED_004])
def test_seed_reads_the_same_in_every_encoding(seed: str, encoding: str) -> None:
    original = _parse((SEEDS / seed).read_bytes())
    assert len(original) == SEED_COUNTS[seed]
    # Not only the titles: every field, line numbers included, is identical.
    assert _parse(ENCODINGS[encoding](_seed_text(seed))) == original


def test_seed_004_in_cp1252_reads_the_same() -> None:
    text = _seed_text(SEED_004)
    assert {"•", "·"} <= set(text)  # non-ASCII bullets that cp1252 has (0x95, 0xB7)
    data = text.encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert _parse(data) == _parse((SEEDS / SEED_004).read_bytes())


def test_seed_003_in_cp1252_with_crlf_reads_the_same_titles() -> None:
    text = _seed_text(SEED_003)
    assert "π" in text  # cp1252 lacks it: replaced before encoding
    data = text.replace("π", "pi").replace("\n", "\r\n").encode("cp1252")
    papers = _parse(data)
    assert [p.title for p in papers] == [p.title for p in _parse((SEEDS / SEED_003).read_bytes())]
    assert len(papers) == 119


def test_cp1252_smart_quotes_and_accents() -> None:
    text = "Mar 3\r\n\r\n“Café” Models — Don’t Panic\r\n\r\nAn abstract… with é.\r\n"
    papers = _parse(text.encode("cp1252"))
    assert [(p.title, p.abstract) for p in papers] == [
        ("“Café” Models — Don’t Panic", "An abstract… with é.")
    ]


@pytest.mark.parametrize("seed", [SEED_003, SEED_004])
def test_control_characters_in_titles_are_removed(seed: str) -> None:
    original = _parse((SEEDS / seed).read_bytes())
    dirty = _seed_text(seed)
    for paper in original:  # BEL, ESC, DEL, form feed and a C1 control inside every title
        words = paper.title.split(" ")
        words[0] = f"{words[0][:1]}\x07{words[0][1:]}\x7f"
        words[-1] = f"\x1b{words[-1]}\x0c\x85"
        assert dirty.count(paper.title) >= 1
        dirty = dirty.replace(paper.title, " ".join(words), 1)
    assert "\x07" in dirty and "\x1b" in dirty
    papers = _parse(dirty.encode("utf-8"))
    assert [p.title for p in papers] == [p.title for p in original]
    assert [p.abstract for p in papers] == [p.abstract for p in original]


def test_an_escape_sequence_keeps_its_printable_part() -> None:
    text = "Mar 3\n\n\x1b[1mBold Title\x1b[0m\n\nAbstract.\n"
    assert [p.title for p in _parse(text.encode())] == ["[1mBold Title[0m"]


def test_a_text_scrape_whose_first_title_starts_with_a_bracket() -> None:
    text = "[Re] Reproducing Deep Clustering\n\nAn abstract.\n\nSecond Title\n\nAbstract.\n"
    digest = parse_bytes(text.encode(), name="re.txt", today=TODAY)
    assert (digest.format, [p.title for p in digest.papers]) == (
        "hf-text",
        ["[Re] Reproducing Deep Clustering", "Second Title"],
    )


def test_control_characters_are_removed_in_every_encoding() -> None:
    text = "Mar 3\n\nA\x07 Bell\x7f Title\x9b\n\nAbstract\x1b.\n"
    for data in (text.encode("utf-8"), codecs.BOM_UTF16_BE + text.encode("utf-16-be")):
        assert [(p.title, p.abstract) for p in _parse(data)] == [("A Bell Title", "Abstract.")]


def test_every_encoding_of_a_seed_is_one_set_of_papers(store: Store, tmp_path: Path) -> None:
    text = _seed_text(SEED_004)
    base = _ingest(store, tmp_path / "plain.txt", text)
    assert _counts(base) == ("ingested", "hf-text", 44, 44, 0)
    for name in sorted(ENCODINGS):
        report = _ingest(store, tmp_path / name, ENCODINGS[name](text))
        assert _counts(report) == ("ingested", "hf-text", 44, 0, 44), name
    cp = _ingest(store, tmp_path / "cp1252", text.encode("cp1252"))
    assert _counts(cp) == ("ingested", "hf-text", 44, 0, 44)
    assert store.count_papers() == 44


def test_a_title_starting_with_subscribe_is_kept() -> None:
    text = "Mar 3\n\nSubscriber Churn Prediction with Transformers\n\nAn abstract.\n"
    (paper,) = _parse(text.encode())
    assert paper.title == "Subscriber Churn Prediction with Transformers"
