"""The first schema: archives, experiments (narrow, hot columns) and the fields selections read.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_sync_at", sa.Float(), nullable=True),
        sa.Column("last_sync_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archives")),
        sa.UniqueConstraint("root", name=op.f("uq_archives_root")),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("has_error", sa.Boolean(), nullable=True),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("start_time", sa.Float(), nullable=True),
        sa.Column("end_time", sa.Float(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("parameter_count", sa.Integer(), nullable=True),
        sa.Column("asset_count", sa.Integer(), nullable=False),
        sa.Column("disk_usage", sa.BigInteger(), nullable=False),
        sa.Column("meta_mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("meta_size", sa.BigInteger(), nullable=False),
        sa.Column("folder_mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("read_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_experiments_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("archive_id", "rel_path", name=op.f("uq_experiments_archive_id")),
    )
    op.create_index(
        "ix_experiments_listing",
        "experiments",
        ["archive_id", "start_time", "rel_path", "outcome", "duration"],
    )
    op.create_index(
        "ix_experiments_outcome",
        "experiments",
        [
            "archive_id",
            "outcome",
            "error_type",
            "start_time",
            "duration",
            "parameter_count",
            "asset_count",
            "disk_usage",
        ],
    )
    op.create_index("ix_experiments_namespace", "experiments", ["archive_id", "namespace"])
    op.create_index(
        "ix_experiments_stamps",
        "experiments",
        ["archive_id", "rel_path", "meta_mtime_ns", "meta_size", "folder_mtime_ns"],
    )
    op.create_table(
        "experiment_fields",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("summary_json", sa.Text(), nullable=False),
        sa.Column("parameters_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_fields_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", name=op.f("pk_experiment_fields")),
    )


def downgrade() -> None:
    op.drop_table("experiment_fields")
    op.drop_index("ix_experiments_stamps", table_name="experiments")
    op.drop_index("ix_experiments_namespace", table_name="experiments")
    op.drop_index("ix_experiments_outcome", table_name="experiments")
    op.drop_index("ix_experiments_listing", table_name="experiments")
    op.drop_table("experiments")
    op.drop_table("archives")
