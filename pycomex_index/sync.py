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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pycomex_index.bulk_load import loading_without_indexes
from pycomex_index.db import IndexDatabase
from pycomex_index.discovery import (
    ExperimentRecord,
    FolderStat,
    measure_assets,
    namespace_of,
    prefetch_metadata,
    read_experiment,
    stat_experiment_folder,
)
from pycomex_index.errors import IndexDamagedError, IndexReadOnlyError
from pycomex_index.heartbeat import has_fresh_watcher
from pycomex_index.paths import experiment_folder
from pycomex_index.rows import remove_experiments, rows_below, store_records, update_assets
from pycomex_index.store import ArchiveIndex, open_archive_index, recover_damaged_index
from pycomex_index.walk import iter_folder_listings, listing_digest

#: ``on_progress(done, total)`` is called after each batch of files read. Reading starts while the archive is
#: still being walked, so total is None while unknown; a first build counts the archive first, so it is known.
ProgressCallback = Callable[[int, "int | None"], None]

#: Records per transaction: large enough to amortise the commit, small enough to keep memory flat.
#: A first build of 100,000 took 50 s with 500, 28 s with 5,000 (warm cache): each commit writes every
#: index page its rows touched, so bigger batches write each page fewer times (1.8 GB -> 0.55 GB).
BATCH_SIZE = 5000
#: Threads reading experiment folders while the main thread stores the previous batch. Opening, reading and
#: statting files and SQLite's own work release the GIL, so disk waits and SQL overlap with parsing; more
#: threads only contend for the GIL (see benchmarks/results-first-build.md for the measured counts).
READER_THREADS = 4
#: Folders one reader task reads: a task per folder would cost more in futures than some folders take to read.
READ_CHUNK = 250
#: After this many batches read in threads, a sync with that much left to do reads in worker processes instead:
#: parsing holds the GIL, so threads use one core however many there are, and storing needs the same one.
#: Below it (a read command's usual handful of changes) starting processes would cost more than it saves.
PROCESS_POOL_AFTER_BATCHES = 1


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
    # Digests cover the metadata stamps only, so a sync that checks assets compares every row. Loading one
    # folder's rows (rows_below) is exact on every backend, so PostgreSQL trusts them too: without them a
    # read command there loaded all stored stamps (100,000 rows) to find nothing changed.
    trust_digests = not (rebuild or check_assets)
    walked_digests: dict[str, str] = {}
    to_remove: list[str] = []
    # Work is done as the walk finds it, a batch at a time, so a first build never holds the whole archive's
    # list of paths (587 MB at 1,000,000 runs); only what must wait for the end of the walk is kept: removals.
    pending = _PendingWork(db, archive_id, root, report, on_progress)
    first_build = not stored_digests and _count_rows(db, archive_id) == 0
    if first_build and on_progress is not None:
        # A first build reads everything: one stat-only walk ahead gives the bar a total, hence an ETA, for
        # a few per cent of the build (the walk is a fraction of reading and parsing every file). Without a
        # bar (no terminal, the daemon) nobody reads the total, so the archive is walked once.
        pending.expected = sum(len(listing.experiments) for listing in iter_folder_listings(root, folder_times=False))
    elif rebuild:
        pending.expected = _count_rows(db, archive_id) or None  # a rebuild re-reads every stored experiment
    if on_progress and pending.expected:
        on_progress(0, pending.expected)  # the bar's clock, hence its rate and ETA, starts with the reading
    # A first build into an empty SQLite file loads without the secondary indexes and builds them after it;
    # the reader threads stop before that (contexts exit in reverse order).
    bulk_load = loading_without_indexes(index) if first_build else contextlib.nullcontext()
    with bulk_load, contextlib.closing(pending):
        for listing in iter_folder_listings(root, folder_times=check_assets):
            if not listing.experiments:
                continue
            digest = walked_digests[listing.rel_dir] = listing_digest(listing.experiments)
            if trust_digests and stored_digests.get(listing.rel_dir) == digest:
                report.unchanged += len(listing.experiments)
                continue
            # One folder's stored stamps at a time, not the whole archive's: a daemon catching up with
            # 1,000,000 runs peaked at 403 MB holding them all.
            # rel_path -> (rel_path, meta_mtime_ns, meta_size, folder_mtime_ns): the same shape as a FolderStat.
            known = {} if first_build else _stamps(db, archive_id, folder=listing.rel_dir)
            # In path order, so each batch is a run of neighbouring keys: its rows then land in a few pages of
            # the index on rel_path instead of one page each, which at 1,000,000 runs (an index larger than the
            # page cache) made storing a batch cost three times what reading it did.
            for folder, inode in sorted(zip(listing.experiments, listing.inodes, strict=True)):
                stored = known.pop(folder.rel_path, None)
                # Re-read on rebuild too, but never empty the index first: a concurrent reader keeps seeing it.
                if rebuild or stored is None or stored[1] != folder[1] or stored[2] != folder[2]:
                    pending.read(folder, stored is None, inode)
                elif check_assets and stored[3] != folder[3]:
                    pending.measure(folder)
                else:
                    report.unchanged += 1
            to_remove.extend(known)
        pending.finish()
    # What the walk cost, the reading it found to do left out: the figure a read command's hint weighs.
    report.walk_seconds = time.perf_counter() - started - pending.working_seconds
    if trust_digests:
        for vanished_folder in stored_digests.keys() - walked_digests.keys():
            to_remove.extend(_stamps(db, archive_id, folder=vanished_folder))
    else:
        # A full sync trusts no digest row either: every stored row whose folder the walk did not find holding
        # experiments is gone, found by streaming the paths (no list of every row).
        to_remove.extend(
            rel_path for (rel_path,) in rows_below(db, archive_id, "") if namespace_of(rel_path) not in walked_digests
        )

    # After the reads, unlike before streaming: which experiments vanished is known only once the walk ended.
    # A run moved meanwhile is briefly listed twice instead of briefly missing.
    report.removed = _remove_verified(db, archive_id, root, to_remove)
    del to_remove

    report.seconds = time.perf_counter() - started

    def finish() -> None:
        _save_digests(db, archive_id, walked_digests)
        db.execute(
            "UPDATE archives SET last_sync_at = :now, last_sync_seconds = :seconds WHERE id = :archive_id",
            {"now": time.time(), "seconds": report.seconds, "archive_id": archive_id},
        )

    db.run_in_transaction(finish, durable=False)  # bookkeeping: a crash that loses it costs a re-check
    index.metadata_times_current = True
    index.folder_times_current = index.folder_times_current or check_assets
    return report


class _PendingWork:
    """Experiments to read or re-measure, written a transaction of :data:`BATCH_SIZE` at a time as they come.

    A full batch of experiments to read goes to the readers (threads, then
    worker processes once the sync proves long: see :meth:`_start_readers`)
    and is stored once the next batch has been handed to them, so at most two
    batches of records are held: one being read, one being stored.
    """

    def __init__(self, db: IndexDatabase, archive_id: int, root: str, report: SyncReport, on_progress) -> None:
        self.db, self.archive_id, self.root, self.report, self.on_progress = db, archive_id, root, report, on_progress
        #: (folder, whether it is new to the index, its inode number)
        self.to_read: list[tuple[FolderStat, bool, int]] = []
        self.to_measure: list[FolderStat] = []
        #: Batches handed to the readers, oldest first, with their reads (futures of record lists).
        self.reading: deque[tuple[list[tuple[FolderStat, bool, int]], list[Any]]] = deque()
        #: A ThreadPoolExecutor made for the first batch worth the threads, later maybe a ProcessPoolExecutor.
        self.readers: Any = None
        self.in_processes = False
        self.batches_started = 0  # batches handed to the readers
        self.found = 0  # experiments queued so far
        self.done = 0
        #: The pre-counted number of experiments to come, or None; the progress total until the walk ends.
        self.expected: int | None = None
        self.walking = True
        self.reported_total: int | None = None
        #: Seconds spent reading, measuring and storing batches (not walking).
        self.working_seconds = 0.0

    def read(self, folder: FolderStat, is_new: bool, inode: int) -> None:
        self.found += 1
        self.to_read.append((folder, is_new, inode))
        if len(self.to_read) >= BATCH_SIZE:
            self._start_reading()
            if len(self.reading) > 1:
                self._store_oldest()

    def measure(self, folder: FolderStat) -> None:
        self.found += 1
        self.to_measure.append(folder)
        if len(self.to_measure) >= BATCH_SIZE:
            self._measure_batch()

    def finish(self) -> None:
        """The walk ended: store what is queued; the last progress call has the true total."""
        self.walking = False
        if self.to_read:
            self._start_reading()
        while self.reading:
            self._store_oldest()
        if self.to_measure:
            self._measure_batch()
        if self.on_progress and self.done and self.reported_total != self.found:
            self.on_progress(self.done, self.found)

    def close(self) -> None:
        """Stop the reader threads (after :meth:`finish`, or when the sync failed: queued reads are dropped)."""
        if self.readers is not None:
            self.readers.shutdown(wait=True, cancel_futures=True)
            self.readers = None

    def _start_reading(self) -> None:
        queued, self.to_read = self.to_read, []
        # In inode order, a cold disk reads the batch's inodes and files about in the order they were written;
        # in the walk's (hash) order, it seeks for each.
        queued.sort(key=_by_inode)
        folders = [folder for folder, _, _ in queued]
        if len(folders) <= READ_CHUNK:
            # A handful of changed runs (a read command's usual sync) is read at once, without threads.
            started = time.perf_counter()
            self.reading.append((queued, [_Read(folders, records=_read_folders(self.root, folders))]))
            self.working_seconds += time.perf_counter() - started
            return
        self.batches_started += 1
        if self.readers is None or (self.batches_started > PROCESS_POOL_AFTER_BATCHES and not self.in_processes):
            self._start_readers()
        chunks = [folders[at : at + READ_CHUNK] for at in range(0, len(folders), READ_CHUNK)]
        self.reading.append((queued, [self._submit(chunk) for chunk in chunks]))

    def _submit(self, chunk: list[FolderStat]) -> _Read:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return _Read(chunk, self.readers.submit(_read_folders, self.root, chunk))
        except (BrokenProcessPool, OSError):  # a worker died (see _Read.records), or the pool's pipe with it
            from concurrent.futures import ThreadPoolExecutor

            self.readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="pycomex-index-reader")
            return _Read(chunk, self.readers.submit(_read_folders, self.root, chunk))

    def _start_readers(self) -> None:
        """Reader threads for the first batches; worker processes once the sync proves long, on several cores."""
        import os
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        if (
            self.batches_started <= PROCESS_POOL_AFTER_BATCHES
            or (os.cpu_count() or 1) < 2
            or not _main_module_is_ours()
        ):
            if self.readers is None:
                self.readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="pycomex-index-reader")
            return
        import multiprocessing

        # forkserver, not fork: the daemon has threads, and a fork copies whatever lock one of them held. Nothing
        # is preloaded into the server: Python 3.11's server imports with the working directory first on its
        # path, so in a checkout of this project it preloaded the source tree, which has no pycomex_index.cli,
        # and every worker failed. Each worker imports what it needs from the program's own path instead.
        context = multiprocessing.get_context("forkserver")
        threads, self.readers = self.readers, ProcessPoolExecutor(READER_THREADS, mp_context=context)
        self.in_processes = True
        if threads is not None:
            threads.shutdown(wait=False)  # its reads still running finish; their batches are stored as usual

    def _store_oldest(self) -> None:
        started = time.perf_counter()
        db, archive_id, root, report = self.db, self.archive_id, self.root, self.report
        queued, reads = self.reading.popleft()
        batch = [record for read in reads for record in read.records(self.root)]
        db.run_in_transaction(lambda: _store_verified(db, archive_id, root, batch))
        for (_, is_new, _), record in zip(queued, batch, strict=True):
            if is_new:
                report.added += 1
            else:
                report.updated += 1
            if record.read_error:
                report.unreadable += 1
        self.working_seconds += time.perf_counter() - started
        self._advance(len(batch))

    def _measure_batch(self) -> None:
        started = time.perf_counter()
        batch, self.to_measure = self.to_measure, []
        root = self.root
        update_assets(
            self.db,
            self.archive_id,
            [
                (folder.rel_path, *measure_assets(experiment_folder(root, folder.rel_path)), folder.folder_mtime_ns)
                for folder in batch
            ],
        )
        self.report.assets_refreshed += len(batch)
        self.working_seconds += time.perf_counter() - started
        self._advance(len(batch))

    def _advance(self, count: int) -> None:
        self.done += count
        if self.on_progress:
            if not self.walking:
                total = self.found
            elif self.expected is not None:
                total = max(self.expected, self.found)  # the archive may have grown since the count
            else:
                total = None
            self.reported_total = total
            self.on_progress(self.done, total)


def _main_module_is_ours() -> bool:
    """True when the running program is pycomex-index's command line (its script, or python -m pycomex_index).

    A worker process imports the program's main script again (not a ``-m`` module's ``__main__``). Ours is
    safe to import; a caller's script without an ``if __name__ == "__main__"`` guard (an experiment using the
    library, say) would run again in every worker, so any other program reads in threads.
    """
    import os
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name.partition(".")[0] == "pycomex_index"
    return os.path.basename(getattr(main, "__file__", None) or "") == "pycomex-index"


def _by_inode(queued: tuple[FolderStat, bool, int]) -> int:
    return queued[2]


def _read_folders(root: str, folders: list[FolderStat]) -> list[ExperimentRecord]:
    if len(folders) > 1:
        prefetch_metadata(root, folders)
    return [read_experiment(root, folder) for folder in folders]


class _Read:
    """A chunk of folders being read by a reader (``future``), or read already (``records``)."""

    def __init__(self, folders: list[FolderStat], future: Any = None, records: list[ExperimentRecord] | None = None):
        self.folders, self.future, self._records = folders, future, records

    def records(self, root: str) -> list[ExperimentRecord]:
        if self._records is None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                self._records = self.future.result()
            except BrokenProcessPool:
                # A worker process died (killed, out of memory): the chunks it was given are read here instead.
                self._records = _read_folders(root, self.folders)
        return self._records


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
        db.execute(
            "SELECT folder, digest FROM folder_digests WHERE archive_id = :archive_id", {"archive_id": archive_id}
        )
    )


_STAMP_COLUMNS = "rel_path, meta_mtime_ns, meta_size, folder_mtime_ns"


def _count_rows(db: IndexDatabase, archive_id: int) -> int:
    count = db.fetch_row("SELECT COUNT(*) FROM experiments WHERE archive_id = :archive_id", {"archive_id": archive_id})
    return count[0]


def _stamps(db: IndexDatabase, archive_id: int, *, folder: str) -> dict[str, tuple]:
    """The stored stamps of the experiments directly in ``folder`` ("" is the root), by rel_path."""
    # Deeper folders' rows are filtered out here.
    depth = len(folder) + 1 if folder else 0
    return {row[0]: row for row in rows_below(db, archive_id, folder, _STAMP_COLUMNS) if "/" not in row[0][depth:]}


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
        index.metadata_times_current = index.folder_times_current = True
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
