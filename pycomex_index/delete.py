"""``archive delete``: remove experiment folders from the disk and their rows from the index.

:func:`plan_delete` decides what would go (running experiments held back,
experiments never exported counted) without touching anything; the CLI shows
that plan and asks. :func:`delete_experiments` then removes exactly the
planned experiments, one at a time, disk first, then the index row.

Removing one experiment starts by unlinking its experiment_meta.json, so from
that instant the folder is no longer an experiment: a crash in the middle of
removing its files leaves a leftover folder that no sync will list, never an
index row (or a listing) of a half-deleted experiment.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pycomex_index.atomic import fsync_folder
from pycomex_index.discovery import METADATA_FILE_NAME
from pycomex_index.operations import (
    SelectedExperiment,
    UnsafePathError,
    experiment_folder,
    is_within,
    select_experiments,
)
from pycomex_index.rows import remove_experiments
from pycomex_index.selection import CompiledExpression, EvaluationFailures
from pycomex_index.store import ArchiveIndex

DELETED, SKIPPED, FAILED = "deleted", "skipped", "failed"


@dataclass
class DeletePlan:
    """What a delete would remove, and what it holds back."""

    targets: list[SelectedExperiment]
    held_running: list[SelectedExperiment] = field(default_factory=list)
    #: How many of the targets no ``compress`` of this archive ever put into a ZIP.
    never_exported: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    """What happened to one experiment: deleted, skipped (no longer an experiment) or failed."""

    rel_path: str
    status: str
    message: str | None = None


def plan_delete(
    index: ArchiveIndex,
    selection: CompiledExpression | None,
    *,
    include_running: bool = False,
    failures: EvaluationFailures | None = None,
) -> DeletePlan:
    """Choose the experiments to delete (``selection`` None means all) without changing anything."""
    from pycomex_index.compress import exported_paths

    selected = select_experiments(index, selection, failures)
    plan = DeletePlan(targets=[])
    for experiment in selected:
        if experiment.outcome == "running" and not include_running:
            plan.held_running.append(experiment)
        else:
            plan.targets.append(experiment)
    if plan.targets:
        exported = exported_paths(index)
        plan.never_exported = sum(1 for experiment in plan.targets if experiment.rel_path not in exported)
    return plan


def delete_experiments(index: ArchiveIndex, targets: Iterable[SelectedExperiment]) -> Iterator[DeleteOutcome]:
    """Delete each target (disk, then index row) and yield what happened, as it happens."""
    for target in targets:
        yield delete_experiment(index, target.rel_path)


def delete_experiment(index: ArchiveIndex, rel_path: str) -> DeleteOutcome:
    """Remove one experiment folder below the archive root and then its index row.

    A symlinked experiment folder is unlinked (its target stays); an
    experiment reached through a symlinked namespace folder lies outside the
    root and is refused; a folder that is no longer an experiment is skipped
    (and dropped from the index, which then matches the disk).
    """
    root = index.root
    try:
        folder = experiment_folder(root, rel_path)
    except UnsafePathError as error:
        return DeleteOutcome(rel_path, FAILED, str(error))
    parent = os.path.dirname(folder)
    if not is_within(os.path.realpath(parent), os.path.realpath(root)):
        return DeleteOutcome(
            rel_path, FAILED, "lies outside the archive root (through a symlinked folder); not deleted"
        )
    try:
        folder_stat = os.lstat(folder)
    except FileNotFoundError:
        return _skipped(index, rel_path, "no longer exists")
    except OSError as error:
        return DeleteOutcome(rel_path, FAILED, f"cannot inspect the folder: {error.strerror}")

    if stat.S_ISLNK(folder_stat.st_mode):
        if not os.path.isfile(os.path.join(folder, METADATA_FILE_NAME)):
            return _skipped(index, rel_path, "the symlink no longer leads to an experiment")
        try:
            os.unlink(folder)
        except OSError as error:
            return DeleteOutcome(rel_path, FAILED, f"cannot remove the symlink: {error.strerror}")
        fsync_folder(parent)
        remove_experiments(index.db, index.archive_id, [rel_path])
        return DeleteOutcome(rel_path, DELETED, "symlink removed, its target kept")

    if not stat.S_ISDIR(folder_stat.st_mode):
        return _skipped(index, rel_path, "is no longer a folder")
    metadata_path = os.path.join(folder, METADATA_FILE_NAME)
    try:
        metadata_stat = os.lstat(metadata_path)
    except OSError:
        metadata_stat = None
    if metadata_stat is None or not stat.S_ISREG(metadata_stat.st_mode):
        return _skipped(index, rel_path, f"is no longer an experiment (no {METADATA_FILE_NAME})")
    try:
        os.unlink(metadata_path)
    except OSError as error:
        return DeleteOutcome(rel_path, FAILED, f"cannot remove {METADATA_FILE_NAME}: {error.strerror}")
    fsync_folder(folder)
    problems: list[str] = []
    _remove_tree(folder, problems)
    fsync_folder(parent)
    # From the unlink on, the folder is no longer an experiment, whatever rmtree managed.
    remove_experiments(index.db, index.archive_id, [rel_path])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return DeleteOutcome(
            rel_path, FAILED, f"no longer an experiment, but some files could not be removed: {problems[0]}{more}"
        )
    return DeleteOutcome(rel_path, DELETED)


def _skipped(index: ArchiveIndex, rel_path: str, reason: str) -> DeleteOutcome:
    remove_experiments(index.db, index.archive_id, [rel_path])
    return DeleteOutcome(rel_path, SKIPPED, reason)


def _remove_tree(folder: str, problems: list[str]) -> None:
    """``shutil.rmtree`` (which unlinks symlinks inside, never follows them), collecting what it could not remove."""

    def record(_function, path, error) -> None:
        if isinstance(error, tuple):  # onerror gives exc_info
            error = error[1]
        problems.append(f"{path}: {_reason(error)}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=record)
    else:
        shutil.rmtree(folder, onerror=record)


def _reason(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
