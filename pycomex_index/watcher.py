"""The background watcher: applies changes on disk to the index as they happen.

Watching scales with what can change, not with the archive: one
non-recursive inotify watch on the archive root and on every namespace folder
(new, deleted and moved experiment folders appear there) plus one on each
experiment whose status is ``running`` (pycomex rewrites its metadata at the
end). An archive of a million runs in a hundred namespaces needs about a
hundred watches. Finished experiments are not watched: a slow periodic
reconcile (:func:`~pycomex_index.sync.sync_archive`) catches later edits and
assets added to them.

When the watches needed exceed the limit (the kernel's
``max_user_watches`` minus a margin, capped because watchdog runs one thread
per watch; see :func:`default_watch_limit`), when inotify cannot work (a
network filesystem, where writes from other hosts raise no events) or with
``polling=True``, the watcher polls instead: a cheap ``sync_archive`` every
``interval`` seconds. The mode and the reason are in the heartbeat, so
``daemon status`` and the log say so; no change is silently missed.

The observer's handler only records paths. One worker thread waits until the
changes settle, reads a metadata file only once it has stopped changing,
retries a file that does not parse while it was written recently (a
half-written JSON is not indexed as corrupt), applies each batch in one
transaction, writes the heartbeat and logs errors without dying.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from pycomex_index.discovery import (
    INDEX_FOLDER_NAME,
    METADATA_FILE_NAME,
    ExperimentRecord,
    FolderStat,
    measure_assets,
    read_experiment,
    stat_experiment_folder,
)
from pycomex_index.heartbeat import HEARTBEAT_INTERVAL_SECONDS, clear_heartbeat, write_heartbeat
from pycomex_index.rows import remove_experiments, store_records, update_assets
from pycomex_index.store import ArchiveIndex, open_archive_index

logger = logging.getLogger("pycomex_index.watcher")

#: A batch is applied once no event arrived for this long...
SETTLE_SECONDS = 0.2
#: ...but a steady stream of writes never holds a batch back longer than this.
MAX_BATCH_DELAY_SECONDS = 0.5
#: A metadata file that does not parse is retried (not indexed as corrupt) while it changed this recently.
HALF_WRITTEN_GRACE_SECONDS = 5.0
#: How soon a file that was still changing, or did not parse yet, is looked at again.
RETRY_DELAY_SECONDS = 0.25
DEFAULT_POLL_INTERVAL_SECONDS = 2.0
#: How often inotify mode re-walks the whole archive for edits no watch can see (finished runs).
DEFAULT_RECONCILE_INTERVAL_SECONDS = 300.0
#: Experiments written per transaction when a whole tree appears at once (a folder moved in).
FLUSH_EVERY = 500

MAX_WATCHES_ENV_VARIABLE = "PYCOMEX_INDEX_MAX_WATCHES"
#: Watches left for other programs of the same user (editors, IDEs, sync tools).
WATCH_LIMIT_MARGIN = 1024
#: watchdog runs one thread per watch (~25 KB and 0.5 ms to schedule each): above this, polling is cheaper.
WATCH_THREAD_CAP = 4096
#: Running experiments past the watch budget are stat-polled round-robin at most this fast (~3% of a core):
#: killed runs stay "running" forever, and 46,000 of them polled every 2 s took a third of a core.
POLLED_EXPERIMENTS_PER_SECOND = 2000

#: Filesystems where inotify sees no writes made by other hosts.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "gpfs", "beegfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.rclone", "fuse.s3fs",
        "fuse.gcsfuse", "fuse.juicefs", "davfs", "fuse.davfs2",
    }
)

MODE_INOTIFY = "inotify"
MODE_POLLING = "polling"
MODE_STARTING = "starting"
_NAMESPACE = "namespace"
_EXPERIMENT = "experiment"


class WatchLimitReached(Exception):
    """More folders need watching than the limit allows: the watcher switches to polling."""


class _Stopping(Exception):
    """Raised from a sync's progress callback to abandon it (between two committed batches) on stop."""


@dataclass
class WatcherStatus:
    """A snapshot of what the watcher is doing, for tests and the foreground command."""

    mode: str
    note: str | None
    ready: bool
    watch_count: int
    watch_limit: int
    backlog: int
    last_change_at: float | None
    started_at: float


def default_watch_limit() -> int:
    """How many inotify watches the watcher may use: ``$PYCOMEX_INDEX_MAX_WATCHES``, else the kernel's
    per-user limit minus a margin for other programs, capped at :data:`WATCH_THREAD_CAP`."""
    configured = os.environ.get(MAX_WATCHES_ENV_VARIABLE)
    if configured:
        try:
            return max(0, int(configured))
        except ValueError:
            logger.warning("ignoring %s=%r: not a whole number", MAX_WATCHES_ENV_VARIABLE, configured)
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as file:
            kernel_limit = int(file.read().strip())
    except (OSError, ValueError):
        kernel_limit = 8192
    return max(0, min(WATCH_THREAD_CAP, kernel_limit - WATCH_LIMIT_MARGIN))


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``...), from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[1])
        prefix = mount_point.rstrip("/") + "/"
        if target == mount_point or (target + "/").startswith(prefix):
            if best is None or len(mount_point) >= best[0]:
                best = (len(mount_point), fields[2])
    return best[1] if best else None


def is_network_filesystem(path: str) -> bool:
    fs_type = filesystem_type(path)
    return fs_type is not None and fs_type in NETWORK_FILESYSTEMS


class _EventRecorder:
    """The observer's handler: records which paths changed, nothing else (the worker does the work)."""

    def __init__(self, watcher: ArchiveWatcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: Any) -> None:
        paths = [event.src_path]
        dest_path = getattr(event, "dest_path", "")
        if dest_path:
            paths.append(dest_path)
        self.watcher._record_paths([os.fsdecode(path) for path in paths])


class _OverflowListener(logging.Handler):
    """watchdog only logs a kernel queue overflow; this turns that warning into a full reconcile."""

    def __init__(self, watcher: ArchiveWatcher) -> None:
        super().__init__(level=logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher._request_reconcile("the kernel's inotify queue overflowed", rewatch=True)


@dataclass
class _Watch:
    """One scheduled watch: watchdog's handle, what the folder is, and the folder's identity."""

    observed: Any
    kind: str
    identity: tuple[int, int]
    emitter: Any

    def is_dead(self) -> bool:
        # watchdog stops a watch's emitter by itself when the watched folder is deleted.
        return self.emitter is not None and self.emitter.stopped_event.is_set()


@dataclass
class _Changes:
    """What one batch writes to the index, in one transaction."""

    records: dict[str, ExperimentRecord] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    assets: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records) + len(self.removed) + len(self.assets)


class ArchiveWatcher:
    """Keeps one archive's index current until stopped; see the module docstring for the design.

    ``start()`` returns at once: the worker thread catches up with one sync,
    then applies changes. ``stop()`` lets the worker finish its batch, clears
    the heartbeat and stops the observer.
    """

    def __init__(
        self,
        path: str,
        index_location: str | None = None,
        *,
        polling: bool = False,
        interval: float = DEFAULT_POLL_INTERVAL_SECONDS,
        max_watches: int | None = None,
        reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL_SECONDS,
    ) -> None:
        if interval <= 0:
            raise ValueError("the polling interval must be positive")
        self.path = path
        self.index_location = index_location
        self.interval = float(interval)
        self.reconcile_interval = float(reconcile_interval)
        self.watch_limit = default_watch_limit() if max_watches is None else max(0, int(max_watches))
        self.root = ""
        self._real_root = ""
        self.error: BaseException | None = None
        self._force_polling = polling
        self._mode = MODE_STARTING
        self._note: str | None = "catching up with the archive"
        self._started_at = time.time()
        self._last_change_at: float | None = None
        self._ready = threading.Event()

        self._condition = threading.Condition()  # an RLock inside: safe to notify from a signal handler
        self._stopping = False
        self._pending_paths: set[str] = set()
        self._pending_targets: set[str] = set()
        self._deferred: dict[str, float] = {}
        self._first_event_at = 0.0
        self._last_event_at = 0.0
        self._reconcile_requested: str | None = None
        self._rewatch_requested = False
        self._reconciling = False
        self._touched_during_reconcile: set[str] | None = None
        self._last_reconcile_at = time.monotonic()
        self._last_reconcile_seconds: float | None = None

        self._index: ArchiveIndex | None = None
        self._index_identity: tuple[int, int] | None = None
        self._reconcile_index: ArchiveIndex | None = None
        self._observer: Any = None
        self._recorder = _EventRecorder(self)
        self._watches: dict[str, _Watch] = {}
        # Running experiments past the watch budget: rel_path -> (meta mtime, size, folder mtime) last seen.
        self._polled_experiments: dict[str, tuple[int, int, int] | None] = {}
        self._poll_queue: collections.deque[str] = collections.deque()  # round-robin order of the above
        self._next_experiment_poll = 0.0
        self._watched_ids: dict[tuple[int, int], str] = {}
        self._overflow_listener: _OverflowListener | None = None
        self._worker: threading.Thread | None = None
        self._reconciler: threading.Thread | None = None

    # ----------------------------------------------------------------- control

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run_worker, name="pycomex-index-watcher", daemon=True)
        self._worker.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the catch-up sync is done and the heartbeat vouches for the index."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self.is_alive() or (deadline is not None and time.monotonic() > deadline):
                return self._ready.is_set()
        return True

    def is_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def request_stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

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
        with self._condition:
            backlog = self._backlog()
        return WatcherStatus(
            mode=self._mode,
            note=self._note,
            ready=self._ready.is_set(),
            watch_count=len(self._watches),
            watch_limit=self.watch_limit,
            backlog=backlog,
            last_change_at=self._last_change_at,
            started_at=self._started_at,
        )

    # ------------------------------------------------------------ event intake

    def _record_paths(self, paths: list[str]) -> None:
        """Called on the observer's thread for every event: remember the paths, wake the worker."""
        root = self.root
        prefix = root + os.sep
        now = time.monotonic()
        with self._condition:
            for path in paths:
                if path == root:
                    rel = ""
                elif path.startswith(prefix):
                    rel = path[len(prefix):]
                else:
                    continue
                if not self._pending_paths:
                    self._first_event_at = now
                self._pending_paths.add(rel)
            self._last_event_at = now
            self._condition.notify_all()

    def _request_reconcile(self, reason: str, *, rewatch: bool = False) -> None:
        with self._condition:
            self._reconcile_requested = reason
            self._rewatch_requested = self._rewatch_requested or rewatch
            self._condition.notify_all()

    def _requeue(self, rel: str, delay: float = 0.0) -> None:
        with self._condition:
            if delay > 0:
                self._deferred[rel] = time.monotonic() + delay
            else:
                self._pending_targets.add(rel)
            self._condition.notify_all()

    def _backlog(self) -> int:
        return len(self._pending_paths) + len(self._pending_targets) + len(self._deferred)

    # ------------------------------------------------------------------ worker

    def _run_worker(self) -> None:
        try:
            self._index = open_archive_index(self.path, self.index_location)
            self.root = self._index.root
            self._real_root = os.path.realpath(self.root)
            self._reconcile_index = open_archive_index(self._index.root, self._index.location)  # for the reconcile thread
            self._index_identity = _file_identity(self._index.location)
            self._set_up()
            self._loop()
        except _Stopping:
            pass
        except BaseException as error:  # noqa: BLE001 - reported by whoever runs the watcher
            self.error = error
            logger.exception("the watcher stopped because of an error")
        finally:
            self._shut_down()

    def _set_up(self) -> None:
        assert self._index is not None
        index = self._index
        logger.info("watching %s (index %s)", self.root, index.location)
        self._heartbeat()
        if self._force_polling:
            self._mode, self._note = MODE_POLLING, f"polling every {self.interval:g} s, as asked (--polling)"
            logger.info("%s", self._note)
        elif is_network_filesystem(self.root):
            self._mode = MODE_POLLING
            self._note = (
                f"polling every {self.interval:g} s: the archive is on a network filesystem "
                f"({filesystem_type(self.root)}), where inotify sees no writes from other hosts"
            )
            logger.warning("%s", self._note)
        else:
            try:
                self._start_observer()
                self._watch_namespaces()
            except WatchLimitReached as reason:
                self._fall_back_to_polling(str(reason), reconcile=False)
        if "://" not in index.location and is_network_filesystem(os.path.dirname(index.location)):
            logger.warning(
                "the index %s is on a network filesystem: SQLite's WAL does not work there; "
                "put it on a local disk with --index",
                index.location,
            )

        self._catch_up()
        if self._mode == MODE_INOTIFY:
            try:
                self._watch_running_experiments()
            except WatchLimitReached as reason:
                self._fall_back_to_polling(str(reason))
            self._note = self._inotify_note()
            logger.info("%s", self._note)
        self._ready.set()
        self._heartbeat()

    def _catch_up(self) -> None:
        """The first sync; retried with a growing pause (the index busy, a disk hiccup) until it succeeds."""
        from pycomex_index.sync import sync_archive

        assert self._index is not None
        pause = 1.0
        while True:
            try:
                report = sync_archive(self._index, on_progress=self._abandon_if_stopping)
                break
            except _Stopping:
                raise
            except Exception:  # noqa: BLE001 - log and retry; commands sync themselves meanwhile
                logger.exception("catching up with the archive failed; retrying in %g s", pause)
                with self._condition:
                    if self._condition.wait_for(lambda: self._stopping, pause):
                        raise _Stopping() from None
                pause = min(pause * 2, 60.0)
        logger.info(
            "caught up in %.2f s: %d added, %d updated, %d removed, %d with new assets, %d unchanged",
            report.seconds, report.added, report.updated, report.removed, report.assets_refreshed, report.unchanged,
        )
        if report.changed:
            self._last_change_at = time.time()
        self._last_reconcile_at = time.monotonic()

    def _loop(self) -> None:
        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_SECONDS
        while True:
            batch = self._next_batch(next_heartbeat)
            if batch is None:
                return
            paths, targets = batch
            if paths or targets:
                try:
                    self._apply(paths, targets)
                except WatchLimitReached as reason:
                    self._fall_back_to_polling(str(reason))
                except Exception:  # noqa: BLE001 - log, retry, keep watching
                    logger.exception(
                        "could not apply %d changes; retrying, and re-walking the archive", len(paths) + len(targets)
                    )
                    retry_at = time.monotonic() + 1.0
                    with self._condition:
                        for rel in paths | targets:
                            self._deferred[rel] = retry_at
                    self._request_reconcile("a batch of changes failed")
            self._maybe_reconcile()
            if self._mode == MODE_INOTIFY:
                self._poll_unwatched_experiments()
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_SECONDS

    def _next_batch(self, next_heartbeat: float) -> tuple[set[str], set[str]] | None:
        """Wait until changes settled, a retry is due, or the heartbeat or a reconcile is due."""
        with self._condition:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                wait = next_heartbeat - now
                paths: set[str] = set()
                targets: set[str] = set()
                if self._pending_paths:
                    quiet = now - self._last_event_at
                    age = now - self._first_event_at
                    if quiet >= SETTLE_SECONDS or age >= MAX_BATCH_DELAY_SECONDS:
                        paths, self._pending_paths = self._pending_paths, set()
                    else:
                        wait = min(wait, SETTLE_SECONDS - quiet, MAX_BATCH_DELAY_SECONDS - age)
                if self._pending_targets:
                    targets, self._pending_targets = self._pending_targets, set()
                for rel, due in list(self._deferred.items()):
                    if due <= now:
                        del self._deferred[rel]
                        targets.add(rel)
                    else:
                        wait = min(wait, due - now)
                if paths or targets:
                    return paths, targets
                if not self._reconciling:
                    if self._reconcile_requested is not None:
                        return paths, targets
                    wait = min(wait, self._last_reconcile_at + self._reconcile_period() - now)
                if wait <= 0:
                    return paths, targets
                self._condition.wait(wait)

    def _reconcile_period(self) -> float:
        return self.interval if self._mode == MODE_POLLING else self.reconcile_interval

    def _heartbeat(self) -> None:
        assert self._index is not None
        if self._index_identity is not None and _file_identity(self._index.location) != self._index_identity:
            # Someone deleted or replaced the index: writing on into the orphaned file helps nobody.
            logger.error("the index %s was removed or replaced; stopping", self._index.location)
            self.request_stop()
            return
        mode = self._mode if self._ready.is_set() else MODE_STARTING
        with self._condition:
            backlog = self._backlog()
        note = self._inotify_note() if self._mode == MODE_INOTIFY else self._note
        if self._mode == MODE_POLLING and self._last_reconcile_seconds is not None:
            note = f"{note}; a pass takes {self._last_reconcile_seconds:.2f} s"
        try:
            write_heartbeat(
                self._index,
                mode=mode,
                started_at=self._started_at,
                backlog=backlog,
                last_change_at=self._last_change_at,
                note=note,
            )
        except Exception:  # noqa: BLE001 - a missed heartbeat only makes commands sync themselves
            logger.exception("could not write the heartbeat")

    def _shut_down(self) -> None:
        self._ready.clear()
        if self._index is not None:
            try:
                clear_heartbeat(self._index)  # first: commands stop trusting the index at once
            except Exception:  # noqa: BLE001
                logger.exception("could not clear the heartbeat")
            self._index.close()
        if self._observer is not None:
            self._stop_observer()
        reconciler = self._reconciler
        if reconciler is not None:
            reconciler.join(30)  # it gives up at its next batch boundary
        if self._reconcile_index is not None and not (reconciler is not None and reconciler.is_alive()):
            self._reconcile_index.close()
        logger.info("stopped watching %s", self.root)

    def _abandon_if_stopping(self, done: int, total: int) -> None:
        if self._stopping:
            raise _Stopping()

    # ---------------------------------------------------------------- watches

    def _start_observer(self) -> None:
        try:
            from watchdog.observers.inotify import InotifyObserver
        except Exception as error:  # noqa: BLE001 - not Linux, or no inotify: poll
            raise WatchLimitReached(f"inotify is not available ({error})") from None
        try:
            self._observer = InotifyObserver()
        except OSError as error:
            raise WatchLimitReached(f"inotify is not available ({error.strerror or error})") from None
        self._observer.start()
        self._overflow_listener = _OverflowListener(self)
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow_listener)
        self._mode = MODE_INOTIFY

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        self._watches.clear()
        self._watched_ids.clear()
        if self._overflow_listener is not None:
            logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow_listener)
            self._overflow_listener = None
        if observer is not None:
            try:
                observer.stop()
                observer.join(10)
            except Exception:  # noqa: BLE001
                logger.exception("could not stop the observer cleanly")

    def _kind(self, rel: str) -> str | None:
        """What a watched folder is (namespace or experiment), None when unwatched; forgets dead watches."""
        watch = self._watches.get(rel)
        if watch is None:
            return None
        if watch.is_dead():
            self._unwatch(rel)
            return None
        return watch.kind

    def _watch(self, rel: str, kind: str) -> bool:
        """Watch a folder non-recursively; False when it vanished. Raises WatchLimitReached."""
        if self._kind(rel) is not None:
            self._watches[rel].kind = kind
            return True
        if len(self._watches) >= self.watch_limit:
            raise WatchLimitReached(
                f"the archive needs more than {self.watch_limit} inotify watches (one per namespace folder "
                f"and running experiment); set {MAX_WATCHES_ENV_VARIABLE} or raise fs.inotify.max_user_watches"
            )
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )

        folder = os.path.join(self.root, rel) if rel else self.root
        try:
            folder_stat = os.stat(folder)
            observed = self._observer.schedule(
                self._recorder,
                folder,
                recursive=False,
                # Only these: the default mask also asks for open/close events, which flood
                # the kernel queue on a large archive (see DESIGN.md, "Measured").
                event_filter=[
                    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent,
                    DirDeletedEvent, FileMovedEvent, DirMovedEvent,
                ],
                follow_symlink=True,
            )
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise WatchLimitReached(
                    f"the system refused another inotify watch after {len(self._watches)} ({error.strerror or error})"
                ) from None
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            logger.warning("cannot watch %s: %s", folder, error.strerror or error)
            return False
        identity = (folder_stat.st_dev, folder_stat.st_ino)
        emitter = getattr(self._observer, "_emitter_for_watch", {}).get(observed)
        self._watches[rel] = _Watch(observed, kind, identity, emitter)
        self._watched_ids[identity] = rel
        return True

    def _watch_experiment(self, rel: str) -> bool:
        """Watch a running experiment, or, past the watch budget, stat its metadata every ``interval``.

        Killed runs stay ``running`` forever, so an archive can hold thousands;
        namespaces keep inotify, and only the running runs that do not fit are
        polled (one stat each, not a walk of the archive).
        """
        try:
            return self._watch(rel, _EXPERIMENT)
        except WatchLimitReached:
            current = stat_experiment_folder(self.root, rel)
            if current is None:
                return False
            if rel not in self._polled_experiments:
                self._polled_experiments[rel] = (current.meta_mtime_ns, current.meta_size, current.folder_mtime_ns)
                self._poll_queue.append(rel)
            return True

    def _poll_unwatched_experiments(self) -> None:
        """Requeue the polled running experiments whose metadata or folder changed since the last look.

        Every ``interval`` the next slice of them is looked at, round-robin,
        so each is seen every ``interval`` while few and every
        ``count / POLLED_EXPERIMENTS_PER_SECOND`` seconds when many.
        """
        if not self._polled_experiments or time.monotonic() < self._next_experiment_poll:
            return
        self._next_experiment_poll = time.monotonic() + self.interval
        queue = self._poll_queue
        for _ in range(min(len(queue), max(1, int(POLLED_EXPERIMENTS_PER_SECOND * self.interval)))):
            rel = queue.popleft()
            if rel not in self._polled_experiments:
                continue  # unwatched since: dropped from the round (a run watched again meanwhile is polled twice)
            queue.append(rel)
            stamp = self._polled_experiments[rel]
            current = stat_experiment_folder(self.root, rel)
            now = None if current is None else (current.meta_mtime_ns, current.meta_size, current.folder_mtime_ns)
            if now != stamp:
                self._polled_experiments[rel] = now
                self._requeue(rel)

    def _unwatch(self, rel: str) -> None:
        self._polled_experiments.pop(rel, None)
        watch = self._watches.pop(rel, None)
        if watch is None:
            return
        if self._watched_ids.get(watch.identity) == rel:
            del self._watched_ids[watch.identity]
        try:
            self._observer.unschedule(watch.observed)
        except (KeyError, RuntimeError):
            pass  # already gone with its folder

    def _unwatch_below(self, rel: str, *, including: bool = True) -> None:
        prefix = rel + "/"
        for watched in [path for path in self._watches if path.startswith(prefix) or (including and path == rel)]:
            self._unwatch(watched)

    def _watched_elsewhere(self, identity: tuple[int, int], rel: str) -> bool:
        """True when this folder is already watched under another name (a symlink to it, or a loop)."""
        return self._watched_ids.get(identity, rel) != rel

    def _watch_namespaces(self) -> None:
        """Watch the root and every namespace folder, each watched before it is listed (so nothing slips by)."""
        pending = [""]
        while pending:
            rel = pending.pop()
            if not self._watch(rel, _NAMESPACE):
                continue
            if rel and stat_experiment_folder(self.root, rel) is not None:
                self._unwatch(rel)  # became an experiment in the meantime; the catch-up sync reads it
                continue
            pending.extend(self._child_namespaces(rel))

    def _child_namespaces(self, rel: str) -> Iterator[str]:
        """Folders directly in ``rel`` that are not experiments (and not already watched under another name)."""
        folder = os.path.join(self.root, rel) if rel else self.root
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if not rel and entry.name == INDEX_FOLDER_NAME:
                continue
            try:
                if not entry.is_dir() or self._is_alias(entry.path):
                    continue
                identity = entry.stat()
            except OSError:
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            if self._watched_elsewhere((identity.st_dev, identity.st_ino), child):
                continue
            if stat_experiment_folder(self.root, child) is None:
                yield child

    def _watch_running_experiments(self) -> None:
        """Watch each running experiment, then re-check it (a rewrite before the watch existed is not lost)."""
        assert self._index is not None
        rows = list(
            self._index.db.execute(
                "SELECT rel_path, meta_mtime_ns, meta_size FROM experiments "
                "WHERE archive_id = :archive_id AND outcome = 'running'",
                {"archive_id": self._index.archive_id},
            )
        )
        for rel, meta_mtime_ns, meta_size in rows:
            if not self._watch_experiment(rel):
                self._requeue(rel)
                continue
            current = stat_experiment_folder(self.root, rel)
            if current is None or (current.meta_mtime_ns, current.meta_size) != (meta_mtime_ns, meta_size):
                self._requeue(rel)

    def _inotify_note(self) -> str:
        polled_count = len(self._polled_experiments)
        round_seconds = max(self.interval, polled_count / POLLED_EXPERIMENTS_PER_SECOND)
        polled = f"; {polled_count} more running experiments polled every {round_seconds:g} s" if polled_count else ""
        return (
            f"inotify: {len(self._watches)} watches (root, namespaces, running experiments; "
            f"limit {self.watch_limit}){polled}"
        )

    def _fall_back_to_polling(self, reason: str, *, reconcile: bool = True) -> None:
        self._stop_observer()
        self._mode = MODE_POLLING
        self._note = f"polling every {self.interval:g} s: {reason}"
        logger.warning("switching to polling: %s", reason)
        with self._condition:
            # The next poll looks at everything, these included.
            self._pending_paths.clear()
            self._pending_targets.clear()
            self._deferred.clear()
        if reconcile:
            self._request_reconcile("switched to polling")
        self._heartbeat()

    # -------------------------------------------------------- applying changes

    def _apply(self, paths: set[str], targets: set[str]) -> None:
        """Bring the index in line with the disk for every folder these paths touch."""
        assert self._index is not None
        for rel in paths:
            target = self._target_for(rel)
            if target is not None:
                targets.add(target)
        with self._condition:
            if self._touched_during_reconcile is not None:
                self._touched_during_reconcile.update(targets)
        changes = _Changes()
        existing = []
        # Vanished folders first, so a folder renamed in this batch loses its old watch before it gets a new one.
        for rel in sorted(targets):
            folder = os.path.join(self.root, rel) if rel else self.root
            if os.path.isdir(folder) and not (rel and self._is_alias(folder)):
                existing.append(rel)
            elif rel:
                self._forget(rel, changes)
            else:
                self._request_reconcile("the archive folder itself vanished or was replaced")
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
        if self._mode == MODE_INOTIFY:
            self._note = self._inotify_note()

    def _target_for(self, rel: str) -> str | None:
        """Which folder an event path asks to re-examine (None: nothing the index cares about)."""
        if rel.split("/", 1)[0] == INDEX_FOLDER_NAME:
            return None
        if not rel:
            return ""
        parent, _, name = rel.rpartition("/")
        watch = self._watches.get(parent)
        if watch is not None and watch.kind == _EXPERIMENT:
            return parent  # its metadata was rewritten or an asset changed
        if name == METADATA_FILE_NAME:
            return parent or None  # a folder gained or lost its metadata (the root is never an experiment)
        return rel

    def _forget(self, rel: str, changes: _Changes) -> None:
        """A folder is gone (or is no folder): drop it and everything indexed below it."""
        changes.removed.add(rel)
        changes.removed.update(self._indexed_below(rel))
        changes.records.pop(rel, None)
        self._unwatch_below(rel)

    def _indexed_below(self, rel: str) -> list[str]:
        assert self._index is not None
        return [
            row[0]
            for row in self._index.db.execute(
                "SELECT rel_path FROM experiments "
                "WHERE archive_id = :archive_id AND rel_path > :low AND rel_path < :high",
                # '0' follows '/' in every collation SQLite uses by default: this is the range "rel/...".
                {"archive_id": self._index.archive_id, "low": rel + "/", "high": rel + "0"},
            )
        ]

    def _reconsider(self, rel: str, changes: _Changes, stack: list[str]) -> None:
        """Look at one existing folder: an experiment to (re)index, or a namespace to watch and list."""
        assert self._index is not None
        current = stat_experiment_folder(self.root, rel)
        if current is None:
            # A folder where experiments can appear: a namespace, or a run whose metadata is not written yet.
            if self._index.db.fetch_one(
                "SELECT 1 FROM experiments WHERE archive_id = :archive_id AND rel_path = :rel_path",
                {"archive_id": self._index.archive_id, "rel_path": rel},
            ):
                changes.removed.add(rel)
            if self._mode != MODE_INOTIFY or self._kind(rel) == _NAMESPACE:
                return  # polling sees it at the next pass; a watched namespace reports its own changes
            try:
                folder_stat = os.stat(os.path.join(self.root, rel))
            except OSError:
                return
            if self._watched_elsewhere((folder_stat.st_dev, folder_stat.st_ino), rel):
                return
            if not self._watch(rel, _NAMESPACE):
                return
            current = stat_experiment_folder(self.root, rel)  # checked again now that the watch is in place
            if current is None:
                # It may have been filled before the watch existed (a tree moved in, ``mkdir -p``).
                stack.extend(self._child_folders(rel))
                return

        # An experiment: pycomex does not look inside it, so neither does the index.
        self._unwatch_below(rel, including=False)
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
                asset_count, disk_usage = measure_assets(os.path.join(self.root, rel))
                changes.assets[rel] = (asset_count, disk_usage, current.folder_mtime_ns)
            outcome = row[3]

        if self._mode != MODE_INOTIFY:
            return
        if outcome != "running":
            self._unwatch(rel)  # finished: only the periodic re-walk looks at it again
            return
        already_watched = self._kind(rel) is not None or rel in self._polled_experiments
        if self._watch_experiment(rel) and not already_watched:
            again = stat_experiment_folder(self.root, rel)
            if again is None or (again.meta_mtime_ns, again.meta_size) != (current.meta_mtime_ns, current.meta_size):
                self._requeue(rel)  # rewritten before the watch was in place

    def _child_folders(self, rel: str) -> list[str]:
        """Every folder directly in ``rel``."""
        folder = os.path.join(self.root, rel)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        children = []
        for entry in entries:
            try:
                if entry.is_dir() and not self._is_alias(entry.path):
                    children.append(f"{rel}/{entry.name}")
            except OSError:
                continue
        return children

    def _is_alias(self, path: str) -> bool:
        """A symlink to a folder inside the archive: discovery skips those (the real folder is indexed)."""
        if not os.path.islink(path):
            return False
        target = os.path.realpath(path)
        return target == self._real_root or target.startswith(self._real_root + os.sep)

    def _read_when_settled(self, folder_stat: FolderStat) -> ExperimentRecord | None:
        """Read an experiment once its metadata stopped changing; None (and a retry) while it is still written."""
        record = read_experiment(self.root, folder_stat)
        after = stat_experiment_folder(self.root, folder_stat.rel_path)
        read_as = (folder_stat.meta_mtime_ns, folder_stat.meta_size)
        if after is None or (after.meta_mtime_ns, after.meta_size) != read_as:
            self._requeue(folder_stat.rel_path, RETRY_DELAY_SECONDS)
            return None
        if record.read_error is not None:
            age = abs(time.time_ns() - folder_stat.meta_mtime_ns) / 1e9
            if age < HALF_WRITTEN_GRACE_SECONDS:
                logger.debug(
                    "%s: %s; retrying (it was written %.2f s ago)", folder_stat.rel_path, record.read_error, age
                )
                self._requeue(folder_stat.rel_path, RETRY_DELAY_SECONDS)
                return None
        return record

    def _flush(self, changes: _Changes) -> None:
        if not len(changes):
            return
        assert self._index is not None
        db, archive_id = self._index.db, self._index.archive_id
        removed = changes.removed - changes.records.keys()
        with db.transaction():
            remove_experiments(db, archive_id, sorted(removed))
            store_records(db, archive_id, changes.records.values())
            update_assets(db, archive_id, [(rel, *figures) for rel, figures in changes.assets.items()])
        self._last_change_at = time.time()
        logger.info(
            "applied %d changes: %d read, %d removed, %d with new assets",
            len(changes), len(changes.records), len(removed), len(changes.assets),
        )
        for rel, record in changes.records.items():
            if record.read_error:
                logger.warning("%s: %s", rel, record.read_error)

    # -------------------------------------------------------------- reconcile

    def _maybe_reconcile(self) -> None:
        with self._condition:
            if self._reconciling or self._stopping:
                return
            reason = self._reconcile_requested
            if reason is None and time.monotonic() < self._last_reconcile_at + self._reconcile_period():
                return
            rewatch = self._rewatch_requested and self._mode == MODE_INOTIFY
            self._reconcile_requested = None
            self._rewatch_requested = False
            self._reconciling = True
            self._touched_during_reconcile = set()
        if rewatch:
            # Events were lost: watch namespaces that appeared meanwhile before re-walking.
            try:
                self._watch_namespaces()
            except WatchLimitReached as limit:
                self._fall_back_to_polling(str(limit), reconcile=False)
        if reason is not None:
            logger.info("re-walking the archive: %s", reason)
        self._reconciler = threading.Thread(target=self._reconcile, name="pycomex-index-reconcile", daemon=True)
        self._reconciler.start()

    def _reconcile(self) -> None:
        """One full sync on its own connection; paths the worker applied meanwhile are re-applied after it,
        so a sync that read a folder just before an event can never leave the older state behind."""
        from pycomex_index.sync import sync_archive

        assert self._reconcile_index is not None
        started = time.monotonic()
        try:
            report = sync_archive(self._reconcile_index, on_progress=self._abandon_if_stopping)
            self._last_reconcile_seconds = report.seconds
            if report.changed:
                self._last_change_at = time.time()
                logger.info(
                    "re-walk found %d added, %d updated, %d removed, %d with new assets (%.2f s)",
                    report.added, report.updated, report.removed, report.assets_refreshed, report.seconds,
                )
        except _Stopping:
            pass
        except Exception:  # noqa: BLE001 - log and try again at the next period
            logger.exception("re-walking the archive failed; trying again in %g s", self._reconcile_period())
        finally:
            with self._condition:
                if self._touched_during_reconcile:
                    self._pending_targets.update(self._touched_during_reconcile)
                self._touched_during_reconcile = None
                self._reconciling = False
                self._last_reconcile_at = time.monotonic()
                if self._last_reconcile_seconds is None:
                    self._last_reconcile_seconds = time.monotonic() - started
                self._condition.notify_all()


def _file_identity(location: str) -> tuple[int, int] | None:
    """(device, inode) of an index file; None for a database URL or a missing file."""
    from pycomex_index.store import is_database_url

    if is_database_url(location):
        return None
    try:
        file_stat = os.stat(location)
    except OSError:
        return None
    return file_stat.st_dev, file_stat.st_ino


def watch_once(path: str, index_location: str | None = None, *, on_progress=None) -> tuple[str, Any]:
    """``watch --once``: catch up with the archive once; returns the archive root and the sync report."""
    from pycomex_index.sync import sync_archive

    with open_archive_index(path, index_location) as index:
        return index.root, sync_archive(index, on_progress=on_progress)
