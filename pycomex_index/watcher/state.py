"""What a running watcher tells the world: its mode, a note on why, when it last changed the index.

Written by the worker (and, for the time of the last change, by the re-walk
thread); read by :meth:`ArchiveWatcher.status` from any thread and by the
heartbeat.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pycomex_index.heartbeat import MODE_STARTING


@dataclass(frozen=True)
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


class WatcherState:
    """The watcher's mode, note and time of its last change, shared between threads under one lock."""

    def __init__(self) -> None:
        self.started_at = time.time()
        #: Set once the catch-up sync is done and the heartbeat vouches for the index; cleared at shut-down.
        self.ready = threading.Event()
        self._lock = threading.Lock()
        # Must be held when accessing _mode, _note and _last_change_at.
        self._mode = MODE_STARTING
        self._note: str | None = "catching up with the archive"
        self._last_change_at: float | None = None

    def set_mode(self, mode: str, note: str | None = None) -> None:
        """Switch mode; the note is kept unless a new one is given."""
        with self._lock:
            self._mode = mode
            if note is not None:
                self._note = note

    def set_note(self, note: str) -> None:
        with self._lock:
            self._note = note

    def changed_now(self) -> None:
        """The index was just changed (by the worker or a re-walk)."""
        with self._lock:
            self._last_change_at = time.time()

    def snapshot(self) -> tuple[str, str | None, float | None]:
        """``(mode, note, last_change_at)``, consistent with each other."""
        with self._lock:
            return self._mode, self._note, self._last_change_at

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode
