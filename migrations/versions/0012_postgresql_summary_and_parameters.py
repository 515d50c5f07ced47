"""PostgreSQL gets what SQLite had: the experiment summary kept by triggers, and the typed parameter values.

On SQLite, triggers keep ``experiment_summary`` current (0005) and the
library fills ``experiment_parameters`` with ``json_each`` as it writes
(0009), so overview/info read a few hundred rows and a ``--select`` on a
parameter is a lookup. On PostgreSQL both stayed empty, and those commands
scanned every row or evaluated every row in Python. Here PL/pgSQL triggers do
the same work there:

- on ``experiments``: add and subtract each row's figures to its summary row
  (the rule of 0005, spelled out again below);
- on ``experiment_fields``: replace the experiment's typed parameter values
  whenever its parameter document is written or removed. The values follow
  SQLite's reading (numbers and booleans as 1/0 in ``number``, strings in
  ``text``; null, lists and objects have no row), with one narrowing: a
  number of magnitude 2**53 or more gets no ``number`` (jsonb does not tell
  1e20 from the integer 100000000000000000000), so SQL leaves it to Python.
  A document in Python's dialect, or holding an escaped NUL (which jsonb
  rejects), has no rows either: Python decides for it, as the pushdown's
  contract says.

Existing PostgreSQL indexes are filled from their rows; SQLite is untouched.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# A migration is a snapshot: the rules are spelled out here, not imported.


def _error_kind(row: str) -> str:
    return (
        f"CASE WHEN {row}outcome = 'error' THEN '(metadata error)' "
        f"WHEN {row}outcome = 'failed' THEN COALESCE({row}error_type, 'Unknown') ELSE '' END"
    )


def _figures(row: str) -> dict[str, str]:
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
_SUMMARY_INPUTS = ("outcome", "namespace", "error_type", "disk_usage", "duration", "parameter_count", "asset_count")

_SUMMARY_FUNCTION = f"""
CREATE FUNCTION pycomex_index_follow_summary() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE experiment_summary SET {", ".join(f"{name} = {name} - ({value})" for name, value in _figures("OLD.").items())}
        WHERE archive_id = OLD.archive_id AND outcome = OLD.outcome AND namespace = OLD.namespace
            AND error_kind = {_error_kind("OLD.")};
        DELETE FROM experiment_summary
        WHERE archive_id = OLD.archive_id AND outcome = OLD.outcome AND namespace = OLD.namespace
            AND error_kind = {_error_kind("OLD.")} AND experiments = 0;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO experiment_summary ({_KEY}, {_SUMS})
        VALUES (NEW.archive_id, NEW.outcome, NEW.namespace, {_error_kind("NEW.")}, {", ".join(_figures("NEW.").values())})
        ON CONFLICT ({_KEY}) DO UPDATE SET
            {", ".join(f"{name} = experiment_summary.{name} + excluded.{name}" for name in _figures(""))};
    END IF;
    RETURN NULL;
END
$$
"""

_CHANGED = " OR ".join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in _SUMMARY_INPUTS)
_SUMMARY_TRIGGERS = (
    "CREATE TRIGGER experiment_summary_after_insert_or_delete AFTER INSERT OR DELETE ON experiments "
    "FOR EACH ROW EXECUTE FUNCTION pycomex_index_follow_summary()",
    # A sync rewrites every column of a changed row; only a change of the summary's inputs moves figures.
    f"CREATE TRIGGER experiment_summary_after_update AFTER UPDATE OF {', '.join(_SUMMARY_INPUTS)} ON experiments "
    f"FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION pycomex_index_follow_summary()",
)
_SUMMARY_FROM_EXPERIMENTS = (
    f"INSERT INTO experiment_summary ({_KEY}, {_SUMS}) "
    f"SELECT archive_id, outcome, namespace, {_error_kind('')}, "
    + ", ".join(f"SUM({value})" for value in _figures("").values())
    + f" FROM experiments GROUP BY archive_id, outcome, namespace, {_error_kind('')}"
)

# Which documents have typed values: not in Python's dialect, a JSON object, no escaped NUL (jsonb rejects it).
# strpos on the escape's six characters may also match an escaped backslash before "u0000": then the
# document merely gets no typed values.
_TYPED = "NOT {row}needs_python AND strpos({row}parameters_json, '\\u0000') = 0 AND {row}parameters_json LIKE '{{%'"
_SCALAR = "jsonb_typeof(j.value) IN ('number', 'boolean', 'string')"
_NUMBER = (
    "CASE jsonb_typeof(j.value) WHEN 'boolean' THEN CASE WHEN j.value = 'true'::jsonb THEN 1.0 ELSE 0.0 END "
    "WHEN 'number' THEN CASE WHEN abs((j.value)::numeric) < 9007199254740992 THEN (j.value)::float8 END END"
)
_TEXT = "CASE WHEN jsonb_typeof(j.value) = 'string' THEN j.value #>> '{}' END"

_PARAMETERS_FUNCTION = f"""
CREATE FUNCTION pycomex_index_follow_parameters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM experiment_parameters WHERE experiment_id = OLD.experiment_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND {_TYPED.format(row="NEW.")} THEN
        INSERT INTO parameter_names (name)
        SELECT j.key FROM jsonb_each(NEW.parameters_json::jsonb) j WHERE {_SCALAR} ORDER BY j.key
        ON CONFLICT (name) DO NOTHING;
        INSERT INTO experiment_parameters (experiment_id, name_id, number, text)
        SELECT NEW.experiment_id, n.id, {_NUMBER}, {_TEXT}
        FROM jsonb_each(NEW.parameters_json::jsonb) j JOIN parameter_names n ON n.name = j.key WHERE {_SCALAR};
    END IF;
    RETURN NULL;
END
$$
"""
_PARAMETERS_TRIGGERS = (
    "CREATE TRIGGER experiment_parameters_after_insert_or_delete AFTER INSERT OR DELETE ON experiment_fields "
    "FOR EACH ROW EXECUTE FUNCTION pycomex_index_follow_parameters()",
    "CREATE TRIGGER experiment_parameters_after_update AFTER UPDATE OF parameters_json, needs_python "
    "ON experiment_fields FOR EACH ROW WHEN (OLD.parameters_json IS DISTINCT FROM NEW.parameters_json "
    "OR OLD.needs_python IS DISTINCT FROM NEW.needs_python) EXECUTE FUNCTION pycomex_index_follow_parameters()",
)
_PARAMETER_NAMES_FROM_FIELDS = (
    "INSERT INTO parameter_names (name) SELECT DISTINCT j.key FROM experiment_fields f, "
    f"jsonb_each(f.parameters_json::jsonb) j WHERE {_TYPED.format(row='f.')} AND {_SCALAR} "
    "ON CONFLICT (name) DO NOTHING"
)
_PARAMETERS_FROM_FIELDS = (
    "INSERT INTO experiment_parameters (experiment_id, name_id, number, text) "
    f"SELECT f.experiment_id, n.id, {_NUMBER}, {_TEXT} FROM experiment_fields f, "
    "jsonb_each(f.parameters_json::jsonb) j JOIN parameter_names n ON n.name = j.key "
    f"WHERE {_TYPED.format(row='f.')} AND {_SCALAR}"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DELETE FROM experiment_summary")
    op.execute(_SUMMARY_FROM_EXPERIMENTS)
    op.execute(_SUMMARY_FUNCTION)
    for statement in _SUMMARY_TRIGGERS:
        op.execute(statement)
    op.execute("DELETE FROM experiment_parameters")
    op.execute(_PARAMETER_NAMES_FROM_FIELDS)
    op.execute(_PARAMETERS_FROM_FIELDS)
    op.execute(_PARAMETERS_FUNCTION)
    for statement in _PARAMETERS_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS experiment_parameters_after_update ON experiment_fields")
    op.execute("DROP TRIGGER IF EXISTS experiment_parameters_after_insert_or_delete ON experiment_fields")
    op.execute("DROP FUNCTION IF EXISTS pycomex_index_follow_parameters()")
    op.execute("DROP TRIGGER IF EXISTS experiment_summary_after_update ON experiments")
    op.execute("DROP TRIGGER IF EXISTS experiment_summary_after_insert_or_delete ON experiments")
    op.execute("DROP FUNCTION IF EXISTS pycomex_index_follow_summary()")
    op.execute("DELETE FROM experiment_parameters")
    op.execute("DELETE FROM experiment_summary")
