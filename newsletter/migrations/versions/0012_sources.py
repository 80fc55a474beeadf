"""source_health and stale_alerts: fetching papers ourselves

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26

Issue 18 (fetch the papers, say why there is no email): ``source_health`` holds one row per
configured source (its conditional-GET validators, last success, last error, failures in a
row, last new paper) for ``newsletter fetch``, the daemon and ``status``; ``stale_alerts`` (one
row) when the "no new papers" alert was last emailed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_health",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("etag", sa.String(length=1024), nullable=True),
        sa.Column("last_modified", sa.String(length=128), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_new_paper_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_source_health")),
    )
    op.create_table(
        "stale_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stale_alerts")),
    )


def downgrade() -> None:
    op.drop_table("stale_alerts")
    op.drop_table("source_health")
