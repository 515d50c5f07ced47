"""A first build's bulk load into a SQLite file: the rows first, the secondary indexes of ``experiments`` after.

Every row written into an indexed table updates each of its indexes, a
random page of each for most of them; seven indexes made storing the rows
of a first build cost more than reading the files. Built once at the end
from sorted keys, they cost a few seconds at 1,000,000 runs.

Crash safety: the indexes are dropped in one transaction and built again in
one, so an index file holds either all of them or none. While a process
loads without them it holds an exclusive ``flock`` on ``<index>.bulk-load``;
the kernel drops that lock when the process dies, however it dies. Every
open of the index (:func:`mend_interrupted_bulk_load`, called by the store)
checks that the indexes are there; when they are missing and nobody holds
the lock, the load was interrupted and the indexes are built again there and
then. A missing index only slows queries down (SQLite scans instead): no
reader ever sees wrong rows, during the load or after a crash.

The rows keep SQLite's usual durability meanwhile (WAL, ``synchronous =
NORMAL``): ``synchronous = OFF`` would gain little in WAL mode, where a commit
does not wait for the disk anyway, and could leave a damaged file after a
power cut. PostgreSQL keeps its indexes: an index there is shared by the
hosts of a lab, and dropping them would slow every other host's commands for
the whole load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pycomex_index.db import IndexDatabase, SqliteFileDatabase

if TYPE_CHECKING:
    from pycomex_index.store import ArchiveIndex

#: The secondary indexes of ``experiments`` and what follows ``ON experiments`` in their definitions, as the
#: migrations create them (see :class:`pycomex_index.models.Experiment`; a test compares them with a freshly
#: migrated index). The unique index on (archive_id, rel_path) stays: every write finds its row by it.
SECONDARY_INDEXES: dict[str, str] = {
    "ix_experiments_listing": "(archive_id, start_time, rel_path, outcome, duration)",
    "ix_experiments_outcome": "(archive_id, outcome)",
    "ix_experiments_duration": "(archive_id, duration)",
    "ix_experiments_parameter_count": "(archive_id, parameter_count)",
    "ix_experiments_asset_count": "(archive_id, asset_count)",
    "ix_experiments_namespace": "(archive_id, namespace)",
    "ix_experiments_stamps": "(archive_id, rel_path, meta_mtime_ns, meta_size, folder_mtime_ns)",
    "ix_experiments_prefix": "(archive_id, prefix, outcome, end_time, duration, disk_usage)",
    "ix_experiments_running": (
        "(archive_id, outcome, rel_path, start_time, meta_mtime_ns, folder_mtime_ns) WHERE outcome = 'running'"
    ),
}
#: Beside the index file: held (``flock``) by the process loading without indexes.
LOCK_SUFFIX = ".bulk-load"
#: SQLite's page cache during the load (KiB, as ``PRAGMA cache_size`` takes a negative number). A sync stores
#: each folder's runs in path order, so a batch's keys of the unique index on rel_path are neighbours and it
#: touches few pages; the default 2 MB still re-read some, while 64 MB only added to a build's peak memory.
BULK_LOAD_CACHE_KIB = 16384

_COUNT_PRESENT_SQL = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'experiments' AND name IN ("
    + ", ".join(f"'{name}'" for name in SECONDARY_INDEXES)
    + ")"
)


def loading_without_indexes(index: ArchiveIndex) -> contextlib.AbstractContextManager[None]:
    """Drop the secondary indexes for the block and build them after it, where that pays; else do nothing.

    It pays for a first build into a SQLite file whose ``experiments`` table is
    empty (no other archive's rows to index again) and that no other process is
    bulk-loading already (that one builds the indexes when it ends).
    """
    db = index.db
    if not isinstance(db, SqliteFileDatabase) or db.read_only or not os.path.isfile(db.path):
        return contextlib.nullcontext()
    if db.fetch_one("SELECT 1 FROM experiments LIMIT 1") is not None:
        return contextlib.nullcontext()
    lock = _try_lock(db.path)
    if lock is None:
        return contextlib.nullcontext()
    return _without_indexes(db, lock)


@contextlib.contextmanager
def _without_indexes(db: SqliteFileDatabase, lock: int) -> Iterator[None]:
    try:
        db.run_in_transaction(lambda: [db.execute(f"DROP INDEX IF EXISTS {name}") for name in SECONDARY_INDEXES])
        db.execute(f"PRAGMA cache_size = -{BULK_LOAD_CACHE_KIB}")
        try:
            yield
        finally:
            db.execute("PRAGMA cache_size = -2000")  # SQLite's default again: the connection may live on
            build_secondary_indexes(db)
    finally:
        os.close(lock)  # releases the flock


def mend_interrupted_bulk_load(db: IndexDatabase, path: str) -> None:
    """Build the secondary indexes again if a bulk load of the index file at ``path`` died without doing so.

    One query of SQLite's schema table on every open; the lock is only tried when indexes are missing.
    """
    row = db.fetch_one(_COUNT_PRESENT_SQL)
    if row is None or row[0] == len(SECONDARY_INDEXES):
        return
    lock = _try_lock(path)
    if lock is None:
        if os.path.exists(path + LOCK_SUFFIX):
            return  # a live bulk load: it builds them when it ends
        build_secondary_indexes(db)  # no lock file can be made here, so no bulk load ever ran: mend anyway
        return
    try:
        build_secondary_indexes(db)
    finally:
        os.close(lock)


def build_secondary_indexes(db: IndexDatabase) -> None:
    """Create the missing secondary indexes of ``experiments`` in one transaction."""
    statements = [
        f"CREATE INDEX IF NOT EXISTS {name} ON experiments {definition}"
        for name, definition in SECONDARY_INDEXES.items()
    ]
    db.run_in_transaction(lambda: [db.execute(statement) for statement in statements])


def _try_lock(path: str) -> int | None:
    """An open descriptor holding the exclusive flock of ``path``'s bulk-load lock file; None if taken or impossible."""
    import fcntl

    try:
        descriptor = os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor
