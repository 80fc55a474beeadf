"""The main job end to end on the seed corpus, on SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path

import feedparser

from newsletter.config import Settings
from newsletter.domain import IssueState
from newsletter.pipeline import open_store, preview, run_once
from tests.conftest import NOW


def _emails(outbox: Path) -> dict[str, email.message.EmailMessage]:
    found = {}
    for path in sorted(outbox.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[path.name] = msg
    return found


def test_first_run_ingests_seeds_and_delivers_one_issue_each(settings: Settings) -> None:
    summary = run_once(settings, now=NOW)
    assert (summary.files_ingested, summary.files_quarantined, summary.papers_new) == (5, 0, 380)
    assert summary.papers_total == 380
    assert summary.subscribers_synced == 3
    assert summary.issues_delivered == 3
    mails = _emails(settings.outbox_dir)
    assert sorted(str(m["To"]) for m in mails.values()) == [
        "Ada Lovelace <ada@example.org>",
        "Grace Hopper <grace@example.org>",
        "Karen Spärck Jones <karen@example.org>",
    ]
    subjects = sorted(str(m["Subject"]) for m in mails.values())
    assert subjects == [
        "Paper Digest: 10 papers for Mon 23 Nov 2026",
        "Paper Digest: 12 papers for Mon 23 Nov 2026",
        "Paper Digest: 8 papers for Mon 23 Nov 2026",
    ]
    store = open_store(settings)
    issues = store.issues()
    assert [(i.state, len(i.paper_ids)) for i in issues] == [
        (IssueState.SENT, 8),
        (IssueState.SENT, 10),
        (IssueState.SENT, 12),
    ]
    # The sent log holds exactly the delivered papers.
    for issue in issues:
        assert store.sent_paper_ids(issue.subscriber_id) == set(issue.paper_ids)
    store.close()
    feeds = sorted(p.name for p in settings.feeds_dir.iterdir())
    assert len(feeds) == 8 and "all.atom" in feeds and "all.rss" in feeds
    atom = feedparser.parse((settings.feeds_dir / "all.atom").read_bytes())
    assert atom.bozo == 0 and len(atom.entries) == 380


def test_second_run_changes_nothing(settings: Settings) -> None:
    run_once(settings, now=NOW)
    before = {p.name: p.read_bytes() for p in settings.feeds_dir.iterdir()}
    summary = run_once(settings, now=NOW + timedelta(minutes=5))
    assert (summary.files_ingested, summary.files_unchanged, summary.papers_new) == (0, 5, 0)
    assert summary.issues_delivered == 0 and summary.feeds_written == 0
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 3
    assert {p.name: p.read_bytes() for p in settings.feeds_dir.iterdir()} == before


SPEECH_ONLY = (
    '[[subscriber]]\nemail = "sam@example.org"\nname = "Sam"\n'
    "profile = '\"speech recognition\"'\nmax_papers = 100\nmin_score = 0.5\n"
)


def test_next_issue_holds_only_unseen_papers(settings: Settings, workdir: Path) -> None:
    subs = workdir / "config" / "subscribers.toml"
    subs.write_text(SPEECH_ONLY)
    first = run_once(settings, now=NOW)
    assert first.issues_delivered == 1
    store = open_store(settings)
    (issue,) = store.issues()
    delivered = store.issue_papers(issue.id)
    assert len(delivered) == 10  # every seed paper that mentions "speech recognition"
    store.close()
    # A new digest: 2 unseen papers and 3 that Sam already received.
    lines = ["Nov 24", ""]
    for n in (1, 2):
        lines += [
            f"Unseen Speech Recognition Paper {n}",
            "",
            f"A new approach to speech recognition, number {n}.",
            "",
        ]
    for sp in delivered[:3]:
        lines += [sp.paper.title, "", sp.paper.abstract, ""]
    (workdir / "inbox" / "005_new.txt").write_text("\n".join(lines), encoding="utf-8")
    second = run_once(settings, now=NOW + timedelta(days=1))
    assert (second.files_ingested, second.papers_new, second.issues_delivered) == (1, 2, 1)
    store = open_store(settings)
    latest = store.issues()[-1]
    titles = [sp.paper.title for sp in store.issue_papers(latest.id)]
    assert sorted(titles) == [
        "Unseen Speech Recognition Paper 1",
        "Unseen Speech Recognition Paper 2",
    ]
    # A paper listed again keeps its first sighting: it is not "new" because it reappeared.
    repeated = store.papers_by_id([sp.paper.id for sp in delivered[:3]])
    assert all(p.first_seen_at == NOW for p in repeated.values())
    store.close()


def test_old_papers_fall_out_of_the_candidate_window(settings: Settings, workdir: Path) -> None:
    (workdir / "config" / "subscribers.toml").write_text(SPEECH_ONLY)
    summary = run_once(settings, now=NOW)
    assert summary.papers_new == 380
    # Sam unsubscribes nothing, but a new subscriber arriving 8 days later gets no backlog.
    (workdir / "config" / "subscribers.toml").write_text(
        SPEECH_ONLY + SPEECH_ONLY.replace("sam@", "late@").replace('"Sam"', '"Late"')
    )
    later = run_once(settings, now=NOW + timedelta(days=8))
    assert later.issues_delivered == 0 and later.issues_empty == 2


def test_unsubscribed_subscriber_gets_nothing(settings: Settings) -> None:
    run_once(settings, now=NOW)
    from newsletter.domain import SubscriberStatus

    store = open_store(settings)
    assert store.set_subscriber_status("ada@example.org", SubscriberStatus.UNSUBSCRIBED, NOW)
    store.close()
    (Path(settings.inbox) / "009_more.txt").write_text(
        "Speech Recognition Everywhere\n\nSpeech recognition, diffusion transformer, dense "
        "retrieval and more.\n"
    )
    summary = run_once(settings, now=NOW + timedelta(days=1))
    assert sorted(d["email"] for d in summary.delivered) == [
        "grace@example.org",
        "karen@example.org",
    ]


def test_preview_writes_html_and_records_nothing(settings: Settings, tmp_path: Path) -> None:
    run_once(settings, now=NOW)
    path = preview(settings, "grace@example.org", NOW + timedelta(days=1), tmp_path / "pv")
    html = path.read_text(encoding="utf-8")
    assert path.suffix == ".html" and "Grace Hopper" in html
    store = open_store(settings)
    assert len(store.issues()) == 3
    store.close()
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 3
