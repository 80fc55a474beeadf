"""Planning is set-oriented: its SQL statements do not grow with the number of subscribers.

The statements are counted with a SQLAlchemy ``before_cursor_execute`` hook (it fires once per
statement sent to the database, and once per batch of a batched multi-row insert), on SQLite
and PostgreSQL, for 10 and for 1,000 subscribers with the same profile.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.domain import SubscriberSource, SubscriberSpec
from newsletter.store.engine import BATCH
from newsletter.store.schema import IssuePaperRow

from .conftest import NOW, SEEDS
from .factories import sql_statements


def _add_readers(app: Newsletter, first: int, last: int) -> None:
    for n in range(first, last):
        app.store.upsert_subscriber(
            SubscriberSpec(
                email=f"reader{n:05d}@example.org",
                profile='"speech recognition"^2, speech, language',
                max_papers=5,
                min_score=0.0,
            ),
            source=SubscriberSource.CLI,
            now=NOW,
        )


def _paper_rows(app: Newsletter) -> int:
    with app.store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(IssuePaperRow)) or 0)


def test_planning_statements_do_not_grow_with_subscribers(settings: Settings) -> None:
    """10 readers planned on one day, then 1,000 (the same 10 and 990 more) the next day."""
    with Newsletter(settings) as app:
        app.ingest([SEEDS], now=NOW)
        _add_readers(app, 0, 10)
        with sql_statements(app.store) as small:
            first = app.plan_current_slots(NOW)
        rows_small = _paper_rows(app)
        _add_readers(app, 10, 1000)
        with sql_statements(app.store) as large:
            second = app.plan_current_slots(NOW + timedelta(days=1))
        rows_large = _paper_rows(app) - rows_small
    assert (first.planned, second.planned) == (10, 1000)
    assert (rows_small, rows_large) == (10 * 5, 1000 * 5)  # every issue full: 5 papers
    # Beyond the fixed work (read the active subscribers, the slots taken, the candidates,
    # their assignments), the only statements that may grow are the insert batches: one
    # INSERT of issues per BATCH plans, the issue papers in pages of at most 1,000 rows.
    batches_small = math.ceil(10 / BATCH) + math.ceil(rows_small / 1000)
    batches_large = math.ceil(1000 / BATCH) + math.ceil(rows_large / 1000)
    print(f"\nplanning 10 readers: {len(small)} statements; 1,000: {len(large)}")
    assert len(large) - len(small) <= batches_large - batches_small
    # Fixed: the active subscribers' send times (five short columns), then per chunk of
    # PLAN_CHUNK the chunk's subscribers, slots taken, candidates, their assignments and their
    # judgments (a read of its own: BEGIN + SELECT).
    assert len(small) <= 15


def test_planning_twice_plans_nothing_more_in_a_constant_number_of_statements(
    settings: Settings,
) -> None:
    with Newsletter(settings) as app:
        app.ingest([SEEDS], now=NOW)
        for n in range(50):
            app.store.upsert_subscriber(
                SubscriberSpec(email=f"r{n}@example.org", profile="speech", min_score=0.0),
                source=SubscriberSource.CLI,
                now=NOW,
            )
        first = app.plan_current_slots(NOW)
        with sql_statements(app.store) as statements:
            second = app.plan_current_slots(NOW)
    assert (first.planned, first.already) == (50, 0)
    assert (second.planned, second.already) == (0, 50)
    assert len(statements) <= 6  # read the active subscribers, find every slot taken: done
