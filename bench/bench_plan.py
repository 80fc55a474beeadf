"""Benchmark: plan one slot for N subscribers, counting SQL statements and seconds.

Not a test (shared machines are noisy): run it by hand and read the figures.

    .venv/bin/python bench/bench_plan.py                       # 3,000 subscribers, SQLite
    .venv/bin/python bench/bench_plan.py --subscribers 10000
    .venv/bin/python bench/bench_plan.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/bench_plan.py --subscribers 1000 --judged 1000   # with feedback

A fresh database (a temporary SQLite file, or the given PostgreSQL database, whose tables are
dropped first: use a scratch database) gets the seed papers and N subscribers with profiles
drawn from the seed titles; then ``Newsletter.plan_current_slots`` plans everyone's slot, as
``run --once`` does. Printed: statements (a SQLAlchemy hook counts each one sent), the time
of planning, and within it the time of ranking, so the two are a ratio from one run.
``--judged N``: the first N subscribers have ``--judgments`` judgments each (10: 6 likes, 4
dislikes of random papers), and the time of learning from them (:mod:`newsletter.learn`) is
printed too.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from newsletter import learn, rank  # noqa: E402
from newsletter.app import Newsletter  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.domain import Judgment, SubscriberSource, SubscriberSpec  # noqa: E402

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WORDS = (
    "speech recognition diffusion retrieval language model reasoning agents vision video "
    "reinforcement learning benchmark alignment code generation multimodal robotics"
).split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--judged", type=int, default=0, help="subscribers with judgments")
    parser.add_argument("--judgments", type=int, default=10, help="judgments each (60%% likes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        if args.database_url:
            _drop_all(url)
        settings = load_settings(
            ROOT / "config" / "newsletter.toml",
            environ={
                "NEWSLETTER_DATABASE_URL": url,
                "NEWSLETTER_INBOX": str(ROOT / "seeds"),
                "NEWSLETTER_OUTBOX_DIR": f"{tmp}/outbox",
                "NEWSLETTER_FEEDS_DIR": f"{tmp}/feeds",
            },
        )
        rng = random.Random(7)
        with Newsletter(settings, clock=lambda: NOW) as app:
            app.ingest()
            for n in range(args.subscribers):
                terms = rng.sample(WORDS, rng.randint(2, 5))
                app.store.upsert_subscriber(
                    SubscriberSpec(email=f"r{n:06d}@example.org", profile=", ".join(terms)),
                    source=SubscriberSource.CLI,
                    now=NOW,
                )
            paper_ids = [p.id for p in app.store.papers()]
            for n in range(min(args.judged, args.subscribers)):
                sub = app.store.subscriber(f"r{n:06d}@example.org")
                assert sub is not None
                for k, pid in enumerate(rng.sample(paper_ids, args.judgments)):
                    like = k < round(0.6 * args.judgments)
                    judgment = Judgment.LIKE if like else Judgment.DISLIKE
                    app.store.record_judgment(sub.id, pid, judgment, NOW)
            statements = 0

            def count(*_: Any) -> None:
                nonlocal statements
                statements += 1

            ranking = 0.0
            real_rank = rank.rank_papers

            def timed_rank(*a: Any, **k: Any) -> Any:
                nonlocal ranking
                t = time.perf_counter()
                try:
                    return real_rank(*a, **k)
                finally:
                    ranking += time.perf_counter() - t

            learning = 0.0
            real_learn = learn.feedback_adjustments

            def timed_learn(*a: Any, **k: Any) -> Any:
                nonlocal learning
                t = time.perf_counter()
                try:
                    return real_learn(*a, **k)
                finally:
                    learning += time.perf_counter() - t

            rank.rank_papers = timed_rank  # type: ignore[assignment]
            learn.feedback_adjustments = timed_learn  # type: ignore[assignment]
            event.listen(app.store.engine, "before_cursor_execute", count)
            t0 = time.perf_counter()
            result = app.plan_current_slots()
            elapsed = time.perf_counter() - t0
            rank.rank_papers = real_rank  # type: ignore[assignment]
            learn.feedback_adjustments = real_learn  # type: ignore[assignment]
    print(
        f"{args.subscribers} subscribers: {result.planned} issues planned, {result.empty} empty; "
        f"{statements} SQL statements; {elapsed:.2f} s planning, of which {ranking:.2f} s ranking"
        f" and {learning:.2f} s learning ({args.judged} with {args.judgments} judgments each)"
    )


def _drop_all(url: str) -> None:
    from newsletter.store import Store
    from newsletter.store.schema import Base

    store = Store(url)
    with store.engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    store.close()


if __name__ == "__main__":
    main()
