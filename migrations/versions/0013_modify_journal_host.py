"""The modify journal records the host each modify ran on.

With one index shared by several hosts, ``archive undo`` lists modifies made
anywhere; the host tells whose was whose. Modifies journaled before this
revision have none (NULL, shown as unknown).

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


def upgrade() -> None:
    # Batch mode: SQLite alters a table by copying it (a no-op wrapper elsewhere).
    with op.batch_alter_table("modify_runs") as batch:
        batch.add_column(sa.Column("host", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("modify_runs") as batch:
        batch.drop_column("host")
