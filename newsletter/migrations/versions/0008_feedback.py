"""feedback: readers' "more / less like this" judgments

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Since issue 15 every paper in an email, archived issue and private feed links to a page whose
button records a judgment (like / dislike) of that paper. One row per (subscriber, paper): a
later judgment replaces the earlier one. The primary key leads with the subscriber, so one
subscriber's judgments, or many subscribers' at once (a ranker reading them in bulk), are an
index range.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("judgment", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_feedback_subscriber_id_subscribers"),
        ),
        sa.ForeignKeyConstraint(
            ["paper_id"], ["papers.id"], name=op.f("fk_feedback_paper_id_papers")
        ),
        sa.PrimaryKeyConstraint("subscriber_id", "paper_id", name=op.f("pk_feedback")),
    )


def downgrade() -> None:
    op.drop_table("feedback")
