from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from newsletter.domain import DigestState, IngestStatus, ParsedPaper
from newsletter.errors import ParseError
from newsletter.ingest import ingest_paths, parse_bytes
from newsletter.ingest.identity import normalize_arxiv_id, paper_key, title_key
from newsletter.store import Store
from tests.conftest import NOW, SEED_COUNTS, SEEDS

TODAY = NOW.date()


@pytest.mark.parametrize("name,count", sorted(SEED_COUNTS.items()))
def test_each_seed_layout_parses_to_its_exact_entry_count(name: str, count: int) -> None:
    digest = parse_bytes((SEEDS / name).read_bytes(), name=name, today=TODAY)
    assert digest.format == "hf-text"
    assert len(digest.papers) == count
    for paper in digest.papers:
        assert paper.title and len(paper.title) < 400
        assert len(paper.abstract) > 200
        assert paper.title not in {"new", "Subscribe", "Daily Papers"}


def test_glued_subscribe_prefix_is_removed_from_first_title() -> None:
    digest = parse_bytes((SEEDS / "003_48e8e8a7bd500b11.txt").read_bytes(), name="003", today=TODAY)
    assert digest.papers[0].title == (
        "Deep Clustering via Joint Convolutional Autoencoder Embedding and Relative Entropy "
        "Minimization"
    )
    assert digest.digest_date is None


def test_layout_004_metadata_and_year_resolution() -> None:
    digest = parse_bytes((SEEDS / "004_8f615052814f5bfc.txt").read_bytes(), name="004", today=TODAY)
    # Page date "Dec 9" has no year: the latest Dec 9 not after the ingest date 2026-11-23.
    assert digest.digest_date == date(2025, 12, 9)
    first, second, third = digest.papers[:3]
    assert (first.author_count, first.published, first.upvotes) == (3, date(2025, 6, 17), None)
    assert (second.author_count, second.published) == (5, date(2023, 10, 4))
    assert (third.title[:13], third.published, third.upvotes) == (
        "mPLUG-DocOwl2",
        date(2024, 9, 5),
        4,
    )
    assert sum(1 for p in digest.papers if p.upvotes) == 7
    assert all(p.author_count for p in digest.papers)


def test_page_date_of_layout_000() -> None:
    digest = parse_bytes((SEEDS / "000_3a916ff8f52d44d3.txt").read_bytes(), name="000", today=TODAY)
    assert digest.digest_date == date(2026, 3, 12)
    assert digest.papers[0].title.startswith("T-Stitch: Accelerating Sampling")
    assert digest.papers[0].line == 11


def test_all_seeds_store_433_entries_as_380_papers(database_url: str) -> None:
    store = Store(database_url)
    store.migrate()
    reports = ingest_paths(store, [SEEDS], now=NOW, max_bytes=50 << 20)
    assert [(Path(r.path).name, r.status, r.entries) for r in reports] == [
        (name, "ingested", count) for name, count in sorted(SEED_COUNTS.items())
    ]
    assert [r.papers_new for r in reports] == [72, 114, 64, 105, 25]
    assert sum(r.entries for r in reports) == 433
    assert sum(r.papers_merged for r in reports) == 53
    assert store.count_papers() == 380
    # The same bytes again: a no-op.
    again = ingest_paths(store, [SEEDS], now=NOW, max_bytes=50 << 20)
    assert [r.status for r in again] == ["unchanged"] * 5
    assert store.count_papers() == 380
    store.close()


def test_merge_keeps_richer_fields_and_never_blanks(database_url: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    store = Store(database_url)
    store.migrate()
    (inbox / "a.txt").write_text("Mar 3\n\nA Paper on Pre-Training\n\nShort abstract.\n")
    (inbox / "b.txt").write_text(
        "Mar 4\n\nA paper on pretraining\n\nA much longer abstract of the same paper.\n\n"
        "  • 4 authors\n·\nMar 1 7\n"
    )
    (inbox / "c.txt").write_text("Mar 5\n\nA PAPER ON PRE TRAINING?\n\nShort.\n")
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=1 << 20)
    assert [(r.papers_new, r.papers_merged) for r in reports] == [(1, 0), (0, 1), (0, 1)]
    (paper,) = store.papers()
    assert paper.title == "A Paper on Pre-Training"  # the first title seen stays
    assert paper.abstract == "A much longer abstract of the same paper."
    assert (paper.author_count, paper.upvotes, paper.published) == (4, 7, date(2026, 3, 1))
    store.close()


def test_bad_files_are_quarantined_and_others_still_ingested(
    database_url: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    store = Store(database_url)
    store.migrate()
    (inbox / "0_empty.txt").write_bytes(b"")
    (inbox / "1_binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (inbox / "2_good.txt").write_text("A Good Title\n\nAn abstract that is long enough.\n")
    (inbox / "3_big.txt").write_text("x" * 2048)
    (inbox / "4_orphan.txt").write_text("Only A Title Here\n")
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=1024)
    assert [r.status for r in reports] == [
        "quarantined",
        "quarantined",
        "ingested",
        "quarantined",
        "quarantined",
    ]
    reasons = [r.reason for r in reports if r.reason]
    assert reasons[0].endswith("0_empty.txt: the file is empty")
    assert "1_binary.txt: binary data" in reasons[1]
    assert "3_big.txt: 2048 bytes is over the 1024-byte limit" in reasons[2]
    assert "4_orphan.txt, line 1: the paper 'Only A Title Here' has no abstract" in reasons[3]
    quarantined = store.list_digests(DigestState.QUARANTINED)
    assert [d.state for d in quarantined] == [DigestState.QUARANTINED] * 4
    assert all((inbox / n).exists() for n in ("0_empty.txt", "1_binary.txt", "3_big.txt"))
    assert store.count_papers() == 1
    store.close()


def test_a_paragraph_where_a_title_belongs_names_the_line() -> None:
    text = "Title One\n\nAbstract one.\n\n" + "word " * 100 + "\n\nAbstract two.\n"
    with pytest.raises(
        ParseError, match=r"x.txt, line 5: expected a paper title, found a paragraph"
    ):
        parse_bytes(text.encode(), name="x.txt", today=TODAY)


def test_identity_keys() -> None:
    assert title_key("E$^{2}$GAN: Efficient Training") == title_key("E2GAN: efficient training")
    assert title_key("Pre-training  Once") == title_key("pretraining once")
    assert title_key("Caf\u00e9 Models") == title_key("Cafe\u0301 models")  # NFC vs NFD
    assert paper_key(ParsedPaper(title="X", arxiv_id="arXiv:2509.04664v2")) == "arxiv:2509.04664"
    assert paper_key(ParsedPaper(title="Some Title!")) == "title:sometitle"
    assert normalize_arxiv_id("hep-th/9901001v1") == "hep-th/9901001"
    assert normalize_arxiv_id("not an id") is None


def test_a_daemon_scanner_reads_each_stable_file_once(tmp_path: Path, database_url: str) -> None:
    from newsletter.ingest import InboxScanner

    store = Store(database_url)
    store.migrate()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("A Title\n\nAn abstract.\n")
    scanner = InboxScanner()
    scan = [
        [
            (Path(r.path).name, r.status)
            for r in ingest_paths(
                store, [inbox], now=NOW, max_bytes=1 << 20, scanner=scanner, two_scans=False
            )
        ]
        for _ in range(3)
    ]
    assert scan == [[("a.txt", "waiting")], [("a.txt", "ingested")], []]
    (inbox / "a.txt").write_text("A Title\n\nAn abstract.\n\nB Title\n\nAnother.\n")
    again = [
        [
            (Path(r.path).name, r.status)
            for r in ingest_paths(
                store, [inbox], now=NOW, max_bytes=1 << 20, scanner=scanner, two_scans=False
            )
        ]
        for _ in range(2)
    ]
    assert again == [[("a.txt", "waiting")], [("a.txt", "ingested")]]
    assert store.count_papers() == 2
    store.close()


def test_statuses_and_states_are_enum_members(database_url: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    store = Store(database_url)
    store.migrate()
    (inbox / "bad.txt").write_bytes(b"")
    (inbox / "good.txt").write_text("A Good Title\n\nAn abstract that is long enough.\n")
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=1024)
    assert [r.status for r in reports] == [IngestStatus.QUARANTINED, IngestStatus.INGESTED]
    assert all(type(r.status) is IngestStatus for r in reports)
    again = ingest_paths(store, [inbox], now=NOW, max_bytes=1024)
    assert [r.status for r in again] == [IngestStatus.UNCHANGED] * 2
    digests = store.list_digests()
    assert [d.state for d in digests] == [DigestState.QUARANTINED, DigestState.INGESTED]
    assert all(type(d.state) is DigestState for d in digests)
    store.close()
