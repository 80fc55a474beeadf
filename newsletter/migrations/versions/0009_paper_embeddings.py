"""paper_embeddings: stored sentence embeddings for the optional semantic matching

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Since issue 15 (must-show 5) a deployment with ``[semantic] enabled = true`` embeds each paper
once, at ingest, and ranks with those vectors at every planning: one row per paper with the
model that computed it, the number of dimensions and the float32 values (unit length). Without
the semantic extra the table stays empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paper_embeddings",
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=500), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["paper_id"], ["papers.id"], name=op.f("fk_paper_embeddings_paper_id_papers")
        ),
        sa.PrimaryKeyConstraint("paper_id", name=op.f("pk_paper_embeddings")),
    )


def downgrade() -> None:
    op.drop_table("paper_embeddings")
