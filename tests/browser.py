"""Debian's chromium driven by Playwright, for the browser tests (never a browser Playwright
would download).

A test module calls :func:`require_browser` at import: without /usr/bin/chromium or the
playwright package the whole module skips with the reason. The ``browser`` fixture of a module
is ``yield from launched()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
CHROMIUM = Path("/usr/bin/chromium")
#: As the machine's own probe starts it: no sandbox (root), and no background connections,
#: which a closed network refuses by the dozen.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_browser() -> ModuleType:
    """playwright.sync_api, or skip the calling module with why."""
    sync_api: ModuleType = pytest.importorskip(
        "playwright.sync_api",
        reason="browser tests skipped: the playwright package is not installed (scripts/test "
        "installs the test extras)",
    )
    if not CHROMIUM.exists():
        pytest.skip(
            f"browser tests skipped: {CHROMIUM} not found (the setup script installs Debian's "
            "chromium)",
            allow_module_level=True,
        )
    return sync_api


def launched() -> Iterator[Any]:
    """A headless chromium for one module's tests, closed after them."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
