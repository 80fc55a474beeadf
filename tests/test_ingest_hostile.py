"""Ingest against a hostile inbox: names, entries that are not files, texts that are not
digests, over-long fields and links that must never become links (issue 12, parts 1, 2, 4).

Every hostile input is made here, by the test that uses it (nothing is committed): names that
are not valid UTF-8 or hold control characters, symbolic links to a file outside the inbox,
FIFOs, sockets and a device, notes and lists that fit the text grammar, a multi-megabyte
abstract, ``javascript:`` and ``data:`` links. The end-to-end tests go through ``run --once``
(in-process, outbox mailer) and the CLI in a subprocess, and check that the good digest is
still ingested and delivered, and that the content behind a link appears nowhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import Settings, load_settings
from newsletter.domain import DigestState, IngestStatus
from newsletter.errors import ParseError
from newsletter.ingest import (
    FileReport,
    InboxScanner,
    hf_text,
    ingest_file,
    ingest_paths,
    parse_bytes,
)
from newsletter.ingest.dates import DATE_LINE
from newsletter.ingest.files import (
    NotRegularFile,
    SpecialFile,
    printable_path,
    read_regular_file,
)
from newsletter.ingest.text import squash_spaces
from newsletter.limits import MAX_ABSTRACT_CHARS
from newsletter.store import Store
from tests.conftest import NOW, SEED_COUNTS, SEEDS
from tests.factories import CONFIG, open_store, run_cli, run_once, workspace_env

TODAY = NOW.date()
MAX = 1 << 20
SEED_004 = "004_8f615052814f5bfc.txt"  # 44 papers, one of them on egocentric video
SUBSCRIBERS = (
    '[[subscriber]]\nemail = "eve@example.org"\nname = "Eve"\nprofile = "egocentric"\n'
    'timezone = "UTC"\nmin_score = 0.1\n'
)
# What a symbolic link in the inbox points to: a perfectly good digest, outside the inbox.
SECRET = "Zebra Secret Outside Title"
SECRET_TEXT = f"Mar 3\n\n{SECRET}\n\nAn abstract of a file outside the inbox, never to be read.\n"
# A good digest under a hostile name: quarantined unread, so its paper is stored nowhere.
UNREAD = "Unread Hostile Name Title"
UNREAD_TEXT = f"Mar 3\n\n{UNREAD}\n\nAn abstract that nobody reads.\n"
NOTES = "Meeting notes\nNothing to see here.\n"
GOOD = "Mar 3\n\nA Good Title\n\nAn abstract that is long enough.\n"
RENAME = "rename the file and it is read on the next scan"


def _settings(root: Path, database_url: str) -> Settings:
    """A workspace in ``root`` (empty inbox, one subscriber who wants egocentric video)."""
    (root / "inbox").mkdir()
    (root / "config").mkdir()
    (root / "config" / "subscribers.toml").write_text(SUBSCRIBERS, encoding="utf-8")
    return load_settings(CONFIG, environ=workspace_env(root, database_url, inbox_settle_seconds=0))


def _write_named(folder: Path, name: bytes, data: str) -> None:
    """Create ``folder/name`` with a name given as raw bytes (not necessarily UTF-8)."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(data.encode("utf-8"))


def _make_socket(path: Path) -> None:
    """A Unix socket entry at ``path`` (the entry stays after the socket is closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def _hostile_inbox(inbox: Path, outside: Path) -> None:
    """One good digest and, beside it, every kind of hostile entry."""
    shutil.copy(SEEDS / SEED_004, inbox / SEED_004)
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET_TEXT, encoding="utf-8")
    _write_named(inbox, b"caf\xe9.txt", UNREAD_TEXT)  # Latin-1, not UTF-8
    _write_named(inbox, b"new\nline.txt", UNREAD_TEXT)
    (inbox / "notes.txt").write_text(NOTES, encoding="utf-8")
    (inbox / "linked.txt").symlink_to(outside / "secret.txt")
    (inbox / "linked_dir").symlink_to(outside)
    os.mkfifo(inbox / "pipe")
    _make_socket(inbox / "sock")


def _files_text(folder: Path) -> str:
    """Everything written under ``folder``, decoded leniently: where a leak would show."""
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


def _skip_reasons(inbox: Path) -> list[str]:
    return [
        f"{inbox}/linked.txt: a symbolic link, not followed (only regular files are read)",
        f"{inbox}/linked_dir: a symbolic link, not followed (only regular files are read)",
        f"{inbox}/pipe: a named pipe (FIFO), not a regular file; not opened",
        f"{inbox}/sock: a socket, not a regular file; not opened",
    ]


def _quarantine_reasons(inbox: Path) -> list[str]:
    return [
        f"{inbox}/caf\\xe9.txt: the file name is not valid UTF-8 (shown escaped); not read: "
        + RENAME,
        f"{inbox}/new\\nline.txt: the file name holds control characters (shown escaped); not "
        "read: " + RENAME,
        f"{inbox}/notes.txt, line 1: not a Hugging Face Daily Papers digest: no page header, "
        "page date or author line, and 'Meeting notes' then 'Nothing to see here.' do not read "
        "as a paper title and its abstract",
    ]


# ------------------------------------------------------------------ part 1: end to end


def test_a_hostile_inbox_never_stops_a_run(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, database_url)
    inbox, outside = settings.inbox, tmp_path / "outside"
    _hostile_inbox(inbox, outside)
    caplog.set_level(logging.INFO)

    summary = run_once(settings, now=NOW)

    assert (
        summary.files_ingested,
        summary.files_quarantined,
        summary.files_skipped,
        summary.files_waiting,
        summary.files_unchanged,
        summary.papers_new,
    ) == (1, 3, 4, 0, 0, 44)
    assert summary.quarantined == _quarantine_reasons(inbox)
    assert summary.skipped == _skip_reasons(inbox)
    assert all(reason.isprintable() for reason in summary.quarantined + summary.skipped)
    # The good digest is delivered to the one subscriber.
    assert [(d["email"], d["papers"]) for d in summary.delivered] == [("eve@example.org", 1)]
    (eml,) = settings.outbox_dir.glob("*.eml")
    assert "EVA02-AT: Egocentric Video-Language Understanding" in eml.read_text("utf-8")

    store = open_store(settings)
    try:
        digests = store.list_digests()
        assert [(d.path, d.state) for d in digests] == [
            (f"{inbox}/{SEED_004}", DigestState.INGESTED),
            (f"{inbox}/caf\\xe9.txt", DigestState.QUARANTINED),
            (f"{inbox}/new\\nline.txt", DigestState.QUARANTINED),
            (f"{inbox}/notes.txt", DigestState.QUARANTINED),
        ]
        assert [d.reason for d in digests[1:]] == _quarantine_reasons(inbox)
        stored = "\n".join(f"{p.title}\n{p.abstract}" for p in store.papers())
        assert store.count_papers() == 44
    finally:
        store.close()
    # What the links point to is neither read, nor stored, published, mailed or named.
    for where in (
        stored,
        "\n".join(summary.quarantined + summary.skipped),
        _files_text(settings.outbox_dir),
        _files_text(settings.feeds_dir),
        caplog.text,
    ):
        assert SECRET not in where
        assert UNREAD not in where
        assert "secret.txt" not in where and str(outside) not in where
    if database_url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("test.db*")))
        assert SECRET.encode() not in raw and UNREAD.encode() not in raw
    # Nothing in the inbox or outside it was touched.
    assert (outside / "secret.txt").read_text(encoding="utf-8") == SECRET_TEXT
    assert stat.S_ISFIFO(os.lstat(inbox / "pipe").st_mode)
    assert stat.S_ISSOCK(os.lstat(inbox / "sock").st_mode)
    assert sorted(os.listdir(os.fsencode(inbox))) == sorted(
        [
            SEED_004.encode(),
            b"caf\xe9.txt",
            b"linked.txt",
            b"linked_dir",
            b"new\nline.txt",
            b"notes.txt",
            b"pipe",
            b"sock",
        ]
    )

    # The next run: the same files are known, the same entries skipped again, nothing sent.
    again = run_once(settings, now=NOW + timedelta(hours=1))
    assert (
        again.files_ingested,
        again.files_quarantined,
        again.files_skipped,
        again.files_unchanged,
        again.issues_delivered,
    ) == (0, 0, 4, 4, 0)
    assert again.skipped == _skip_reasons(inbox)


def test_ingest_command_answers_at_once_for_entries_that_are_not_files(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url)
    inbox = settings.inbox
    os.mkfifo(inbox / "pipe")  # no writer: a blocking open would wait forever
    (tmp_path / "outside.txt").write_text(SECRET_TEXT, encoding="utf-8")
    (inbox / "link.txt").symlink_to(tmp_path / "outside.txt")
    env = workspace_env(tmp_path, database_url)
    # The timeout only guards against a hang; it is not what the test measures.
    out = run_cli(env, "ingest", str(inbox / "pipe"), timeout=60)
    assert (out.returncode, out.stdout) == (
        0,
        f"{inbox}/pipe: skipped: {inbox}/pipe: a named pipe (FIFO), not a regular file; "
        "not opened\n",
    )
    out = run_cli(
        env, "ingest", "--json", str(inbox / "link.txt"), "/dev/null", str(inbox), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert [(r["path"], r["status"], r["reason"]) for r in json.loads(out.stdout)] == [
        (
            f"{inbox}/link.txt",
            "skipped",
            f"{inbox}/link.txt: a symbolic link, not followed (only regular files are read)",
        ),
        ("/dev/null", "skipped", "/dev/null: a character device, not a regular file; not opened"),
        (
            f"{inbox}/link.txt",
            "skipped",
            f"{inbox}/link.txt: a symbolic link, not followed (only regular files are read)",
        ),
        (
            f"{inbox}/pipe",
            "skipped",
            f"{inbox}/pipe: a named pipe (FIFO), not a regular file; not opened",
        ),
    ]
    assert SECRET not in out.stdout + out.stderr
    assert "outside.txt" not in out.stdout + out.stderr


def test_the_daemon_reports_a_skipped_entry_once(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe")
    (inbox / "good.txt").write_text(GOOD, encoding="utf-8")
    scanner = InboxScanner(settle_seconds=0)
    caplog.set_level(logging.WARNING, logger="newsletter.ingest")
    scans = [
        [
            (Path(r.path).name, r.status)
            for r in ingest_paths(
                store, [inbox], now=NOW, max_bytes=MAX, scanner=scanner, two_scans=False
            )
        ]
        for _ in range(4)
    ]
    # A FIFO has nothing to settle: skipped at the first scan, then never again.
    assert scans == [
        [("good.txt", IngestStatus.WAITING), ("pipe", IngestStatus.SKIPPED)],
        [("good.txt", IngestStatus.INGESTED)],
        [],
        [],
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped {inbox}/pipe: a named pipe (FIFO), not a regular file; not opened"
    ]


class _LstatSeesARegularFile:
    """``os`` for newsletter.ingest whose ``lstat`` says "regular file" for every path: the
    state of an entry that is swapped for a link or a FIFO after it was listed."""

    def __init__(self, regular: Path) -> None:
        self._regular = regular

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def lstat(self, path: object) -> os.stat_result:
        return os.lstat(self._regular)


def test_an_entry_swapped_after_the_listing_is_still_never_followed_or_blocked_on(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regular = tmp_path / "regular.txt"
    regular.write_text(GOOD, encoding="utf-8")
    (tmp_path / "secret.txt").write_text(SECRET_TEXT, encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "secret.txt")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr("newsletter.ingest.os", _LstatSeesARegularFile(regular))
    reports = [ingest_file(store, path, now=NOW, max_bytes=MAX) for path in (link, fifo)]
    assert [(r.status, r.reason, r.recorded) for r in reports] == [
        (
            IngestStatus.SKIPPED,
            f"{link}: a symbolic link, not followed (only regular files are read)",
            False,
        ),
        (
            IngestStatus.SKIPPED,
            f"{fifo}: a named pipe (FIFO), not a regular file; not opened",
            False,
        ),
    ]
    assert store.list_digests() == [] and store.count_papers() == 0


def test_read_regular_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(tmp_path / "file.txt")
    os.mkfifo(tmp_path / "pipe")
    _make_socket(tmp_path / "sock")
    kinds: dict[str, SpecialFile] = {}
    for path in (tmp_path / "link", tmp_path / "pipe", tmp_path / "sock", Path("/dev/null")):
        with pytest.raises(NotRegularFile) as caught:
            read_regular_file(path, MAX)
        kinds[path.name] = caught.value.kind
    assert kinds == {
        "link": SpecialFile.SYMLINK,
        "pipe": SpecialFile.FIFO,
        "sock": SpecialFile.SOCKET,
        "null": SpecialFile.CHAR_DEVICE,
    }
    assert read_regular_file(tmp_path / "file.txt", 4) == b"01234"  # one byte past the limit
    assert read_regular_file(tmp_path / "file.txt", 100) == b"0123456789"


# ------------------------------------------------------------------ part 1: names

# (name on disk, how reports show it, reason after the path; None: ingested as usual)
NAMES: dict[str, tuple[bytes, str, str | None]] = {
    "latin-1": (b"caf\xe9.txt", "caf\\xe9.txt", "the file name is not valid UTF-8"),
    "utf-8-of-a-surrogate": (
        b"x\xed\xb2\x80.txt",
        "x\\xed\\xb2\\x80.txt",
        "the file name is not valid UTF-8",
    ),
    "newline": (b"new\nline.txt", "new\\nline.txt", "the file name holds control characters"),
    "escape-sequence": (
        b"\x1b[31mred.txt",
        "\\x1b[31mred.txt",
        "the file name holds control characters",
    ),
    "tab": (b"a\tb.txt", "a\\tb.txt", "the file name holds control characters"),
    "c1-control": ("a\x85b.txt".encode(), "a\\x85b.txt", "the file name holds control characters"),
    "bidi-override": ("a\u202etxt.exe".encode(), "a\\u202etxt.exe", None),
    "backslash": (b"back\\slash.txt", "back\\\\slash.txt", None),
    "accents": ("café.txt".encode(), "café.txt", None),
}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_hostile_names_are_shown_escaped_and_a_rename_cures_them(
    store: Store, tmp_path: Path, case: str
) -> None:
    raw, shown, problem = NAMES[case]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _write_named(inbox, raw, GOOD)
    (inbox / "z_other.txt").write_text(UNREAD_TEXT, encoding="utf-8")
    reports = ingest_paths(store, [inbox], now=NOW, max_bytes=MAX)
    first = reports[0]
    assert first.path == f"{inbox}/{shown}"
    assert reports[1].status == IngestStatus.INGESTED  # the other file of the scan
    if problem is None:
        assert (first.status, first.reason, first.papers_new) == (IngestStatus.INGESTED, None, 1)
        assert [d.path for d in store.list_digests()] == [
            f"{inbox}/{shown}",
            f"{inbox}/z_other.txt",
        ]
        return
    reason = f"{inbox}/{shown}: {problem} (shown escaped); not read: {RENAME}"
    assert (first.status, first.reason) == (IngestStatus.QUARANTINED, reason)
    assert [(d.path, d.reason) for d in store.list_digests(DigestState.QUARANTINED)] == [
        (f"{inbox}/{shown}", reason)
    ]
    assert store.count_papers() == 1  # z_other.txt's paper only
    # The same name again: known, not re-read. Renamed: read like any other file.
    (again,) = [
        r for r in ingest_paths(store, [inbox], now=NOW, max_bytes=MAX) if r.path == first.path
    ]
    assert (again.status, again.reason) == (IngestStatus.UNCHANGED, reason)
    os.rename(os.path.join(os.fsencode(inbox), raw), inbox / "renamed.txt")
    (renamed,) = [
        r for r in ingest_paths(store, [inbox], now=NOW, max_bytes=MAX) if "renamed" in r.path
    ]
    assert (renamed.status, renamed.papers_new) == (IngestStatus.INGESTED, 1)


def test_printable_path() -> None:
    assert printable_path("/inbox/plain name.txt") == "/inbox/plain name.txt"
    assert printable_path(os.fsdecode(b"/inbox/\xff\xfe.txt")) == "/inbox/\\xff\\xfe.txt"
    assert printable_path("/a\r\nb\x00c\x7fd\u2028e") == "/a\\r\\nb\\x00c\\x7fd\\u2028e"
    assert printable_path("/a\\x41") == "/a\\\\x41"  # not to be confused with the escape of "A"
    assert printable_path("/\U000e0041tag") == "/\\U000e0041tag"


# ------------------------------------------------------------------ part 2: text evidence

NOT_DIGESTS: dict[str, tuple[str, str]] = {
    "meeting-notes": (NOTES, "line 1: 'Meeting notes' then 'Nothing to see here.'"),
    "shopping-list": ("Milk\nEggs\nBread\nButter\n", "line 1: 'Milk' then 'Eggs'"),
    "odd-shopping-list": ("Milk\n\nEggs\n\nBread\n", "line 1: 'Milk' then 'Eggs'"),
    "email": (
        "Hi Bob,\nThanks for the notes.\nSee you Monday.\nAlice\n",
        "line 1: 'Hi Bob,' then 'Thanks for the notes.'",
    ),
    "to-do": (
        "To Do\n\n- call the plumber\n\n- buy stamps\n\n- water the plants\n",
        "line 1: 'To Do' then '- call the plumber'",
    ),
    "one-good-pair-then-notes": (
        "A Good Title\n\nAn abstract.\n\nshopping\n\neggs and milk\n",
        "line 5: 'shopping' then 'eggs and milk'",
    ),
    "sentence-as-title": (
        "This is a sentence.\n\n" + "word " * 30 + "\n",
        "line 1: 'This is a sentence.' then 'word word word word word word word word word word "
        "word word…'",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_DIGESTS))
def test_texts_without_evidence_are_not_digests(case: str) -> None:
    text, where = NOT_DIGESTS[case]
    with pytest.raises(ParseError) as caught:
        parse_bytes(text.encode(), name="in/x.txt", today=TODAY)
    assert str(caught.value) == (
        f"in/x.txt, {where.split(': ', 1)[0]}: not a Hugging Face Daily Papers digest: no page "
        f"header, page date or author line, and {where.split(': ', 1)[1]} do not read as a "
        "paper title and its abstract"
    )


LONG_ABSTRACT = (
    "We study how sentence-case titles and long abstracts read, with more than fifteen words in "
    "this abstract and more than one hundred characters"  # no final full stop: still one
)
DIGESTS: dict[str, tuple[str, int]] = {
    "page-text": ("Daily Papers\n\nmeeting notes\n\nnothing to see here\n", 1),
    "subscribe-glued": ("SubscribeMeeting notes\nnothing here\n", 1),
    "page-date": ("Mar 3\n\nmeeting notes\n\nnothing to see here\n", 1),
    "author-line": ("meeting notes\n\nnothing\n\n  • 2 authors\n·\nMar 1\n", 1),
    "long-abstracts": (f"Sentence-case title of a paper\n\n{LONG_ABSTRACT}\n" * 2, 2),
    "title-case-and-sentences": ("A Title\n\nAn abstract.\n\nB Title With Words\n\nAnother!\n", 2),
    "question-title": ("Are Emergent Abilities of Large Language Models a Mirage?\n\nNo.\n", 1),
}


@pytest.mark.parametrize("case", sorted(DIGESTS))
def test_each_kind_of_evidence_makes_a_digest(case: str) -> None:
    text, count = DIGESTS[case]
    digest = parse_bytes(text.encode(), name="x.txt", today=TODAY)
    assert (digest.format, len(digest.papers)) == ("hf-text", count)


def test_a_lone_new_is_not_evidence() -> None:
    with pytest.raises(ParseError, match="not a Hugging Face Daily Papers digest"):
        parse_bytes(b"new\n\nmeeting notes\n\nnothing to see here\n", name="x", today=TODAY)


def test_a_one_line_file_is_still_reported_as_truncated() -> None:
    with pytest.raises(ParseError) as caught:
        parse_bytes(b"groceries\n", name="x.txt", today=TODAY)
    assert str(caught.value) == (
        "x.txt, line 1: the paper 'groceries' has no abstract (the file may be truncated)"
    )


@pytest.mark.parametrize("seed", sorted(SEED_COUNTS))
def test_seeds_without_their_page_text_still_read_by_their_pairs(seed: str) -> None:
    """Rule 4 alone accepts every seed: no page header, page date or author lines."""
    kept = []
    for raw in (SEEDS / seed).read_text(encoding="utf-8").split("\n"):
        line = raw.strip()
        if line.startswith("Subscribe") and line != "Subscribe":
            line = line[len("Subscribe") :]
        if (
            line in hf_text.BOILERPLATE
            or line == "·"
            or line.startswith("•")
            or DATE_LINE.match(line)
        ):
            continue
        kept.append(line)
    digest = parse_bytes("\n".join(kept).encode(), name=seed, today=TODAY)
    assert len(digest.papers) == SEED_COUNTS[seed]
    original = parse_bytes((SEEDS / seed).read_bytes(), name=seed, today=TODAY)
    assert [p.title for p in digest.papers] == [p.title for p in original.papers]


# ------------------------------------------------------------------ part 4: limits, links


def _ingest(store: Store, path: Path, data: str) -> FileReport:
    path.write_text(data, encoding="utf-8")
    return ingest_file(store, path, now=NOW, max_bytes=64 << 20)


@pytest.mark.parametrize("page_date", ["Mar 3\n\n", ""], ids=["dated", "judged-by-its-pair"])
def test_a_multi_megabyte_one_line_abstract_is_cut(
    store: Store, tmp_path: Path, page_date: str
) -> None:
    path = tmp_path / "huge.txt"
    abstract = "word " * 1_000_000  # 5 MB on one line
    report = _ingest(store, path, f"{page_date}A Paper With A Huge Abstract\n\n{abstract}\n")
    assert (report.status, report.entries, report.papers_new) == (IngestStatus.INGESTED, 1, 1)
    line = 3 if page_date else 1
    assert report.notes == (f"{path}, line {line}: abstract cut to 20,000 characters",)
    (paper,) = store.papers()
    assert len(paper.abstract) == MAX_ABSTRACT_CHARS
    assert paper.abstract == ("word " * 4000)[: MAX_ABSTRACT_CHARS - 1] + "…"


def test_json_fields_over_the_limits_are_cut_with_a_note_each(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    item = {
        "paper": {
            "id": "2509.04664",
            "title": "Long " * 200,  # 1,000 characters
            "summary": "An \n\n  abstract   " * 3_000,  # collapses to 36,000 characters
            "authors": [{"name": f"Author {n}"} for n in range(250)] + [{"name": "N" * 300}],
        }
    }
    path = tmp_path / "long.json"
    caplog.set_level(logging.WARNING, logger="newsletter.ingest")
    report = _ingest(store, path, json.dumps([item]))
    notes = (
        f"{path}, paper 'Long Long Long Long Long Long Long Long Long Long Long Long…': {what}"
        for what in (
            "title cut to 400 characters",
            "abstract cut to 20,000 characters",
            "author list cut to the first 200 of 251 names",
        )
    )
    assert report.notes == tuple(notes)
    assert [r.getMessage() for r in caplog.records] == list(report.notes)
    (paper,) = store.papers()
    assert (len(paper.title), len(paper.abstract), paper.title[-1], paper.abstract[-1]) == (
        400,
        20_000,
        "…",
        "…",
    )
    assert paper.abstract.startswith("An abstract An abstract")
    assert (len(paper.authors), paper.author_count) == (200, 251)
    assert paper.authors[-1] == "Author 199"


def test_a_long_author_name_is_cut(store: Store, tmp_path: Path) -> None:
    item = {"id": "2509.04664", "title": "T", "authors": ["A. Short", "N" * 300]}
    path = tmp_path / "name.json"
    report = _ingest(store, path, json.dumps([item]))
    assert report.notes == (f"{path}, paper 'T': 1 author name(s) cut to 200 characters",)
    (paper,) = store.papers()
    assert paper.authors == ("A. Short", "N" * 199 + "…")


def test_squash_spaces_stops_one_past_the_limit() -> None:
    assert squash_spaces("  a \n b\t", 10) == "a b"
    assert squash_spaces("ab cd ef gh", 5) == "ab cd "[:6]
    assert len(squash_spaces("word " * 100_000, 1_000)) == 1_001


LINKS_FEED = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>links</title>
<updated>2026-11-22T00:00:00Z</updated>
<entry><id>urn:x:1</id><title>Egocentric Script Link Paper</title>
<link href="javascript:alert(document.cookie)"/><summary>Egocentric video, one.</summary></entry>
<entry><id>urn:x:2</id><title>Egocentric Data Link Paper</title>
<link href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="/>
<summary>Egocentric video, two.</summary></entry>
<entry><id>urn:x:3</id><title>Egocentric Relative Link Paper</title>
<link href="/abs/relative"/><summary>Egocentric video, three.</summary></entry>
<entry><id>urn:x:4</id><title>Egocentric Web Link Paper</title>
<link href="https://example.org/papers/4"/><summary>Egocentric video, four.</summary></entry>
</feed>
"""


def test_only_http_links_from_digests_become_links_anywhere(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, database_url)
    feed = settings.inbox / "links.atom"
    feed.write_text(LINKS_FEED, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="newsletter.ingest")
    summary = run_once(settings, now=NOW)
    assert (summary.files_ingested, summary.papers_new) == (1, 4)
    assert [(d["email"], d["papers"]) for d in summary.delivered] == [("eve@example.org", 4)]
    assert [r.getMessage() for r in caplog.records] == [
        f"{feed}, paper 'Egocentric {kind} Link Paper': link dropped (not an absolute http or "
        "https URL of at most 2,000 characters)"
        for kind in ("Script", "Data", "Relative")
    ]
    store = open_store(settings)
    try:
        assert [(p.title, p.url) for p in store.papers()] == [
            ("Egocentric Script Link Paper", None),
            ("Egocentric Data Link Paper", None),
            ("Egocentric Relative Link Paper", None),
            ("Egocentric Web Link Paper", "https://example.org/papers/4"),
        ]
    finally:
        store.close()
    published = _files_text(settings.outbox_dir) + _files_text(settings.feeds_dir)
    for bad in ("javascript:", "data:text", "/abs/relative"):
        assert bad not in published
    assert "https://example.org/papers/4" in published
