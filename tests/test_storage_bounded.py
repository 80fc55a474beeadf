"""Storage stays bounded (issue 13): a sent issue keeps its papers, scores and reasons and the
sent log, not the bytes that were emailed; the archive re-renders it; retention prunes old
issues down to the sent log. On SQLite and (when given) PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import date, timedelta
from email.message import EmailMessage
from html import unescape
from typing import Any

from sqlalchemy import text
from starlette.testclient import TestClient

from newsletter.app import Newsletter
from newsletter.config import RetentionSettings, Settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import (
    IssueState,
    ParsedPaper,
    ScoredPaper,
    SubscriberSource,
    SubscriberSpec,
)
from newsletter.render import EmailRenderer
from newsletter.store import KeyedPaper, PruneResult, Store
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import make_paper, open_store, run_once, sql_statements

SECRET = b"test-secret-test-secret-0123456789"
DAY = NOW.date()
_TITLE = re.compile(r'<a class="title"[^>]*>(.*?)</a>', re.S)
_REASON = re.compile(r'class="reason"[^>]*>(.*?)</', re.S)


def retention(settings: Settings, days: int) -> Settings:
    return settings.model_copy(update={"retention": RetentionSettings(issue_days=days)})


def html_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # CRLF: the SMTP policy


def titles(html: str) -> list[str]:
    return [unescape(re.sub(r"<[^>]+>", "", t)).strip() for t in _TITLE.findall(html)]


def stored(store: Store, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def archive_client(settings: Settings) -> TestClient:
    app = create_app(settings, mailer=MemoryMailer(), clock=lambda: NOW, secret=SECRET)
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


# ---------------------------------------------------------------------- sent issues, archive


def cards(html: str) -> list[str]:
    """The paper anchors of a page's cards, in order (``paper-1``, ``paper-2``, ...)."""
    return re.findall(r'class="card" id="(paper-\d+)"', html)


def test_sent_issues_keep_no_bytes_and_the_archive_holds_the_email(settings: Settings) -> None:
    """No message bytes are stored; the archive page is rendered again from the issue's papers,
    scores and reasons: the email's cards in the same order with the same reasons, and (the
    whole issue) every paper's card."""
    sent = MemoryMailer()
    summary = run_once(settings, now=NOW, mailer=sent)
    assert summary.issues_delivered == 3
    store = open_store(settings)
    try:
        rows = stored(store, "SELECT state, html IS NULL, message IS NULL FROM issues ORDER BY id")
        assert rows == [("sent", True, True)] * 3
        tokens = {s.email: s.token for s in store.subscribers()}
        sizes = {
            s.email: len(i.paper_ids)
            for s in store.subscribers()
            for i in store.issues()
            if i.subscriber_id == s.id
        }
    finally:
        store.close()
    with archive_client(settings) as client:
        for envelope, raw in sent.sent:
            emailed = html_of(raw)
            page = client.get(f"/issues/{tokens[envelope.recipient]}/{DAY}")
            assert page.status_code == 200
            n = sizes[envelope.recipient]
            assert cards(page.text) == [f"paper-{k}" for k in range(1, n + 1)]
            assert cards(emailed) == cards(page.text)[: len(cards(emailed))]
            assert titles(page.text)[: len(titles(emailed))] == titles(emailed)
            assert _REASON.findall(page.text) == _REASON.findall(emailed)


def test_archive_shows_every_paper_of_an_email_cut_at_the_size_limit(settings: Settings) -> None:
    sent = MemoryMailer()
    with Newsletter(settings, mailer=sent) as app:
        # The email renderer keeps few cards: the email links to the archive for the rest.
        app.renderer = EmailRenderer(settings.templates_dir, app.site, max_html_bytes=30_000)
        app.run_once(NOW)
        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        issue = app.store.issue(ada.id, DAY)
        assert issue is not None
        archived = app.archived_issue_html(ada, DAY)
    (raw,) = [m for e, m in sent.sent if e.recipient == "ada@example.org"]
    emailed = html_of(raw)
    n = len(issue.paper_ids)
    shown = cards(emailed)
    assert 0 < len(shown) < n
    assert f"{n - len(shown)} more papers in the full issue on the web" in emailed
    assert archived is not None and "in the full issue on the web" not in archived
    assert cards(archived) == [f"paper-{k}" for k in range(1, n + 1)]
    assert cards(archived)[: len(shown)] == shown
    # Every paper the email has no card for links to its card in the archive.
    issue_url = app.site.issue_url(ada, DAY)
    for k in range(len(shown) + 1, n + 1):
        assert f'href="{issue_url}#paper-{k}"' in emailed


def test_archive_of_an_issue_not_sent_is_not_found(settings: Settings) -> None:
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW, two_scans=False)
        app.sync_subscribers(NOW)
        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        app.plan_current_slots(NOW)  # planned, never delivered
        assert app.store.issue(ada.id, DAY) is not None
        assert app.archived_issue_html(ada, DAY) is None
        assert app.archived_issue_html(ada, DAY - timedelta(days=1)) is None


# ---------------------------------------------------------------------- retention


def test_retention_prunes_old_issues_down_to_the_sent_log(settings: Settings) -> None:
    """Runs 3 and 10 days apart; retention asks for 1 day but is applied with the candidate
    window (7) + 2: the first issues are pruned by the third run, never re-planned."""
    settings = retention(settings, 1)
    t0 = NOW
    sent = MemoryMailer()
    first = run_once(settings, now=t0, mailer=sent)
    second = run_once(settings, now=t0 + timedelta(days=3), mailer=sent)
    assert (first.issues_delivered, second.issues_delivered) == (3, 3)
    store = open_store(settings)
    try:
        log_before = store.sent_log()
        papers_before = stored(store, "SELECT count(*) FROM issue_papers")[0][0]
        first_ids = [
            r[0] for r in stored(store, "SELECT id FROM issues WHERE slot_date = :d", d=t0.date())
        ]
        first_papers = stored(
            store,
            "SELECT count(*) FROM issue_papers WHERE issue_id IN (SELECT id FROM issues "
            "WHERE slot_date = :d)",
            d=t0.date(),
        )[0][0]
    finally:
        store.close()
    third = run_once(settings, now=t0 + timedelta(days=10), mailer=sent)
    assert third.issues_delivered == 0  # the papers of t0 are out of the window, none new
    store = open_store(settings)
    try:
        assert store.sent_log() == log_before  # never pruned
        assert len({(s, p) for s, p, _ in log_before}) == len(log_before) == papers_before
        assert stored(store, "SELECT count(*) FROM issue_papers")[0][0] == (
            papers_before - first_papers
        )
        # the sent issues' own rows stay: they are the sent log's anchor and hold the slot
        assert stored(
            store, "SELECT id, state FROM issues WHERE slot_date = :d ORDER BY id", d=t0.date()
        ) == [(i, "sent") for i in first_ids]
        ada = store.subscriber("ada@example.org")
        assert ada is not None
    finally:
        store.close()
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        assert app.archived_issue_html(ada, t0.date()) is None  # pruned
        assert app.archived_issue_html(ada, (t0 + timedelta(days=3)).date()) is not None
    # every paper went out once per subscriber, over all three runs
    per_subscriber: dict[str, list[str]] = {}
    for envelope, raw in sent.sent:
        per_subscriber.setdefault(envelope.recipient, []).extend(titles(html_of(raw)))
    for shown in per_subscriber.values():
        assert len(shown) == len(set(shown))


def test_retention_zero_keeps_everything(settings: Settings) -> None:
    settings = retention(settings, 0)
    run_once(settings, now=NOW, mailer=MemoryMailer())
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        assert app.apply_retention(NOW + timedelta(days=5000)) == PruneResult()
        ada = app.store.subscriber("ada@example.org")
        assert ada is not None
        assert app.archived_issue_html(ada, DAY) is not None


def _plan(store: Store, email_: str, slot: date, paper_ids: list[int]) -> int:
    sub, _ = store.upsert_subscriber(
        SubscriberSpec(email=email_, profile="speech", max_papers=10, min_score=0.0),
        source=SubscriberSource.CLI,
        now=NOW,
    )
    issue = store.plan_issue(
        sub.id,
        slot,
        [
            ScoredPaper(paper=make_paper(pid, f"paper {pid}"), score=1.0, reasons=())
            for pid in paper_ids
        ],
        NOW,
    )
    assert issue is not None
    return issue.id


def test_prune_issues_keeps_the_sent_log_and_pending_issues(store: Store) -> None:
    ids = store_papers(store, 6)
    old, new = DAY - timedelta(days=30), DAY
    sent_old = _plan(store, "a@example.org", old, ids[:2])
    failed_old = _plan(store, "b@example.org", old, ids[2:3])
    unknown_old = _plan(store, "c@example.org", old, ids[3:4])
    pending_old = _plan(store, "d@example.org", old, ids[4:5])
    sent_new = _plan(store, "a@example.org", new, ids[5:6])
    for issue_id in (sent_old, sent_new):
        store.mark_sent(issue_id, sent_at=NOW)
    with store.engine.begin() as conn:  # where delivery leaves them, with bytes kept
        for issue_id, state in ((failed_old, "failed"), (unknown_old, "unknown")):
            conn.execute(
                text("UPDATE issues SET state = :state, message = :msg WHERE id = :id"),
                {"state": state, "msg": b"bytes", "id": issue_id},
            )
    log_before = store.sent_log()
    with sql_statements(store) as statements:
        result = store.prune_issues(DAY - timedelta(days=10))
    assert result == PruneResult(issue_papers=4, issues=2)
    writes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    assert len(writes) == 2  # one per table, whatever the number of issues
    assert len(statements) == {"sqlite": 3, "postgresql": 2}[store.dialect]  # + BEGIN IMMEDIATE
    assert (
        store.sent_log()
        == log_before
        == [(1, ids[0], sent_old), (1, ids[1], sent_old), (1, ids[5], sent_new)]
    )
    assert stored(store, "SELECT id, state FROM issues ORDER BY id") == [
        (sent_old, IssueState.SENT.value),
        (pending_old, IssueState.PLANNED.value),
        (sent_new, IssueState.SENT.value),
    ]
    assert stored(store, "SELECT issue_id, paper_id FROM issue_papers ORDER BY issue_id") == [
        (pending_old, ids[4]),
        (sent_new, ids[5]),
    ]
    assert store.sent_issue(1, old) is None  # pruned: nothing to re-render
    found = store.sent_issue(1, new)
    assert found is not None and [sp.paper.id for sp in found.papers] == [ids[5]]
    assert store.prune_issues(DAY - timedelta(days=10)) == PruneResult()


def store_papers(store: Store, n: int) -> list[int]:
    """``n`` stored papers; their ids in order."""
    keyed = [
        KeyedPaper(key=f"title:p{i}", paper=ParsedPaper(title=f"P{i}", abstract="x"))
        for i in range(n)
    ]
    store.record_digest(path="d", content_hash="h", size=1, seen_at=NOW, format="t", papers=keyed)
    return sorted(p.id for p in store.papers())


def test_migration_0005_drops_the_bytes_of_sent_issues(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.migrate("0004")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO subscribers (email, name, timezone, send_at, weekdays, profile,"
                    " max_papers, min_score, send_when_empty, status, token, feed_token, source,"
                    " created_at, updated_at) VALUES ('old@example.org', '', 'UTC', '07:00', '',"
                    " 'speech', 10, 1.0, false, 'active', 'old-token', 'old-feed', 'config',"
                    " :now, :now)"
                ),
                {"now": NOW},
            )
            for slot, state in ((date(2026, 11, 1), "sent"), (date(2026, 11, 2), "rendered")):
                conn.execute(
                    text(
                        "INSERT INTO issues (subscriber_id, slot_date, state, attempts, html,"
                        " message, created_at) VALUES (1, :slot, :state, 1, '<p>x</p>', :msg,"
                        " :now)"
                    ),
                    {"slot": slot, "state": state, "msg": b"message bytes", "now": NOW},
                )
        store.migrate("0005")
        assert stored(
            store, "SELECT state, html IS NULL, message IS NULL FROM issues ORDER BY slot_date"
        ) == [("sent", True, True), ("rendered", False, False)]
    finally:
        store.close()
