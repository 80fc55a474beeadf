"""daemon_state and delivery_counters: what the daemon last did, for status and metrics

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

Issue 17 (health, metrics and status): ``daemon_state`` (one row) names the running daemon
(pid, host, since), its heartbeat and the last inbox scan, so that ``newsletter status`` and the
web side's ``/metrics`` (other processes) can show them; ``delivery_counters`` holds the
cumulative counters of every sending process (messages sent, failed by reason class, the
send-time histogram).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemon_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_scan_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemon_state")),
    )
    op.create_table(
        "delivery_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_delivery_counters")),
    )


def downgrade() -> None:
    op.drop_table("delivery_counters")
    op.drop_table("daemon_state")
