"""The watcher row becomes a lease: one watcher per archive across hosts, elected through the index.

``process_start`` tells the holder process from a later one with the same
pid (``<ticks since boot>@<boot id>``, "" where unknown); ``lease_expires_at``
is on the database's clock. A row left by an older watcher gets an expired
lease, so any new watcher may take it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("watchers", sa.Column("process_start", sa.Text(), nullable=False, server_default=""))
    op.add_column("watchers", sa.Column("lease_expires_at", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("watchers") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("process_start")
