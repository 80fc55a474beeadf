"""No bare tracebacks: an unexpected exception reaches the user as one ``error:`` line.

The entry point is :func:`newsletter.cli.main` (the console script), not the click group, so
these tests call it with ``sys.argv`` patched, or run it in a subprocess for the real stderr.
The failure comes from a command the test adds to the group, so the tests do not depend on
what any real command does first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import click
import pytest

from newsletter.cli import cli, main
from tests.conftest import ROOT

HINT = "hint: run with -v for the traceback"


def _main(monkeypatch: pytest.MonkeyPatch, exc: BaseException, *args: str) -> int:
    """Run the entry point on ``newsletter [args] explode``, a command raising ``exc``."""

    @click.command()
    def explode() -> None:
        raise exc

    monkeypatch.setitem(cli.commands, "explode", explode)
    monkeypatch.setattr(sys, "argv", ["newsletter", *args, "explode"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    assert isinstance(code, int)
    return code


def test_unexpected_exception_is_one_line_and_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(monkeypatch, RuntimeError("disk on fire\n  and smoking")) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: RuntimeError: disk on fire and smoking", HINT]
    assert captured.out == ""


def test_verbose_logs_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        assert _main(monkeypatch, RuntimeError("disk on fire"), "-v") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: RuntimeError: disk on fire"
    assert HINT not in err
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_exception_without_message_names_its_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(monkeypatch, LookupError()) == 1
    assert capsys.readouterr().err.splitlines() == ["error: LookupError", HINT]


def test_ctrl_c_is_aborted_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(monkeypatch, KeyboardInterrupt()) == 130
    err = capsys.readouterr().err
    assert err.strip() == "aborted" and "Traceback" not in err


# The console script end to end: a real process, its real stderr and logging set-up.
_SCRIPT = textwrap.dedent(
    """
    import sys

    from newsletter.cli import cli, main

    @cli.command()
    def explode():
        raise RuntimeError("disk on fire")

    sys.argv = ["newsletter", *sys.argv[1:], "explode"]
    main()
    """
)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_subprocess_stderr_without_and_with_verbose() -> None:
    quiet = _script()
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == ["error: RuntimeError: disk on fire", HINT]
    assert quiet.stdout == ""

    verbose = _script("-v")
    assert verbose.returncode == 1
    lines = verbose.stderr.splitlines()
    assert "Traceback (most recent call last):" in lines
    assert "RuntimeError: disk on fire" in lines
    assert lines[-1] == "error: RuntimeError: disk on fire"
    assert HINT not in verbose.stderr
