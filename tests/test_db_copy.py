"""``newsletter db copy`` (issue 17): a SQLite deployment moved to PostgreSQL keeps sending as
if nothing happened (nothing sent twice, no second issue for a slot, the same tokens, links
already sent still working), every table of the models is copied row for row, and the copy
refuses what it must (a target with rows, the same database, a source not at the current
migration, a daemon on the source). The copy runs as a real process (``python -m newsletter``)."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from newsletter.config import Settings, load_settings
from newsletter.domain import Judgment, SubscriberStatus
from newsletter.store import Store, StoredVector
from newsletter.store.lock import DaemonLock
from newsletter.store.schema import Base, IssuePaperRow, IssueRow, SentLogRow, SubscriberRow
from newsletter.web import create_app
from tests.conftest import NOW
from tests.factories import CONFIG, head_revision, run_cli, run_once, workspace_env

SECRET = b"test-secret-test-secret-0123456789"


def settings_on(workdir: Path, url: str) -> Settings:
    return load_settings(CONFIG, environ=workspace_env(workdir, url))


def all_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the models, in primary-key order, through the column
    types (times UTC-aware, booleans as booleans): comparable across SQLite and PostgreSQL."""
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        store.close()


def copy(source: str, target: str, *extra: str) -> Any:
    return run_cli({}, "db", "copy", "--from", source, "--to", target, *extra)


def eml_files(settings: Settings) -> list[Path]:
    return sorted(settings.outbox_dir.glob("*.eml"))


def unsubscribe_paths(settings: Settings) -> dict[str, str]:
    """Each recipient's unsubscribe path, from the List-Unsubscribe header of the message the
    run wrote to the outbox."""
    found = {}
    for path in eml_files(settings):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        (link,) = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
        found[str(msg["To"]).rpartition("<")[2].rstrip(">")] = "/" + link.split("/", 3)[3]
    return found


def sent_papers(url: str) -> dict[int, set[int]]:
    """Subscriber id → the papers of the issues sent to them (from the issues themselves, not
    the sent log, so a paper sent twice would show)."""
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(IssueRow.subscriber_id, IssuePaperRow.paper_id)
                .join(IssuePaperRow, IssuePaperRow.issue_id == IssueRow.id)
                .where(IssueRow.state == "sent")
            ).all()
    finally:
        store.close()
    found: dict[int, set[int]] = {}
    for subscriber_id, paper_id in rows:
        found.setdefault(subscriber_id, set()).add(paper_id)
    return found


def with_password(url: str, password: str) -> str:
    """``url`` with a password (the test server trusts local connections and ignores it)."""
    return make_url(url).set(password=password).render_as_string(hide_password=False)


# ---------------------------------------------------------------------- SQLite → PostgreSQL


def test_a_copy_to_postgresql_sends_nothing_twice_and_old_links_keep_working(
    workdir: Path, tmp_path: Path, pg_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'before.db'}"
    before = settings_on(workdir, sqlite_url)
    first = run_once(before, now=NOW)
    assert first.issues_delivered == 3
    links = unsubscribe_paths(before)
    assert len(links) == 3
    sent_before = sent_papers(sqlite_url)
    rows_before = all_rows(sqlite_url)

    target = with_password(pg_url, "pw-never-shown")
    done = copy(sqlite_url, target, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["revision"] == head_revision()
    assert report["tables"] == {
        name: {"source": len(rows), "copied": len(rows), "target": len(rows)}
        for name, rows in rows_before.items()
    }
    assert list(report["tables"]) == [t.name for t in Base.metadata.sorted_tables]
    assert report["source"] == f"sqlite:///{tmp_path / 'before.db'}"
    assert report["target"] == make_url(target).render_as_string(hide_password=True)
    assert ":***@" in report["target"]
    assert "pw-never-shown" not in done.stdout + done.stderr
    assert f"  papers: {len(rows_before['papers'])} / {len(rows_before['papers'])} rows\n" in (
        done.stderr
    )
    # Row for row: ids, tokens (and their hashes), times, messages, the sent log.
    assert all_rows(pg_url) == rows_before

    after = settings_on(workdir, pg_url)
    # The same slot again on the copy: nothing planned, nothing sent.
    again = run_once(after, now=NOW)
    assert (again.issues_delivered, again.issues_pending, again.issues_failed) == (0, 0, 0)
    assert len(eml_files(after)) == 3
    assert all_rows(pg_url)["issues"] == rows_before["issues"]

    # The next day: new issues (new ids from the reset sequences), no paper sent twice.
    next_day = run_once(after, now=NOW + timedelta(days=1))
    assert next_day.issues_delivered == 3
    assert len(eml_files(after)) == 6
    sent_after = sent_papers(pg_url)
    assert set(sent_after) == set(sent_before)
    for subscriber_id, papers in sent_before.items():
        assert sent_after[subscriber_id] > papers, subscriber_id  # new papers only added
    store = Store(pg_url)
    try:
        with store.engine.connect() as conn:
            pairs = conn.execute(select(SentLogRow.subscriber_id, SentLogRow.paper_id)).all()
            planned = conn.execute(
                select(IssueRow.subscriber_id, IssuePaperRow.paper_id).join(
                    IssuePaperRow, IssuePaperRow.issue_id == IssueRow.id
                )
            ).all()
            tokens_after = conn.execute(
                select(SubscriberRow.email, SubscriberRow.token, SubscriberRow.feed_token)
            ).all()
            slots = conn.execute(select(IssueRow.subscriber_id, IssueRow.slot_date)).all()
    finally:
        store.close()
    assert len(planned) == len(set(planned))  # no paper in two issues of one subscriber
    assert sorted(pairs) == sorted(planned)
    assert len(slots) == len(set(slots)) == 6  # one issue per slot
    # The same tokens.
    sub_index = [c.name for c in SubscriberRow.__table__.columns]
    tokens_before = {
        (r[sub_index.index("email")], r[sub_index.index("token")], r[sub_index.index("feed_token")])
        for r in rows_before["subscribers"]
    }
    assert set(map(tuple, tokens_after)) == tokens_before

    # An unsubscribe link from a message sent before the copy works against the copy.
    address, path = sorted(links.items())[0]
    asgi = create_app(after, secret=SECRET)
    with TestClient(asgi, base_url="http://testserver", follow_redirects=False) as client:
        response = client.post(path)
    assert response.status_code == 200
    store = Store(pg_url)
    try:
        gone = store.subscriber(address)
    finally:
        store.close()
    assert gone is not None and gone.status is SubscriberStatus.UNSUBSCRIBED


# ---------------------------------------------------------------------- every table


def test_every_table_of_the_models_is_copied_row_for_row(
    workdir: Path, tmp_path: Path, database_url: str
) -> None:
    """Feedback and embeddings too (and any table added to the models later: the copy and
    this test both go by the metadata); into SQLite or PostgreSQL."""
    sqlite_url = f"sqlite:///{tmp_path / 'source.db'}"
    run_once(settings_on(workdir, sqlite_url), now=NOW)
    store = Store(sqlite_url)
    try:
        ada = store.subscriber("ada@example.org")
        assert ada is not None
        assert store.record_judgment(ada.id, 1, Judgment.LIKE, NOW)
        assert store.record_judgment(ada.id, 2, Judgment.DISLIKE, NOW)
        vector = StoredVector(dims=2, data=b"\x00\x00\x80?\x00\x00\x00\x00")
        assert store.save_embeddings("m", {1: vector, 2: vector, 3: vector}) == 3
    finally:
        store.close()
    rows = all_rows(sqlite_url)
    assert (len(rows["feedback"]), len(rows["paper_embeddings"])) == (2, 3)

    done = copy(sqlite_url, database_url, "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)["tables"]
    assert counts["feedback"] == {"source": 2, "copied": 2, "target": 2}
    assert counts["paper_embeddings"] == {"source": 3, "copied": 3, "target": 3}
    assert set(counts) == set(Base.metadata.tables)
    assert all_rows(database_url) == rows


# ---------------------------------------------------------------------- refusals


@pytest.fixture
def source(workdir: Path, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    run_once(settings_on(workdir, url), now=NOW)
    return url


def test_a_target_with_rows_is_refused_and_left_unchanged(source: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert copy(source, target).returncode == 0
    rows = all_rows(target)
    refused = copy(source, target, "--json")
    assert refused.returncode == 1
    assert refused.stdout == ""
    counts = ", ".join(f"{name} ({len(found)} rows)" for name, found in rows.items() if found)
    assert refused.stderr == (
        f"error: the target sqlite:///{tmp_path / 'target.db'} is not empty: {counts}; copy "
        "into a new, empty database (e.g. createdb newsletter), nothing was changed\n"
    )
    assert all_rows(target) == rows


def test_the_text_report_lists_every_table(source: str, tmp_path: Path) -> None:
    done = copy(source, f"sqlite:///{tmp_path / 'target.db'}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"copied {source} to sqlite:///{tmp_path / 'target.db'} ")
    assert [line.split()[0] for line in lines[1:]] == [t.name for t in Base.metadata.sorted_tables]
    assert all(line.endswith("  ok") for line in lines[1:])


def test_the_same_database_is_refused(source: str, tmp_path: Path) -> None:
    other_spelling = f"sqlite:///{tmp_path / '.' / 'source.db'}"
    refused = copy(source, other_spelling)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: --from and --to are the same database ({source}): copy into another one\n"
    )


def test_a_missing_source_is_refused_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    refused = copy(f"sqlite:///{missing}", f"sqlite:///{tmp_path / 'target.db'}")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: no database at sqlite:///{missing}: check --from")
    assert not missing.exists() and not (tmp_path / "target.db").exists()


def test_a_source_behind_the_current_migration_is_refused_and_not_migrated(
    tmp_path: Path,
) -> None:
    old = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(old)
    try:
        assert store.migrate("0009") == "0009"
    finally:
        store.close()
    refused = copy(old, f"sqlite:///{tmp_path / 'target.db'}")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: the source {old} is at migration 0009, ")
    assert "run `newsletter db upgrade` on it first" in refused.stderr
    store = Store(old)
    try:
        with store.engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        store.close()
    assert version == "0009"
    assert not (tmp_path / "target.db").exists()


def test_a_running_daemon_on_the_source_is_refused(source: str, tmp_path: Path) -> None:
    store = Store(source)
    lock = DaemonLock(store.engine)
    lock.acquire()
    try:
        refused = copy(source, f"sqlite:///{tmp_path / 'target.db'}")
    finally:
        lock.release()
        store.close()
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: another newsletter daemon is running on ")
    assert "stop it first" in refused.stderr
