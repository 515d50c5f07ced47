"""Reconciling the index with the disk.

A sync walks the archive (stat calls only), compares each experiment's
experiment_meta.json mtime_ns and size with the index, and re-reads only new
or changed files; a folder whose own mtime changed (an asset added or
removed) only gets its assets re-measured; experiments that vanished are
dropped. Work is written in batches, so memory stays flat on any archive size
and an interrupted sync keeps what it already stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from pycomex_index.discovery import iter_experiment_folders, measure_assets, read_experiment
from pycomex_index.rows import remove_experiments, store_records, update_assets
from pycomex_index.store import ArchiveIndex

#: ``on_progress(done, total)`` is called while files are read; total is known before the first call.
ProgressCallback = Callable[[int, int], None]

#: Records per transaction: large enough to amortise the commit, small enough to keep memory flat.
BATCH_SIZE = 500


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
    # rel_path -> (rel_path, meta_mtime_ns, meta_size, folder_mtime_ns): the same shape as a FolderStat.
    known = {
        row[0]: row
        for row in db.execute(
            "SELECT rel_path, meta_mtime_ns, meta_size, folder_mtime_ns FROM experiments "
            "WHERE archive_id = :archive_id",
            {"archive_id": archive_id},
        )
    }
    to_read = []
    to_measure = []
    unchanged = 0
    for folder in iter_experiment_folders(root, folder_times=check_assets):
        stored = known.pop(folder.rel_path, None)
        # Re-read on rebuild too, but never empty the index first: a concurrent reader keeps seeing the archive.
        if rebuild or stored is None or stored[1] != folder[1] or stored[2] != folder[2]:
            to_read.append((folder, stored is None))
        elif check_assets and stored[3] != folder[3]:
            to_measure.append(folder)
        else:
            unchanged += 1
    report.unchanged = unchanged

    report.removed = remove_experiments(db, archive_id, known)
    del known

    total = len(to_read) + len(to_measure)
    done = 0
    for start in range(0, len(to_read), BATCH_SIZE):
        batch = [read_experiment(root, folder) for folder, _ in to_read[start : start + BATCH_SIZE]]
        store_records(db, archive_id, batch)
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
                (folder.rel_path, *measure_assets(f"{root}/{folder.rel_path}"), folder.folder_mtime_ns)
                for folder in batch
            ],
        )
        report.assets_refreshed += len(batch)
        done += len(batch)
        if on_progress:
            on_progress(done, total)

    report.seconds = time.perf_counter() - started
    with db.transaction():
        db.execute(
            "UPDATE archives SET last_sync_at = :now, last_sync_seconds = :seconds WHERE id = :archive_id",
            {"now": time.time(), "seconds": report.seconds, "archive_id": archive_id},
        )
    return report


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
    from pycomex_index.heartbeat import has_fresh_watcher

    if has_fresh_watcher(index):
        return None
    return sync_archive(index, check_assets=False, on_progress=on_progress)
