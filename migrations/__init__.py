"""Alembic migrations of the index, run from code when an index is opened (see ``pycomex_index.store``)."""
