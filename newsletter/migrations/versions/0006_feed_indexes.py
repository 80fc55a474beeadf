"""issues: an index on sent_at, for feeds that hold a window of history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Since issue 13 a private feed holds the papers of the issues sent in the last
``feeds.global_days`` days, and a feed run asks, for all subscribers at once, which of them had
an issue sent in that window (newsletter/store/issues.py subscriber_feed_versions). Both search
issues by sent_at; without an index that is a scan of every issue ever sent. (papers.first_seen_at,
which the global feed's window searches, is indexed since 0001.)
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_issues_sent_at"), "issues", ["sent_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_issues_sent_at"), table_name="issues")
