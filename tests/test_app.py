"""The application object: use cases over one store, one renderer, one mailer."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.deliver import MemoryMailer
from newsletter.domain import IssueState, SubscriberStatus
from newsletter.errors import SubscriberError

from .conftest import NOW, ROOT


def test_add_existing_subscriber_changes_only_what_is_given(settings: Settings) -> None:
    with Newsletter(settings) as app:
        app.sync_subscribers(NOW)
        before = app.store.subscriber("ada@example.org")
        assert before is not None
        after, created = app.add_subscriber("Ada@Example.org", {"max_papers": 3}, now=NOW)
    assert created is False
    assert after.max_papers == 3
    # Everything not given keeps its stored value, not the defaults.
    assert (after.timezone, after.send_at, after.weekdays, after.profile, after.name) == (
        before.timezone,
        before.send_at,
        before.weekdays,
        before.profile,
        before.name,
    )
    assert before.timezone == "Europe/London" and before.send_at == time(7, 30)


def test_add_re_activates_and_a_new_address_needs_a_profile(settings: Settings) -> None:
    with Newsletter(settings) as app:
        app.sync_subscribers(NOW)
        app.remove_subscriber("grace@example.org", NOW)
        sub, created = app.add_subscriber("grace@example.org", {"send_at": "09:15"}, now=NOW)
        assert (created, sub.status, sub.send_at) == (False, SubscriberStatus.ACTIVE, time(9, 15))
        with pytest.raises(SubscriberError) as caught:
            app.add_subscriber("new@example.org", {"name": "New"}, now=NOW)
        assert caught.value.field == "profile"
        assert app.store.subscriber("new@example.org") is None
        new, created = app.add_subscriber("new@example.org", {"profile": "speech"}, now=NOW)
        assert created and new.timezone == settings.timezone


def test_remove_unknown_subscriber_names_the_field(settings: Settings) -> None:
    with Newsletter(settings) as app, pytest.raises(SubscriberError) as caught:
        app.remove_subscriber("nobody@example.org", NOW)
    assert caught.value.field == "email"


def test_one_renderer_for_the_lifetime_and_a_given_mailer_is_not_closed(
    settings: Settings,
) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer, clock=lambda: NOW) as app:
        renderer = app.renderer
        first = app.run_once()
        second = app.run_once(NOW + timedelta(days=1))
        assert app.renderer is renderer
    assert first.issues_delivered == 3
    assert second.issues_delivered == 3  # the next day: the next-best papers
    readers = ["ada@example.org", "grace@example.org", "karen@example.org"]
    assert [envelope.recipient for envelope, _ in mailer.sent] == readers * 2
    assert mailer.sent[0][1] != mailer.sent[3][1]


def test_status_report_in_a_fixed_shape(settings: Settings) -> None:
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.run_once(NOW)
        report = app.status(NOW)
    assert report.papers == 380
    assert report.files_ingested == 5
    assert (report.pending, report.failed, report.quarantined) == ((), (), ())
    lines = {s.email: s for s in report.subscribers}
    assert sorted(lines) == ["ada@example.org", "grace@example.org", "karen@example.org"]
    ada = lines["ada@example.org"]
    assert ada.last_sent == NOW.date()
    assert ada.next_send == "2026-11-24 07:30 GMT"  # NOW is 09:00 UTC, after today's 07:30


def test_status_lists_pending_and_failed_issues(settings: Settings) -> None:
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        app.ingest(now=NOW)
        app.sync_subscribers(NOW)
        app.plan_current_slots(NOW)
        issues = app.store.issues()
        app.store.mark_failed(issues[0].id, reply="550 no such user")
        report = app.status(NOW)
    assert [(f.email, f.reason) for f in report.failed] == [("ada@example.org", "550 no such user")]
    assert [(p.email, p.state) for p in report.pending] == [
        ("grace@example.org", IssueState.PLANNED),
        ("karen@example.org", IssueState.PLANNED),
    ]


def test_secret_key_comes_from_the_environment_only(tmp_path: Path) -> None:
    config = ROOT / "config" / "newsletter.toml"
    assert load_settings(config, environ={}).secret_key is None
    settings = load_settings(config, environ={"NEWSLETTER_SECRET_KEY": "s3cret-s3cret-s3cret"})
    assert settings.secret_key == b"s3cret-s3cret-s3cret"
    assert "s3cret" not in repr(settings)
