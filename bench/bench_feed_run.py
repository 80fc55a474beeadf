"""One feed run (``Newsletter.write_feeds``) over N subscribers who all got an issue.

Not a test (shared machines are noisy): run it by hand and read the figures as ratios taken in
the same run.

    .venv/bin/python bench/bench_feed_run.py --subscribers 2000
    .venv/bin/python bench/bench_feed_run.py --subscribers 2000 --profile 25
    .venv/bin/python bench/bench_feed_run.py --subscribers 100000 --no-issues

What it builds (not timed): a workspace of ``bench/bench_e2e.py`` with N subscribers, its 400
papers ingested, every subscriber's slot planned and the planned issues marked sent "now" in
one SQL update (no rendering, no SMTP: only what a feed run reads matters). ``--no-issues``
skips planning: N subscribers who never got an issue, as at a daemon's first start.

Then it times, in one process: the first feed run (no feed state: every feed with entries is
built and written), a second one (nothing changed: nothing built), and ``force=True`` (every
feed built again, same bytes: nothing written). ``--profile K`` prints cProfile's top K
functions of the first run.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench_e2e import (
    build_papers,
    insert_subscribers,
    make_workspace,
    settings_of,
    subscriber_entries,
    write_digests,
)
from sqlalchemy import update

from newsletter.app import Newsletter
from newsletter.domain import IssueState
from newsletter.store.schema import IssueRow

log = logging.getLogger("bench_feed_run")


def prepare(folder: Path, url: str | None, n: int, issues: bool) -> Newsletter:
    """The workspace, its papers ingested, and (``issues``) every planned issue sent now."""
    ws = make_workspace(folder, url, 2525)  # no SMTP server: nothing is sent
    papers = build_papers(400, random.Random(1))
    write_digests(folder / "inbox", papers, random.Random(1))
    entries = subscriber_entries(n, papers, random.Random(2))
    now = datetime.now(UTC)
    app = Newsletter(settings_of(ws))
    insert_subscribers(app, entries, now)
    app.ingest(now=now, two_scans=False)
    if issues:
        planned = app.plan_current_slots(now)
        log.info("planned %d issue(s), %d empty", planned.planned, planned.empty)
        with app.store.engine.begin() as conn:
            conn.execute(
                update(IssueRow)
                .where(IssueRow.state == IssueState.PLANNED.value)
                .values(state=IssueState.SENT.value, sent_at=now)
            )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the workspace")
    parser.add_argument("--no-issues", action="store_true", help="subscribers without an issue")
    parser.add_argument("--profile", type=int, default=0, help="print the top K functions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("alembic", "newsletter.ingest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_feed_run_") as tmp:
        app = prepare(Path(tmp), args.database_url, args.subscribers, not args.no_issues)
        with app:
            profiler = cProfile.Profile() if args.profile else None
            began = time.perf_counter()
            if profiler:
                profiler.enable()
            first = app.write_feeds()
            if profiler:
                profiler.disable()
            first_s = time.perf_counter() - began
            began = time.perf_counter()
            second = app.write_feeds()
            second_s = time.perf_counter() - began
            began = time.perf_counter()
            forced = app.write_feeds(force=True)
            forced_s = time.perf_counter() - began
            files = sum(1 for _ in app.settings.feeds_dir.iterdir())
        print(
            f"{args.subscribers} subscribers: first feed run {first_s:.2f} s ({first} file(s) "
            f"changed, {files} in the folder), unchanged run {second_s:.2f} s ({second}), "
            f"forced run {forced_s:.2f} s ({forced})"
        )
        if profiler:
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(
                args.profile
            )
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(
                args.profile
            )


if __name__ == "__main__":
    main()
