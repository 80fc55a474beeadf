"""The CLI as a user drives it: subprocesses for the entry points, CliRunner for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter import __version__
from newsletter.cli import cli
from newsletter.store import Store
from tests.factories import head_revision, run_cli, workspace_env


@pytest.fixture
def env(workdir: Path) -> dict[str, str]:
    return workspace_env(workdir, f"sqlite:///{workdir / 'db.sqlite'}")


def test_python_m_version_and_help() -> None:
    out = run_cli({}, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"newsletter, version {__version__}"
    out = run_cli({}, "-h")
    assert out.returncode == 0
    for command in ("run", "ingest", "preview", "subscriber", "status", "feeds", "db"):
        assert f"  {command} " in out.stdout


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in getattr(group, "commands", {}).items():
        found.append(prefix + (name,))
        found.extend(_commands(command, prefix + (name,)))
    return found


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for path in _commands(cli):
        result = runner.invoke(cli, [*path, "-h"])
        assert result.exit_code == 0, path
        is_group = hasattr(cli.commands.get(path[0]), "commands") and len(path) == 1
        if not is_group:
            assert "Example" in result.output, path


def test_run_once_json_then_nothing_new(env: dict[str, str], workdir: Path) -> None:
    first = run_cli(env, "run", "--once", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert {
        k: data[k]
        for k in ("files_ingested", "files_quarantined", "papers_new", "issues_delivered")
    } == {"files_ingested": 5, "files_quarantined": 0, "papers_new": 380, "issues_delivered": 3}
    assert data["outbox_dir"] == str(workdir / "outbox")
    assert data["feeds_dir"] == str(workdir / "feeds")
    second = run_cli(env, "run", "--once")
    assert second.returncode == 0
    assert second.stdout.splitlines()[:2] == [
        "files: 0 ingested, 5 unchanged, 0 quarantined; papers: 0 new, 380 stored",
        "issues: none delivered (nothing new for anyone, or already sent this slot)",
    ]
    assert len(list((workdir / "outbox").glob("*.eml"))) == 3


def test_bad_setting_stops_with_its_name(env: dict[str, str]) -> None:
    out = run_cli({**env, "NEWSLETTER_CANDIDATE_WINDOW_DAYS": "-3"}, "run", "--once")
    assert out.returncode == 1
    assert out.stderr.startswith(
        "error: bad value for 'candidate_window_days' in environment "
        "NEWSLETTER_CANDIDATE_WINDOW_DAYS"
    )


def test_subscriber_commands(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner(env=env)
    added = runner.invoke(
        cli,
        [
            "subscriber",
            "add",
            "Zoe@Example.org",
            "--name",
            "Zoë",
            "--profile",
            'speech, "speech recognition"^2',
            "--timezone",
            "Asia/Tokyo",
            "--send-at",
            "06:30",
        ],
    )
    assert added.exit_code == 0, added.output
    assert added.output == "added zoe@example.org (sends 06:30 Asia/Tokyo)\n"
    listed = runner.invoke(cli, ["subscriber", "list", "--json"])
    assert [
        (s["email"], s["name"], s["timezone"], s["send_at"], s["status"])
        for s in json.loads(listed.output)
    ] == [("zoe@example.org", "Zoë", "Asia/Tokyo", "06:30", "active")]
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,name,profile,timezone,send_at\n"
        "a@example.org,A,retrieval,UTC,07:00\n"
        "broken,B,retrieval,UTC,07:00\n"
    )
    imported = runner.invoke(cli, ["subscriber", "import", str(csv_file)])
    assert imported.exit_code == 0
    assert imported.stdout.splitlines()[-1] == (
        f"imported {csv_file}: 1 added, 0 updated, 1 skipped"
    )
    assert f"skipped: {csv_file}, line 3: email: invalid email address 'broken'" in imported.stderr
    removed = runner.invoke(cli, ["subscriber", "remove", "zoe@example.org"])
    assert removed.output == "unsubscribed zoe@example.org (history kept)\n"
    listed = runner.invoke(cli, ["subscriber", "list", "--json", "--all"])
    assert [(s["email"], s["status"]) for s in json.loads(listed.output)] == [
        ("zoe@example.org", "unsubscribed"),
        ("a@example.org", "active"),
    ]


def test_subscriber_list_shows_private_feed_urls(env: dict[str, str]) -> None:
    runner = CliRunner(env=env)
    for address in ("ada@example.org", "bob@example.org"):
        added = runner.invoke(cli, ["subscriber", "add", address, "--profile", "speech"])
        assert added.exit_code == 0, added.output
    assert runner.invoke(cli, ["subscriber", "remove", "bob@example.org"]).exit_code == 0
    store = Store(env["NEWSLETTER_DATABASE_URL"])
    try:
        ada, bob = store.subscriber("ada@example.org"), store.subscriber("bob@example.org")
    finally:
        store.close()
    assert ada is not None and bob is not None and ada.feed_token != bob.feed_token
    feeds = f"http://127.0.0.1:8080/feeds/{ada.feed_token}"  # base_url of config/newsletter.toml

    listed = runner.invoke(cli, ["subscriber", "list", "--json", "--all"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [
        {
            "email": "ada@example.org",
            "name": "",
            "status": "active",
            "timezone": "UTC",
            "send_at": "07:00",
            "days": [],
            "profile": "speech",
            "max_papers": 10,
            "min_score": 1.0,
            "feed_atom": f"{feeds}.atom",
            "feed_rss": f"{feeds}.rss",
            "suppressed": None,  # why bounces suppressed it (see tests/test_bounces.py)
        },
        {
            "email": "bob@example.org",
            "name": "",
            "status": "unsubscribed",
            "timezone": "UTC",
            "send_at": "07:00",
            "days": [],
            "profile": "speech",
            "max_papers": 10,
            "min_score": 1.0,
            "feed_atom": None,  # not served: /feeds/<token>.atom answers 404
            "feed_rss": None,
            "suppressed": None,
        },
    ]
    text = runner.invoke(cli, ["subscriber", "list", "--all"])
    assert text.exit_code == 0
    lines = text.output.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == ["ada@example.org", "active"]
    assert lines[1] == f"  feed: {feeds}.atom"
    assert lines[2].split()[:2] == ["bob@example.org", "unsubscribed"]


def test_subscriber_add_rejects_bad_profile(env: dict[str, str]) -> None:
    out = run_cli(env, "subscriber", "add", "x@example.org", "--profile", '"unclosed')
    assert out.returncode == 1
    assert out.stderr.startswith("error: subscriber add: ")
    assert "x@example.org" in out.stderr


def test_remove_unknown_subscriber_fails_clearly(env: dict[str, str]) -> None:
    out = run_cli(env, "subscriber", "remove", "nobody@example.org")
    assert out.returncode == 1
    assert out.stderr == (
        "error: no subscriber 'nobody@example.org': see `newsletter subscriber list --all`\n"
    )


def test_preview_prints_the_html_path(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner(env=env)
    assert runner.invoke(cli, ["ingest", env["NEWSLETTER_INBOX"]]).exit_code == 0
    runner.invoke(cli, ["subscriber", "add", "p@example.org", "--profile", "diffusion"])
    result = runner.invoke(
        cli, ["preview", "--subscriber", "p@example.org", "--out", str(tmp_path / "pv")]
    )
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip())
    assert path.parent == tmp_path / "pv" and path.read_text().lstrip().startswith("<!DOCTYPE")
    assert not Path(env["NEWSLETTER_OUTBOX_DIR"]).exists()


def test_ingest_reports_per_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"")
    runner = CliRunner(env=env)
    result = runner.invoke(
        cli,
        [
            "ingest",
            "--json",
            str(tmp_path / "bad.txt"),
            str(Path(env["NEWSLETTER_INBOX"]) / "000_3a916ff8f52d44d3.txt"),
        ],
    )
    assert result.exit_code == 0
    assert [(r["status"], r["entries"], r["papers_new"]) for r in json.loads(result.output)] == [
        ("quarantined", 0, 0),
        ("ingested", 72, 72),
    ]


def test_db_upgrade(env: dict[str, str]) -> None:
    out = run_cli(env, "db", "upgrade")
    assert out.returncode == 0 and out.stdout == f"database at revision {head_revision()}\n"
