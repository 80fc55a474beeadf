"""The documentation checked against the code, so that neither drifts from the other.

* README "Configuration reference": every ``Settings`` key (found by introspection) has a row,
  every row is a key, and the environment variables listed are exactly the ones the loader
  accepts (``NEWSLETTER_<KEY>``, ``NEWSLETTER_<TABLE>_<KEY>`` and ``OTHER_ENV``).
* README "Commands": every command, group and option of the click CLI (found by walking
  ``newsletter.cli.cli``) is in the table, and the table names nothing the CLI lacks.
* README "Output of ``run --once --json``": exactly the keys a real run prints.
* README "Exit status": the statuses documented are the ones ``main()`` produces.
* docs/ARCHITECTURE.md: every module of the package has a row in the module table, and every
  row names a module that exists.
* Files the docs name exist (no reference to a file that is not in the repository).

README conventions these tests rely on (stated in the README itself): in the commands table,
each row's first cell is the command line in backticks, ``newsletter GROUP COMMAND`` followed
by every option it takes; in the configuration tables, keys and variables are in backticks.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from newsletter.cli import cli, main
from newsletter.config import ENV_PREFIX, OTHER_ENV, Settings
from tests.conftest import NOW, ROOT

README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = ROOT / "newsletter"

Table = list[list[str]]


# ------------------------------------------------------------------ Markdown helpers


def _split_row(line: str) -> list[str]:
    """Cells of one table row; a ``|`` inside backticks or escaped as ``\\|`` is not a border."""
    cells, current, in_code = [], [], False
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and body[i + 1 : i + 2] == "|":
            current.append("|")
            i += 2
            continue
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    cells.append("".join(current).strip())
    return cells


def tables(markdown: str) -> list[Table]:
    """Every pipe table in ``markdown``: header row first, the ``---`` row dropped."""
    found: list[Table] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        is_header = lines[i].lstrip().startswith("|")
        if is_header and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            table = [_split_row(lines[i])]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                table.append(_split_row(lines[i]))
                i += 1
            found.append(table)
        else:
            i += 1
    return found


def section(markdown: str, heading: str) -> str:
    """The text under the heading titled ``heading``, up to the next heading of its level."""
    lines = markdown.splitlines()
    for start, line in enumerate(lines):
        match = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if match and match.group(2) == heading:
            level = len(match.group(1))
            end = start + 1
            while end < len(lines):
                other = re.match(r"^(#+)\s", lines[end])
                if other and len(other.group(1)) <= level:
                    break
                end += 1
            return "\n".join(lines[start + 1 : end])
    raise AssertionError(f"heading {heading!r} not found")


def table_with_header(markdown: str, first_header: str, where: str) -> Table:
    """The first table whose header's first cell is ``first_header``."""
    for table in tables(markdown):
        if table[0][0] == first_header:
            return table
    raise AssertionError(f"{where}: no table whose first column is {first_header!r}")


def column(table: Table, header: str) -> int:
    assert header in table[0], f"table {table[0]} has no column {header!r}"
    return table[0].index(header)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def shown(path: Path) -> str:
    """A path as the failure messages show it: relative to the repository."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------ settings


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings section class of a field's annotation (``X`` or ``X | None``), if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every key of the settings tree, dotted: ``name``, ``mail.from_address``, …"""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        nested = _section_model(info.annotation)
        if nested is None:
            keys.add(prefix + name)
        else:
            keys |= settings_keys(nested, f"{prefix}{name}.")
    return keys


def env_name(key: str) -> str:
    """The variable that overrides a dotted key: ``mail.from_address`` → NEWSLETTER_MAIL_…"""
    return ENV_PREFIX + key.replace(".", "_").upper()


def accepted_env() -> set[str]:
    return {env_name(key) for key in settings_keys()} | {ENV_PREFIX + name for name in OTHER_ENV}


def config_tables() -> tuple[Table, Table]:
    text = section(readme(), "Configuration reference")
    where = 'README "Configuration reference"'
    return (
        table_with_header(text, "key", where),
        table_with_header(text, "environment variable", where),
    )


def test_settings_keys_and_readme_configuration_table_match() -> None:
    keys_table, _ = config_tables()
    documented = {key for row in keys_table[1:] for key in code_spans(row[0])}
    actual = settings_keys()
    assert {"name", "mail.from_address", "smtp.host", "ranking.k1"} <= actual  # sanity
    missing = sorted(actual - documented)
    extra = sorted(documented - actual)
    assert not missing, f'settings keys missing from README "Configuration reference": {missing}'
    assert not extra, f'README "Configuration reference" lists keys that are not settings: {extra}'


def test_each_setting_row_names_its_environment_variable() -> None:
    keys_table, _ = config_tables()
    env_col = column(keys_table, "environment variable")
    wrong = []
    for row in keys_table[1:]:
        expected = [env_name(key) for key in code_spans(row[0])]
        if code_spans(row[env_col]) != expected:
            wrong.append(
                f"{row[0]}: README says {row[env_col] or '(nothing)'}, expected {expected}"
            )
    assert not wrong, 'README "Configuration reference", wrong variables:\n' + "\n".join(wrong)


def settings_defaults(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        nested = _section_model(info.annotation)
        if nested is None:
            defaults[prefix + name] = info.get_default(call_default_factory=True)
        else:
            defaults |= settings_defaults(nested, f"{prefix}{name}.")
    return defaults


def _same_default(documented: str, actual: Any) -> bool:
    if isinstance(actual, bool):
        return documented.lower() == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(documented) == float(actual)
        except ValueError:
            return False
    if isinstance(actual, Path):
        return Path(documented) == actual
    return isinstance(actual, str) and documented == actual


def test_readme_defaults_are_the_settings_defaults() -> None:
    """A default in backticks is checked; one given in words ("unset", "(empty)") is not."""
    keys_table, _ = config_tables()
    default_col = column(keys_table, "default")
    defaults = settings_defaults()
    wrong = []
    for row in keys_table[1:]:
        keys = code_spans(row[0])
        values = code_spans(row[default_col])
        if not values:
            continue
        if len(values) != len(keys):
            wrong.append(f"{row[0]}: {len(keys)} key(s) but {len(values)} default(s) in backticks")
            continue
        for key, value in zip(keys, values, strict=True):
            if key in defaults and not _same_default(value, defaults[key]):
                wrong.append(f"{key}: README says {value!r}, the default is {defaults[key]!r}")
    assert not wrong, 'README "Configuration reference", wrong defaults:\n' + "\n".join(wrong)


def test_readme_environment_variables_are_the_accepted_ones() -> None:
    keys_table, other_table = config_tables()
    env_col = column(keys_table, "environment variable")
    listed = {name for row in keys_table[1:] for name in code_spans(row[env_col])}
    listed |= {name for row in other_table[1:] for name in code_spans(row[0])}
    accepted = accepted_env()
    missing = sorted(accepted - listed)
    extra = sorted(listed - accepted)
    assert not missing, (
        f'environment variables the loader accepts but README "Configuration reference" does '
        f"not list: {missing}"
    )
    assert not extra, (
        f'README "Configuration reference" lists variables the loader refuses: {extra}'
    )
    others = {name for row in other_table[1:] for name in code_spans(row[0])}
    expected_others = {ENV_PREFIX + name for name in OTHER_ENV}
    assert others == expected_others, (
        f"README's table of variables that are not settings should be exactly OTHER_ENV: "
        f"missing {sorted(expected_others - others)}, extra {sorted(others - expected_others)}"
    )


def test_derived_environment_variables_are_accepted_by_the_loader() -> None:
    """The naming rule this test uses is the loader's own (an unknown variable is an error)."""
    from newsletter.config import _env_overrides

    for name in sorted(accepted_env()):
        _env_overrides({name: "1"})  # raises ConfigError for an unknown NEWSLETTER_* variable


def test_every_newsletter_variable_named_in_the_docs_is_accepted() -> None:
    accepted = accepted_env()
    files = [README, ARCHITECTURE, *sorted((ROOT / "deploy").glob("*.service"))]
    files.append(ROOT / "config" / "newsletter.toml")
    unknown = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"\bNEWSLETTER_[A-Z0-9][A-Z0-9_]*\b", text))):
            if name not in accepted:
                unknown.append(f"{shown(path)}: {name}")
    assert not unknown, f"variables named in the docs that the loader refuses: {unknown}"


# ------------------------------------------------------------------ commands

CommandPath = tuple[str, ...]


def cli_commands(
    command: click.Command = cli, path: CommandPath = (), parent: click.Context | None = None
) -> Iterator[tuple[CommandPath, click.Command, click.Context]]:
    """Every command and group, with its path below ``newsletter`` and a context for it."""
    name = path[-1] if path else "newsletter"
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for sub_name, sub in sorted(command.commands.items()):
            yield from cli_commands(sub, (*path, sub_name), ctx)


def option_strings(command: click.Command) -> set[str]:
    """The option strings a command takes (``--json``, ``-c``, ``--config``), help excluded."""
    found: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            found |= set(param.opts) | set(param.secondary_opts)
    return found


def help_strings(command: click.Command, ctx: click.Context) -> set[str]:
    return set(command.get_help_option_names(ctx)) if command.add_help_option else set()


_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
_WORD = re.compile(r"^[a-z][a-z0-9_-]*$")


def readme_commands() -> dict[CommandPath, set[str]]:
    """Command path → the options its rows of README "Commands" list (rows may repeat)."""
    table = table_with_header(section(readme(), "Commands"), "command", 'README "Commands"')
    documented: dict[CommandPath, set[str]] = {}
    for row in table[1:]:
        spans = code_spans(row[0])
        assert spans and spans[0].split()[0] == "newsletter", (
            f'README "Commands": a row must start with `newsletter …` in backticks: {row[0]!r}'
        )
        words = spans[0].split()[1:]
        path: list[str] = []
        for word in words:
            if not _WORD.match(word):
                break
            path.append(word)
        options = {opt for span in spans for opt in _OPTION.findall(span)}
        documented.setdefault(tuple(path), set()).update(options)
    return documented


def test_every_cli_command_and_option_is_in_the_readme() -> None:
    documented = readme_commands()
    covered = {path[:n] for path in documented for n in range(len(path) + 1)}
    commands = list(cli_commands())
    root_help = help_strings(cli, commands[0][2])
    problems = []
    for path, command, ctx in commands:
        label = " ".join(("newsletter", *path))
        if path not in covered:
            problems.append(f'command `{label}` has no row in README "Commands"')
            continue
        listed = documented.get(path, set())
        for opt in sorted(option_strings(command) - listed):
            problems.append(f'option {opt} of `{label}` is missing from README "Commands"')
        helps = help_strings(command, ctx)
        # -h/--help is listed once, on the `newsletter` row, which says every command takes it.
        if helps != root_help:
            for opt in sorted(helps - listed):
                problems.append(f"help option {opt} of `{label}` is missing from README")
    for opt in sorted(root_help - documented.get((), set())):
        problems.append(f"help option {opt} is missing from the `newsletter` row of README")
    assert not problems, "\n".join(problems)


def test_readme_commands_table_names_only_real_commands_and_options() -> None:
    commands = {path: (command, ctx) for path, command, ctx in cli_commands()}
    problems = []
    for path, listed in sorted(readme_commands().items()):
        label = " ".join(("newsletter", *path))
        if path not in commands:
            problems.append(f'README "Commands" documents `{label}`, which is not a command')
            continue
        command, ctx = commands[path]
        takes = option_strings(command) | help_strings(command, ctx)
        for opt in sorted(listed - takes):
            problems.append(f'README "Commands" lists {opt} for `{label}`, which it does not take')
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ run --once --json


def test_run_once_json_keys_are_the_documented_ones(workdir: Path) -> None:
    env = {
        "NEWSLETTER_CONFIG": None,
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite'}",
        "NEWSLETTER_INBOX": str(workdir / "inbox"),
        "NEWSLETTER_OUTBOX_DIR": str(workdir / "outbox"),
        "NEWSLETTER_FEEDS_DIR": str(workdir / "feeds"),
        "NEWSLETTER_SUBSCRIBERS_FILE": str(workdir / "config" / "subscribers.toml"),
        "NEWSLETTER_INBOX_SETTLE_SECONDS": "0",
    }
    args = ["--config", str(ROOT / "config" / "newsletter.toml"), "run", "--once", "--json"]
    result = CliRunner().invoke(cli, [*args, "--now", NOW.isoformat()], env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    data = json.loads(result.stdout)
    assert data["issues_delivered"] >= 1, "the seed run should deliver issues"

    text = section(readme(), "Output of `run --once --json`")
    table = table_with_header(text, "key", 'README "Output of `run --once --json`"')
    documented = {code_spans(row[0])[0] for row in table[1:]}
    missing = sorted(set(data) - documented)
    extra = sorted(documented - set(data))
    assert not missing, f'`run --once --json` keys missing from README "Output of …": {missing}'
    assert not extra, f'README "Output of `run --once --json`" lists keys not printed: {extra}'

    # The shape of one `delivered` item is documented as `{key, key, …}` in its row.
    row = next(row for row in table[1:] if code_spans(row[0])[0] == "delivered")
    shapes = [span for span in code_spans(row[1]) if span.startswith("{")]
    assert shapes, "README: the `delivered` row should show an item as `{key, …}`"
    item_keys = {key.strip() for key in shapes[0].strip("{}").split(",")}
    assert set(data["delivered"][0]) == item_keys, (
        f"README documents a `delivered` item as {sorted(item_keys)}, the run printed "
        f"{sorted(data['delivered'][0])}"
    )


# ------------------------------------------------------------------ exit status


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the console-script entry point in process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["newsletter", *args])
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return 1  # sys.exit(message)
    return 0


def test_documented_exit_statuses_are_what_main_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    table = table_with_header(section(readme(), "Exit status"), "status", 'README "Exit status"')
    documented = {int(code_spans(row[0])[0]) for row in table[1:]}
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)

    assert _main(monkeypatch, "--version") == 0
    capsys.readouterr()

    assert _main(monkeypatch, "--config", str(tmp_path / "missing.toml"), "status") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err

    assert _main(monkeypatch, "status", "--no-such-option") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("Usage: ") and any(line.startswith("Error: ") for line in err), err

    @click.command("interrupted-for-test")
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.commands, "interrupted-for-test", interrupted)
    assert _main(monkeypatch, "interrupted-for-test") == 130
    assert capsys.readouterr().err.strip().endswith("aborted")

    # 3 (a second daemon on the same database) is checked by tests/test_daemon.py.
    assert documented == {0, 1, 2, 3, 75, 130}, f'README "Exit status" documents {documented}'


# ------------------------------------------------------------------ modules


def package_modules() -> dict[str, str]:
    """Path relative to ``newsletter/`` → dotted module name, for every module that is code."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or relative.parts[:2] == ("migrations", "versions"):
            continue
        found[relative.as_posix()] = ".".join(("newsletter", *relative.with_suffix("").parts))
    return found


def architecture_modules() -> set[str]:
    text = section(ARCHITECTURE.read_text(encoding="utf-8"), "Stages and the modules that own them")
    table = table_with_header(text, "module", "docs/ARCHITECTURE.md")
    return {span for row in table[1:] for span in code_spans(row[0]) if span.endswith(".py")}


def test_every_module_has_a_row_in_the_architecture_table() -> None:
    documented = architecture_modules()
    missing = [
        f"{dotted} (newsletter/{path})"
        for path, dotted in package_modules().items()
        if path not in documented
    ]
    assert not missing, (
        "modules without a row in docs/ARCHITECTURE.md's module table "
        '("Stages and the modules that own them"): ' + ", ".join(missing)
    )


def test_architecture_table_names_only_existing_modules() -> None:
    stale = sorted(path for path in architecture_modules() if not (PACKAGE / path).is_file())
    assert not stale, (
        f"docs/ARCHITECTURE.md's module table lists modules that do not exist in newsletter/: "
        f"{stale}"
    )


# ------------------------------------------------------------------ references to files

_REPO_PATH = re.compile(
    r"(?<![\w/.~-])((?:\.ci|bench|config|deploy|docs|newsletter|scripts|seeds|tests)/[\w./*-]*[\w*])"
)
_MARKDOWN_FILE = re.compile(r"(?<![\w/.-])([\w/-]+\.md)\b")
GENERATED = ("tests/artifacts/",)  # written by the test suite, not in the repository


def test_files_named_in_the_docs_exist() -> None:
    problems = []
    for doc in (README, ARCHITECTURE, *sorted((ROOT / "deploy").glob("*.service"))):
        text = doc.read_text(encoding="utf-8")
        for name in sorted(set(_REPO_PATH.findall(text))):
            if name.startswith(GENERATED):
                continue
            if not any(True for _ in ROOT.glob(name)):
                problems.append(f"{shown(doc)} names {name}, which does not exist")
        for name in sorted(set(_MARKDOWN_FILE.findall(text))):
            if not ((ROOT / name).exists() or (doc.parent / name).exists()):
                problems.append(f"{shown(doc)} refers to {name}, not in the repository")
    assert not problems, "\n".join(problems)
