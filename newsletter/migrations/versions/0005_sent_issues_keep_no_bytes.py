"""issues: sent issues keep no message bytes or HTML; an index on the slot date

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Since issue 13 a sent issue keeps its papers, scores and reasons (issue_papers) and the sent
log, not a copy of what was emailed: the archive page re-renders it on demand
(newsletter/accounts.py archived_issue_html). This revision drops the bytes that issues sent
before it still hold (on SQLite the file only shrinks after a `VACUUM`; see
docs/PERFORMANCE.md), and indexes issues.slot_date, which retention (prune_issues) and the
slot lookups of planning search by. The bytes are not restored by a downgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    issues = sa.table(
        "issues",
        sa.column("state", sa.String),
        sa.column("html", sa.Text),
        sa.column("message", sa.LargeBinary),
    )
    op.get_bind().execute(
        issues.update()
        .where(
            issues.c.state == "sent",
            sa.or_(issues.c.html.is_not(None), issues.c.message.is_not(None)),
        )
        .values(html=None, message=None)
    )
    op.create_index(op.f("ix_issues_slot_date"), "issues", ["slot_date"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_issues_slot_date"), table_name="issues")
