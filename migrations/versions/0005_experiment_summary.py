"""A summary of the experiments that SQLite keeps current, so overview and info need no full scan.

``experiment_summary`` has one row per (outcome, namespace, error kind) with
counts and sums; triggers on ``experiments`` add and subtract every change.
The extremes (first and last start, longest run, fewest and most parameters
and assets) come from indexes instead, since a minimum cannot be subtracted.
Only SQLite gets the triggers; other databases compute the figures directly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# A migration is a snapshot: this SQL is spelled out here, not imported, so later code cannot change it.


def _error_kind(row: str) -> str:
    """How overview counts an experiment among the errors (the same rule as its error table)."""
    return (
        f"CASE WHEN {row}outcome = 'error' THEN '(metadata error)' "
        f"WHEN {row}outcome = 'failed' THEN COALESCE({row}error_type, 'Unknown') ELSE '' END"
    )


def _figures(row: str) -> dict[str, str]:
    """What one experiment row adds to each sum of its summary row."""
    return {
        "experiments": "1",
        "disk_usage": f"{row}disk_usage",
        "duration_sum": f"CASE WHEN {row}duration > 0 THEN {row}duration ELSE 0 END",
        "duration_count": f"CASE WHEN {row}duration > 0 THEN 1 ELSE 0 END",
        "parameter_sum": f"COALESCE({row}parameter_count, 0)",
        "parameter_known": f"CASE WHEN {row}parameter_count IS NULL THEN 0 ELSE 1 END",
        "asset_sum": f"{row}asset_count",
    }


_KEY = "archive_id, outcome, namespace, error_kind"
_SUMS = ", ".join(_figures(""))


def _add(row: str) -> str:
    figures = _figures(row)
    return (
        f"INSERT INTO experiment_summary ({_KEY}, {_SUMS}) "
        f"SELECT {row}archive_id, {row}outcome, {row}namespace, {_error_kind(row)}, {', '.join(figures.values())} "
        # "WHERE true" keeps SQLite from reading ON CONFLICT as the join constraint of the SELECT.
        f"WHERE true ON CONFLICT ({_KEY}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in figures)
        + ";"
    )


def _subtract(row: str) -> str:
    key = (
        f"archive_id = {row}archive_id AND outcome = {row}outcome AND namespace = {row}namespace "
        f"AND error_kind = {_error_kind(row)}"
    )
    return (
        "UPDATE experiment_summary SET "
        + ", ".join(f"{name} = {name} - ({value})" for name, value in _figures(row).items())
        + f" WHERE {key}; DELETE FROM experiment_summary WHERE {key} AND experiments = 0;"
    )


# Columns whose change moves an experiment between summary rows or changes a sum.
_SUMMARY_INPUTS = "outcome, namespace, error_type, disk_usage, duration, parameter_count, asset_count"
_TRIGGERS = (
    f"CREATE TRIGGER experiment_summary_after_insert AFTER INSERT ON experiments BEGIN {_add('NEW.')} END",
    f"CREATE TRIGGER experiment_summary_after_delete AFTER DELETE ON experiments BEGIN {_subtract('OLD.')} END",
    f"CREATE TRIGGER experiment_summary_after_update AFTER UPDATE OF {_SUMMARY_INPUTS} ON experiments "
    f"BEGIN {_subtract('OLD.')} {_add('NEW.')} END",
)
_SUMMARY_FROM_EXPERIMENTS = (
    f"INSERT INTO experiment_summary ({_KEY}, {_SUMS}) "
    f"SELECT archive_id, outcome, namespace, {_error_kind('')}, "
    + ", ".join(f"SUM({value})" for value in _figures("").values())
    + f" FROM experiments GROUP BY archive_id, outcome, namespace, {_error_kind('')}"
)


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_summary",
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("error_kind", sa.Text(), nullable=False),
        sa.Column("experiments", sa.Integer(), nullable=False),
        sa.Column("disk_usage", sa.BigInteger(), nullable=False),
        sa.Column("duration_sum", sa.Float(), nullable=False),
        sa.Column("duration_count", sa.Integer(), nullable=False),
        sa.Column("parameter_sum", sa.BigInteger(), nullable=False),
        sa.Column("parameter_known", sa.Integer(), nullable=False),
        sa.Column("asset_sum", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["archive_id"], ["archives.id"], name=op.f("fk_experiment_summary_archive_id_archives"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("archive_id", "outcome", "namespace", "error_kind", name=op.f("pk_experiment_summary")),
    )
    op.create_index("ix_experiments_duration", "experiments", ["archive_id", "duration"])
    op.create_index("ix_experiments_parameter_count", "experiments", ["archive_id", "parameter_count"])
    op.create_index("ix_experiments_asset_count", "experiments", ["archive_id", "asset_count"])
    # The overview reads the summary now; the wide covering index only served its full scan.
    op.drop_index("ix_experiments_outcome", table_name="experiments")
    op.create_index("ix_experiments_outcome", "experiments", ["archive_id", "outcome"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_SUMMARY_FROM_EXPERIMENTS)
        for statement in _TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS experiment_summary_after_{name}")
    op.drop_index("ix_experiments_outcome", table_name="experiments")
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
    op.drop_index("ix_experiments_asset_count", table_name="experiments")
    op.drop_index("ix_experiments_parameter_count", table_name="experiments")
    op.drop_index("ix_experiments_duration", table_name="experiments")
    op.drop_table("experiment_summary")
