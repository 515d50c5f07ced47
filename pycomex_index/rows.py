"""The one place that writes experiment rows: sync, the watcher and the write commands all use it.

Every batch is written in rel_path order (folders too), so two processes
writing overlapping batches lock rows in the same order and wait for each
other instead of deadlocking; a deadlock or conflict PostgreSQL still reports
(a watcher batch mixing removals and writes) makes the whole unit of work run
again (:meth:`pycomex_index.db.IndexDatabase.run_in_transaction`).

Every write of an experiment's metadata stamps here also clears the digest of
its folder (see :class:`pycomex_index.models.FolderDigest`), so a stored
digest always describes the rows that are stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

from pycomex_index.db import IndexDatabase, Row
from pycomex_index.discovery import EXACT_FLOAT_INTEGER, EXPERIMENT_COLUMNS, ExperimentRecord, namespace_of

_UPSERT_EXPERIMENT_SQL = (
    f"INSERT INTO experiments (archive_id, {', '.join(EXPERIMENT_COLUMNS)}) "
    f"VALUES (:archive_id, {', '.join(':' + column for column in EXPERIMENT_COLUMNS)}) "
    "ON CONFLICT (archive_id, rel_path) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in EXPERIMENT_COLUMNS[1:])
)

_EXPERIMENT_ID = "SELECT id FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path"
# The WHERE clause also keeps SQLite from reading ON CONFLICT as a join's ON.
_FROM_EXPERIMENT = "FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path"

_UPSERT_FIELDS_SQL = (
    "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json, needs_python) "
    f"SELECT id, :summary_json, :parameters_json, :needs_python {_FROM_EXPERIMENT} "
    "ON CONFLICT (experiment_id) DO UPDATE SET "
    "summary_json = excluded.summary_json, parameters_json = excluded.parameters_json, "
    "needs_python = excluded.needs_python"
)

# An experiment whose metadata became unreadable keeps its row but loses what was read from it.
_DELETE_UNREADABLE_SQL = f"DELETE FROM experiment_fields WHERE experiment_id IN ({_EXPERIMENT_ID})"

#: The JSON types (of SQLite's json_each) that have a row in experiment_parameters (see models.ExperimentParameter).
_SCALAR_TYPES = "('integer', 'real', 'true', 'false', 'text')"
_DELETE_PARAMETERS_SQL = f"DELETE FROM experiment_parameters WHERE experiment_id IN ({_EXPERIMENT_ID})"
_ADD_PARAMETER_NAMES_SQL = (
    "INSERT INTO parameter_names (name) SELECT key FROM json_each(:parameters_json) "
    f"WHERE type IN {_SCALAR_TYPES} ON CONFLICT (name) DO NOTHING"
)
#: json_each's atom is SQLite's own reading of the value: the same json_extract gave the pushdown before.
#: An integer a float cannot hold exactly keeps no number (SQL leaves it to Python).
#: Both bounds, not ABS(): SQLite's ABS(-2**63) raises "integer overflow".
PARAMETER_VALUES_SQL = (
    f"CASE WHEN j.type = 'text' OR (j.type = 'integer' AND "
    f"(j.atom >= {EXACT_FLOAT_INTEGER} OR j.atom <= -{EXACT_FLOAT_INTEGER})) THEN NULL "
    "ELSE j.atom END, CASE WHEN j.type = 'text' THEN j.atom END"
)
_ADD_PARAMETERS_SQL = (
    "INSERT INTO experiment_parameters (experiment_id, name_id, number, text) "
    f"SELECT e.id, n.id, {PARAMETER_VALUES_SQL} "
    "FROM experiments e, json_each(:parameters_json) j JOIN parameter_names n ON n.name = j.key "
    f"WHERE e.archive_id = :archive_id AND e.rel_path = :rel_path AND j.type IN {_SCALAR_TYPES}"
)


_CLEAR_FOLDER_DIGEST_SQL = (
    "INSERT INTO folder_digests (archive_id, folder, digest) VALUES (:archive_id, :folder, NULL) "
    "ON CONFLICT (archive_id, folder) DO UPDATE SET digest = NULL"
)


def _clear_folder_digests(db: IndexDatabase, archive_id: int, rel_paths: Iterable[str]) -> None:
    folders = sorted({namespace_of(rel_path) for rel_path in rel_paths})  # a set's order differs per process
    db.executemany(_CLEAR_FOLDER_DIGEST_SQL, [{"archive_id": archive_id, "folder": folder} for folder in folders])


_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(ExperimentRecord))


def store_records(db: IndexDatabase, archive_id: int, records: Iterable[ExperimentRecord]) -> int:
    """Insert or replace the rows of these experiments in one transaction; returns how many."""
    # Not dataclasses.asdict: it deep-copies every value, which was a third of a first build.
    fields = _RECORD_FIELDS
    rows = []
    for record in records:
        row = {field: getattr(record, field) for field in fields}
        row["archive_id"] = archive_id
        rows.append(row)
    if not rows:
        return 0
    rows.sort(key=_by_rel_path)
    readable = [row for row in rows if row["read_error"] is None]
    unreadable = [row for row in rows if row["read_error"] is not None]

    def write() -> None:
        db.executemany(_UPSERT_EXPERIMENT_SQL, rows)
        db.executemany(_UPSERT_FIELDS_SQL, readable)
        db.executemany(_DELETE_UNREADABLE_SQL, unreadable)
        _store_typed_parameters(db, rows, readable)
        _clear_folder_digests(db, archive_id, (row["rel_path"] for row in rows))

    db.run_in_transaction(write)
    return len(rows)


def _store_typed_parameters(db: IndexDatabase, rows: list[dict], readable: list[dict]) -> None:
    """Replace the rows' experiment_parameters; SQLite only (json_each), and not for Python's dialect."""
    if not db.url.startswith("sqlite"):
        return
    db.executemany(_DELETE_PARAMETERS_SQL, rows)
    typed = [row for row in readable if not row["needs_python"]]
    db.executemany(_ADD_PARAMETER_NAMES_SQL, typed)
    db.executemany(_ADD_PARAMETERS_SQL, typed)


def _by_rel_path(row: dict) -> str:
    return row["rel_path"]


def update_assets(db: IndexDatabase, archive_id: int, changes: Sequence[tuple[str, int, int, int]]) -> None:
    """Record new asset counts and disk usage: ``(rel_path, asset_count, disk_usage, folder_mtime_ns)``."""
    if not changes:
        return
    db.run_in_transaction(
        lambda: db.executemany(
            "UPDATE experiments SET asset_count = :asset_count, disk_usage = :disk_usage, "
            "folder_mtime_ns = :folder_mtime_ns WHERE archive_id = :archive_id AND rel_path = :rel_path",
            [
                {
                    "archive_id": archive_id,
                    "rel_path": rel_path,
                    "asset_count": asset_count,
                    "disk_usage": disk_usage,
                    "folder_mtime_ns": folder_mtime_ns,
                }
                for rel_path, asset_count, disk_usage, folder_mtime_ns in sorted(changes)
            ],
        )
    )


def remove_experiments(db: IndexDatabase, archive_id: int, rel_paths: Iterable[str]) -> int:
    """Drop these experiments (and, by cascade, their documents) from the index."""
    ordered = sorted(rel_paths)
    rows = [{"archive_id": archive_id, "rel_path": rel_path} for rel_path in ordered]
    if not rows:
        return 0

    def write() -> None:
        db.executemany("DELETE FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path", rows)
        _clear_folder_digests(db, archive_id, ordered)

    db.run_in_transaction(write)
    return len(rows)


# Rows below a folder: a range in byte order, which the unique index on (archive_id, rel_path) serves on
# both backends (PostgreSQL, 2,000 of 10,000 rows: an index-only scan in 0.6 ms, against a sequential scan
# in 13 ms for the substr() test this replaced). Byte order only: under en_US, say, which all but ignores
# the '/', "exp/run#2" falls inside "exp/run/" .. "exp/run0". So on PostgreSQL the comparison names
# collation "C" itself, whatever the column's or the database's; the column is "C" since migration 0007,
# so its index is "C" and serves the range. SQLite compares rel_path bytewise (BINARY, its only collation
# for it) and knows no "C".
_BELOW_FOLDER = 'rel_path COLLATE "C" > :prefix AND rel_path COLLATE "C" < :past'
_BELOW_FOLDER_SQLITE = "rel_path > :prefix AND rel_path < :past"


def rows_below(db: IndexDatabase, archive_id: int, folder: str, columns: str = "rel_path") -> Iterator[Row]:
    """The ``columns`` of every experiment below ``folder`` (at any depth; every one for ``""``)."""
    query = f"SELECT {columns} FROM experiments WHERE archive_id = :archive_id"
    if not folder:
        return db.execute(query, {"archive_id": archive_id})
    below = _BELOW_FOLDER_SQLITE if db.url.startswith("sqlite") else _BELOW_FOLDER
    # '0' follows '/' in byte order: "folder/" < every path below the folder < "folder0", and no other path lies
    # between ("folder#2" and "folder+lr" sort before "folder/"; "folder0", "folderA" from "folder0" on).
    return db.execute(f"{query} AND {below}", {"archive_id": archive_id, "prefix": folder + "/", "past": folder + "0"})
