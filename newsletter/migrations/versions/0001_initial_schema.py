"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 23:23:27.050110
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "digest_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("papers_new", sa.Integer(), nullable=False),
        sa.Column("papers_merged", sa.Integer(), nullable=False),
        sa.Column("digest_date", sa.Date(), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digest_files")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_digest_files_content_hash")),
    )
    op.create_table(
        "papers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("arxiv_id", sa.String(length=32), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("abstract", sa.Text(), nullable=False),
        sa.Column("authors", sa.Text(), nullable=False),
        sa.Column("author_count", sa.Integer(), nullable=True),
        sa.Column("published", sa.Date(), nullable=True),
        sa.Column("upvotes", sa.Integer(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_papers")),
        sa.UniqueConstraint("key", name=op.f("uq_papers_key")),
    )
    with op.batch_alter_table("papers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_papers_arxiv_id"), ["arxiv_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_papers_first_seen_at"), ["first_seen_at"], unique=False
        )

    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("send_at", sa.String(length=5), nullable=False),
        sa.Column("weekdays", sa.String(length=32), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("max_papers", sa.Integer(), nullable=False),
        sa.Column("min_score", sa.Float(), nullable=False),
        sa.Column("send_when_empty", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscribers")),
        sa.UniqueConstraint("email", name=op.f("uq_subscribers_email")),
        sa.UniqueConstraint("token", name=op.f("uq_subscribers_token")),
    )
    op.create_table(
        "issues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("slot_date", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_reply", sa.Text(), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("message", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name=op.f("fk_issues_subscriber_id_subscribers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issues")),
        sa.UniqueConstraint("subscriber_id", "slot_date", name=op.f("uq_issues_subscriber_id")),
    )
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_issues_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_issues_subscriber_id"), ["subscriber_id"], unique=False
        )

    op.create_table(
        "issue_papers",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_issue_papers_issue_id_issues")
        ),
        sa.ForeignKeyConstraint(
            ["paper_id"], ["papers.id"], name=op.f("fk_issue_papers_paper_id_papers")
        ),
        sa.PrimaryKeyConstraint("issue_id", "paper_id", name=op.f("pk_issue_papers")),
    )
    op.create_table(
        "sent_log",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_sent_log_issue_id_issues")
        ),
        sa.ForeignKeyConstraint(
            ["paper_id"], ["papers.id"], name=op.f("fk_sent_log_paper_id_papers")
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_sent_log_subscriber_id_subscribers"),
        ),
        sa.PrimaryKeyConstraint("subscriber_id", "paper_id", name=op.f("pk_sent_log")),
    )
    with op.batch_alter_table("sent_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sent_log_issue_id"), ["issue_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("sent_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sent_log_issue_id"))

    op.drop_table("sent_log")
    op.drop_table("issue_papers")
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_issues_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_issues_state"))

    op.drop_table("issues")
    op.drop_table("subscribers")
    with op.batch_alter_table("papers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_papers_first_seen_at"))
        batch_op.drop_index(batch_op.f("ix_papers_arxiv_id"))

    op.drop_table("papers")
    op.drop_table("digest_files")
