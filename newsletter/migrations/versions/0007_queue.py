"""issues.queued_at and delivery_settings: delivery by Celery workers

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

Since issue 14 the scheduler can hand issues to Celery workers (queue.broker_url). An issue
records when its task was last handed to the broker (``queued_at``), so a pass enqueues each
due issue once and re-enqueues only what the broker lost; the scheduler publishes the delivery
settings (site, mail, SMTP without the password) in ``delivery_settings`` so that a worker on
another machine needs nothing but the database and broker URLs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "delivery_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_settings")),
    )


def downgrade() -> None:
    op.drop_table("delivery_settings")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("queued_at")
