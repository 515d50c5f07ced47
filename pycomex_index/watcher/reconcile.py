"""The re-walk: a full :func:`~pycomex_index.sync.sync_archive` now and then, on a thread of its own.

In inotify mode it catches what no watch sees (edits to finished runs,
events lost to a queue overflow) every ``reconcile_interval``; in polling
mode it *is* the watcher, every ``poll_interval``. It runs on its own index
connection (in inotify mode, in a child process:
:mod:`pycomex_index.sync_process`) while the worker keeps applying events;
the folders the worker applied meanwhile are applied again after it, so a
sync that read a folder just before an event can never leave the older state
behind.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from pycomex_index.store import ArchiveIndex
from pycomex_index.sync_process import Stopping, SyncProcessError, full_sync
from pycomex_index.watcher.changes import ChangeQueue

logger = logging.getLogger("pycomex_index.watcher")


class Reconciler:
    """When the next re-walk is due, and the one running.

    :meth:`request` may be called from any thread (the observer's, on an
    overflow); :meth:`begin`, :meth:`run_in_background` and :meth:`join` from
    the worker only.
    """

    def __init__(self, queue: ChangeQueue, on_change: Callable[[], None]) -> None:
        self._queue = queue
        self._on_change = on_change
        self._lock = threading.Lock()
        # Must be held when accessing every field below.
        self._requested: str | None = None
        self._rewatch = False
        self._running = False
        self._touched: set[str] | None = None
        self._last_at = time.monotonic()
        self._last_seconds: float | None = None
        # The worker thread only.
        self._thread: threading.Thread | None = None

    def request(self, reason: str, *, rewatch: bool = False) -> None:
        """Re-walk as soon as possible (after the one running); ``rewatch``: events were lost, so
        watch the namespaces again first."""
        with self._lock:
            self._requested = reason
            self._rewatch = self._rewatch or rewatch
        self._queue.wake()

    def caught_up(self, seconds: float) -> None:
        """A full sync that took ``seconds`` just ran (the worker's catch-up): the next periodic one is a
        period away."""
        with self._lock:
            self._last_at = time.monotonic()
            self._last_seconds = seconds

    def note_applied(self, targets: set[str]) -> None:
        """The worker applies these folders now: applied again after a re-walk that runs meanwhile."""
        with self._lock:
            if self._touched is not None:
                self._touched.update(targets)

    def due_at(self, period: float) -> float:
        """When (monotonic) the next periodic re-walk is due; infinity while one runs."""
        with self._lock:
            return math.inf if self._running else self._last_at + period

    @property
    def last_seconds(self) -> float | None:
        """How long the last full sync (re-walk or catch-up) took; None before the first."""
        with self._lock:
            return self._last_seconds

    def begin(self, period: float) -> tuple[str | None, bool] | None:
        """If a re-walk is due (asked for, or a ``period`` since the last), mark it running and return
        ``(reason, rewatch)``; None when none is due or one runs already."""
        with self._lock:
            if self._running:
                return None
            reason = self._requested
            if reason is None and time.monotonic() < self._last_at + period:
                return None
            rewatch = self._rewatch
            self._requested = None
            self._rewatch = False
            self._running = True
            self._touched = set()
        return reason, rewatch

    def run_in_background(self, index: ArchiveIndex, period: float, *, in_child: bool) -> None:
        """Start the re-walk :meth:`begin` marked running, on its own thread and index connection.

        ``in_child``: the sync runs in a child process the thread waits for (see :mod:`pycomex_index.sync_process`).
        """
        self._thread = threading.Thread(
            target=self._run, args=(index, period, in_child), name="pycomex-index-reconcile", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for a running re-walk (it gives up at its next batch boundary once stopping); True when none runs."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self, index: ArchiveIndex, period: float, in_child: bool) -> None:
        started = time.monotonic()
        seconds = None
        try:
            report = full_sync(index, lambda: self._queue.stopping, in_child=in_child)
            seconds = report.seconds
            if report.changed:
                self._on_change()
                logger.info(
                    "re-walk found %d added, %d updated, %d removed, %d with new assets (%.2f s)",
                    report.added,
                    report.updated,
                    report.removed,
                    report.assets_refreshed,
                    report.seconds,
                )
        except Stopping:
            pass
        except SyncProcessError as error:  # its traceback is in the log already, from the child
            logger.error("re-walking the archive failed (%s); trying again in %g s", error, period)
        except Exception:  # noqa: BLE001 - log and try again at the next period
            logger.exception("re-walking the archive failed; trying again in %g s", period)
        finally:
            with self._lock:
                touched, self._touched = self._touched, None
                self._running = False
                self._last_at = time.monotonic()
                if seconds is not None:
                    self._last_seconds = seconds
                elif self._last_seconds is None:
                    self._last_seconds = time.monotonic() - started
            if touched:
                self._queue.add_targets(touched)
            self._queue.wake()
