"""Where a running experiment's process runs and its heartbeat, so a killed run shows as interrupted.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Paths compare bytewise on PostgreSQL too (migration 0007).
    path_type = sa.Text(collation="C") if op.get_bind().dialect.name == "postgresql" else sa.Text()
    op.create_table(
        "run_liveness",
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("rel_path", path_type, nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid_namespace", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_started_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_interval", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_run_liveness_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("archive_id", "rel_path", name=op.f("pk_run_liveness")),
    )


def downgrade() -> None:
    op.drop_table("run_liveness")
