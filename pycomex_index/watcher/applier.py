"""The applier: brings the index in line with the disk for the folders a batch of events touched.

Runs on the worker thread only. A metadata file is read only once it has
stopped changing, and one that does not parse while it was written recently
is retried rather than indexed as corrupt (a half-written JSON); each batch
is written in transactions of :data:`FLUSH_EVERY` experiments. In inotify
mode it also keeps the watch set in step: new namespaces and running runs
are watched, finished runs and vanished folders unwatched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pycomex_index.discovery import (
    INDEX_FOLDER_NAME,
    METADATA_FILE_NAME,
    ExperimentRecord,
    FolderStat,
    Outcome,
    measure_assets,
    read_experiment,
    stat_experiment_folder,
)
from pycomex_index.paths import folder_on_disk, path_in_index
from pycomex_index.rows import remove_experiments, rows_below, store_records, update_assets
from pycomex_index.store import ArchiveIndex
from pycomex_index.watcher.changes import Batch, ChangeQueue
from pycomex_index.watcher.reconcile import Reconciler
from pycomex_index.watcher.system import is_alias
from pycomex_index.watcher.watches import EXPERIMENT, NAMESPACE, WatchSet

logger = logging.getLogger("pycomex_index.watcher")

#: A metadata file that does not parse is retried (not indexed as corrupt) while it changed this recently.
HALF_WRITTEN_GRACE_SECONDS = 5.0
#: How soon a file that was still changing, or did not parse yet, is looked at again.
RETRY_DELAY_SECONDS = 0.25
#: Experiments written per transaction when a whole tree appears at once (a folder moved in).
FLUSH_EVERY = 500


@dataclass
class _Changes:
    """What one transaction writes to the index."""

    records: dict[str, ExperimentRecord] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    assets: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records) + len(self.removed) + len(self.assets)


class ChangeApplier:
    """Applies batches of changed paths to one archive's index (worker thread only)."""

    def __init__(
        self,
        index: ArchiveIndex,
        watches: WatchSet,
        queue: ChangeQueue,
        reconciler: Reconciler,
        *,
        on_change: Callable[[], None],
    ) -> None:
        self._index = index
        self._root = index.root
        self._real_root = os.path.realpath(index.root)
        self._watches = watches
        self._queue = queue
        self._reconciler = reconciler
        self._on_change = on_change

    def apply(self, batch: Batch) -> None:
        """Bring the index in line with the disk for every folder these paths touch.

        The folders the paths point to are added to ``batch.targets``, so a failed batch is retried whole.
        """
        targets = batch.targets
        for rel in batch.paths:
            target = self._target_for(rel)
            if target is not None:
                targets.add(target)
        self._reconciler.note_applied(targets)
        changes = _Changes()
        existing = []
        # Vanished folders first, so a folder renamed in this batch loses its old watch before it gets a new one.
        for rel in sorted(targets):
            folder = folder_on_disk(self._root, rel)
            if os.path.isdir(folder) and not (rel and is_alias(folder, self._real_root)):
                existing.append(rel)
            elif rel:
                self._forget(rel, changes)
            else:
                self._reconciler.request("the archive folder itself vanished or was replaced")
        try:
            stack = existing
            while stack:
                rel = stack.pop()
                if rel:
                    self._reconsider(rel, changes, stack)
                if len(changes) >= FLUSH_EVERY:
                    self._flush(changes)
                    changes = _Changes()
        finally:
            self._flush(changes)

    def _target_for(self, rel: str) -> str | None:
        """Which folder an event path asks to re-examine (None: nothing the index cares about)."""
        if rel.split("/", 1)[0] == INDEX_FOLDER_NAME:
            return None
        if not rel:
            return ""
        parent, _, name = rel.rpartition("/")
        if self._watches.scheduled_kind(parent) == EXPERIMENT:
            return parent  # its metadata was rewritten or an asset changed
        if name == METADATA_FILE_NAME:
            return parent or None  # a folder gained or lost its metadata (the root is never an experiment)
        return rel

    def _forget(self, rel: str, changes: _Changes) -> None:
        """A folder is gone (or is no folder): drop it and everything indexed below it."""
        changes.removed.add(rel)
        changes.removed.update(self._indexed_below(rel))
        changes.records.pop(rel, None)
        self._watches.unwatch_below(rel)

    def _indexed_below(self, rel: str) -> list[str]:
        return [row[0] for row in rows_below(self._index.db, self._index.archive_id, rel)]

    def _reconsider(self, rel: str, changes: _Changes, stack: list[str]) -> None:
        """Look at one existing folder: an experiment to (re)index, or a namespace to watch and list."""
        watches = self._watches
        current = stat_experiment_folder(self._root, rel)
        if current is None:
            # A folder where experiments can appear: a namespace, or a run whose metadata is not written yet.
            if self._index.db.fetch_one(
                "SELECT 1 FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path",
                {"archive_id": self._index.archive_id, "rel_path": rel},
            ):
                changes.removed.add(rel)
            if not watches.active or watches.kind(rel) == NAMESPACE:
                return  # polling sees it at the next pass; a watched namespace reports its own changes
            try:
                folder_stat = os.stat(folder_on_disk(self._root, rel))
            except OSError:
                return
            if watches.watched_elsewhere((folder_stat.st_dev, folder_stat.st_ino), rel):
                return
            if not watches.watch(rel, NAMESPACE):
                return
            current = stat_experiment_folder(self._root, rel)  # checked again now that the watch is in place
            if current is None:
                # It may have been filled before the watch existed (a tree moved in, ``mkdir -p``).
                stack.extend(self._child_folders(rel))
                return

        # An experiment: pycomex does not look inside it, so neither does the index.
        watches.unwatch_below(rel, including=False)
        changes.removed.update(self._indexed_below(rel))
        row = self._index.db.fetch_one(
            "SELECT meta_mtime_ns, meta_size, folder_mtime_ns, outcome FROM experiments "
            "WHERE archive_id = :archive_id AND rel_path = :rel_path",
            {"archive_id": self._index.archive_id, "rel_path": rel},
        )
        if row is None or (row[0], row[1]) != (current.meta_mtime_ns, current.meta_size):
            record = self._read_when_settled(current)
            if record is None:
                return  # still being written: retried shortly
            changes.records[rel] = record
            changes.removed.discard(rel)
            outcome = record.outcome
        else:
            if row[2] != current.folder_mtime_ns:
                asset_count, disk_usage = measure_assets(folder_on_disk(self._root, rel))
                changes.assets[rel] = (asset_count, disk_usage, current.folder_mtime_ns)
            outcome = row[3]

        if not watches.active:
            return
        if outcome != Outcome.RUNNING:
            watches.unwatch(rel)  # finished: only the periodic re-walk looks at it again
            return
        already_watched = watches.kind(rel) is not None or watches.is_polled(rel)
        if watches.watch_experiment(rel, current) and not already_watched:
            again = stat_experiment_folder(self._root, rel)
            if again is None or (again.meta_mtime_ns, again.meta_size) != (current.meta_mtime_ns, current.meta_size):
                self._queue.add_targets([rel])  # rewritten before the watch was in place

    def _child_folders(self, rel: str) -> list[str]:
        """Every folder directly in ``rel``."""
        folder = folder_on_disk(self._root, rel)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        children = []
        for entry in entries:
            try:
                if entry.is_dir() and not is_alias(entry.path, self._real_root):
                    children.append(f"{rel}/{path_in_index(entry.name)}")
            except OSError:
                continue
        return children

    def _read_when_settled(self, folder_stat: FolderStat) -> ExperimentRecord | None:
        """Read an experiment once its metadata stopped changing; None (and a retry) while it is still written."""
        record = read_experiment(self._root, folder_stat)
        after = stat_experiment_folder(self._root, folder_stat.rel_path)
        read_as = (folder_stat.meta_mtime_ns, folder_stat.meta_size)
        if after is None or (after.meta_mtime_ns, after.meta_size) != read_as:
            self._queue.add_targets([folder_stat.rel_path], RETRY_DELAY_SECONDS)
            return None
        if record.read_error is not None:
            age = abs(time.time_ns() - folder_stat.meta_mtime_ns) / 1e9
            if age < HALF_WRITTEN_GRACE_SECONDS:
                logger.debug(
                    "%s: %s; retrying (it was written %.2f s ago)", folder_stat.rel_path, record.read_error, age
                )
                self._queue.add_targets([folder_stat.rel_path], RETRY_DELAY_SECONDS)
                return None
        return record

    def _flush(self, changes: _Changes) -> None:
        if not len(changes):
            return
        db, archive_id = self._index.db, self._index.archive_id
        removed = changes.removed - changes.records.keys()
        with db.transaction():
            remove_experiments(db, archive_id, sorted(removed))
            store_records(db, archive_id, changes.records.values())
            update_assets(db, archive_id, [(rel, *figures) for rel, figures in changes.assets.items()])
        self._on_change()
        logger.info(
            "applied %d changes: %d read, %d removed, %d with new assets",
            len(changes),
            len(changes.records),
            len(removed),
            len(changes.assets),
        )
        for rel, record in changes.records.items():
            if record.read_error:
                logger.warning("%s: %s", rel, record.read_error)
