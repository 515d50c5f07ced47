"""``experiments.prefix``, scan's default group, read off an index; an index of the runs that say running.

``scan`` groups by ``p.get('__PREFIX__', 'unknown')`` unless told otherwise.
It read the value out of ``special_parameters_json`` for every run and sorted
every run's figures for the GROUP BY: at 100,000 runs ~96 ms of a ~0.2 s
command. ``prefix`` holds ``str()`` of the value, as the group's name shows
it, and ``ix_experiments_prefix`` holds it with the figures a group adds up
(outcome, end time, duration, disk use), so the GROUP BY walks one index in
its order (~27 ms). NULL where a run has no ``__PREFIX__``, or its text holds
lone surrogates, which no database stores: such rows are grouped as before.

``ix_experiments_running`` holds the runs whose status says running, which
every command that shows a run's state (scan, overview, info, list...)
reads to judge them: 2 ms at 100,000 runs (5,089 running), against 10-17 ms
for a walk of the whole listing index. A partial index: it costs nothing for
the runs that finished.

The backfill reads the parameter documents in Python, Python's JSON dialect
with the json module, as ``str()`` must see the values pycomex wrote.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# A migration is a snapshot: the rule is spelled out here (pycomex_index.discovery.shown_prefix).
_PREFIX = "__PREFIX__"
_PREFIX_INDEX_COLUMNS = ["archive_id", "prefix", "outcome", "end_time", "duration", "disk_usage"]
_BATCH = 5000


def _shown_prefix(parameters_json: str, needs_python: bool) -> str | None:
    import json

    import orjson

    values = json.loads(parameters_json) if needs_python else orjson.loads(parameters_json)
    if _PREFIX not in values:
        return None
    shown = str(values[_PREFIX])
    try:
        shown.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    return shown


def upgrade() -> None:
    op.add_column("experiments", sa.Column("prefix", sa.Text(), nullable=True))
    connection = op.get_bind()
    # A page of documents at a time, by id: a million of them must not be held at once.
    page = sa.text(
        "SELECT experiment_id, parameters_json, needs_python FROM experiment_fields "
        "WHERE experiment_id > :after ORDER BY experiment_id LIMIT :limit"
    )
    update = sa.text("UPDATE experiments SET prefix = :prefix WHERE id = :id")
    after = -1
    while batch := connection.execute(page, {"after": after, "limit": _BATCH}).fetchall():
        prefixes = [
            {"id": id_, "prefix": prefix}
            for id_, text, needs_python in batch
            if (prefix := _shown_prefix(text, bool(needs_python))) is not None
        ]
        if prefixes:
            connection.execute(update, prefixes)
        after = batch[-1][0]
    op.create_index("ix_experiments_prefix", "experiments", _PREFIX_INDEX_COLUMNS)
    running = sa.text("outcome = 'running'")
    op.create_index(
        "ix_experiments_running",
        "experiments",
        ["archive_id", "outcome", "rel_path", "start_time"],
        sqlite_where=running,
        postgresql_where=running,
    )


def downgrade() -> None:
    op.drop_index("ix_experiments_running", table_name="experiments")
    op.drop_index("ix_experiments_prefix", table_name="experiments")
    # Not a batch (a copy of the table): that would drop the summary triggers of 0005.
    op.drop_column("experiments", "prefix")
