"""Writing a run into its archive's index while it happens (what the pycomex plugin calls).

The rule: an experiment never waits long for the index and never fails
because of it. So the index is opened with a short busy timeout
(:data:`RUN_BUSY_TIMEOUT_SECONDS`), and the run's row is written through the
same path as every write command (:func:`pycomex_index.operations.reindex_experiment`).
Whatever goes wrong is raised to the caller, which turns it into one warning;
the next sync then reads the run from disk like any other.

While a run lives, the index also holds where its process runs and a
heartbeat (:mod:`pycomex_index.liveness`): written at its start, refreshed by
a daemon thread (:class:`RunHeartbeat`), removed at its end. A run killed in
between is then shown as interrupted, not running.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from pycomex_index.db import short_busy_timeout
from pycomex_index.errors import RunOutsideArchiveError
from pycomex_index.liveness import (
    RUN_HEARTBEAT_INTERVAL_SECONDS,
    RUN_HEARTBEAT_INTERVAL_VARIABLE,
    forget_run,
    record_heartbeat,
    record_run_start,
    seconds_from_environment,
)
from pycomex_index.operations import reindex_experiment
from pycomex_index.store import open_archive_index

#: How long a run's start or end waits for a locked index. A daemon's or a command's write takes
#: milliseconds; an index locked longer than this is left to catch up at its next sync.
RUN_BUSY_TIMEOUT_SECONDS = 0.5


def run_heartbeat_interval() -> float | None:
    """Seconds between a run's heartbeats (``PYCOMEX_INDEX_HEARTBEAT_INTERVAL``); None when 0 turns them off."""
    return seconds_from_environment(RUN_HEARTBEAT_INTERVAL_VARIABLE, RUN_HEARTBEAT_INTERVAL_SECONDS) or None


def run_rel_path(archive_root: str, run_folder: str) -> str:
    """The run's path below the archive root, as the index keys it (``namespace/run``, ``/``-separated)."""
    root = os.path.abspath(archive_root)
    folder = os.path.abspath(run_folder)
    rel_path = os.path.relpath(folder, root)
    if rel_path == os.curdir or rel_path.startswith(os.pardir + os.sep) or rel_path == os.pardir:
        raise RunOutsideArchiveError(f"the run {folder} is not inside the archive {root}")
    return rel_path.replace(os.sep, "/")


def index_run(
    archive_root: str,
    run_folder: str,
    *,
    busy_timeout: float = RUN_BUSY_TIMEOUT_SECONDS,
    liveness: str | None = None,
    heartbeat_interval: float | None = None,
) -> None:
    """Make the index row of the run in ``run_folder`` equal to its folder now (creating the index if needed).

    ``liveness``: ``"start"`` also records this process as the run's (see
    :mod:`pycomex_index.liveness`), ``"end"`` removes that record.
    """
    rel_path = run_rel_path(archive_root, run_folder)
    # The timeout is fixed on each connection as it is made, so it holds for everything done with it.
    with short_busy_timeout(busy_timeout):
        index = open_archive_index(archive_root)
    try:
        reindex_experiment(index, rel_path)
        if liveness == "start":
            record_run_start(index.db, index.archive_id, rel_path, heartbeat_interval=heartbeat_interval)
        elif liveness == "end":
            forget_run(index.db, index.archive_id, rel_path)
    finally:
        index.close()


def beat(archive_root: str, run_folder: str, *, busy_timeout: float = RUN_BUSY_TIMEOUT_SECONDS) -> None:
    """Refresh the heartbeat of the run in ``run_folder`` (this process's)."""
    rel_path = run_rel_path(archive_root, run_folder)
    with short_busy_timeout(busy_timeout):
        index = open_archive_index(archive_root)
    try:
        record_heartbeat(index.db, index.archive_id, rel_path)
    finally:
        index.close()


class RunHeartbeat(threading.Thread):
    """A daemon thread refreshing a run's heartbeat every ``interval`` seconds until :meth:`stop`.

    The index is opened afresh for each beat (a few milliseconds every half
    minute), so a replaced or repaired index file is simply the next one
    written to. Every failure goes to ``on_error`` and the thread beats on.
    A daemon thread never keeps the experiment's process alive, and it only
    waits on the index with the short busy timeout, never the experiment.
    """

    def __init__(
        self, archive_root: str, run_folder: str, interval: float, on_error: Callable[[BaseException], None]
    ) -> None:
        super().__init__(name="pycomex-index-heartbeat", daemon=True)
        self.archive_root, self.run_folder, self.interval = archive_root, run_folder, interval
        self.on_error = on_error
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                beat(self.archive_root, self.run_folder)
            except Exception as error:  # noqa: BLE001 - the experiment never hears of it but as one warning
                try:
                    self.on_error(error)
                except Exception:  # noqa: BLE001
                    pass

    def stop(self) -> None:
        """Beat no more; not waited for: a beat already under way only updates a record that may be gone."""
        self._stopped.set()
