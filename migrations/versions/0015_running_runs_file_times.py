"""``ix_experiments_running`` also holds the file times that judging a running run reads.

Judging whether a run whose status says running still runs compares the
times of its folder, metadata and log with the quiet threshold. Where the
index holds the disk's times (right after a sync, or while a watcher keeps
it current) the first two are read from the index instead of two ``stat``
calls a run. Read with the running runs themselves, they must be in the
partial index too, or each of those rows costs a lookup in the table: ~9 ms
at 100,000 runs (5,089 running), against ~5 ms for the whole read.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_RUNNING = "outcome = 'running'"


def _create_running_index(columns: list[str]) -> None:
    running = sa.text(_RUNNING)
    op.create_index("ix_experiments_running", "experiments", columns, sqlite_where=running, postgresql_where=running)


def upgrade() -> None:
    op.drop_index("ix_experiments_running", table_name="experiments")
    _create_running_index(["archive_id", "outcome", "rel_path", "start_time", "meta_mtime_ns", "folder_mtime_ns"])


def downgrade() -> None:
    op.drop_index("ix_experiments_running", table_name="experiments")
    _create_running_index(["archive_id", "outcome", "rel_path", "start_time"])
