"""Folder digests, so a read command's sync compares only the folders that changed.

Every folder that holds indexed experiments gets a row with no digest, so the
first sync after the upgrade compares every row, as before, and fills them in.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "folder_digests",
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_folder_digests_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("archive_id", "folder", name=op.f("pk_folder_digests")),
    )
    connection = op.get_bind()
    folders = {
        (archive_id, rel_path.rpartition("/")[0])
        for archive_id, rel_path in connection.execute(sa.text("SELECT archive_id, rel_path FROM experiments"))
    }
    if folders:
        connection.execute(
            sa.text("INSERT INTO folder_digests (archive_id, folder) VALUES (:archive_id, :folder)"),
            [{"archive_id": archive_id, "folder": folder} for archive_id, folder in folders],
        )


def downgrade() -> None:
    op.drop_table("folder_digests")
