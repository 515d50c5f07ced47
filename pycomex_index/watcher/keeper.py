"""Keeps the watcher's lease (see :mod:`pycomex_index.lease`): renewed on a thread and connection of its own.

Not by the worker: a first sync of a large archive, or one long batch, would
let the lease lapse and hand the archive to another host while this watcher
still writes. When a renewal finds the lease taken, or renewals have failed
for a whole lease time, the keeper says so (``on_lost``) and stops: the
watcher must stop too, as another host may be watching by now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pycomex_index.heartbeat import HEARTBEAT_INTERVAL_SECONDS
from pycomex_index.lease import Holder, read_lease, renew_lease
from pycomex_index.store import ArchiveIndex

logger = logging.getLogger("pycomex_index.watcher")


class LeaseKeeper:
    """Renews ``holder``'s lease every second (or a third of the lease, if shorter) until stopped."""

    def __init__(self, index: ArchiveIndex, holder: Holder, seconds: float, on_lost: Callable[[str], None]) -> None:
        self._index = index  # this thread's own connection; closed when the thread ends
        self._holder = holder
        self._seconds = seconds
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pycomex-index-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        index = self._index
        interval = min(HEARTBEAT_INTERVAL_SECONDS, self._seconds / 3)
        renewed_at = time.monotonic()
        try:
            while not self._stop.wait(interval):
                try:
                    held = renew_lease(index.db, index.archive_id, self._holder, seconds=self._seconds)
                except Exception:  # noqa: BLE001 - retried; given up only once the lease may have run out
                    logger.exception("could not renew the watcher's lease")
                    if time.monotonic() - renewed_at >= self._seconds:
                        self._on_lost(
                            f"the watcher's lease could not be renewed for {self._seconds:g} s: "
                            "another host may be watching the archive by now"
                        )
                        return
                    continue
                if self._stop.is_set():
                    return
                if not held:
                    self._on_lost(self._taken_by())
                    return
                renewed_at = time.monotonic()
        finally:
            index.close()

    def _taken_by(self) -> str:
        try:
            lease = read_lease(self._index.db, self._index.archive_id)
        except Exception:  # noqa: BLE001 - only for the message
            lease = None
        if lease is None:
            return "the watcher's lease was given up by someone else"
        holder = lease.holder
        return f"host {holder.host} (pid {holder.pid}) took the watcher's lease over"
