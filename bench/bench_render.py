"""Rendering cost per issue: ``EmailRenderer.render`` over real planned issues, warm.

Usage: ``.venv/bin/python bench/bench_render.py [--subscribers 300] [--rounds 3]``

Builds a scratch workspace as ``bench_e2e.py`` does (400 papers from the seed corpus,
subscribers with profiles drawn from its vocabulary, 10 papers each), plans everyone's issue,
renders every issue once to warm the renderer's caches, then times ``--rounds`` passes over
all of them and prints the best pass in ms per issue and the mean message size. Run it
against two checkouts back to back (``PYTHONPATH=<other checkout>``) to compare them.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import bench_e2e as e2e

from newsletter.app import Newsletter
from newsletter.domain import IssueState
from newsletter.pipeline import issue_content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        folder = Path(tmp)
        ws = e2e.make_workspace(folder, None, 2525)
        rng = random.Random(1)
        papers = e2e.build_papers(400, rng)
        e2e.write_digests(folder / "inbox", papers, rng)
        entries = e2e.subscriber_entries(args.subscribers, papers, rng)
        now = datetime.now(UTC)
        with Newsletter(e2e.settings_of(ws)) as app:
            app.ingest(now=now)
            e2e.insert_subscribers(app, entries, now)
            app.plan_current_slots(now)
            subs = app.store.subscribers_by_id()
            contents = [
                issue_content(app.store, issue, subs[issue.subscriber_id])
                for issue in app.store.issues(states=[IssueState.PLANNED])
            ]
            renderer = app.renderer
            sizes = [len(renderer.render(c).message) for c in contents]  # warm
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                for content in contents:
                    renderer.render(content)
                best = min(best, time.perf_counter() - started)
    print(
        f"{len(contents)} issues: {best / len(contents) * 1000:.2f} ms per issue (best of "
        f"{args.rounds}), messages {sum(sizes) / len(sizes) / 1024:.1f} KiB on average"
    )


if __name__ == "__main__":
    main()
