"""Issue 12: validation matches the database, failures are one line, misconfiguration is loud.

* Subscriber values the database would refuse (or that would make a subscriber silently
  useless) are refused by the one validator every entry point uses, naming the field and the
  line; a bad row or entry is skipped and the others go on. On PostgreSQL too: a NUL is what
  PostgreSQL refuses and SQLite takes.
* Profiles: search-engine habits (``titel:``, bare ``AND``) are refused with a hint.
* ``--json`` output is valid JSON whatever the numbers.
* A full feeds folder after delivery, a short ``NEWSLETTER_SECRET_KEY`` and a missing inbox
  for the daemon are one ``error:`` line each; a missing inbox is a warning in every run
  summary; a command without a settings file says what it runs on; ``status`` shows it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from newsletter.cli._base import emit
from newsletter.config import Settings, load_settings
from newsletter.daemon import Daemon
from newsletter.deliver import MemoryMailer
from newsletter.domain import SubscriberSource, SubscriberSpec
from newsletter.errors import ConfigError, DataRejected, ProfileError, SubscriberError
from newsletter.limits import MAX_NAME_CHARS, MAX_PROFILE_CHARS
from newsletter.profile import format_profile, parse_profile
from newsletter.reports import ConfigInUse
from newsletter.store.engine import display_url
from newsletter.subscribers import Defaults, load_config_file, make_spec
from newsletter.web.forms import validate
from tests.conftest import NOW
from tests.factories import CONFIG, open_store, run_cli, run_once, settings_env, workspace_env

D = Defaults()
WHO = "subscriber alice@example.org"
TOO_LONG = MAX_PROFILE_CHARS + 1
LONG_PROFILE = (
    f"the profile is {TOO_LONG:,} characters long; at most {MAX_PROFILE_CHARS:,} are "
    "allowed: keep the terms that matter most."
)
INBOX_FIX = "or set inbox (NEWSLETTER_INBOX) to the folder digest files are dropped in"


def _no_constants(name: str) -> Any:
    raise AssertionError(f"not JSON: {name}")


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity``, as other JSON parsers do."""
    return json.loads(text, parse_constant=_no_constants)


@pytest.fixture
def env(workdir: Path) -> dict[str, str]:
    return workspace_env(workdir, f"sqlite:///{workdir / 'db.sqlite'}", inbox_settle_seconds=0)


# ------------------------------------------------------------------ 7: numbers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "min_score must be a finite number, 0 or more, not nan"),
        ("nan", "min_score must be a finite number, 0 or more, not 'nan'"),
        (math.inf, "min_score must be a finite number, 0 or more, not inf"),
        ("-inf", "min_score must be a finite number, 0 or more, not '-inf'"),
        ("1e999", "min_score must be a finite number, 0 or more, not '1e999'"),
        (-0.5, "min_score must be 0 or more, not -0.5"),
        (True, "True is not a number"),
    ],
)
def test_min_score_must_be_finite_and_not_negative(value: object, message: str) -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec({"email": "x@example.org", "profile": "speech", "min_score": value}, D, where="t")
    assert str(err.value) == f"t: min_score: {message}"
    assert (err.value.field, err.value.detail) == ("min_score", message)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_max_papers_must_be_a_whole_number(value: float) -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec(
            {"email": "x@example.org", "profile": "speech", "max_papers": value}, D, where="t"
        )
    assert str(err.value) == f"t: max_papers: {value!r} is not a whole number"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("NEWSLETTER_RANKING_DEFAULT_MIN_SCORE", "nan", "ranking.default_min_score"),
        ("NEWSLETTER_RANKING_DEFAULT_MIN_SCORE", "inf", "ranking.default_min_score"),
        ("NEWSLETTER_RANKING_TITLE_BOOST", "inf", "ranking.title_boost"),
        ("NEWSLETTER_SMTP_RATE_PER_SECOND", "inf", "smtp.rate_per_second"),
        ("NEWSLETTER_INBOX_SETTLE_SECONDS", "nan", "inbox_settle_seconds"),
    ],
)
def test_settings_refuse_nan_and_inf(variable: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(CONFIG, environ={variable: value})
    assert str(err.value) == (
        f"bad value for {key!r} in environment {variable}: Input should be a finite number"
    )


# ------------------------------------------------------------------ 7: text


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("Ada\x00", "the name contains a control character (U+0000) at character 4: remove it"),
        ("A\x1b[31m", "the name contains a control character (U+001B) at character 2: remove it"),
        ("Ad\udcff", "the name contains text that is not UTF-8 (U+DCFF) at character 3: remove it"),
        ("x" * (MAX_NAME_CHARS + 1), "the name is 101 characters long; at most 100 are allowed"),
    ],
)
def test_names_refuse_control_characters_and_length(name: str, detail: str) -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec({"email": "x@example.org", "profile": "speech", "name": name}, D, where="t")
    assert str(err.value) == f"t: name: {detail}"
    assert (err.value.field, err.value.detail) == ("name", detail)


def test_names_keep_line_breaks_as_spaces_and_the_longest_name_passes() -> None:
    entry = {"email": "x@example.org", "profile": "speech"}
    assert make_spec({**entry, "name": "Ada\r\n\tLovelace"}, D, where="t").name == "Ada Lovelace"
    longest = "x" * MAX_NAME_CHARS
    assert make_spec({**entry, "name": longest}, D, where="t").name == longest


@pytest.mark.parametrize(
    ("profile", "detail"),
    [
        (
            "speech\x00",
            "the profile contains a control character (U+0000) at character 7: remove it.",
        ),
        (
            "speech \x7f",
            "the profile contains a control character (U+007F) at character 8: remove it.",
        ),
        ("x" * TOO_LONG, LONG_PROFILE),
    ],
)
def test_profiles_refuse_control_characters_and_length(profile: str, detail: str) -> None:
    with pytest.raises(SubscriberError) as err:
        make_spec({"email": "x@example.org", "profile": profile}, D, where="t")
    assert str(err.value) == f"t: subscriber x@example.org: {detail}"
    assert (err.value.field, err.value.detail) == ("profile", detail)


def test_a_profile_may_span_lines_and_use_the_whole_limit() -> None:
    profile = parse_profile('speech,\n\t"diffusion transformer"^2\r\n-survey')
    assert format_profile(profile) == 'speech, "diffusion transformer"^2, -survey'
    assert len(parse_profile("x " * (MAX_PROFILE_CHARS // 2)).terms) == MAX_PROFILE_CHARS // 2


def test_the_profile_limit_is_the_same_at_every_entry_point(env: dict[str, str]) -> None:
    """Web form, CLI (`subscriber add`, `rank`): one limit; the CLI's one message."""
    form = validate({"email": "x@example.org", "profile": "x" * TOO_LONG}, D)
    assert (form.spec, list(form.errors)) == (None, ["profile"])
    longest = validate({"email": "x@example.org", "profile": "x " * (MAX_PROFILE_CHARS // 2)}, D)
    assert longest.errors == {}
    added = run_cli(env, "subscriber", "add", "x@example.org", "--profile", "x" * TOO_LONG)
    assert (added.returncode, added.stderr) == (
        1,
        f"error: subscriber add: subscriber x@example.org: {LONG_PROFILE}\n",
    )
    ranked = run_cli(env, "rank", "--profile", "x" * TOO_LONG)
    assert (ranked.returncode, ranked.stderr) == (1, f"error: --profile: {LONG_PROFILE}\n")


def test_subscribers_file_names_the_line_of_an_over_long_profile(tmp_path: Path) -> None:
    path = tmp_path / "subscribers.toml"
    path.write_text(
        '[[subscriber]]\nemail = "a@example.org"\nprofile = "speech"\n\n'
        f'[[subscriber]]\nemail = "b@example.org"\nprofile = "{"word " * 2_000_000}"\n',
        encoding="utf-8",
    )
    result = load_config_file(path, D)
    assert [s.email for s in result.specs] == ["a@example.org"]
    assert result.errors == (
        f"{path}, line 5: subscriber b@example.org: the profile is 9,999,999 characters long; "
        f"at most {MAX_PROFILE_CHARS:,} are allowed: keep the terms that matter most.",
    )


# ------------------------------------------------------------------ 7: skipped, the rest run


def test_csv_import_skips_bad_rows_and_imports_the_rest(settings: Settings, tmp_path: Path) -> None:
    """NUL (PostgreSQL refuses it), bytes that are not UTF-8, a field over the csv module's
    limit, an over-long profile: each row is reported with its line, the good ones imported."""
    path = tmp_path / "people.csv"
    path.write_bytes(
        b"email,name,profile\n"
        b"a@example.org,Ann,speech\n"
        b'b@example.org,Bob,"sp\x00eech"\n'
        b"c@example.org,C\xff,music\n"
        b"d@example.org,Dee," + b"x" * 200_000 + b"\n"
        b"e@example.org,Eve," + b"x" * TOO_LONG + b"\n"
        b"\n"
        b"f@example.org,Fay,diffusion\n"
    )
    out = run_cli(settings_env(settings), "subscriber", "import", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"skipped: {path}, line 3: subscriber b@example.org: the profile contains a control "
        "character (U+0000) at character 3: remove it.",
        f"skipped: {path}, line 4: name: the name contains text that is not UTF-8 (U+DCFF) at "
        "character 2: remove it",
        f"skipped: {path}, line 5: cannot read this row as CSV (field larger than field limit "
        "(131072)): fix or remove it",
        f"skipped: {path}, line 6: subscriber e@example.org: {LONG_PROFILE}",
    ]
    assert out.stdout == f"imported {path}: 2 added, 0 updated, 4 skipped\n"
    store = open_store(settings)
    try:
        assert sorted(s.email for s in store.subscribers_by_id().values()) == [
            "a@example.org",
            "f@example.org",
        ]
    finally:
        store.close()


def test_a_bad_subscribers_file_entry_is_skipped_and_the_run_goes_on(
    settings: Settings,
) -> None:
    assert settings.subscribers_file is not None
    text = settings.subscribers_file.read_text(encoding="utf-8")
    first = len(text.splitlines()) + 2  # the line of the first entry appended below
    settings.subscribers_file.write_text(
        text + '\n[[subscriber]]\nemail = "nan@example.org"\nprofile = "speech"\n'
        "min_score = nan\n\n"
        '[[subscriber]]\nemail = "nul@example.org"\nprofile = "speech\\u0000"\n',
        encoding="utf-8",
    )
    summary = run_once(settings, now=NOW, mailer=MemoryMailer())
    where = settings.subscribers_file
    assert summary.subscriber_errors == [
        f"{where}, line {first}: min_score: min_score must be a finite number, 0 or more, not nan",
        f"{where}, line {first + 5}: subscriber nul@example.org: the profile contains a control "
        "character (U+0000) at character 7: remove it.",
    ]
    assert (summary.subscribers_synced, summary.issues_delivered) == (3, 3)


def test_the_database_refusing_a_value_is_a_data_rejected(settings: Settings) -> None:
    """The last line of defence, for whatever validation lets through: the store says which
    subscriber (the callers skip that one)."""
    store = open_store(settings)
    try:
        with pytest.raises(DataRejected) as err:
            store.upsert_subscriber(
                SubscriberSpec(email="x@example.org", profile="a\udcffb"),
                source=SubscriberSource.CLI,
                now=NOW,
            )
        assert str(err.value) == (
            "subscriber x@example.org: the database refused a value ('utf-8' codec can't "
            "encode character '\\udcff' in position 1: surrogates not allowed)"
        )
        assert store.subscribers_by_id() == {}
    finally:
        store.close()


# ------------------------------------------------------------------ 7: JSON


def test_json_output_is_always_valid_json(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"score": math.inf, "scores": [math.nan, 1.5, -math.inf], "path": "in\udcffbox"})
    assert strict_json(capsys.readouterr().out) == {
        "score": None,
        "scores": [None, 1.5, None],
        "path": "in\\udcffbox",
    }


def test_rank_json_with_the_largest_weights_is_valid(env: dict[str, str]) -> None:
    assert run_cli(env, "ingest", env["NEWSLETTER_INBOX"]).returncode == 0
    out = run_cli(env, "rank", "--profile", "speech^1000 model^1000 language^1000", "--json")
    assert out.returncode == 0, out.stderr
    ranked = strict_json(out.stdout)
    assert ranked and all(math.isfinite(r["score"]) for r in ranked)


# ------------------------------------------------------------------ 9: profiles


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "speech titel:llm^2",
            "unknown field prefix 'titel:' in 'titel:llm' (known prefixes: title:, exact:, "
            "author:, as in title:llm); to match the text as written, put it in quotes: "
            '"titel:llm".',
        ),
        (
            'speech -abstract:"a phrase"^2',
            "unknown field prefix 'abstract:' in '-abstract:\"a phrase\"' (known prefixes: "
            "title:, exact:, author:, as in title:llm); to match the phrase anywhere, leave the "
            'prefix out: "a phrase".',
        ),
        (
            "speech title:titel:llm",
            "unknown field prefix 'titel:' in 'title:titel:llm' (known prefixes: title:, exact:, "
            "author:, as in title:llm); to match the text as written, put it in quotes: "
            '"titel:llm".',
        ),
        (
            "speech AND music",
            "'AND' is not an operator in a profile: every term adds to the score on its own; "
            'for words that must appear together use a phrase in quotes ("speech '
            'recognition"); to match the word itself, quote it: "AND".',
        ),
        (
            "speech, OR, music",
            "'OR' is not an operator in a profile: terms are alternatives already: separate "
            'them with a comma or a space; to match the word itself, quote it: "OR".',
        ),
        (
            "speech NOT^2 music",
            "'NOT^2' is not an operator in a profile: to leave out papers with a term, put - "
            'before it (-survey); to match the word itself, quote it: "NOT".',
        ),
        (
            "speech x^1001",
            "bad weight '1001' in the term 'x^1001': a weight is a positive number up to 1000, "
            'as in speech^2 or "a phrase"^0.5.',
        ),
    ],
)
def test_search_engine_habits_are_refused_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(text, who=WHO)
    assert str(err.value) == f"{WHO}: {message}"


def test_colons_and_operator_words_that_are_not_prefixes_or_operators_are_words() -> None:
    profile = parse_profile('note: speech http://example.org "re:invent" "AND" and Not x^1000')
    assert [t.text for t in profile.terms] == [
        "note:",
        "speech",
        "http://example.org",
        "re:invent",
        "AND",
        "and",
        "Not",
        "x",
    ]
    formatted = format_profile(profile)
    assert formatted == ('note:, speech, http://example.org, "re:invent", "AND", and, Not, x^1000')
    assert parse_profile(formatted) == profile


def test_profiles_stored_before_the_strict_rules_still_plan() -> None:
    """Planning reads stored profiles leniently: a reader whose profile predates the refusal
    of ``titel:`` and bare operators keeps getting issues, matched on the words as written."""
    stored = "titel:speech AND recognition"
    with pytest.raises(ProfileError):
        parse_profile(stored, who=WHO)
    profile = parse_profile(stored, who=WHO, strict=False)
    assert [t.text for t in profile.terms] == ["titel:speech", "AND", "recognition"]


def test_the_paper_url_template_must_be_an_http_link() -> None:
    with pytest.raises(ValueError, match="must be an http\\(s\\) URL with a host"):
        Settings(paper_url_template="javascript:alert({title})")
    assert Settings(paper_url_template="https://example.org/?q={title}").paper_url_template == (
        "https://example.org/?q={title}"
    )


# ------------------------------------------------------------------ 8: one error line


def test_a_full_feeds_folder_prints_the_summary_then_one_error_line(
    workdir: Path, env: dict[str, str]
) -> None:
    (workdir / "afile").write_text("not a folder\n")
    blocked = workdir / "afile" / "feeds"
    error = f"feeds not written to {blocked}: [Errno 20] Not a directory: '{blocked}'"
    env = {**env, "NEWSLETTER_FEEDS_DIR": str(blocked)}
    text = run_cli(env, "run", "--once", "--now", NOW.isoformat())
    assert text.returncode == 1
    assert f"issues: 3 delivered to {workdir / 'outbox'}" in text.stdout.splitlines()
    assert text.stdout.splitlines()[-1] == f"feeds: {blocked} (not written)"
    assert [line for line in text.stderr.splitlines() if "error" in line.lower()] == [
        f"error: {error}"
    ]
    assert len(list((workdir / "outbox").glob("*.eml"))) == 3

    again = run_cli(env, "run", "--once", "--json", "--now", NOW.isoformat())
    assert (again.returncode, again.stderr) == (1, f"error: {error}\n")
    data = strict_json(again.stdout)
    assert (data["feeds_error"], data["feeds_written"], data["warnings"]) == (error, 0, [])


def test_a_short_secret_key_is_one_error_line(env: dict[str, str]) -> None:
    out = run_cli({**env, "NEWSLETTER_SECRET_KEY": "short"}, "status")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        "error: NEWSLETTER_SECRET_KEY is 5 bytes long; it must be at least 16: set it to a "
        "long random string, e.g. the output of "
        "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`\n"
    )


# ------------------------------------------------------------------ 9: the inbox


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_the_daemon_does_not_start_without_an_inbox(
    workdir: Path, env: dict[str, str], kind: str
) -> None:
    inbox = workdir / "nowhere"
    if kind == "file":
        inbox.write_text("not a folder\n")
    problem = "does not exist: create it," if kind == "missing" else "is not a folder:"
    out = run_cli({**env, "NEWSLETTER_INBOX": str(inbox)}, "run")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"error: the daemon cannot start: inbox {inbox.resolve()} {problem} {INBOX_FIX}\n"
    )


def test_every_run_summary_warns_about_a_missing_inbox(workdir: Path, env: dict[str, str]) -> None:
    inbox = workdir / "nowhere"
    warning = f"inbox {inbox.resolve()} does not exist: create it, {INBOX_FIX}"
    env = {**env, "NEWSLETTER_INBOX": str(inbox)}
    for _ in range(2):
        text = run_cli(env, "run", "--once", "--now", NOW.isoformat())
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines()[:2] == [
            f"warning: {warning}",
            "files: 0 ingested, 0 unchanged, 0 quarantined; papers: 0 new, 0 stored",
        ]
    data = strict_json(run_cli(env, "run", "--once", "--json").stdout)
    assert data["warnings"] == [warning]
    status = run_cli(env, "status")
    assert status.stdout.splitlines()[-1] == f"warning: {warning}"


def test_the_daemon_logs_an_inbox_that_goes_missing_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="newsletter.daemon")
    inbox = settings.inbox
    for path in inbox.iterdir():
        path.unlink()
    inbox.rmdir()

    def inbox_lines() -> list[tuple[int, str]]:
        return [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "newsletter.daemon" and r.getMessage().startswith("inbox ")
        ]

    with Daemon(settings, mailer=MemoryMailer(), clock=lambda: NOW) as daemon:
        daemon.scan_inbox()
        daemon.scan_inbox()
        inbox.mkdir()
        daemon.scan_inbox()
        daemon.scan_inbox()
    assert inbox_lines() == [
        (logging.WARNING, f"inbox {inbox.resolve()} does not exist: create it, {INBOX_FIX}"),
        (logging.INFO, f"inbox {inbox.resolve()} can be read again"),
    ]


# ------------------------------------------------------------------ 9: what a command runs on


def test_a_command_without_a_settings_file_says_what_it_uses(tmp_path: Path) -> None:
    out = run_cli({}, "status", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    root = tmp_path.resolve()
    database = f"sqlite:///{root / 'var' / 'newsletter.db'}"
    [line] = out.stderr.splitlines()
    assert line.split(" ", 2)[2] == (
        f"WARNING newsletter.cli._base: no settings file (looked for "
        f"{root / 'config' / 'newsletter.toml'}; set NEWSLETTER_CONFIG or --config): using "
        f"built-in defaults and NEWSLETTER_* variables: database {database}, inbox "
        f"{root / 'seeds'}"
    )
    assert out.stdout.splitlines()[-9:] == [
        "configuration:",
        "  settings file: none: built-in defaults and NEWSLETTER_* variables",
        f"  database: {database}",
        f"  inbox: {root / 'seeds'}",
        f"  outbox: {root / 'var' / 'outbox'}",
        f"  feeds: {root / 'var' / 'feeds'}",
        f"  mailer: outbox {root / 'var' / 'outbox'}",
        "  delivery: in-process",
        f"warning: inbox {root / 'seeds'} does not exist: create it, {INBOX_FIX}",
    ]


def test_status_json_shows_the_configuration_in_use(workdir: Path, env: dict[str, str]) -> None:
    out = run_cli(env, "status", "--json")
    assert (out.returncode, out.stderr) == (0, "")
    data = strict_json(out.stdout)
    assert (data["config"], data["warnings"]) == (
        {
            "file": str(CONFIG.resolve()),
            "database_url": f"sqlite:///{(workdir / 'db.sqlite').resolve()}",
            "inbox": str(workdir / "inbox"),
            "outbox_dir": str(workdir / "outbox"),
            "feeds_dir": str(workdir / "feeds"),
            "mailer": f"outbox {workdir / 'outbox'}",
            "broker": None,
        },
        [],
    )


def test_database_urls_are_shown_absolute_and_without_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve()
    assert display_url("sqlite:///tmp/x.db") == f"sqlite:///{root / 'tmp' / 'x.db'}"
    assert display_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert display_url("sqlite://") == "sqlite://"
    assert display_url("postgresql://digest:s3cret@db:5432/papers") == (
        "postgresql://digest:***@db:5432/papers"
    )
    smtp = load_settings(
        CONFIG,
        environ={
            "NEWSLETTER_MAILER": "smtp",
            "NEWSLETTER_SMTP_HOST": "mail.example.org",
            "NEWSLETTER_SMTP_SECURITY": "ssl",
            "NEWSLETTER_SMTP_PORT": "465",
            "NEWSLETTER_DATABASE_URL": "postgresql://digest:s3cret@db:5432/papers",
        },
    )
    shown = ConfigInUse.of(smtp)
    assert (shown.mailer, shown.database_url) == (
        "smtp mail.example.org:465 (ssl)",
        "postgresql://digest:***@db:5432/papers",
    )
