"""The watcher's core: its lifecycle, the worker loop and the heartbeat.

``start()`` returns at once; the worker thread opens the index, takes the
archive's lease (one watcher per archive, across hosts: see
:mod:`pycomex_index.lease`; a :class:`~.keeper.LeaseKeeper` renews it), catches up
with one sync (the only walk of the archive at start, in a child process:
:mod:`pycomex_index.sync_process`), sets up the watches
from what the sync stored, applies what changed since the walk, and only
then lets the heartbeat vouch for the index (until then it says
``starting`` and read commands sync themselves). Then it loops: take a settled
batch from the :class:`~pycomex_index.watcher.changes.ChangeQueue`, apply it,
start a re-walk when one is due, poll the running runs past the watch
budget, and write the heartbeat every second. Errors are logged, never fatal
to the loop. ``stop()`` lets the worker finish its batch, gives the lease
up (clearing the heartbeat) and stops the observer. A watcher whose lease was
taken over stops with an error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from pycomex_index.discovery import Outcome
from pycomex_index.errors import DaemonError
from pycomex_index.heartbeat import (
    HEARTBEAT_INTERVAL_SECONDS,
    MODE_INOTIFY,
    MODE_POLLING,
    MODE_STARTING,
    clear_heartbeat,
    write_heartbeat,
)
from pycomex_index.lease import Holder, acquire_lease
from pycomex_index.rows import rows_below
from pycomex_index.store import ArchiveIndex, is_database_url, open_archive_index
from pycomex_index.sync import sync_archive
from pycomex_index.sync_process import Stopping, SyncProcessError, full_sync
from pycomex_index.watcher.applier import ChangeApplier
from pycomex_index.watcher.changes import Batch, ChangeQueue
from pycomex_index.watcher.keeper import LeaseKeeper
from pycomex_index.watcher.reconcile import Reconciler
from pycomex_index.watcher.settings import WatchSettings
from pycomex_index.watcher.state import WatcherState, WatcherStatus
from pycomex_index.watcher.system import default_watch_limit, filesystem_type, is_network_filesystem
from pycomex_index.watcher.watches import IndexedChildren, WatchLimitReached, WatchSet

logger = logging.getLogger("pycomex_index.watcher")

#: In inotify mode, a re-walk waits at least this many times as long as the last full sync took, so re-walks
#: cost an idle daemon at most half a per cent of a core (its heartbeat and polls take ~0.2%): at 1,000,000
#: runs one takes ~17 s, which every 5 minutes was 6%. Where a re-walk takes 1.5 s or less (up to ~100,000
#: runs), the configured interval is the longer one.
REWALK_DUTY_FACTOR = 200.0


class ArchiveWatcher:
    """Keeps one archive's index current until stopped; see :mod:`pycomex_index.watcher` for the design."""

    def __init__(self, path: str, index_location: str | None = None, settings: WatchSettings | None = None) -> None:
        self.path = path
        self.index_location = index_location
        self.settings = settings if settings is not None else WatchSettings()
        max_watches = self.settings.max_watches
        self.watch_limit = default_watch_limit() if max_watches is None else max_watches
        #: The archive root; set once by the worker before the observer starts, read-only afterwards.
        self.root = ""
        #: Why the worker stopped, if an error stopped it; set by the worker, read once is_alive() is False.
        self.error: BaseException | None = None
        #: Who this watcher is in the archive's lease.
        self.holder = Holder.this_process()

        self._state = WatcherState()
        self._queue = ChangeQueue()
        self._reconciler = Reconciler(self._queue, on_change=self._state.changed_now)
        self._watches = WatchSet(
            self._queue,
            limit=self.watch_limit,
            poll_interval=self.settings.poll_interval,
            on_overflow=self._on_overflow,
            quiet_after=self.settings.quiet_after,
        )
        # The worker thread only, from here on.
        self._index: ArchiveIndex | None = None
        self._reconcile_index: ArchiveIndex | None = None  # the re-walk thread's own connection
        self._index_identity: tuple[int, int] | None = None
        self._applier: ChangeApplier | None = None
        self._keeper: LeaseKeeper | None = None
        #: Why the lease was lost, set once by the keeper's thread (then the watcher stops).
        self._lease_lost: str | None = None
        # Set by start(); the thread is only joined and asked whether it is alive.
        self._worker: threading.Thread | None = None

    # ----------------------------------------------------------------- control

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run_worker, name="pycomex-index-watcher", daemon=True)
        self._worker.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the catch-up sync is done and the heartbeat vouches for the index."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._state.ready.wait(0.05):
            if not self.is_alive() or (deadline is not None and time.monotonic() > deadline):
                return self._state.ready.is_set()
        return True

    def is_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def request_stop(self) -> None:
        self._queue.request_stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the batch in progress; the heartbeat is cleared so commands sync again at once."""
        self.request_stop()
        if self._worker is not None:
            self._worker.join(timeout)

    def __enter__(self) -> ArchiveWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def status(self) -> WatcherStatus:
        """A consistent snapshot; safe from any thread."""
        mode, note, last_change_at = self._state.snapshot()
        return WatcherStatus(
            mode=mode,
            note=note,
            ready=self._state.ready.is_set(),
            watch_count=self._watches.count(),
            watch_limit=self.watch_limit,
            backlog=self._queue.backlog(),
            last_change_at=last_change_at,
            started_at=self._state.started_at,
        )

    # ------------------------------------------------------------------ worker

    def _run_worker(self) -> None:
        try:
            self._index = open_archive_index(self.path, self.index_location)
            self.root = self._index.root
            self._take_lease()
            self._watches.root, self._watches.real_root = self.root, os.path.realpath(self.root)
            self._reconcile_index = open_archive_index(self._index.root, self._index.location)
            self._index_identity = _file_identity(self._index.location)
            self._applier = ChangeApplier(
                self._index, self._watches, self._queue, self._reconciler, on_change=self._state.changed_now
            )
            self._set_up()
            self._loop()
        except Stopping:
            pass
        except BaseException as error:  # noqa: BLE001 - reported by whoever runs the watcher
            self.error = error
            if not isinstance(error, DaemonError):
                logger.exception("the watcher stopped because of an error")
        finally:
            if self.error is None and self._lease_lost is not None:
                self.error = DaemonError(f"{self._lease_lost}; stopped watching {self.root}")
            self._shut_down()

    def _take_lease(self) -> None:
        """Become the archive's one watcher, or raise :class:`DaemonAlreadyRunningError` naming the one there is."""
        assert self._index is not None
        index, seconds = self._index, self.settings.lease_seconds
        lease = acquire_lease(
            index.db, index.archive_id, self.holder, seconds=seconds, started_at=self._state.started_at
        )
        if lease.holder != self.holder:
            raise lease.held_error(self.root)
        keeper_index = open_archive_index(index.root, index.location)
        self._keeper = LeaseKeeper(keeper_index, self.holder, seconds, on_lost=self._on_lease_lost)
        self._keeper.start()

    def _on_lease_lost(self, reason: str) -> None:
        """Called on the keeper's thread: another watcher may run by now, so this one stops."""
        logger.error("%s: stopping", reason)
        self._lease_lost = reason
        self.request_stop()

    def _set_up(self) -> None:
        assert self._index is not None
        index = self._index
        interval = self.settings.poll_interval
        logger.info("watching %s (index %s)", self.root, index.shown_location)
        self._heartbeat()
        if self.settings.polling:
            note = f"polling every {interval:g} s, as asked (--polling)"
            self._state.set_mode(MODE_POLLING, note)
            logger.info("%s", note)
        elif is_network_filesystem(self.root):
            note = (
                f"polling every {interval:g} s: the archive is on a network filesystem "
                f"({filesystem_type(self.root)}), where inotify sees no writes from other hosts"
            )
            self._state.set_mode(MODE_POLLING, note)
            logger.warning("%s", note)
        else:
            try:
                self._watches.start()
                self._state.set_mode(MODE_INOTIFY)
            except WatchLimitReached as reason:
                self._fall_back_to_polling(str(reason), reconcile=False)
        if not is_database_url(index.location) and is_network_filesystem(os.path.dirname(index.location)):
            logger.warning(
                "the index %s is on a network filesystem: SQLite's WAL does not work there; "
                "put it on a local disk with --index",
                index.location,
            )

        # One walk serves both: the catch-up sync walks the archive, then the watches are set up from
        # what it stored (see ``WatchSet.watch_namespaces``), and whatever changed on disk since the walk
        # passed is queued and applied before the heartbeat vouches for the index.
        self._catch_up()
        if self._watches.active:
            try:
                self._watches.watch_namespaces(self._indexed_children)
                # Streamed, not listed: 50,000 runs still marked running at 1,000,000 (setting their watches
                # reads the index only, so the query may stay open meanwhile).
                running = index.db.execute(
                    "SELECT rel_path, meta_mtime_ns, meta_size FROM experiments "
                    f"WHERE archive_id = :archive_id AND outcome = '{Outcome.RUNNING.value}'",
                    {"archive_id": index.archive_id},
                )
                self._watches.watch_running_experiments(running)
            except WatchLimitReached as reason:
                self._fall_back_to_polling(str(reason))
            else:
                note = self._watches.note()
                self._state.set_note(note)
                logger.info("%s", note)
            self._apply_set_up_changes()
        self._state.ready.set()
        self._heartbeat()

    def _indexed_children(self, rel: str) -> IndexedChildren:
        """What the index holds directly in folder ``rel``: its experiments, and its folders holding some."""
        assert self._index is not None
        start = len(rel) + 1 if rel else 0
        children = IndexedChildren(set(), set())
        for (rel_path,) in rows_below(self._index.db, self._index.archive_id, rel):
            name, slash, _ = rel_path[start:].partition("/")
            (children.folders if slash else children.experiments).add(name)
        return children

    def _apply_set_up_changes(self) -> None:
        """Apply what set-up found changed since the catch-up walk, so the first heartbeat vouches for it."""
        while batch := self._queue.take_batch(time.monotonic()):
            self._apply(batch)

    def _catch_up(self) -> None:
        """The first sync, in a child process (see :mod:`pycomex_index.sync_process`); retried with a growing
        pause (the index busy, a disk hiccup) until it succeeds."""
        assert self._index is not None
        pause = 1.0
        while True:
            try:
                report = full_sync(self._index, lambda: self._queue.stopping)
                break
            except Stopping:
                raise
            except SyncProcessError as error:  # its traceback is in the log already, from the child
                logger.error("catching up with the archive failed (%s); retrying in %g s", error, pause)
            except Exception:  # noqa: BLE001 - log and retry; commands sync themselves meanwhile
                logger.exception("catching up with the archive failed; retrying in %g s", pause)
            if self._queue.wait_for_stop(pause):
                raise Stopping() from None
            pause = min(pause * 2, 60.0)
        logger.info(
            "caught up in %.2f s: %d added, %d updated, %d removed, %d with new assets, %d unchanged",
            report.seconds,
            report.added,
            report.updated,
            report.removed,
            report.assets_refreshed,
            report.unchanged,
        )
        if report.changed:
            self._state.changed_now()
        self._reconciler.caught_up(report.seconds)

    def _loop(self) -> None:
        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_SECONDS
        while True:
            deadline = min(next_heartbeat, self._reconciler.due_at(self._reconcile_period()))
            batch = self._queue.take_batch(deadline)
            if batch is None:
                return
            if batch:
                self._apply(batch)
            self._maybe_reconcile()
            if self._watches.active:
                self._watches.poll_unwatched_experiments()
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_SECONDS

    def _apply(self, batch: Batch) -> None:
        assert self._applier is not None
        try:
            self._applier.apply(batch)
        except WatchLimitReached as reason:
            self._fall_back_to_polling(str(reason))
        except Exception:  # noqa: BLE001 - log, retry, keep watching
            logger.exception("could not apply %d changes; retrying, and re-walking the archive", len(batch))
            self._queue.add_targets(batch.paths | batch.targets, delay=1.0)
            self._reconciler.request("a batch of changes failed")
        else:
            if self._watches.active:
                self._state.set_note(self._watches.note())

    def _reconcile_period(self) -> float:
        settings = self.settings
        if self._state.mode == MODE_POLLING:
            return settings.poll_interval
        last_seconds = self._reconciler.last_seconds or 0.0
        return max(settings.reconcile_interval, REWALK_DUTY_FACTOR * last_seconds)

    def _maybe_reconcile(self) -> None:
        if self._queue.stopping:
            return
        period = self._reconcile_period()
        due = self._reconciler.begin(period)
        if due is None:
            return
        reason, rewatch = due
        if rewatch and self._watches.active:
            # Events were lost: watch namespaces that appeared meanwhile before re-walking.
            try:
                self._watches.watch_namespaces()
            except WatchLimitReached as limit:
                self._fall_back_to_polling(str(limit), reconcile=False)
        if reason is not None:
            logger.info("re-walking the archive: %s", reason)
        assert self._reconcile_index is not None
        # Re-walks minutes apart run in a child process; polling's, seconds apart, here (see sync_process).
        in_child = self._state.mode != MODE_POLLING
        self._reconciler.run_in_background(self._reconcile_index, period, in_child=in_child)

    def _on_overflow(self) -> None:
        """Called on the observer's thread: the kernel dropped events, so nothing but a re-walk is certain."""
        self._reconciler.request("the kernel's inotify queue overflowed", rewatch=True)

    def _fall_back_to_polling(self, reason: str, *, reconcile: bool = True) -> None:
        self._watches.stop()
        self._state.set_mode(MODE_POLLING, f"polling every {self.settings.poll_interval:g} s: {reason}")
        logger.warning("switching to polling: %s", reason)
        self._queue.clear()  # the next poll looks at everything, these included
        if reconcile:
            self._reconciler.request("switched to polling")
        self._heartbeat()

    def _heartbeat(self) -> None:
        assert self._index is not None
        if self._index_identity is not None and _file_identity(self._index.location) != self._index_identity:
            # Someone deleted or replaced the index: writing on into the orphaned file helps nobody.
            logger.error("the index %s was removed or replaced; stopping", self._index.location)
            self.request_stop()
            return
        mode, note, last_change_at = self._state.snapshot()
        if mode == MODE_INOTIFY:
            note = self._watches.note()
        last_pass_seconds = self._reconciler.last_seconds
        if mode == MODE_POLLING and last_pass_seconds is not None:
            note = f"{note}; a pass takes {last_pass_seconds:.2f} s"
        try:
            write_heartbeat(
                self._index,
                self.holder,
                mode=mode if self._state.ready.is_set() else MODE_STARTING,
                backlog=self._queue.backlog(),
                last_change_at=last_change_at,
                note=note,
            )
        except Exception:  # noqa: BLE001 - a missed heartbeat only makes commands sync themselves
            logger.exception("could not write the heartbeat")

    def _shut_down(self) -> None:
        self._state.ready.clear()
        if self._keeper is not None:
            self._keeper.stop(5)  # before the lease is given up, so it is not renewed after
        if self._index is not None:
            try:
                clear_heartbeat(self._index, self.holder)  # first: commands stop trusting the index at once
            except Exception:  # noqa: BLE001
                logger.exception("could not clear the heartbeat")
            self._index.close()
        if self._watches.active:
            self._watches.stop()
        rewalk_finished = self._reconciler.join(30)  # it gives up at its next batch boundary
        if self._reconcile_index is not None and rewalk_finished:
            self._reconcile_index.close()
        logger.info("stopped watching %s", self.root)


def _file_identity(location: str) -> tuple[int, int] | None:
    """(device, inode) of an index file; None for a database URL or a missing file."""
    if is_database_url(location):
        return None
    try:
        file_stat = os.stat(location)
    except OSError:
        return None
    return file_stat.st_dev, file_stat.st_ino


def watch_once(path: str, index_location: str | None = None, *, on_progress: Any = None) -> tuple[str, Any]:
    """``watch --once``: catch up with the archive once; returns the archive root and the sync report."""
    with open_archive_index(path, index_location) as index:
        return index.root, sync_archive(index, on_progress=on_progress)
