"""Why an issue is empty (issue 18, must-show 4, the email's part).

A subscriber with ``send_when_empty`` gets an email on a day without papers for them; it says
why: no new paper at all arrived since their last issue (or since they subscribed), or some
did and none matched their profile. The messages are delivered through the real pipeline and
read back with the ``email`` package, both parts.
"""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import QuietSpell, SubscriberSource, SubscriberSpec
from newsletter.pipeline import issue_content
from tests.conftest import NOW

DAY = timedelta(days=1)


def _digest(path: Path, *titles: str) -> Path:
    """A Hugging Face daily-papers text scrape with these papers (none about proteins)."""
    body = "".join(f"{t}\n\nWe study {t.lower()} on common benchmarks.\n\n" for t in titles)
    path.write_text(f"Nov 23\n\n{body}", encoding="utf-8")
    return path


def _parts(raw: bytes) -> tuple[EmailMessage, str, str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    plain = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    return msg, str(plain.get_content()), str(html.get_content())


def _count_line(text: str) -> str:
    """The plain part's line under the greeting: what the issue holds, or why it is empty."""
    lines = text.splitlines()
    return lines[lines.index("Hello Rosalind,") + 2]


def test_an_empty_issue_says_whether_papers_arrived_and_none_matched(
    settings: Settings, tmp_path: Path
) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:
        for address, wants_empty in (("ros@example.org", True), ("quiet@example.org", False)):
            app.store.upsert_subscriber(
                SubscriberSpec(
                    email=address,
                    name="Rosalind",
                    profile='"protein folding"',
                    min_score=0.1,
                    send_when_empty=wants_empty,
                ),
                source=SubscriberSource.CLI,
                now=NOW - timedelta(hours=3),
            )
        # Day 1: three new papers, none about protein folding; her first issue.
        app.ingest(
            [_digest(tmp_path / "d1.txt", "Sparse Attention", "Speech Tokens", "RL")], now=NOW
        )
        plan = app.plan_current_slots(NOW)
        assert (plan.planned, plan.empty) == (1, 1)  # the other subscriber gets no email
        app.deliver(NOW)
        # Day 2: nothing new arrived at all (the same digest again changes nothing).
        app.ingest(
            [_digest(tmp_path / "d1.txt", "Sparse Attention", "Speech Tokens", "RL")], now=NOW + DAY
        )
        app.plan_current_slots(NOW + DAY)
        app.deliver(NOW + DAY)
        # Day 3: two new papers, still none about protein folding.
        app.ingest(
            [_digest(tmp_path / "d3.txt", "Graph Transformers", "Vision Mamba")], now=NOW + 2 * DAY
        )
        app.plan_current_slots(NOW + 2 * DAY)
        app.deliver(NOW + 2 * DAY)
        issues = app.store.issues()
        sub = app.store.subscribers_by_id()[issues[0].subscriber_id]
        # The workers' path (one issue at a time) reads the same reason.
        assert issue_content(app.store, issues[1], sub).quiet == QuietSpell(0, issues[0].created_at)
    assert [len(i.paper_ids) for i in issues] == [0, 0, 0]
    assert [env.recipient for env, _ in mailer.sent] == ["ros@example.org"] * 3
    expected = [
        "3 new papers since you subscribed, none matching your profile.",
        "No new papers at all since your last issue.",
        "2 new papers since your last issue, none matching your profile.",
    ]
    for (_, raw), line, day in zip(mailer.sent, expected, (23, 24, 25), strict=True):
        msg, plain, html = _parts(raw)
        assert str(msg["Subject"]) == f"Paper Digest: 0 papers for {_weekday(day)} {day} Nov 2026"
        assert _count_line(plain) == line
        assert f'<div class="count">{line}</div>' in html.replace("\n", "")
        assert "We will write again when new papers match your profile." in plain
        assert "We will write again when new papers match your profile." in html


def _weekday(day: int) -> str:
    return {23: "Mon", 24: "Tue", 25: "Wed"}[day]
