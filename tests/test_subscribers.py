from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from newsletter.errors import SubscriberError
from newsletter.subscribers import Defaults, load_config_file, make_spec, read_csv
from tests.conftest import ROOT

D = Defaults()


def test_example_config_has_three_valid_subscribers() -> None:
    result = load_config_file(ROOT / "config" / "subscribers.toml", D)
    assert result.errors == ()
    assert [s.email for s in result.specs] == [
        "ada@example.org",
        "grace@example.org",
        "karen@example.org",
    ]
    ada = result.specs[0]
    assert (ada.timezone, ada.send_at, ada.max_papers) == ("Europe/London", time(7, 30), 8)


def test_bad_entries_are_reported_with_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "subs.toml"
    path.write_text(
        '[[subscriber]]\nemail = "ok@example.org"\nprofile = "speech"\n\n'
        '[[subscriber]]\nemail = "not-an-address"\nprofile = "speech"\n\n'
        '[[subscriber]]\nemail = "tz@example.org"\nprofile = "x"\ntimezone = "Moon/Base"\n\n'
        '[[subscriber]]\nemail = "p@example.org"\nprofile = "-only"\n'
    )
    result = load_config_file(path, D)
    assert [s.email for s in result.specs] == ["ok@example.org"]
    assert len(result.errors) == 3
    assert result.errors[0].startswith(
        f"{path}, line 5: email: invalid email address 'not-an-address'"
    )
    assert result.errors[1].startswith(f"{path}, line 9: timezone: unknown timezone 'Moon/Base'")
    assert result.errors[2].startswith(f"{path}, line 14: ")
    assert "p@example.org" in result.errors[2]


def test_csv_import_reports_bad_rows_by_line(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "email,name,profile,timezone,send_at\n"
        "a@example.org,Ann,speech,Europe/Paris,06:15\n"
        "b@example.org,Bob,retrieval,Nowhere/City,07:00\n"
        'c@example.org,Cy,"""dense retrieval""^2, bm25",,25:00\n'
        "d@example.org,,diffusion,,\n"
    )
    result = read_csv(path, D)
    assert [(s.email, s.timezone, s.send_at) for s in result.specs] == [
        ("a@example.org", "Europe/Paris", time(6, 15)),
        ("d@example.org", "UTC", time(7, 0)),
    ]
    assert [e.split(":")[0] for e in result.errors] == [f"{path}, line 3", f"{path}, line 4"]
    assert "send_at '25:00' is not a time of day" in result.errors[1]


def test_csv_without_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("mail,topics\nx@example.org,speech\n")
    with pytest.raises(SubscriberError, match="line 1: the header row must name the columns"):
        read_csv(path, D)


def test_names_lose_control_characters() -> None:
    spec = make_spec(
        {"email": "E@Example.org", "name": "Eve\r\nBcc: x@evil", "profile": "a"}, D, where="t"
    )
    assert spec.name == "Eve Bcc: x@evil"
    assert spec.email == "e@example.org"


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"max_papers": 0}, "max_papers: max_papers must be between 1 and 500, not 0"),
        ({"max_papers": 2.9}, "max_papers: 2.9 is not a whole number"),
        ({"max_papers": "ten"}, "max_papers: 'ten' is not a whole number"),
        ({"send_when_empty": "maybe"}, "send_when_empty: 'maybe' is not true or false"),
        ({"email": "josé@example.org"}, "email: invalid email address 'josé@example.org'"),
    ],
)
def test_strict_field_values(entry: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"email": "x@example.org", "profile": "speech"}
    with pytest.raises(SubscriberError) as err:
        make_spec({**base, **entry}, D, where="here")
    assert str(err.value).startswith(f"here: {message}")


def test_send_when_empty_parses_words() -> None:
    base = {"email": "x@example.org", "profile": "speech"}
    assert make_spec({**base, "send_when_empty": "false"}, D, where="t").send_when_empty is False
    assert make_spec({**base, "send_when_empty": "yes"}, D, where="t").send_when_empty is True
    assert make_spec({**base, "send_when_empty": True}, D, where="t").send_when_empty is True


@pytest.mark.parametrize(
    "entry,field,detail",
    [
        ({"email": ""}, "email", "email is required"),
        ({"email": "not-an-address"}, "email", "invalid email address 'not-an-address'"),
        ({"timezone": "Moon/Base"}, "timezone", "unknown timezone 'Moon/Base'"),
        ({"send_at": "25:00"}, "send_at", "send_at '25:00' is not a time of day"),
        ({"days": "mon,someday"}, "days", "days: 'someday' is not a weekday"),
        ({"max_papers": 0}, "max_papers", "max_papers must be between 1 and 500, not 0"),
        ({"max_papers": "ten"}, "max_papers", "'ten' is not a whole number"),
        ({"min_score": -1}, "min_score", "min_score must be 0 or more, not -1.0"),
        ({"min_score": "high"}, "min_score", "could not convert string to float: 'high'"),
        ({"min_score": [1]}, "min_score", "float() argument must be"),  # a TypeError
        ({"send_when_empty": "maybe"}, "send_when_empty", "'maybe' is not true or false"),
        ({"profile": '"unclosed'}, "profile", "unclosed quote in '\"unclosed'"),
        ({"profile": "-only"}, "profile", "the profile has only exclusions (-only)"),
        ({"profile": ""}, "profile", "the profile is empty"),
    ],
)
def test_subscriber_error_names_the_field(
    entry: dict[str, object], field: str, detail: str
) -> None:
    base: dict[str, object] = {"email": "x@example.org", "profile": "speech"}
    with pytest.raises(SubscriberError) as err:
        make_spec({**base, **entry}, D, where="here")
    assert err.value.field == field
    assert err.value.detail.startswith(detail)  # without "here: field: " or "subscriber …: "
    assert str(err.value).startswith("here: ")


def test_profile_error_message_still_names_the_subscriber() -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec({"email": "x@example.org", "profile": "-only"}, D, where="here")
    assert str(err.value).startswith("here: subscriber x@example.org: the profile has only")
    assert err.value.detail.startswith("the profile has only exclusions")


def test_errors_that_are_no_one_fields_have_no_field(tmp_path: Path) -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec({"email": "x@example.org", "colour": "blue"}, D, where="here")
    assert err.value.field is None
    assert err.value.detail == str(err.value)
    path = tmp_path / "bad.csv"
    path.write_text("mail,topics\nx@example.org,speech\n")
    with pytest.raises(SubscriberError) as err:
        read_csv(path, D)
    assert err.value.field is None
