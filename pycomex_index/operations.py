"""What the write commands (delete, compress, modify, undo) share.

They all pick experiments from the index the same way, find each folder
below the archive root the same way, and follow the same write-through rule:
change the disk for one experiment, then bring that experiment's index row in
line with the disk, then go on to the next. A crash therefore leaves at most
one experiment out of step, which the next sync mends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pycomex_index.discovery import path_on_disk, read_experiment, stat_experiment_folder
from pycomex_index.rows import remove_experiments, store_records
from pycomex_index.selection import CompiledExpression, EvaluationFailures
from pycomex_index.store import ArchiveIndex


@dataclass(frozen=True, slots=True)
class SelectedExperiment:
    """An experiment a write command will act on, as the index knew it when it was selected."""

    rel_path: str
    namespace: str
    outcome: str
    read_error: str | None


def select_experiments(
    index: ArchiveIndex,
    selection: CompiledExpression | None,
    failures: EvaluationFailures | None = None,
) -> list[SelectedExperiment]:
    """The experiments ``selection`` keeps, or every experiment (unreadable ones too) for None (``--all``).

    The list is built before anything is changed, so a write never disturbs
    the query that chose what to write.
    """
    from pycomex_index.queries import iter_experiments

    return [
        SelectedExperiment(row.rel_path, row.namespace, row.outcome, row.read_error)
        for row in iter_experiments(index, selection, include_unreadable=True, failures=failures)
    ]


class UnsafePathError(ValueError):
    """An index row whose path would lead outside the archive root."""


def experiment_folder(root: str, rel_path: str) -> str:
    """The folder on disk of the experiment stored as ``rel_path``, refusing any path not plainly below ``root``."""
    rel_path = path_on_disk(rel_path)
    parts = rel_path.split("/")
    if os.path.isabs(rel_path) or any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"{rel_path!r} is not a plain path below the archive root")
    return os.path.join(root, *parts)


def is_within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both already resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def reindex_experiment(index: ArchiveIndex, rel_path: str) -> bool:
    """Make one experiment's index row equal to its folder now; False when it is no longer an experiment."""
    folder = stat_experiment_folder(index.root, rel_path)
    if folder is None:
        remove_experiments(index.db, index.archive_id, [rel_path])
        return False
    store_records(index.db, index.archive_id, [read_experiment(index.root, folder)])
    return True
