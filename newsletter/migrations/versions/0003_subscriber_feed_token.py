"""subscribers.feed_token: a separate secret for the private feed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Feed URLs get pasted into aggregators and shared; the token in them must not also be the one
that unsubscribes the subscriber or edits their preferences. Existing subscribers get a fresh
random feed token (their old feed URL stops working, and the next run writes the new files).
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a default, then a unique index: both in place on SQLite (no table copy).
    op.add_column(
        "subscribers",
        sa.Column("feed_token", sa.String(length=64), nullable=False, server_default=""),
    )
    subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("feed_token"))
    conn = op.get_bind()
    for (subscriber_id,) in conn.execute(sa.select(subscribers.c.id)).all():
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == subscriber_id)
            .values(feed_token=secrets.token_urlsafe(24))
        )
    op.create_index(op.f("ix_subscribers_feed_token"), "subscribers", ["feed_token"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_subscribers_feed_token"), table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("feed_token")
