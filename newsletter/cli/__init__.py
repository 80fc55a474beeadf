"""Command line: ``newsletter`` (or ``python -m newsletter``).

Only this package configures logging handlers and writes to the terminal. Every command has
help with an example (``newsletter COMMAND -h``); commands a script would read take ``--json``.
One module per group of commands; importing them registers them on the group.
"""

from __future__ import annotations

from newsletter.cli import (  # noqa: F401  (registers commands)
    bounces,
    doctor,
    feedback,
    fetch,
    rank,
    run,
    semantic,
    status,
    subscribers,
    web,
    worker,
)
from newsletter.cli._base import cli, main

__all__ = ["cli", "main"]
