"""bounces: delivery status notifications and complaints, and suppressed subscribers

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Since issue 17 (must-show 4) ``newsletter bounces`` reads delivery status notifications
(RFC 3464) and feedback-loop complaints (RFC 5965), and a 5xx reply to RCPT TO counts as a
hard bounce: one ``bounces`` row per processed report (its own Message-ID unique, so a report
read twice counts once), and on ``subscribers`` why and when a subscriber was suppressed (the
status itself is the new value ``suppressed`` of the existing ``status`` column); an index on
``issues.message_id``, by which a report names the issue that bounced.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("suppressed_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("suppressed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.String(length=255), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("original_message_id", sa.String(length=255), nullable=True),
        sa.Column("matched_by", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name=op.f("fk_bounces_subscriber_id_subscribers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounces")),
        sa.UniqueConstraint("report_id", name=op.f("uq_bounces_report_id")),
    )
    op.create_index(op.f("ix_bounces_subscriber_id"), "bounces", ["subscriber_id"], unique=False)
    op.create_index(op.f("ix_issues_message_id"), "issues", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_issues_message_id"), table_name="issues")
    op.drop_index(op.f("ix_bounces_subscriber_id"), table_name="bounces")
    op.drop_table("bounces")
    op.execute("UPDATE subscribers SET status = 'active' WHERE status = 'suppressed'")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("suppressed_at")
        batch.drop_column("suppressed_reason")
