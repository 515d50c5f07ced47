"""Exports made by compress, and the journal that lets a modify be undone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("zip_path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("experiment_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_exports_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    op.create_index(op.f("ix_exports_archive_id"), "exports", ["archive_id"])
    op.create_table(
        "export_members",
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("meta_mtime_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"], ["exports.id"], name=op.f("fk_export_members_export_id_exports"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("export_id", "rel_path", name=op.f("pk_export_members")),
    )
    op.create_index("ix_export_members_rel_path", "export_members", ["rel_path"])
    op.create_table(
        "modify_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("parameters_code", sa.Text(), nullable=True),
        sa.Column("metadata_code", sa.Text(), nullable=True),
        sa.Column("undone_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_modify_runs_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_modify_runs")),
    )
    op.create_index(op.f("ix_modify_runs_archive_id"), "modify_runs", ["archive_id"])
    op.create_table(
        "modify_journal",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("previous_content", sa.Text(), nullable=False),
        sa.Column("written_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["modify_runs.id"], name=op.f("fk_modify_journal_run_id_modify_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "rel_path", name=op.f("pk_modify_journal")),
    )


def downgrade() -> None:
    op.drop_table("modify_journal")
    op.drop_index(op.f("ix_modify_runs_archive_id"), table_name="modify_runs")
    op.drop_table("modify_runs")
    op.drop_index("ix_export_members_rel_path", table_name="export_members")
    op.drop_table("export_members")
    op.drop_index(op.f("ix_exports_archive_id"), table_name="exports")
    op.drop_table("exports")
