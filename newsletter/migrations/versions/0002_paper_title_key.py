"""papers.title_key: find the same paper across formats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A paper first seen in a text scrape is keyed by its title; the same paper in a JSON dump or an
arXiv feed carries an arXiv id. ``title_key`` (indexed) lets ingest match the two. Existing
rows are back-filled with the identity function of this release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from newsletter.ingest.identity import title_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a default: SQLite can add that column in place. Altering nullability
    # later would make Alembic's batch mode copy and drop the papers table, which the foreign
    # keys of issue_papers and sent_log refuse.
    op.add_column(
        "papers",
        sa.Column("title_key", sa.String(length=512), nullable=False, server_default=""),
    )
    papers = sa.table(
        "papers",
        sa.column("id", sa.Integer),
        sa.column("title", sa.Text),
        sa.column("title_key", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(papers.c.id, papers.c.title)).all()
    for paper_id, title in rows:
        conn.execute(
            papers.update().where(papers.c.id == paper_id).values(title_key=title_key(title))
        )
    op.create_index(op.f("ix_papers_title_key"), "papers", ["title_key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_papers_title_key"), table_name="papers")
    with op.batch_alter_table("papers") as batch:
        batch.drop_column("title_key")
