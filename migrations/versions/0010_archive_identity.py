"""An archive is known by an id stored in the archive itself, not by the path it was reached through.

``<archive>/.pycomex_index/archive.json`` holds a random UUID, written once;
``archives.uuid`` finds the archive's row through any mount point, symlink or
bind mount, and ``archive_roots`` records which root each host reaches it at.
Existing rows get their UUID when the archive is next opened (the data step
needs the archive's folder, which a migration does not know). An archive
without archive.json (a read-only one) stays keyed by ``archives.root``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    path_text = sa.Text(collation="C") if op.get_bind().dialect.name == "postgresql" else sa.Text()
    op.add_column("archives", sa.Column("uuid", sa.String(36), nullable=True))
    op.create_index("ix_archives_uuid", "archives", ["uuid"], unique=True)
    op.create_table(
        "archive_roots",
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("root", path_text, nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name="fk_archive_roots_archive_id_archives", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("archive_id", "host", "root", name="pk_archive_roots"),
    )


def downgrade() -> None:
    op.drop_table("archive_roots")
    op.drop_index("ix_archives_uuid", table_name="archives")
    with op.batch_alter_table("archives") as batch:
        batch.drop_column("uuid")
