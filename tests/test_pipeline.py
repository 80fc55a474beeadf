"""The main job end to end on the seed corpus, on SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path

import feedparser

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import Envelope, MemoryMailer
from newsletter.domain import IssueState
from tests.conftest import NOW
from tests.factories import open_store, run_once


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
    store = open_store(settings)
    subs = store.subscribers()
    store.close()
    # The global feed only: private feeds are served by the web from the database, and
    # written as files only with feeds.private_files (tests/test_feed_files.py).
    assert feeds == ["all.atom", "all.rss"]
    # The unsubscribe token appears in no feed: a shared feed URL cannot unsubscribe anyone.
    for path in settings.feeds_dir.iterdir():
        assert not any(s.token in path.read_text(encoding="utf-8") for s in subs), path.name
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
    # Every seed paper that mentions "speech recognition" (10), or ASR (3 more: the
    # vocabulary's expansion, since issue 15).
    assert len(delivered) == 13
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
    assert sorted(str(d["email"]) for d in summary.delivered) == [
        "grace@example.org",
        "karen@example.org",
    ]
    store = open_store(settings)
    ada = store.subscriber("ada@example.org")
    store.close()
    assert ada is not None
    assert not (settings.feeds_dir / f"{ada.feed_token}.atom").exists()
    assert not (settings.feeds_dir / f"{ada.feed_token}.rss").exists()


def test_preview_writes_html_and_records_nothing(settings: Settings, tmp_path: Path) -> None:
    run_once(settings, now=NOW)
    with Newsletter(settings) as app:
        path = app.preview("grace@example.org", tmp_path / "pv", NOW + timedelta(days=1))
    html = path.read_text(encoding="utf-8")
    assert path.suffix == ".html" and "Grace Hopper" in html
    store = open_store(settings)
    assert len(store.issues()) == 3
    store.close()
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 3


class FlakyMailer(MemoryMailer):
    """Fails for the listed recipients (as a full disk or a refused connection would)."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def send(self, envelope: Envelope, message: bytes) -> str:
        if envelope.recipient in self.failing:
            raise OSError(28, "No space left on device")
        return super().send(envelope, message)


def _all_issue_papers(settings: Settings) -> dict[str, list[int]]:
    store = open_store(settings)
    emails = {s.id: s.email for s in store.subscribers()}
    out: dict[str, list[int]] = {}
    for issue in store.issues():
        out.setdefault(emails[issue.subscriber_id], []).extend(issue.paper_ids)
    store.close()
    return out


def test_one_failing_recipient_does_not_stop_the_others(settings: Settings) -> None:
    mailer = FlakyMailer({"grace@example.org"})
    summary = run_once(settings, now=NOW, mailer=mailer)
    assert sorted(str(d["email"]) for d in summary.delivered) == [
        "ada@example.org",
        "karen@example.org",
    ]
    store = open_store(settings)
    grace = store.subscriber("grace@example.org")
    assert grace is not None
    issue = store.issue(grace.id, NOW.date())
    assert issue is not None
    assert (issue.state, issue.attempts, issue.next_retry_at) == (
        IssueState.RENDERED,
        1,
        NOW + timedelta(minutes=5),
    )
    assert issue.last_reply == "OSError: [Errno 28] No space left on device"
    assert store.sent_paper_ids(grace.id) == set()
    store.close()
    # Before the retry time nothing is sent; after it, the same stored message goes out.
    assert run_once(settings, now=NOW + timedelta(minutes=1), mailer=mailer).issues_delivered == 0
    mailer.failing.clear()
    later = run_once(settings, now=NOW + timedelta(minutes=6), mailer=mailer)
    assert [d["email"] for d in later.delivered] == ["grace@example.org"]
    ids = {
        msg["Message-ID"]
        for _, raw in mailer.sent
        for msg in [email.message_from_bytes(raw, policy=email.policy.default)]
    }
    assert len(ids) == 3


def test_retries_are_bounded(settings: Settings) -> None:
    mailer = FlakyMailer({"grace@example.org"})
    when = NOW
    for _ in range(5):
        run_once(settings, now=when, mailer=mailer)
        when += timedelta(hours=3)
    store = open_store(settings)
    (failed,) = store.issues(states=[IssueState.FAILED])
    assert (failed.attempts, failed.next_retry_at) == (5, None)
    store.close()


def test_no_paper_twice_after_a_crashed_run(settings: Settings, workdir: Path) -> None:
    blocker = workdir / "blocker"
    blocker.write_text("a file where the outbox folder should be")
    broken = settings.model_copy(update={"outbox_dir": blocker / "out"})
    first = run_once(broken, now=NOW)
    assert first.issues_delivered == 0
    second = run_once(settings, now=NOW + timedelta(days=1))
    # Yesterday's three issues, retried, and today's three, holding other papers.
    assert sorted(str(d["slot"]) for d in second.delivered) == (
        ["2026-11-23"] * 3 + ["2026-11-24"] * 3
    )
    for email_address, paper_ids in _all_issue_papers(settings).items():
        assert len(paper_ids) == len(set(paper_ids)), email_address


def test_weekly_subscriber_only_on_their_days(settings: Settings, workdir: Path) -> None:
    (workdir / "config" / "subscribers.toml").write_text(
        SPEECH_ONLY.replace("max_papers = 100", 'max_papers = 3\ndays = ["wed"]')
    )
    monday = NOW  # 2026-11-23 is a Monday
    assert run_once(settings, now=monday).issues_delivered == 0
    wednesday = run_once(settings, now=monday + timedelta(days=2))
    assert [(d["email"], d["slot"]) for d in wednesday.delivered] == [
        ("sam@example.org", "2026-11-25")
    ]


def test_unsubscribing_cancels_a_pending_issue(settings: Settings) -> None:
    from newsletter.domain import SubscriberStatus

    mailer = FlakyMailer({"ada@example.org"})
    run_once(settings, now=NOW, mailer=mailer)
    store = open_store(settings)
    store.set_subscriber_status("ada@example.org", SubscriberStatus.UNSUBSCRIBED, NOW)
    store.close()
    mailer.failing.clear()
    summary = run_once(settings, now=NOW + timedelta(hours=1), mailer=mailer)
    assert summary.issues_delivered == 0
    store = open_store(settings)
    (failed,) = store.issues(states=[IssueState.FAILED])
    assert failed.last_reply == "not sent: ada@example.org is unsubscribed"
    store.close()


def test_a_very_long_address_still_gets_its_issue(settings: Settings, workdir: Path) -> None:
    address = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + ".example.org"
    (workdir / "config" / "subscribers.toml").write_text(
        SPEECH_ONLY.replace("sam@example.org", address)
    )
    summary = run_once(settings, now=NOW)
    assert [d["email"] for d in summary.delivered] == [address]
    (path,) = settings.outbox_dir.glob("*.eml")
    assert len(path.name) < 100
