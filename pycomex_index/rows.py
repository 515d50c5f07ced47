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

from typing import Iterable, Sequence

from pycomex_index.db import IndexDatabase
from pycomex_index.discovery import ExperimentRecord, namespace_of

_EXPERIMENT_COLUMNS = (
    "rel_path",
    "namespace",
    "name",
    "outcome",
    "status",
    "has_error",
    "error_type",
    "start_time",
    "end_time",
    "duration",
    "parameter_count",
    "asset_count",
    "disk_usage",
    "meta_mtime_ns",
    "meta_size",
    "folder_mtime_ns",
    "read_error",
)

_UPSERT_EXPERIMENT_SQL = (
    f"INSERT INTO experiments (archive_id, {', '.join(_EXPERIMENT_COLUMNS)}) "
    f"VALUES (:archive_id, {', '.join(':' + column for column in _EXPERIMENT_COLUMNS)}) "
    "ON CONFLICT (archive_id, rel_path) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _EXPERIMENT_COLUMNS[1:])
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


_CLEAR_FOLDER_DIGEST_SQL = (
    "INSERT INTO folder_digests (archive_id, folder, digest) VALUES (:archive_id, :folder, NULL) "
    "ON CONFLICT (archive_id, folder) DO UPDATE SET digest = NULL"
)


def _clear_folder_digests(db: IndexDatabase, archive_id: int, rel_paths: Iterable[str]) -> None:
    folders = sorted({namespace_of(rel_path) for rel_path in rel_paths})  # a set's order differs per process
    db.executemany(_CLEAR_FOLDER_DIGEST_SQL, [{"archive_id": archive_id, "folder": folder} for folder in folders])


def store_records(db: IndexDatabase, archive_id: int, records: Iterable[ExperimentRecord]) -> int:
    """Insert or replace the rows of these experiments in one transaction; returns how many."""
    # Not dataclasses.asdict: it deep-copies every value, which was a third of a first build.
    fields = ExperimentRecord.__slots__
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
        _clear_folder_digests(db, archive_id, (row["rel_path"] for row in rows))

    db.run_in_transaction(write)
    return len(rows)


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
    rows = [{"archive_id": archive_id, "rel_path": rel_path} for rel_path in sorted(rel_paths)]
    if not rows:
        return 0

    def write() -> None:
        db.executemany("DELETE FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path", rows)
        _clear_folder_digests(db, archive_id, (row["rel_path"] for row in rows))

    db.run_in_transaction(write)
    return len(rows)
