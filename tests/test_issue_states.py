"""Where an issue ends when something goes wrong: rendering, an unknown outcome, the exit status.

Unit tests of the pipeline around a mailer (``MemoryMailer`` and small subclasses); the same
paths against real SMTP servers are in test_outages.py and test_concurrency.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from newsletter.app import Newsletter
from newsletter.config import Settings, load_settings
from newsletter.deliver import Envelope, MemoryMailer, OutcomeUnknown
from newsletter.domain import IssueState
from newsletter.errors import ConfigError
from newsletter.pipeline import MAX_ATTEMPTS
from tests.conftest import NOW
from tests.factories import CONFIG


class NoFinalReply(MemoryMailer):
    """Takes every message, then never says whether it was queued."""

    def send(self, envelope: Envelope, message: bytes) -> str:
        super().send(envelope, message)
        raise OutcomeUnknown("no reply to the end of DATA within 600 s")


def test_a_rendering_failure_counts_attempts_and_ends_failed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailer = MemoryMailer()
    with Newsletter(settings, mailer=mailer) as app:

        def broken(_content: object) -> None:
            raise RuntimeError("template exploded")

        monkeypatch.setattr(app.renderer, "render", broken)
        summaries = [app.run_once(NOW)]
        moment = NOW
        for n in range(1, MAX_ATTEMPTS):  # each retry after its backoff: 5, 10, 20, 40 min
            moment += timedelta(minutes=5 * 2 ** (n - 1) + 1)
            summaries.append(app.run_once(moment))
        issues = app.store.issues()
    assert mailer.sent == []
    assert [(i.state, i.attempts) for i in issues] == [(IssueState.FAILED, MAX_ATTEMPTS)] * 3
    assert {i.last_reply for i in issues} == {"RuntimeError: template exploded"}
    assert [s.exit_status for s in summaries] == [75] * (MAX_ATTEMPTS - 1) + [1]
    assert [f["state"] for f in summaries[-1].failed_now] == ["failed"] * 3


def test_an_unknown_outcome_is_not_resent_until_retried(settings: Settings) -> None:
    mailer = NoFinalReply()
    with Newsletter(settings, mailer=mailer) as app:
        first = app.run_once(NOW)
        second = app.run_once(NOW + timedelta(hours=2))
        states = [(i.state, i.attempts) for i in app.store.issues()]
        report = app.status(NOW)
        requeued = app.retry()
    assert len(mailer.sent) == 3  # once each, never again by itself
    assert states == [(IssueState.UNKNOWN, 1)] * 3
    assert (first.exit_status, first.issues_unknown, len(first.failed_now)) == (1, 3, 3)
    assert (second.exit_status, second.issues_delivered) == (0, 0)
    assert [u.email for u in report.unknown] == [
        "ada@example.org",
        "grace@example.org",
        "karen@example.org",
    ]
    assert len(requeued) == 3


def test_exit_status_is_zero_when_everything_went_out(settings: Settings) -> None:
    with Newsletter(settings, mailer=MemoryMailer()) as app:
        first = app.run_once(NOW)
        again = app.run_once(NOW)
    assert (first.issues_delivered, first.exit_status) == (3, 0)
    assert (again.issues_delivered, again.exit_status) == (0, 0)


@pytest.mark.parametrize(
    "variable,value,key",
    [
        ("NEWSLETTER_MAIL_LIST_ID", "papers.example.org\r\nBcc: victim@example.org", "list_id"),
        ("NEWSLETTER_MAIL_LIST_ID", "papërs.example.org", "list_id"),
        ("NEWSLETTER_MAIL_FROM_ADDRESS", "digest@exämple.org", "from_address"),
        ("NEWSLETTER_MAIL_FROM_NAME", "Digest\nBcc: x@example.org", "from_name"),
        ("NEWSLETTER_BASE_URL", "https://papers.example.org/\r\nX: y", "base_url"),
        ("NEWSLETTER_BASE_URL", "https://papërs.example.org", "base_url"),
        ("NEWSLETTER_NAME", "Paper\rDigest", "name"),
    ],
)
def test_values_that_cannot_form_a_header_are_refused_at_start_up(
    variable: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(CONFIG, environ={variable: value})
    assert f"'{key}'" in str(caught.value) or f".{key}'" in str(caught.value)
    assert variable in str(caught.value)
