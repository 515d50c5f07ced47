"""Alembic environment: always online, on the connection the caller hands over.

Logging is left alone (the CLI owns it) and SQLite gets batch mode, since it
cannot ALTER most of a table in place.
"""

from __future__ import annotations

from alembic import context

from pycomex_index.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
