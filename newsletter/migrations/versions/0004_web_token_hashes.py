"""subscribers: token lookup hashes and double opt-in confirmation for the web side

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

The web side looks subscribers up by the SHA-256 of a token (token_hash, feed_token_hash) so
that no SQL comparison ever runs against the secret itself; existing rows get their hashes
here, new ones from the mapper events in newsletter/store/schema.py. confirm_token_hash and
confirm_sent_at hold the pending double opt-in of a web subscription. All columns are nullable
and added in place (no batch copy of a table other tables reference).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEXED = ("token_hash", "feed_token_hash", "confirm_token_hash")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def upgrade() -> None:
    for name in _INDEXED:
        op.add_column("subscribers", sa.Column(name, sa.String(length=64), nullable=True))
    op.add_column(
        "subscribers", sa.Column("confirm_sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    subscribers = sa.table(
        "subscribers",
        sa.column("id", sa.Integer),
        sa.column("token", sa.String),
        sa.column("feed_token", sa.String),
        sa.column("token_hash", sa.String),
        sa.column("feed_token_hash", sa.String),
    )
    conn = op.get_bind()
    found = conn.execute(
        sa.select(subscribers.c.id, subscribers.c.token, subscribers.c.feed_token)
    ).all()
    for subscriber_id, token, feed_token in found:
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == subscriber_id)
            .values(
                token_hash=_digest(token) if token else None,
                feed_token_hash=_digest(feed_token) if feed_token else None,
            )
        )
    for name in _INDEXED:
        op.create_index(op.f(f"ix_subscribers_{name}"), "subscribers", [name], unique=True)


def downgrade() -> None:
    for name in _INDEXED:
        op.drop_index(op.f(f"ix_subscribers_{name}"), table_name="subscribers")
    with op.batch_alter_table("subscribers") as batch:
        for name in (*_INDEXED, "confirm_sent_at"):
            batch.drop_column(name)
