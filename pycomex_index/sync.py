"""Reconciling the index with the disk.

A sync walks the archive (stat calls only), compares each experiment's
experiment_meta.json mtime_ns and size with the index, and re-reads only new
or changed files; a folder whose own mtime changed (an asset added or
removed) only gets its assets re-measured; experiments that vanished are
dropped. Work is written in batches, so memory stays flat on any archive size
and an interrupted sync keeps what it already stored.

The sync of a read command (no asset check) first compares a digest of each
folder's stamps with the one stored for it, and loads the stored rows only of
folders whose digest differs: on an unchanged archive that skips loading and
comparing every row, a third of the cost of a command.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from pycomex_index.db import IndexDatabase
from pycomex_index.discovery import (
    ExperimentRecord,
    FolderStat,
    iter_folder_listings,
    listing_digest,
    measure_assets,
    read_experiment,
    stat_experiment_folder,
)
from pycomex_index.errors import IndexDamagedError, IndexReadOnlyError
from pycomex_index.heartbeat import has_fresh_watcher
from pycomex_index.paths import experiment_folder
from pycomex_index.rows import remove_experiments, rows_below, store_records, update_assets
from pycomex_index.store import ArchiveIndex, open_archive_index, recover_damaged_index

#: ``on_progress(done, total)`` is called while files are read; total is known before the first call.
ProgressCallback = Callable[[int, int], None]

#: Records per transaction: large enough to amortise the commit, small enough to keep memory flat.
#: A first build of 100,000 took 50 s with 500, 28 s with 5,000 (warm cache): each commit writes every
#: index page its rows touched, so bigger batches write each page fewer times (1.8 GB -> 0.55 GB).
BATCH_SIZE = 5000


@dataclass
class SyncReport:
    """What one sync changed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    assets_refreshed: int = 0
    unchanged: int = 0
    unreadable: int = 0
    seconds: float = 0.0
    #: Of ``seconds``, how long the walk took: checking every folder's stamps, before any file is read.
    walk_seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.added + self.updated + self.removed + self.assets_refreshed


def sync_archive(
    index: ArchiveIndex,
    *,
    rebuild: bool = False,
    check_assets: bool = True,
    on_progress: ProgressCallback | None = None,
) -> SyncReport:
    """Make the index equal to the disk; ``rebuild`` re-reads every experiment, changed or not.

    ``check_assets=False`` trusts the asset figures of experiments whose
    metadata did not change, which saves one stat per experiment (see
    :func:`refresh_index`).
    """
    started = time.perf_counter()
    db, archive_id, root = index.db, index.archive_id, index.root
    report = SyncReport()
    stored_digests = _stored_digests(db, archive_id)
    # Digests cover the metadata stamps only, so a sync that checks assets compares every row; and
    # loading one folder's rows relies on SQLite's binary ordering of rel_path (see _stamps).
    trust_digests = not (rebuild or check_assets) and db.url.startswith("sqlite")
    # rel_path -> (rel_path, meta_mtime_ns, meta_size, folder_mtime_ns): the same shape as a FolderStat.
    known_everywhere = None if trust_digests else _stamps(db, archive_id)
    walked_digests = {}
    to_read = []
    to_measure = []
    to_remove = []
    unchanged = 0
    for listing in iter_folder_listings(root, folder_times=check_assets):
        if not listing.experiments:
            continue
        digest = walked_digests[listing.rel_dir] = listing_digest(listing.experiments)
        if trust_digests:
            if stored_digests.get(listing.rel_dir) == digest:
                unchanged += len(listing.experiments)
                continue
            known = _stamps(db, archive_id, folder=listing.rel_dir)
        else:
            known = known_everywhere
        for folder in listing.experiments:
            stored = known.pop(folder.rel_path, None)
            # Re-read on rebuild too, but never empty the index first: a concurrent reader keeps seeing the archive.
            if rebuild or stored is None or stored[1] != folder[1] or stored[2] != folder[2]:
                to_read.append((folder, stored is None))
            elif check_assets and stored[3] != folder[3]:
                to_measure.append(folder)
            else:
                unchanged += 1
        if trust_digests:
            to_remove.extend(known)
    if trust_digests:
        for folder in stored_digests.keys() - walked_digests.keys():
            to_remove.extend(_stamps(db, archive_id, folder=folder))
    else:
        to_remove.extend(known_everywhere)
    report.unchanged = unchanged
    report.walk_seconds = time.perf_counter() - started
    del known_everywhere

    report.removed = _remove_verified(db, archive_id, root, to_remove)
    del to_remove

    total = len(to_read) + len(to_measure)
    done = 0
    for start in range(0, len(to_read), BATCH_SIZE):
        batch = [read_experiment(root, folder) for folder, _ in to_read[start : start + BATCH_SIZE]]
        db.run_in_transaction(lambda batch=batch: _store_verified(db, archive_id, root, batch))  # type: ignore[misc]
        for (folder, is_new), record in zip(to_read[start : start + BATCH_SIZE], batch):
            if is_new:
                report.added += 1
            else:
                report.updated += 1
            if record.read_error:
                report.unreadable += 1
        done += len(batch)
        if on_progress:
            on_progress(done, total)
    for start in range(0, len(to_measure), BATCH_SIZE):
        batch = to_measure[start : start + BATCH_SIZE]
        update_assets(
            db,
            archive_id,
            [
                (folder.rel_path, *measure_assets(experiment_folder(root, folder.rel_path)), folder.folder_mtime_ns)
                for folder in batch
            ],
        )
        report.assets_refreshed += len(batch)
        done += len(batch)
        if on_progress:
            on_progress(done, total)

    report.seconds = time.perf_counter() - started

    def finish() -> None:
        _save_digests(db, archive_id, walked_digests)
        db.execute(
            "UPDATE archives SET last_sync_at = :now, last_sync_seconds = :seconds WHERE id = :archive_id",
            {"now": time.time(), "seconds": report.seconds, "archive_id": archive_id},
        )

    db.run_in_transaction(finish)
    return report


#: How often a batch re-reads experiments that changed while it was written before leaving them to the next sync.
VERIFY_ROUNDS = 3


def _store_verified(db: IndexDatabase, archive_id: int, root: str, records: list[ExperimentRecord]) -> None:
    """Write ``records``, then check each against the disk while the transaction holds their rows.

    Several processes may sync one archive at once (hosts of a lab, a command
    and the daemon). One that read a file just before another process changed
    it could otherwise commit the old content after a second sync stored the
    new one, leaving the row stale with nobody left to notice. Checked after
    the write, the row is locked (PostgreSQL) or the whole index is (SQLite):
    whoever commits a row last checked the file after every earlier writer
    committed it, so the last commit describes the disk. An experiment that
    changed is read again, one that vanished removed; a file that keeps
    changing is left to the next sync after a few rounds.
    """
    store_records(db, archive_id, records)
    for _ in range(VERIFY_ROUNDS):
        changed: list[FolderStat] = []
        vanished: list[str] = []
        for record in records:
            now = stat_experiment_folder(root, record.rel_path)
            if now is None:
                vanished.append(record.rel_path)
            elif (now.meta_mtime_ns, now.meta_size) != (record.meta_mtime_ns, record.meta_size):
                changed.append(now)
        remove_experiments(db, archive_id, vanished)
        if not changed:
            return
        records = [read_experiment(root, folder) for folder in changed]
        store_records(db, archive_id, records)


def _remove_verified(db: IndexDatabase, archive_id: int, root: str, rel_paths: list[str]) -> int:
    """Remove these experiments, then store any that is back on disk (see :func:`_store_verified`); how many."""
    if not rel_paths:
        return 0

    def work() -> None:
        remove_experiments(db, archive_id, rel_paths)
        back = [folder for folder in (stat_experiment_folder(root, rel) for rel in rel_paths) if folder is not None]
        if back:
            _store_verified(db, archive_id, root, [read_experiment(root, folder) for folder in back])

    db.run_in_transaction(work)
    return len(rel_paths)


def _stored_digests(db: IndexDatabase, archive_id: int) -> dict[str, str | None]:
    return dict(
        db.execute("SELECT folder, digest FROM folder_digests WHERE archive_id = :archive_id", {"archive_id": archive_id})
    )


_STAMP_COLUMNS = "rel_path, meta_mtime_ns, meta_size, folder_mtime_ns"


def _stamps(db: IndexDatabase, archive_id: int, *, folder: str | None = None) -> dict[str, tuple]:
    """The stored stamps of every experiment, or of those directly in ``folder``, by rel_path."""
    rows = rows_below(db, archive_id, folder or "", _STAMP_COLUMNS)
    if folder is None:
        return {row[0]: row for row in rows}
    # Deeper folders' rows are filtered out here.
    depth = len(folder) + 1 if folder else 0
    return {row[0]: row for row in rows if "/" not in row[0][depth:]}


def _save_digests(db: IndexDatabase, archive_id: int, walked: dict[str, str]) -> None:
    """Store the digests this sync saw, where they differ; forget folders that hold no experiment any more.

    Called in a transaction after the rows are written (writing them cleared
    their folders' digests). A folder whose rows another process changed since
    the walk gets the digest of what this sync saw, which differs from the
    disk's, so the next sync compares that folder again.
    """
    stored = _stored_digests(db, archive_id)
    db.executemany(
        "INSERT INTO folder_digests (archive_id, folder, digest) VALUES (:archive_id, :folder, :digest) "
        "ON CONFLICT (archive_id, folder) DO UPDATE SET digest = excluded.digest",
        [
            {"archive_id": archive_id, "folder": folder, "digest": digest}
            for folder, digest in walked.items()
            if stored.get(folder) != digest
        ],
    )
    db.executemany(
        "DELETE FROM folder_digests WHERE archive_id = :archive_id AND folder = :folder",
        [{"archive_id": archive_id, "folder": folder} for folder in stored.keys() - walked.keys()],
    )


def refresh_index(index: ArchiveIndex, *, on_progress: ProgressCallback | None = None) -> SyncReport | None:
    """What every read command does first: make sure the index shows what is on disk.

    With a live watcher keeping the index current there is nothing to do (None).
    Otherwise the archive is synced: every experiment_meta.json is checked
    (one stat each), so what selections and listings see is exact; asset
    figures are re-measured for experiments whose metadata changed, while the
    folders of unchanged ones are checked by ``index sync`` and the watcher,
    since that second stat per experiment would double the cost of every
    command on a large archive.
    """
    if has_fresh_watcher(index):
        return None
    return sync_archive(index, check_assets=False, on_progress=on_progress)


def open_refreshed_index(
    path: str,
    location: str | None = None,
    *,
    refresh: bool = True,
    read_only_ok: bool = False,
    on_progress: ProgressCallback | None = None,
    on_synced: Callable[[SyncReport], None] | None = None,
) -> tuple[ArchiveIndex, str | None]:
    """Open the archive's index and (with ``refresh``) bring it up to date: what a command does first.

    Damage the database reports while opening or refreshing is mended once
    (set aside, salvaged, rebuilt) and opening goes on: nothing has been
    shown yet. With ``read_only_ok`` (a command that only reads) an index that
    cannot be written is read as it is. Returns the index and, when it could
    not be brought up to date, why (the caller tells the user its results may
    be stale); None when it is current. ``on_synced`` gets the report of the
    sync it made, if it made one (none when a live watcher keeps the index current).
    """
    mended = False
    while True:
        index = open_archive_index(path, location, allow_read_only=read_only_ok)
        if index.read_only:
            return index, f"the index {index.location} cannot be written, so it could not be updated"
        if not refresh:
            return index, None
        try:
            report = refresh_index(index, on_progress=on_progress)
            if report is not None and on_synced is not None:
                on_synced(report)
            return index, None
        except IndexReadOnlyError as error:
            if not read_only_ok:
                index.close()
                raise
            return index, f"the index could not be updated ({error})"
        except IndexDamagedError as error:
            if mended:
                index.close()
                raise
            recover_damaged_index(index, error)  # closes it; the next round opens the fresh index
            mended = True
        except BaseException:
            index.close()
            raise


@contextlib.contextmanager
def mending_damage(index: ArchiveIndex) -> Iterator[ArchiveIndex]:
    """Use ``index`` and close it; damage reported while it is used is mended, and the command fails.

    The command may have shown half a result or changed files, so only the
    user may run it again: the error raised says so (``recovered=True``).
    """
    try:
        yield index
    except IndexDamagedError as error:
        if error.recovered:
            raise
        recover_damaged_index(index, error)
        raise IndexDamagedError(
            f"{error}; it was set aside and a fresh index was made (see the warning above): run the command again",
            error.location,
            recovered=True,
        ) from None
    finally:
        index.close()
