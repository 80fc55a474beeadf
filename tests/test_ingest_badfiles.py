"""Ingest: bad files are quarantined and kept, half-written files wait, re-ingest is exact.

A bad file never stops the run and is never lost: it is recorded with a one-line reason that
names it, left byte-identical on disk, counted by ``run --once``, listed by ``status`` and
shown by ``ingest``. Complements tests/test_ingest.py (which checks four of the reasons by
prefix) with exact reasons for every kind, the CLI views, the inbox scanner and re-ingest.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.domain import DigestState
from newsletter.ingest import InboxScanner, ingest_paths, read_regular_file
from newsletter.store import Store
from tests.conftest import NOW, ROOT, SEED_COUNTS, SEEDS
from tests.factories import run_cli, workspace_env

MAX = 250_000  # above the largest seed (200,879 bytes)
SEED_004 = "004_8f615052814f5bfc.txt"
GOOD = "Mar 3\n\nA Good Title\n\nAn abstract that is long enough.\n"
HTML_502 = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\n"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)
TRUNCATED_JSON = '[{"paper": {"id": "2509.04664", "title": "Why'


def bad_files() -> dict[str, bytes]:
    """The six kinds of bad file, each with distinct bytes."""
    return {
        "bad_0_empty.txt": b"",
        "bad_1_image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
        "bad_2_truncated.json": TRUNCATED_JSON.encode(),
        "bad_3_error.html": HTML_502.encode(),
        "bad_4_one_line.txt": b"Only a title here\n",
        "bad_5_huge.txt": (GOOD * (MAX // len(GOOD) + 1)).encode()[: MAX + 1],
    }


def expected_reasons(folder: Path, max_bytes: int = MAX) -> list[str]:
    p = {name: str(folder / name) for name in bad_files()}
    return [
        f"{p['bad_0_empty.txt']}: the file is empty",
        f"{p['bad_1_image.png']}: binary data, not a text digest",
        f"{p['bad_2_truncated.json']}, line 1, column 42: invalid or truncated JSON "
        "(Unterminated string starting at); was the file still being written?",
        f"{p['bad_3_error.html']}: an HTML page titled '502 Bad Gateway', not a digest; the "
        "scraper probably saved an error or login page",
        f"{p['bad_4_one_line.txt']}, line 1: the paper 'Only a title here' has no abstract "
        "(the file may be truncated)",
        f"{p['bad_5_huge.txt']}: {max_bytes + 1} bytes is over the {max_bytes}-byte limit; "
        "split the file or raise max_digest_bytes",
    ]


def _write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _unchanged_on_disk(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in files.items())


# ------------------------------------------------------------------ quarantine


def test_each_bad_file_is_quarantined_with_its_reason_and_kept(
    store: Store, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    files = bad_files()
    _write(inbox, files)
    shutil.copy(SEEDS / SEED_004, inbox / SEED_004)
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [(Path(r.path).name, r.status) for r in reports] == [(SEED_004, "ingested")] + [
        (name, "quarantined") for name in files
    ]
    assert (reports[0].entries, reports[0].papers_new) == (44, 44)
    assert [r.reason for r in reports[1:]] == expected_reasons(inbox)
    assert all("\n" not in (r.reason or "") for r in reports)
    quarantined = store.list_digests(DigestState.QUARANTINED)
    assert [(d.path, d.reason, d.entries, d.format) for d in quarantined] == [
        (str(inbox / name), reason, 0, None)
        for name, reason in zip(files, expected_reasons(inbox), strict=True)
    ]
    assert [d.size for d in quarantined] == [len(data) for data in files.values()]
    assert _unchanged_on_disk(inbox, files)
    assert store.count_papers() == 44
    # The next scan: nothing new, nothing re-read, nothing moved.
    again = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [(r.status, r.reason) for r in again] == [("unchanged", None)] + [
        ("unchanged", reason) for reason in expected_reasons(inbox)
    ]
    assert len(store.list_digests()) == 7
    assert _unchanged_on_disk(inbox, files)


# Each reason follows the file's path: ": why" or ", line N: why".
MORE_BAD = {
    "white-space": (b"  \r\n\t\n", ": the file holds only white space"),
    "bom-only": (b"\xef\xbb\xbf", ": the file holds only white space"),
    "nul-byte": (b"A Title\x00\n\nAn abstract.\n", ": binary data, not a text digest"),
    "other-xml": (
        b"<note><to>Tove</to></note>",
        ": not a digest format this version reads (Hugging Face Daily Papers text or JSON, "
        "arXiv Atom or RSS)",
    ),
    "json-no-paper": (
        b'[{"numComments": 1}, 42]',
        ': no paper found in 2 JSON item(s) (expected objects with "title" and "summary", '
        'or {"paper": {...}})',
    ),
    "json-empty-list": (
        b"[]",
        ': no paper found in 0 JSON item(s) (expected objects with "title" and "summary", '
        'or {"paper": {...}})',
    ),
    "json-number": (
        b"[1] ",
        ": no paper found in 1 JSON item(s) (expected objects with "
        '"title" and "summary", or {"paper": {...}})',
    ),
    "json-string": (
        b'"just a string"',
        ", line 1: the paper '\"just a string\"' has no abstract (the file may be truncated)",
    ),
    "html-no-title": (
        b"<html><body>Just a moment...</body></html>",
        ": an HTML page, not a digest; the scraper probably saved an error or login page",
    ),
    "empty-feed": (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>x</title></feed>',
        ": the feed has no paper entries",
    ),
    "metadata-first": (
        "Mar 3\n\n  • 3 authors\n·\nMar 1\n".encode(),
        ", line 3: expected a paper title, found the metadata line '• 3 authors'; is a title "
        "or an abstract missing just before it?",
    ),
    "paragraph-as-title": (
        ("Mar 3\n\n" + "word " * 100 + "\n\nAbstract.\n").encode(),
        ", line 3: expected a paper title, found a paragraph of 499 characters; is a title or "
        "an abstract missing just before it?",
    ),
}


@pytest.mark.parametrize("case", sorted(MORE_BAD))
def test_more_unreadable_files_and_their_reasons(store: Store, tmp_path: Path, case: str) -> None:
    data, reason = MORE_BAD[case]
    path = tmp_path / "in" / "file"
    _write(path.parent, {"file": data, "z_good.txt": GOOD.encode()})
    reports = ingest_paths(store, [path.parent], now=NOW, max_bytes=MAX)
    assert [(r.status, r.reason) for r in reports] == [
        ("quarantined", f"{path}{reason}"),
        ("ingested", None),
    ]
    assert path.read_bytes() == data
    assert store.count_papers() == 1


def test_oversized_file_is_not_read_and_is_retried_when_the_limit_is_raised(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "big.txt"
    path.write_text(GOOD)
    size = path.stat().st_size
    (small,) = ingest_paths(store, [path], now=NOW, max_bytes=size - 1)
    assert (small.status, small.reason) == (
        "quarantined",
        f"{path}: {size} bytes is over the {size - 1}-byte limit; split the file or raise "
        "max_digest_bytes",
    )
    (raised,) = ingest_paths(store, [path], now=NOW, max_bytes=size)
    assert (raised.status, raised.entries, raised.papers_new) == ("ingested", 1, 1)
    assert [d.state for d in store.list_digests()] == ["quarantined", "ingested"]


def test_a_fixed_file_is_read_again(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "daily.json"
    path.write_text(TRUNCATED_JSON)
    (first,) = ingest_paths(store, [path], now=NOW, max_bytes=MAX)
    assert first.status == "quarantined"
    path.write_text(TRUNCATED_JSON + ' Models Hallucinate", "summary": "An abstract."}}]')
    (second,) = ingest_paths(store, [path], now=NOW, max_bytes=MAX)
    assert (second.status, second.format, second.papers_new) == ("ingested", "hf-json", 1)
    (paper,) = store.papers()
    assert (paper.arxiv_id, paper.title) == ("2509.04664", "Why Models Hallucinate")


# Inputs that make a parser or the store raise something other than ParseError. Each must be
# quarantined (or stored) without stopping the run: the good file after it is still ingested.
CRASHERS = {
    "json-nested-100000-deep": (b"[" * 100_000, "RecursionError from json.loads"),
    "json-int-5000-digits": (
        b'[{"title": "T", "upvotes": ' + b"9" * 5000 + b"}]",
        "ValueError (int max_str_digits) from json.loads",
    ),
    "json-upvotes-infinity": (
        b'[{"title": "T", "upvotes": Infinity}]',
        "OverflowError in hf_json._int",
    ),
    "json-upvotes-1e300": (
        b'[{"title": "T", "upvotes": 1e300}]',
        "the store cannot hold the integer (OverflowError / integer out of range)",
    ),
    "text-upvotes-5000-digits": (
        ("T\n\nAbstract.\n\n  • 3 authors\n·\nMar 1 " + "9" * 5000 + "\n").encode(),
        "ValueError (int max_str_digits) in hf_text._int",
    ),
    "text-authors-20-digits": (
        ("T\n\nAbstract.\n\n  • " + "9" * 20 + " authors\n").encode(),
        "the store cannot hold the integer (OverflowError / integer out of range)",
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHERS))
def test_inputs_that_crash_do_not_stop_the_run(store: Store, tmp_path: Path, case: str) -> None:
    data, _cause = CRASHERS[case]
    inbox = tmp_path / "inbox"
    _write(inbox, {"a_bad": data, "b_good.txt": GOOD.encode()})
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [(Path(r.path).name, r.status) for r in reports][1] == ("b_good.txt", "ingested")
    assert reports[0].status in ("quarantined", "ingested")
    assert (inbox / "a_bad").read_bytes() == data


@pytest.mark.parametrize("field", ["title", "id"])
def test_long_values_do_not_stop_the_run(store: Store, tmp_path: Path, field: str) -> None:
    item = (
        {"title": "Very long title " * 50, "summary": "An abstract."}
        if field == "title"
        else {"id": "a" * 40 + "/1234567", "title": "Short", "summary": "An abstract."}
    )
    inbox = tmp_path / "inbox"
    _write(inbox, {"a_long.json": json.dumps([item]).encode(), "b_good.txt": GOOD.encode()})
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [r.status for r in reports] == ["ingested", "ingested"]
    assert store.count_papers() == 2


# ------------------------------------------------------------------ files still being written


def test_scanner_waits_until_size_and_mtime_are_stable(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox, {"a.txt": GOOD.encode()})
    path = inbox / "a.txt"
    scanner = InboxScanner(settle_seconds=0)
    assert scanner.scan([inbox]) == ([], [path])  # first sight: not known to be stable
    with path.open("a") as f:
        f.write("\nSecond Title\n\nSecond abstract.\n")
    assert scanner.scan([inbox]) == ([], [path])  # grew
    assert scanner.scan([inbox]) == ([path], [])  # unchanged across two scans
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert scanner.scan([inbox]) == ([], [path])  # same size, newer mtime
    assert scanner.scan([inbox]) == ([path], [])
    path.unlink()
    assert scanner.scan([inbox]) == ([], [])


def test_ingest_waits_for_a_file_written_during_the_pause(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox, {"a_old.txt": GOOD.encode(), "b_growing.txt": b"First Title\n\n"})
    old, growing = inbox / "a_old.txt", inbox / "b_growing.txt"
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(growing)  # just written
    pauses: list[float] = []

    def writer_still_busy(seconds: float) -> None:
        pauses.append(seconds)
        with growing.open("a") as f:
            f.write("First abstract.\n\nSecond Title\n\nSecond abstract.\n")

    monkeypatch.setattr("newsletter.ingest.time.sleep", writer_still_busy)
    scanner = InboxScanner(settle_seconds=30)
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX, scanner=scanner)
    assert pauses == [30]
    assert [(Path(r.path).name, r.status, r.reason) for r in reports] == [
        (
            "b_growing.txt",
            "waiting",
            f"{growing}: still being written (size or time changed); retried next scan",
        ),
        ("a_old.txt", "ingested", None),
    ]
    assert store.count_papers() == 1
    assert [d.path for d in store.list_digests()] == [str(old)]  # a waiting file is no record

    monkeypatch.setattr("newsletter.ingest.time.sleep", pauses.append)  # the writer has finished
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX, scanner=scanner)
    # The same scanner does not even re-read a_old.txt: unchanged since it read it.
    assert [(Path(r.path).name, r.status, r.entries, r.papers_new) for r in reports] == [
        ("b_growing.txt", "ingested", 2, 2),
    ]
    assert store.count_papers() == 3


def test_no_pause_when_every_file_is_old(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox, {"a.txt": GOOD.encode()})
    os.utime(inbox / "a.txt", (time.time() - 60, time.time() - 60))

    def must_not_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s although every file is old")

    monkeypatch.setattr("newsletter.ingest.time.sleep", must_not_sleep)
    (report,) = ingest_paths(
        store, [inbox], now=NOW, max_bytes=MAX, scanner=InboxScanner(settle_seconds=30)
    )
    assert (report.status, report.papers_new) == ("ingested", 1)


TEMP_NAMES = [
    ".x.txt",
    ".hidden",
    "x.txt.part",
    "x.partial",
    "x.tmp",
    "X.TMP",
    "x.txt~",
    "x.crdownload",
]


def test_hidden_and_temporary_files_are_never_read(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox, {name: f"{name} Title\n\nAbstract.\n".encode() for name in TEMP_NAMES})
    _write(inbox, {"good.txt": GOOD.encode()})
    (inbox / "sub").mkdir()  # folders are not recursed into
    (inbox / "sub" / "nested.txt").write_text(GOOD)
    read: list[str] = []
    real_read = read_regular_file  # every inbox file is read through it (no link, no FIFO)

    def spy(path: Path, max_bytes: int) -> bytes:
        read.append(path.name)
        return real_read(path, max_bytes)

    monkeypatch.setattr("newsletter.ingest.read_regular_file", spy)
    scanner = InboxScanner(settle_seconds=0)
    assert scanner.scan([inbox]) == ([], [inbox / "good.txt"])
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX, scanner=scanner)
    assert [(Path(r.path).name, r.status) for r in reports] == [("good.txt", "ingested")]
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [(Path(r.path).name, r.status) for r in reports] == [("good.txt", "unchanged")]
    assert read == ["good.txt", "good.txt"]
    assert [Path(d.path).name for d in store.list_digests()] == ["good.txt"]


# ------------------------------------------------------------------ idempotence


def test_same_bytes_are_a_no_op_and_an_edit_adds_and_merges(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "daily.txt"
    text = (SEEDS / SEED_004).read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    (first,) = ingest_paths(store, [path], now=NOW, max_bytes=MAX)
    assert (first.status, first.entries, first.papers_new, first.papers_merged) == (
        "ingested",
        44,
        44,
        0,
    )
    (again,) = ingest_paths(store, [path], now=NOW, max_bytes=MAX)
    assert (again.status, again.format, again.entries, again.papers_new) == (
        "unchanged",
        "hf-text",
        0,
        0,
    )
    copy = tmp_path / "copy of daily.txt"  # the same bytes under another name: same file
    shutil.copy(path, copy)
    assert [r.status for r in ingest_paths(store, [copy], now=NOW, max_bytes=MAX)] == ["unchanged"]
    # The scraper re-saves the page: two new papers, one known paper listed again with a
    # different spelling and more upvotes, and one known paper's abstract made longer.
    first_title = "EVA02-AT: Egocentric Video-Language Understanding"
    assert first_title in text
    edited = text.replace(
        "Towards All-in-one Pre-training via Maximizing Multi-modal Mutual Information\n\n",
        "Towards All-in-one Pre-training via Maximizing Multi-modal Mutual Information\n\n"
        "A new first sentence for this abstract. ",
    ) + (
        "\nA Brand New Paper\n\nIts abstract.\n\n"
        "Another New Paper\n\nIts abstract too.\n\n  • 2 authors\n·\nDec 8 3\n\n"
        "TOWARDS ALL IN ONE PRETRAINING VIA MAXIMIZING MULTIMODAL MUTUAL INFORMATION\n\n"
        "Short.\n\n  • 7 authors\n·\nDec 1 99\n"
    )
    path.write_text(edited, encoding="utf-8")
    (third,) = ingest_paths(store, [path], now=NOW, max_bytes=MAX)
    assert (third.status, third.entries, third.papers_new, third.papers_merged) == (
        "ingested",
        47,
        2,
        44,
    )
    assert store.count_papers() == 46
    by_title = {p.title: p for p in store.papers()}
    towards = by_title[
        "Towards All-in-one Pre-training via Maximizing Multi-modal Mutual Information"
    ]
    assert towards.abstract.startswith("A new first sentence for this abstract. ")
    assert towards.upvotes == 99
    another = by_title["Another New Paper"]
    assert (another.author_count, another.upvotes, another.published) == (2, 3, date(2025, 12, 8))
    assert [(d.path, d.entries) for d in store.list_digests()] == [(str(path), 44), (str(path), 47)]
    # Going back to the old bytes: already seen, nothing happens.
    path.write_text(text, encoding="utf-8")
    assert [r.status for r in ingest_paths(store, [path], now=NOW, max_bytes=MAX)] == ["unchanged"]
    assert store.count_papers() == 46


def test_all_formats_of_the_same_papers_twice_add_nothing(store: Store, tmp_path: Path) -> None:
    fixtures = ROOT / "tests" / "fixtures"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("arxiv_api.atom", "arxiv_list.rss", "hf_api.json", "hf_api_inner.json"):
        shutil.copy(fixtures / name, inbox / name)
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    assert [
        (r.path.rsplit("/", 1)[1], r.entries, r.papers_new, r.papers_merged) for r in reports
    ] == [
        ("arxiv_api.atom", 3, 3, 0),
        ("arxiv_list.rss", 2, 2, 0),
        ("hf_api.json", 2, 0, 2),
        ("hf_api_inner.json", 2, 1, 1),
    ]
    assert store.count_papers() == 6
    # Renamed copies of the same bytes are the same files.
    for path in sorted(inbox.iterdir()):
        path.rename(inbox / f"copy_{path.stem}")
    assert {r.status for r in ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)} == {"unchanged"}
    assert store.count_papers() == 6


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def env(workdir: Path, database_url: str) -> dict[str, str]:
    return workspace_env(workdir, database_url, max_digest_bytes=MAX, inbox_settle_seconds=0)


def test_run_once_quarantines_bad_files_beside_the_seeds(
    env: dict[str, str], workdir: Path
) -> None:
    inbox = workdir / "inbox"
    files = bad_files()
    _write(inbox, files)
    reasons = expected_reasons(inbox)
    out = run_cli(env, "run", "--once", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {
        k: data[k] for k in ("files_ingested", "files_quarantined", "files_waiting", "papers_new")
    } == {"files_ingested": 5, "files_quarantined": 6, "files_waiting": 0, "papers_new": 380}
    assert data["quarantined"] == reasons
    assert data["papers_total"] == 380
    assert _unchanged_on_disk(inbox, files)
    assert sorted(p.name for p in inbox.iterdir()) == sorted([*SEED_COUNTS, *files])

    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert listed["quarantined"] == [
        {"path": str(inbox / name), "reason": reason}
        for name, reason in zip(files, reasons, strict=True)
    ]
    assert (listed["papers"], listed["files_ingested"]) == (380, 5)

    text = run_cli(env, "status")
    lines = text.stdout.splitlines()
    start = lines.index("quarantined files: 6")  # after the daemon, scan and papers lines
    assert lines[start : start + 7] == ["quarantined files: 6", *(f"  {r}" for r in reasons)]

    # A second run: the bad files are known (unchanged), still on disk, still listed.
    second = json.loads(run_cli(env, "run", "--once", "--json").stdout)
    assert (second["files_unchanged"], second["files_quarantined"], second["papers_new"]) == (
        11,
        0,
        0,
    )
    assert _unchanged_on_disk(inbox, files)
    assert len(json.loads(run_cli(env, "status", "--json").stdout)["quarantined"]) == 6


def test_run_once_text_output_lists_each_quarantined_file(
    env: dict[str, str], workdir: Path
) -> None:
    inbox = workdir / "inbox"
    _write(inbox, bad_files())
    out = run_cli(env, "run", "--once")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:7] == [
        "files: 5 ingested, 0 unchanged, 6 quarantined; papers: 380 new, 380 stored",
        *(f"  quarantined: {r}" for r in expected_reasons(inbox)),
    ]


def test_ingest_command_reports_each_file_and_folder(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    files = bad_files()
    _write(folder, files)
    _write(folder, {".hidden.txt": GOOD.encode(), "good.txt.part": GOOD.encode()})
    jan3 = tmp_path / "jan3"  # no suffix: detected by content
    jan3.write_text("Jan 3\n\nA Good Title\n\nA longer abstract than before.\n\nOther\n\nAbs.\n")
    seed = Path(env["NEWSLETTER_INBOX"]) / SEED_004
    runner = CliRunner(env=env)
    result = runner.invoke(cli, ["ingest", str(seed), str(folder)])
    assert result.exit_code == 0, result.output
    reasons = expected_reasons(folder)
    assert result.stdout.splitlines() == [
        f"{seed}: 44 papers found, 44 new, 0 merged (hf-text)",
        *(f"{folder / name}: quarantined: {r}" for name, r in zip(files, reasons, strict=True)),
    ]
    (folder / "good.txt").write_text(GOOD)
    result = runner.invoke(cli, ["ingest", "--json", str(folder / "good.txt"), str(jan3)])
    assert result.exit_code == 0, result.output
    assert [
        (
            Path(r["path"]).name,
            r["status"],
            r["format"],
            r["entries"],
            r["papers_new"],
            r["papers_merged"],
            r["reason"],
        )
        for r in json.loads(result.stdout)
    ] == [
        ("good.txt", "ingested", "hf-text", 1, 1, 0, None),
        ("jan3", "ingested", "hf-text", 2, 1, 1, None),
    ]
    result = runner.invoke(cli, ["ingest", "--json", str(folder / "bad_3_error.html")])
    assert [(r["status"], r["reason"]) for r in json.loads(result.stdout)] == [
        ("unchanged", reasons[3])
    ]
    assert _unchanged_on_disk(folder, files)


def test_ingest_command_shows_the_reason_of_a_file_quarantined_earlier(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "error.html"
    path.write_text(HTML_502)
    runner = CliRunner(env=env)
    first = runner.invoke(cli, ["ingest", str(path)])
    reason = (
        f"{path}: an HTML page titled '502 Bad Gateway', not a digest; the scraper probably "
        "saved an error or login page"
    )
    assert first.stdout == f"{path}: quarantined: {reason}\n"
    again = runner.invoke(cli, ["ingest", str(path)])
    assert again.stdout == f"{path}: quarantined before (same bytes): {reason}\n"
    assert path.read_text() == HTML_502
