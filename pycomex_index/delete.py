"""``archive delete``: remove experiment folders from the disk and their rows from the index.

:func:`plan_delete` decides what would go (running experiments held back unless certainly dead,
folders that hold other experiments refused, experiments never exported
counted) without touching anything; the CLI shows that plan and asks.
:func:`delete_experiments` then removes exactly the planned experiments, one
at a time, disk first, then the index row.

Removing one experiment starts with one atomic rename of its whole folder
into ``<archive>/.pycomex_index/deleting/``, which no walk of ours lists: up
to that instant the run is fully there (and listed), from it on it is gone.
Then the index row goes, then the moved tree is removed. A kill while the
tree is removed leaves it in that folder, where the next ``delete`` finishes
the job (:func:`remove_deletion_leftovers`), never a half run in the archive.
Where the move is impossible (the run lies on another filesystem than the
archive root), experiment_meta.json is unlinked first instead, so a crash
leaves files that no listing counts as an experiment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pycomex_index.atomic import fsync_folder
from pycomex_index.discovery import INDEX_FOLDER_NAME, METADATA_FILE_NAME
from pycomex_index.exports import exported_paths
from pycomex_index.formatting import plural
from pycomex_index.operations import SelectedExperiment, hold_back_running, select_experiments
from pycomex_index.paths import UnsafePathError, experiment_folder, is_within, owner_still_running, this_host
from pycomex_index.rows import remove_experiments
from pycomex_index.selection import CompiledExpression, EvaluationFailures
from pycomex_index.store import ArchiveIndex

DELETED, SKIPPED, FAILED = "deleted", "skipped", "failed"
#: Where a run's folder is moved, in one rename, before its files are removed (below the archive root).
TRASH_FOLDER = os.path.join(INDEX_FOLDER_NAME, "deleting")
#: How long another host's tree in the trash is left alone since its delete last touched it (seconds). Its pid
#: means nothing here, so only age tells a crashed delete from one still removing a large tree over NFS.
OTHER_HOST_TRASH_SECONDS = 24 * 3600


@dataclass
class DeletePlan:
    """What a delete would remove, and what it holds back."""

    targets: list[SelectedExperiment]
    #: Running experiments not certainly dead (see operations.hold_back_running), kept unless include_running.
    held_running: list[SelectedExperiment] = field(default_factory=list)
    #: How many of them look interrupted, by a guess that does not lift the protection.
    held_looking_interrupted: int = 0
    #: Experiments whose folder holds other experiments (below a stray experiment_meta.json): never deleted.
    holding_others: list[tuple[SelectedExperiment, str]] = field(default_factory=list)
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
    selected, held = hold_back_running(
        index, select_experiments(index, selection, failures), include_running=include_running
    )
    plan = DeletePlan(targets=[], held_running=held.experiments, held_looking_interrupted=held.look_interrupted)
    for experiment in selected:
        if reason := _holds_other_experiments(index.root, experiment.rel_path):
            plan.holding_others.append((experiment, reason))
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
    if reason := _holds_other_experiments(root, rel_path):
        return DeleteOutcome(rel_path, FAILED, reason)
    try:
        removed = _move_to_trash(root, folder)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not os.path.lexists(folder):
            return _skipped(index, rel_path, "no longer exists")  # another process deleted it since the look above
        return DeleteOutcome(rel_path, FAILED, f"cannot move the folder out of the archive: {error.strerror}")
    if removed is None:
        # No trash on the run's filesystem (a mount below the root, a read-only root): no rename takes
        # the folder away whole, so the file that makes it an experiment goes first, and a crash
        # leaves no half run that lists as one.
        removed = folder
        try:
            os.unlink(metadata_path)
        except FileNotFoundError:
            return _skipped(index, rel_path, f"is no longer an experiment (no {METADATA_FILE_NAME})")
        except OSError as error:
            return DeleteOutcome(rel_path, FAILED, f"cannot remove {METADATA_FILE_NAME}: {error.strerror}")
    fsync_folder(parent)
    # From here on the run is gone from the archive, whatever removing its files manages.
    remove_experiments(index.db, index.archive_id, [rel_path])
    problems: list[str] = []
    _remove_tree(removed, problems)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return DeleteOutcome(
            rel_path, FAILED, f"no longer an experiment, but some files could not be removed: {problems[0]}{more}"
        )
    return DeleteOutcome(rel_path, DELETED)


def _holds_other_experiments(root: str, rel_path: str) -> str | None:
    """Why the folder of ``rel_path`` must not be deleted (experiments below it), or None.

    A stray experiment_meta.json in a namespace folder makes pycomex (and the
    index) see one experiment there and never look below it, so the runs below
    are listed nowhere; deleting "that experiment" would delete them unseen.
    Symlinked subfolders are not looked into: removing the tree only unlinks them.
    """
    try:
        folder = experiment_folder(root, rel_path)
        folder_stat = os.lstat(folder)
    except (UnsafePathError, OSError):
        return None
    # A folder's link count is 2 + its subfolders where the filesystem counts them (not btrfs: 1),
    # so the common run without subfolders costs one stat, not a walk.
    if not stat.S_ISDIR(folder_stat.st_mode) or folder_stat.st_nlink == 2:
        return None
    found: list[str] = []
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if os.path.isfile(os.path.join(entry.path, METADATA_FILE_NAME)):
                found.append(os.path.relpath(entry.path, folder))
            else:
                pending.append(entry.path)
    if not found:
        return None
    found.sort()
    return (
        f"holds {plural(len(found), 'other experiment')} below it ({found[0]}{', ...' if len(found) > 1 else ''}), "
        f"hidden from listings by its own {METADATA_FILE_NAME}; not deleted"
    )


def _move_to_trash(root: str, folder: str) -> str | None:
    """Rename ``folder`` into the archive's trash (one atomic step); its new path, or None where no rename can.

    None means: the trash cannot be made (a read-only root) or lies on
    another filesystem. The new name carries this process's id and host
    (:func:`trash_entry_name`), so :func:`remove_deletion_leftovers` knows
    which moved trees belong to a delete that is no longer running.
    """
    trash = os.path.join(root, TRASH_FOLDER)
    try:
        os.makedirs(trash, exist_ok=True)
    except OSError:
        return None
    moved = os.path.join(trash, trash_entry_name(os.getpid(), this_host(), os.path.basename(folder)))
    try:
        os.rename(folder, moved)
    except OSError as error:
        if error.errno == errno.EXDEV:
            return None
        raise
    fsync_folder(trash)
    with contextlib.suppress(OSError):
        # So that pycomex's own walk, which looks everywhere, does not list it either.
        os.unlink(os.path.join(moved, METADATA_FILE_NAME))
    with contextlib.suppress(OSError):
        os.utime(moved)  # the move's time (a rename keeps the run's own): the age other hosts judge it by
    return moved


def trash_entry_name(pid: int, host: str, basename: str) -> str:
    """``pid.host.token.basename``: whose delete moved the tree here (a name within 255 bytes for ASCII)."""
    return f"{pid}.{_host_in_name(host)}.{secrets.token_hex(4)}.{basename[:150]}"


def _host_in_name(host: str) -> str:
    # No '.' (the separator), '/' or '%' left: a host name ("node1.lab.example") or the test override.
    return host.replace("%", "%25").replace(".", "%2E").replace("/", "%2F")[:60]


def _still_being_deleted(entry: os.DirEntry, host: str, now: float) -> bool:
    """Whether the delete that moved ``entry`` into the trash may still be at work.

    On this host its pid says so. Another host's pid cannot be checked from
    here, so its tree is left alone until untouched for
    :data:`OTHER_HOST_TRASH_SECONDS`. An entry named before hosts were part of
    the name counts as another host's.
    """
    pid_text, _, rest = entry.name.partition(".")
    entry_host = rest.partition(".")[0]
    if pid_text.isdigit() and entry_host == _host_in_name(host):
        return owner_still_running(int(pid_text))
    try:
        last_touched = entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return True  # gone, or not ours to judge
    return now - last_touched < OTHER_HOST_TRASH_SECONDS


def remove_deletion_leftovers(index: ArchiveIndex) -> int:
    """Finish removing the folders a killed delete had already taken out of the archive; returns how many."""
    trash = os.path.join(index.root, TRASH_FOLDER)
    try:
        entries = list(os.scandir(trash))
    except OSError:
        return 0
    removed = 0
    host, now = this_host(), time.time()
    for entry in entries:
        if _still_being_deleted(entry, host, now):
            continue
        problems: list[str] = []
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path, problems)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        removed += not problems
    return removed


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
