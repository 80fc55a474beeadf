from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError
from tests.conftest import ROOT


def test_defaults_file_loads_with_documented_values() -> None:
    s = load_settings(ROOT / "config" / "newsletter.toml", environ={})
    assert s.database_url == "sqlite:///var/newsletter.db"
    assert s.inbox == Path("seeds")
    assert s.outbox_dir == Path("var/outbox")
    assert s.feeds_dir == Path("var/feeds")
    assert s.candidate_window_days == 7
    assert s.mailer == "outbox"
    assert s.site.from_address == "digest@papers.example.org"


def test_environment_overrides_file(tmp_path: Path) -> None:
    s = load_settings(
        ROOT / "config" / "newsletter.toml",
        environ={
            "NEWSLETTER_DATABASE_URL": "postgresql://u@h/db",
            "NEWSLETTER_INBOX": "/srv/inbox",
            "NEWSLETTER_OUTBOX_DIR": "/srv/out",
            "NEWSLETTER_FEEDS_DIR": "/srv/feeds",
            "NEWSLETTER_MAIL_FROM_ADDRESS": "news@lab.example",
            "NEWSLETTER_RANKING_TITLE_BOOST": "3.5",
        },
    )
    assert (s.database_url, s.inbox, s.outbox_dir, s.feeds_dir) == (
        "postgresql://u@h/db",
        Path("/srv/inbox"),
        Path("/srv/out"),
        Path("/srv/feeds"),
    )
    assert s.mail.from_address == "news@lab.example"
    assert s.ranking.title_boost == 3.5


def test_newsletter_config_env_selects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('name = "Lab Digest"\n')
    assert load_settings(environ={"NEWSLETTER_CONFIG": str(path)}).name == "Lab Digest"
    with pytest.raises(ConfigError, match="config file .*missing.toml does not exist"):
        load_settings(environ={"NEWSLETTER_CONFIG": str(tmp_path / "missing.toml")})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text('inbox = "x"\noutbox = "typo"\n[mail]\nfrom_adress = "a@b.c"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert str(err.value) == (
        f"unknown key 'mail.from_adress' in {path}: remove it or fix its spelling; "
        f"unknown key 'outbox' in {path}: remove it or fix its spelling"
    )


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"NEWSLETTER_CANDIDATE_WINDOW_DAYS": "zero"},
            "bad value for 'candidate_window_days' in environment NEWSLETTER_CANDIDATE_WINDOW_DAYS",
        ),
        (
            {"NEWSLETTER_TIMEZONE": "Mars/Olympus"},
            "bad value for 'timezone' in environment NEWSLETTER_TIMEZONE: unknown timezone "
            "'Mars/Olympus'",
        ),
        (
            {"NEWSLETTER_DATABASE_URL": "mysql://x"},
            "bad value for 'database_url' in environment NEWSLETTER_DATABASE_URL: must be a "
            "SQLAlchemy URL",
        ),
        (
            {"NEWSLETTER_MAIL_FROM_ADDRESS": "nobody"},
            "bad value for 'mail.from_address' in environment NEWSLETTER_MAIL_FROM_ADDRESS",
        ),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(ROOT / "config" / "newsletter.toml", environ=env)
    assert str(err.value).startswith(message)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_settings(path, environ={})


def test_misspelled_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(ROOT / "config" / "newsletter.toml", environ={"NEWSLETTER_INBX": "x"})
    assert str(err.value) == (
        "unknown environment variable NEWSLETTER_INBX: not a setting (see README "
        '"Configuration reference"); unset it or fix its spelling'
    )
    ok = {"NEWSLETTER_TEST_POSTGRES_URL": "postgresql://x", "OTHER_VAR": "1"}
    assert load_settings(ROOT / "config" / "newsletter.toml", environ=ok).inbox == Path("seeds")
