from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from newsletter.domain import (
    IssueState,
    MatchField,
    ParsedPaper,
    Reason,
    ScoredPaper,
    SubscriberSource,
    SubscriberSpec,
    SubscriberStatus,
)
from newsletter.store import KeyedPaper, Store
from newsletter.store.schema import Base
from tests.conftest import NOW
from tests.factories import head_revision


def test_migrations_create_exactly_the_models(store: Store) -> None:
    assert store.table_names() == [
        "alembic_version",
        "bounces",
        "daemon_state",
        "delivery_counters",
        "delivery_settings",
        "digest_files",
        "feedback",
        "issue_papers",
        "issues",
        "paper_embeddings",
        "papers",
        "sent_log",
        "source_health",
        "stale_alerts",
        "subscribers",
    ]
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert store.migrate() == head_revision()  # idempotent


def test_subscriber_upsert_never_reactivates(store: Store) -> None:
    spec = SubscriberSpec(email="a@example.org", name="A", profile="speech")
    sub, created = store.upsert_subscriber(spec, source=SubscriberSource.CONFIG, now=NOW)
    assert created and sub.status is SubscriberStatus.ACTIVE and len(sub.token) >= 32
    assert store.set_subscriber_status("A@example.org", SubscriberStatus.UNSUBSCRIBED, NOW)
    changed = SubscriberSpec(
        email="a@example.org", name="A2", profile="speech, asr", send_at=time(6, 5), weekdays=(0, 3)
    )
    sub2, created2 = store.upsert_subscriber(changed, source=SubscriberSource.CONFIG, now=NOW)
    assert not created2
    assert (sub2.status, sub2.name, sub2.profile, sub2.send_at, sub2.weekdays, sub2.token) == (
        SubscriberStatus.UNSUBSCRIBED,
        "A2",
        "speech, asr",
        time(6, 5),
        (0, 3),
        sub.token,
    )


def _papers(store: Store, n: int) -> list[int]:
    keyed = [
        KeyedPaper(key=f"title:p{i}", paper=ParsedPaper(title=f"P{i}", abstract="x"))
        for i in range(n)
    ]
    store.record_digest(path="d", content_hash="h", size=1, seen_at=NOW, format="t", papers=keyed)
    return [p.id for p in store.papers()]


def test_issue_lifecycle_writes_sent_log_with_sent_state(store: Store) -> None:
    ids = _papers(store, 3)
    sub, _ = store.upsert_subscriber(
        SubscriberSpec(email="b@example.org", profile="x"), source=SubscriberSource.CLI, now=NOW
    )
    papers = store.papers_by_id(ids)
    scored = [
        ScoredPaper(papers[i], 3.0 - n, (Reason("x", MatchField.TITLE, 3.0 - n),))
        for n, i in enumerate(ids[:2])
    ]
    issue = store.plan_issue(sub.id, date(2026, 11, 23), scored, NOW)
    assert issue is not None and issue.state is IssueState.PLANNED
    assert issue.paper_ids == tuple(ids[:2])
    assert store.plan_issue(sub.id, date(2026, 11, 23), scored, NOW) is None  # one per slot
    assert store.mark_rendered(issue.id, subject="S", html="<p>", message=b"m", message_id="<m@x>")
    assert not store.mark_rendered(  # rendered once only
        issue.id, subject="S2", html="<p>", message=b"m2", message_id="<m@x>"
    )
    rendered = store.issue(sub.id, date(2026, 11, 23))
    assert rendered is not None and rendered.state is IssueState.RENDERED
    assert store.claim_for_sending(rendered)
    assert not store.claim_for_sending(rendered)  # an overlapping run reads the same record
    assert store.rendered_message(issue.id) == b"m"
    assert store.sent_paper_ids(sub.id) == set()
    sent_at = NOW + timedelta(minutes=1)
    store.mark_sent(issue.id, sent_at=sent_at)
    record = store.issue(sub.id, date(2026, 11, 23))
    assert record is not None
    assert (record.state, record.attempts, record.sent_at) == (IssueState.SENT, 1, sent_at)
    assert record.sent_at is not None and record.sent_at.tzinfo is not None
    assert store.sent_paper_ids(sub.id) == set(ids[:2])
    items = store.subscriber_feed_items(sub.id)
    assert [(i.paper.id, i.when, i.score) for i in items] == [
        (ids[0], sent_at, 3.0),
        (ids[1], sent_at, 2.0),
    ]
    assert items[0].reasons == (Reason("x", MatchField.TITLE, 3.0),)


def test_failed_issue_keeps_reason(store: Store) -> None:
    ids = _papers(store, 1)
    sub, _ = store.upsert_subscriber(
        SubscriberSpec(email="c@example.org", profile="x"), source=SubscriberSource.CLI, now=NOW
    )
    paper = store.papers_by_id(ids)[ids[0]]
    issue = store.plan_issue(sub.id, date(2026, 11, 23), [ScoredPaper(paper, 1.0, ())], NOW)
    assert issue is not None
    retry = NOW + timedelta(minutes=5)
    store.mark_failed(issue.id, reply="451 try later", next_retry_at=retry)
    again = store.issue(sub.id, date(2026, 11, 23))
    assert again is not None
    # Never rendered: it stays planned, due again at the retry time.
    assert (again.state, again.last_reply, again.next_retry_at) == (
        IssueState.PLANNED,
        "451 try later",
        retry,
    )
    store.mark_failed(issue.id, reply="550 no such user")
    final = store.issues(states=[IssueState.FAILED])
    assert [(i.id, i.last_reply) for i in final] == [(issue.id, "550 no such user")]


def test_datetimes_come_back_utc_aware(store: Store) -> None:
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    store.record_digest(
        path="d",
        content_hash="z",
        size=1,
        seen_at=berlin,
        format="t",
        papers=[KeyedPaper("title:a", ParsedPaper(title="A"))],
    )
    (paper,) = store.papers()
    assert paper.first_seen_at == berlin
    assert paper.first_seen_at.utcoffset() == timedelta(0)


def test_upgrade_from_0001_backfills_title_keys(database_url: str) -> None:
    from sqlalchemy import text

    store = Store(database_url)
    assert store.migrate("0001") == "0001"
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO papers (key, title, abstract, authors, first_seen_at, updated_at) "
                "VALUES ('title:e2ganefficienttraining', 'E$^{2}$GAN: Efficient Training', "
                "'short', '[]', :t, :t)"
            ),
            {"t": NOW},
        )
        # ... referenced by a sent issue: upgrades must not trip over the foreign keys.
        conn.execute(
            text(
                "INSERT INTO subscribers (email, name, timezone, send_at, weekdays, profile, "
                "max_papers, min_score, send_when_empty, status, token, source, created_at, "
                "updated_at) VALUES ('a@example.org', '', 'UTC', '07:00', '', 'gan', 10, 1.0, "
                "false, 'active', 'tok', 'config', :t, :t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO issues (subscriber_id, slot_date, state, attempts, created_at) "
                "VALUES (1, '2026-11-23', 'sent', 1, :t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO issue_papers (issue_id, paper_id, position, score, reasons) "
                "VALUES (1, 1, 1, 2.0, '[]')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sent_log (subscriber_id, paper_id, issue_id, sent_at) "
                "VALUES (1, 1, 1, :t)"
            ),
            {"t": NOW},
        )
    assert store.migrate() == head_revision()
    (sub,) = store.subscribers()
    assert len(sub.feed_token) >= 32 and sub.feed_token != sub.token
    # A JSON entry with an arXiv id and a differently written title finds the stored paper.
    incoming = ParsedPaper(
        title="E2GAN: efficient training", abstract="a longer abstract", arxiv_id="2401.00001"
    )
    from newsletter.ingest.identity import paper_key, title_key

    record = store.record_digest(
        path="x.json",
        content_hash="j",
        size=1,
        seen_at=NOW,
        format="hf-json",
        papers=[KeyedPaper(paper_key(incoming), incoming, title_key(incoming.title))],
    )
    assert (record.papers_new, record.papers_merged) == (0, 1)
    (paper,) = store.papers()
    assert (paper.key, paper.arxiv_id, paper.abstract) == (
        "title:e2ganefficienttraining",
        "2401.00001",
        "a longer abstract",
    )
    store.close()
