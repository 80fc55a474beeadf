"""Form validation (newsletter.web.forms): errors placed by SubscriberError.field."""

from __future__ import annotations

from datetime import time

import pytest

from newsletter.errors import SubscriberError
from newsletter.subscribers import Defaults
from newsletter.web.forms import validate

D = Defaults()


def test_form_errors_are_placed_by_the_error_field_not_its_text() -> None:
    """Each message is shown next to its field, without the "form: field: " prefix."""
    result = validate(
        {
            "email": "x@example.org",
            "profile": '"unclosed',
            "send_at": "25:00",
            "days": ["mon", "someday"],
            "max_papers": "0",
        },
        D,
    )
    assert result.spec is None
    assert result.errors == {
        "profile": "unclosed quote in '\"unclosed': close the phrase with a second \" "
        '(e.g. "gaussian splatting").',
        "send_at": "send_at '25:00' is not a time of day like 07:30 (24-hour HH:MM)",
        "days": "days: 'someday' is not a weekday; use mon, tue, … sun",
        "max_papers": "max_papers must be between 1 and 500, not 0",
    }


def test_form_error_text_that_looks_like_another_field_stays_with_its_field() -> None:
    # The message text starts with a field name and ": ", which message parsing misplaced.
    result = validate({"email": "x@example.org", "profile": "speech", "days": "email: x"}, D)
    assert result.errors == {"days": "days: 'email: x' is not a weekday; use mon, tue, … sun"}


def test_form_without_errors_gives_the_spec() -> None:
    result = validate({"email": "X@example.org", "profile": "speech", "send_at": "06:15"}, D)
    assert result.errors == {}
    assert result.spec is not None and result.spec.send_at == time(6, 15)


def test_form_with_a_field_make_spec_does_not_know_is_a_bug_not_a_form_error() -> None:
    with pytest.raises(SubscriberError, match="unknown field 'colour'"):
        validate({"email": "x@example.org", "profile": "speech", "colour": "blue"}, D)


def test_a_profile_error_after_a_bad_address_loses_the_placeholder_subscriber() -> None:
    result = validate({"email": "not-an-address", "profile": "-survey", "timezone": "Mars"}, D)
    assert list(result.errors) == ["email", "timezone", "profile"]
    assert result.errors["profile"].startswith("the profile has only exclusions (-survey)")
