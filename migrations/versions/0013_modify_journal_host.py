"""The modify journal records the host each modify ran on; PostgreSQL's listing index sorts NULLs first.

With one index shared by several hosts, ``archive undo`` lists modifies made
anywhere; the host tells whose was whose. Modifies journaled before this
revision have none (NULL).

``list`` orders by ``start_time NULLS FIRST`` and ``tail`` by ``start_time
DESC NULLS LAST`` (SQLite's order, where NULL is the smallest value). A
PostgreSQL index sorts NULLs last by default, so ``ix_experiments_listing``
served neither: every list and tail sorted all rows (measured at 100,000
runs: 100-140 ms of a 0.15-0.25 s command with the daemon running). Built
with NULLs first, it serves both, forwards and backwards, as on SQLite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


LISTING_COLUMNS = ["archive_id", "start_time", "rel_path", "outcome", "duration"]


def upgrade() -> None:
    # Batch mode: SQLite alters a table by copying it (a no-op wrapper elsewhere).
    with op.batch_alter_table("modify_runs") as batch:
        batch.add_column(sa.Column("host", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_experiments_listing", table_name="experiments")
        columns = [sa.text("start_time NULLS FIRST") if name == "start_time" else name for name in LISTING_COLUMNS]
        op.create_index("ix_experiments_listing", "experiments", columns)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_experiments_listing", table_name="experiments")
        op.create_index("ix_experiments_listing", "experiments", LISTING_COLUMNS)
    with op.batch_alter_table("modify_runs") as batch:
        batch.drop_column("host")
