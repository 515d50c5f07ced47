"""Mark documents that only Python's JSON dialect holds exactly, and re-read what earlier revisions stored lossily.

``experiment_fields.needs_python`` is 1 for documents holding NaN, Infinity,
integers beyond 64 bits or lone surrogates: SQLite's JSON functions reject
those (or round the integers), so SQL leaves such rows to Python. Earlier
revisions wrote NaN and Infinity as null, rounded big integers to floats and
kept absurd times in the number columns; experiments whose rows may hold such
a loss are marked changed (``meta_size = -1``), and every folder digest is
cleared, so the first sync after the upgrade reads them again. Everything
else stays as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A migration is a snapshot: the bound is spelled out here (pycomex_index.discovery.SECONDS_LIMIT).
_SECONDS_LIMIT = 253402300800.0
#: (SQLite GLOB, PostgreSQL regular expression): a number in exponent form; a run of 19 digits.
_EXPONENT = ("*[0-9][eE]*", "[0-9][eE]")
_NINETEEN_DIGITS = ("*" + "[0-9]" * 19 + "*", "[0-9]{19}")


def _matches(document: str, pattern: tuple[str, str], dialect: str) -> str:
    glob, regex = pattern
    return f"{document} GLOB '{glob}'" if dialect == "sqlite" else f"{document} ~ '{regex}'"


def _holds_numbers_or_markers(document: str, dialect: str) -> str:
    """True where ``document`` holds NaN or Infinity text, or a number that may have been rounded."""
    return (
        f"({document} LIKE '%NaN%' OR {document} LIKE '%Infinity%' "
        f"OR {_matches(document, _EXPONENT, dialect)} OR {_matches(document, _NINETEEN_DIGITS, dialect)})"
    )


def upgrade() -> None:
    with op.batch_alter_table("experiment_fields") as batch:
        batch.add_column(sa.Column("needs_python", sa.Boolean(), nullable=False, server_default=sa.false()))
    connection = op.get_bind()
    dialect = connection.dialect.name
    # Parameters written as null may have been NaN or Infinity; the summary of nearly every run has
    # "error_type": null, so only its numbers and NaN markers count there.
    parameters_lost = f"(f.parameters_json LIKE '%null%' OR {_holds_numbers_or_markers('f.parameters_json', dialect)})"
    summary_lost = _holds_numbers_or_markers("f.summary_json", dialect)
    connection.execute(
        sa.text(
            "UPDATE experiments SET meta_size = -1 WHERE outcome <> 'error' AND (start_time IS NULL OR "
            f"ABS(start_time) >= {_SECONDS_LIMIT!r} OR ABS(end_time) >= {_SECONDS_LIMIT!r} "
            f"OR ABS(duration) >= {_SECONDS_LIMIT!r} OR id IN (SELECT f.experiment_id FROM experiment_fields f "
            f"WHERE {parameters_lost} OR {summary_lost}))"
        )
    )
    connection.execute(sa.text("UPDATE folder_digests SET digest = NULL"))


def downgrade() -> None:
    with op.batch_alter_table("experiment_fields") as batch:
        batch.drop_column("needs_python")
