"""Parameters where SQL reads them fast: pycomex's own on ``experiments``, typed values in a table of their own.

``experiments.special_parameters_json`` holds pycomex's ``__NAME__``
parameters (``__PREFIX__``, ``__DEBUG__``...) as a small JSON object, so
``scan``'s default grouping needs neither a join nor a parse of the whole
parameter document. ``experiment_parameters`` (names in ``parameter_names``)
holds every scalar parameter value typed, so a ``--select`` on a parameter is
a lookup instead of a ``json_extract`` per row. Both are NULL / empty for
documents in Python's JSON dialect (NaN, big integers...), which stay Python's.

The backfill of the special parameters is done in Python: building the JSON
in SQL would let SQLite re-render floats, which may change their value. The
typed values are SQLite's own reading of the documents (``json_each``), which
is what the pushdown compared before; on PostgreSQL the table stays empty, as
its pushdown does not read parameters.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# A migration is a snapshot: the rules are spelled out here (pycomex_index.discovery.is_special_parameter,
# pycomex_index.rows.PARAMETER_VALUES_SQL).
_SCALAR_TYPES = "('integer', 'real', 'true', 'false', 'text')"
_VALUES = (
    "CASE WHEN j.type = 'text' OR (j.type = 'integer' AND (j.atom >= 9007199254740992 OR j.atom <= -9007199254740992)) THEN NULL "
    "ELSE j.atom END, CASE WHEN j.type = 'text' THEN j.atom END"
)
_BATCH = 5000


def _is_special(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _special_json(parameters_json: str) -> str:
    import orjson

    # The documents not in Python's dialect were written by orjson; read and written again the same way.
    values = orjson.loads(parameters_json)
    return orjson.dumps({name: value for name, value in values.items() if _is_special(name)}).decode()


def upgrade() -> None:
    op.add_column("experiments", sa.Column("special_parameters_json", sa.Text(), nullable=True))
    op.create_table(
        "parameter_names",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parameter_names")),
        sa.UniqueConstraint("name", name=op.f("uq_parameter_names_name")),
    )
    op.create_table(
        "experiment_parameters",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("name_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_parameters_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["name_id"], ["parameter_names.id"], name=op.f("fk_experiment_parameters_name_id_parameter_names")
        ),
        sa.PrimaryKeyConstraint("experiment_id", "name_id", name=op.f("pk_experiment_parameters")),
        sqlite_with_rowid=False,
    )
    connection = op.get_bind()
    # A page of documents at a time, by id: a million of them (~0.5 KB each) must not be held at once.
    page = sa.text(
        "SELECT f.experiment_id, f.parameters_json FROM experiment_fields f "
        "WHERE f.experiment_id > :after AND NOT f.needs_python AND f.parameters_json IS NOT NULL "
        "ORDER BY f.experiment_id LIMIT :limit"
    )
    update = sa.text("UPDATE experiments SET special_parameters_json = :special WHERE id = :id")
    after = -1
    while batch := connection.execute(page, {"after": after, "limit": _BATCH}).fetchall():
        connection.execute(update, [{"id": id_, "special": _special_json(text)} for id_, text in batch])
        after = batch[-1][0]
    if connection.dialect.name == "sqlite":
        connection.execute(
            sa.text(
                "INSERT INTO parameter_names (name) SELECT DISTINCT j.key FROM experiment_fields f, "
                f"json_each(f.parameters_json) j WHERE f.needs_python = 0 AND j.type IN {_SCALAR_TYPES}"
            )
        )
        connection.execute(
            sa.text(
                f"INSERT INTO experiment_parameters (experiment_id, name_id, number, text) "
                f"SELECT f.experiment_id, n.id, {_VALUES} FROM experiment_fields f, json_each(f.parameters_json) j "
                f"JOIN parameter_names n ON n.name = j.key WHERE f.needs_python = 0 AND j.type IN {_SCALAR_TYPES}"
            )
        )


def downgrade() -> None:
    op.drop_table("experiment_parameters")
    op.drop_table("parameter_names")
    # Not a batch (a copy of the table): that would drop the summary triggers of 0005.
    op.drop_column("experiments", "special_parameters_json")
