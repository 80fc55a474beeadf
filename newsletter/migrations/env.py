"""Alembic environment: run by ``newsletter db upgrade`` (and on first run).

The engine comes from :func:`newsletter.store.migrate` through ``config.attributes``, so
there is no alembic.ini to keep in sync with the settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from newsletter.store.schema import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs plain `alembic`
    raise SystemExit("run migrations with `newsletter db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
