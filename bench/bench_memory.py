"""Memory with history: peak RSS of ``newsletter run --once`` over a database with a long past.

Not a test (shared machines are noisy): run it by hand.

    .venv/bin/python bench/bench_memory.py        # 150,000 old papers, 10,000 subscribers
    .venv/bin/python bench/bench_memory.py --subscribers 1000 --history-days 5

Issue 13's target: a run over 150,000 stored papers and 10,000 subscribers peaks under 1.5 GB,
because nothing loads every paper or every issue ever stored. What it builds (not timed): the
workspace of ``bench_e2e.py`` (settings, an inbox of ``--papers`` new papers in four digests,
N active daily subscribers, a local aiosmtpd sink), then, straight into the database,
``--old-papers`` papers first seen between 30 and 400 days ago (seed titles and abstracts
recombined) and ``--history-days`` days of sent history: one sent issue per subscriber per day,
``--history-papers`` old papers each, with their issue-paper rows and sent log, as a long-running
newsletter leaves them. Then one ``run --once --json`` in a child process: its wall time, its peak
RSS (``ru_maxrss`` from ``wait4``), the issues it delivered, the database size before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import (  # noqa: E402
    build_papers,
    database_bytes,
    drop_scratch,
    insert_subscribers,
    make_workspace,
    settings_of,
    subscriber_entries,
    write_digests,
)
from sink import free_port, start_sink  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from newsletter.app import Newsletter  # noqa: E402
from newsletter.domain import IssueState  # noqa: E402
from newsletter.store.schema import (  # noqa: E402
    IssuePaperRow,
    IssueRow,
    PaperRow,
    SentLogRow,
    SubscriberRow,
)

CHUNK = 5000


def insert_old_papers(app: Newsletter, n: int, now: datetime, rng: random.Random) -> None:
    """``n`` papers first seen 30 to 400 days before ``now``: history no run should load."""
    seeds = build_papers(400, rng)
    with app.store.engine.begin() as conn:
        for start in range(0, n, CHUNK):
            rows = []
            for i in range(start, min(n, start + CHUNK)):
                seed = seeds[i % len(seeds)]
                seen = now - timedelta(days=30 + (i * 370) // max(n, 1), seconds=i)
                rows.append(
                    {
                        "key": f"title:old paper {i}",
                        "title_key": f"old paper {i}",
                        "title": f"{seed.title} ({i})",
                        "abstract": seed.abstract,
                        "authors": '["Ann One", "Bob Two"]',
                        "author_count": 2,
                        "first_seen_at": seen,
                        "updated_at": seen,
                    }
                )
            conn.execute(insert(PaperRow), rows)


def insert_history(app: Newsletter, days: int, per_issue: int, now: datetime) -> int:
    """One sent issue per subscriber for each of the last ``days`` days (before today), each
    with ``per_issue`` distinct old papers, their issue-paper rows and sent log. Returns the
    number of issues."""
    with app.store.engine.connect() as conn:
        subscriber_ids = list(conn.scalars(select(SubscriberRow.id).order_by(SubscriberRow.id)))
        paper_ids = list(conn.scalars(select(PaperRow.id).order_by(PaperRow.id)))
    issues = 0
    with app.store.engine.begin() as conn:
        next_id = int(conn.scalar(select(func.coalesce(func.max(IssueRow.id), 0))) or 0) + 1
        for day in range(1, days + 1):
            slot = (now - timedelta(days=day)).date()
            sent_at = now - timedelta(days=day)
            for start in range(0, len(subscriber_ids), CHUNK):
                batch = subscriber_ids[start : start + CHUNK]
                issue_rows, paper_rows, log_rows = [], [], []
                for sid in batch:
                    issue_rows.append(
                        {
                            "id": next_id,
                            "subscriber_id": sid,
                            "slot_date": slot,
                            "state": IssueState.SENT.value,
                            "attempts": 1,
                            "last_reply": "250 2.0.0 Ok: queued",
                            "message_id": f"<{next_id}@bench.example>",
                            "subject": "Paper Digest: 10 papers",
                            "created_at": sent_at,
                            "sent_at": sent_at,
                        }
                    )
                    offset = (sid * 7919 + day * per_issue) % max(len(paper_ids) - per_issue, 1)
                    for position, pid in enumerate(paper_ids[offset : offset + per_issue], 1):
                        paper_rows.append(
                            {
                                "issue_id": next_id,
                                "paper_id": pid,
                                "position": position,
                                "score": 3.5,
                                "reasons": '[["speech", "title", 2.1], ["model", "abstract", 1.4]]',
                            }
                        )
                        log_rows.append(
                            {
                                "subscriber_id": sid,
                                "paper_id": pid,
                                "issue_id": next_id,
                                "sent_at": sent_at,
                            }
                        )
                    next_id += 1
                conn.execute(insert(IssueRow), issue_rows)
                conn.execute(insert(IssuePaperRow), paper_rows)
                conn.execute(app.store._insert(SentLogRow).on_conflict_do_nothing(), log_rows)
                issues += len(issue_rows)
    return issues


def run_child(config: Path, folder: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "newsletter", "-c", str(config), "run", "--once", "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    out_path, err_path = folder / "run.stdout.json", folder / "run.stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=folder)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
    try:
        summary = json.loads(out_path.read_text(encoding="utf-8"))
    except ValueError:
        summary = {}
    return {
        "exit_status": os.waitstatus_to_exitcode(status),
        "wall_seconds": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "issues_delivered": summary.get("issues_delivered"),
        "papers_total": summary.get("papers_total"),
        "stderr_tail": err_path.read_text(errors="replace").strip().splitlines()[-5:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=400, help="new papers (default 400)")
    parser.add_argument("--old-papers", type=int, default=150_000)
    parser.add_argument("--history-days", type=int, default=3, help="days of sent issues")
    parser.add_argument("--history-papers", type=int, default=10, help="papers per old issue")
    parser.add_argument("--database-url", default=None, help="default: SQLite in the workspace")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    rng = random.Random(7)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.workdir))
    ws = sink = None
    setup: dict[str, float] = {}
    try:
        ws = make_workspace(folder, args.database_url, port)
        papers = build_papers(args.papers, rng)
        write_digests(folder / "inbox", papers, rng)
        entries = subscriber_entries(args.subscribers, papers, rng)
        now = datetime.now(UTC)
        with Newsletter(settings_of(ws)) as app:
            t = time.monotonic()
            insert_subscribers(app, entries, now)
            insert_old_papers(app, args.old_papers, now, rng)
            setup["papers and subscribers"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            history = insert_history(app, args.history_days, args.history_papers, now)
            setup["history"] = round(time.monotonic() - t, 1)
        sink = start_sink(port)
        db_before = database_bytes(ws.database_url)
        result = run_child(ws.config, folder)
        db_after = database_bytes(ws.database_url)
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait()
        if ws is not None and not args.keep:
            drop_scratch(ws)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report = {
        "subscribers": args.subscribers,
        "old_papers": args.old_papers,
        "history_issues": history,
        "setup_seconds": setup,
        **result,
        "database_mib_before": round(db_before / 2**20, 1),
        "database_mib_after": round(db_after / 2**20, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
