"""Writing a run into its archive's index while it happens (what the pycomex plugin calls).

The rule: an experiment never waits long for the index and never fails
because of it. So the index is opened with a short busy timeout
(:data:`RUN_BUSY_TIMEOUT_SECONDS`), and the run's row is written through the
same path as every write command (:func:`pycomex_index.operations.reindex_experiment`).
Whatever goes wrong is raised to the caller, which turns it into one warning;
the next sync then reads the run from disk like any other.
"""

from __future__ import annotations

import os

from pycomex_index.db import short_busy_timeout
from pycomex_index.errors import RunOutsideArchiveError
from pycomex_index.operations import reindex_experiment
from pycomex_index.store import open_archive_index

#: How long a run's start or end waits for a locked index. A daemon's or a command's write takes
#: milliseconds; an index locked longer than this is left to catch up at its next sync.
RUN_BUSY_TIMEOUT_SECONDS = 0.5


def run_rel_path(archive_root: str, run_folder: str) -> str:
    """The run's path below the archive root, as the index keys it (``namespace/run``, ``/``-separated)."""
    root = os.path.abspath(archive_root)
    folder = os.path.abspath(run_folder)
    rel_path = os.path.relpath(folder, root)
    if rel_path == os.curdir or rel_path.startswith(os.pardir + os.sep) or rel_path == os.pardir:
        raise RunOutsideArchiveError(f"the run {folder} is not inside the archive {root}")
    return rel_path.replace(os.sep, "/")


def index_run(archive_root: str, run_folder: str, *, busy_timeout: float = RUN_BUSY_TIMEOUT_SECONDS) -> None:
    """Make the index row of the run in ``run_folder`` equal to its folder now (creating the index if needed)."""
    rel_path = run_rel_path(archive_root, run_folder)
    # The timeout is fixed on each connection as it is made, so it holds for everything done with it.
    with short_busy_timeout(busy_timeout):
        index = open_archive_index(archive_root)
    try:
        reindex_experiment(index, rel_path)
    finally:
        index.close()
