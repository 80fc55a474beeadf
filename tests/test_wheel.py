"""The built wheel works on its own: installed (not editable) and run from an empty folder.

This catches what the editable checkout hides: templates or other data files that are not
declared as package data, and code that finds files relative to the repository.

To stay fast and offline-friendly, the fresh venv gets no dependencies from the index: a
``.pth`` file puts the project venv's site-packages on its path, *after* its own. Paths in a
``.pth`` file are added without processing that directory's own ``.pth`` files, so the
project venv's editable-install hook (which maps ``newsletter`` to this checkout) never runs;
the test checks that ``newsletter`` is imported from the fresh venv all the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.conftest import ROOT, SEEDS

#: One seed file and the three example subscribers. Every one of the three finds papers for
#: their profile in this digest, and `run --once` sends each subscriber's issue straight away
#: (no waiting for their send time), so one run writes three ``.eml`` files: one per
#: subscriber, not one in all. (Seed 000 would give two: nothing in it matches Ada's profile.)
SEED = "002_3c0e7f085ac361a2.txt"
EXPECTED_ISSUES = 3


def _run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    """The inherited environment without NEWSLETTER_* or Python path settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_")
        and k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    return {**env, **extra}


def _source_copy(destination: Path) -> Path:
    """The project's files needed for a build, copied: building in the checkout would leave
    ``build/`` there, whose stale copies of deleted files end up in later wheels."""
    destination.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, destination / entry.name)
    shutil.copytree(
        ROOT / "newsletter",
        destination / "newsletter",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return destination


def _dependency_paths() -> list[str]:
    """The site-packages of the interpreter running the tests (the project venv)."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if Path(p).is_dir())


def test_installed_wheel_runs_once_from_an_empty_folder(tmp_path: Path) -> None:
    started = time.monotonic()
    source = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source],
        cwd=tmp_path,
        env=_clean_env(),
    )
    (wheel,) = wheels.glob("newsletter-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=_clean_env())
    python = venv / "bin" / "python"
    # Install before the .pth exists, so pip sees an empty venv (and never the checkout's
    # editable install).
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
        cwd=tmp_path,
        env=_clean_env(),
    )
    site_packages = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
            env=_clean_env(),
        ).stdout.strip()
    )
    (site_packages / "_project_dependencies.pth").write_text(
        "".join(f"{p}\n" for p in _dependency_paths()), encoding="utf-8"
    )

    work = tmp_path / "work"  # an empty folder: no config/, no templates/, no seeds/
    work.mkdir()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy2(SEEDS / SEED, inbox / SEED)
    subscribers = tmp_path / "subscribers.toml"
    shutil.copy2(ROOT / "config" / "subscribers.toml", subscribers)
    env = _clean_env(
        NEWSLETTER_INBOX=str(inbox),
        NEWSLETTER_OUTBOX_DIR=str(work / "outbox"),
        NEWSLETTER_FEEDS_DIR=str(work / "feeds"),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{work / 'newsletter.db'}",
        NEWSLETTER_SUBSCRIBERS_FILE=str(subscribers),
    )

    where = _run(
        [
            python,
            "-c",
            "import newsletter, newsletter.resources as r; "
            "print(newsletter.__file__); print(r.packaged_templates())",
        ],
        cwd=work,
        env=env,
    ).stdout.splitlines()
    for path in where:
        assert Path(path).resolve().is_relative_to(site_packages.resolve()), where
        assert not Path(path).resolve().is_relative_to(ROOT / "newsletter"), where

    result = _run([venv / "bin" / "newsletter", "run", "--once"], cwd=work, env=env)
    emails = sorted((work / "outbox").glob("*.eml"))
    assert len(emails) == EXPECTED_ISSUES, (result.stdout, result.stderr)
    assert f"issues: {EXPECTED_ISSUES} delivered" in result.stdout
    assert "Content-Type: text/html" in emails[0].read_text(encoding="utf-8")
    assert (work / "feeds" / "all.atom").is_file() and (work / "feeds" / "all.rss").is_file()
    assert time.monotonic() - started < 60
