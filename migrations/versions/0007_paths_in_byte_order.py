"""Paths compare and sort in byte order on PostgreSQL too (collation "C"), as they do in SQLite.

Under a database's default collation (en_US and the like) punctuation sorts
by language rules, so ``exp/run#2`` fell inside the range ``exp/run/`` ..
``exp/run0`` that finds the rows below a folder, and ``ORDER BY rel_path``
differed from SQLite's. SQLite compares text bytewise already: nothing to do there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, column): every column holding a path below the archive root, or the root itself.
PATH_COLUMNS = (
    ("archives", "root"),
    ("experiments", "rel_path"),
    ("experiments", "namespace"),
    ("folder_digests", "folder"),
    ("export_members", "rel_path"),
    ("modify_journal", "rel_path"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in PATH_COLUMNS:
        op.alter_column(table, column, type_=sa.Text(collation="C"), existing_type=sa.Text())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in PATH_COLUMNS:
        op.alter_column(table, column, type_=sa.Text(), existing_type=sa.Text(collation="C"))
