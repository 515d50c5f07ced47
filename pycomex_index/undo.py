"""``archive undo``: put back what a modify replaced, but only into files that still hold what it wrote.

:func:`plan_undo` reads the journal (:mod:`pycomex_index.journal`) and
checks every file without changing anything: restore it (it holds exactly
what the modify wrote), nothing to do (it holds its previous content again),
or refuse (changed since, gone, unreadable, read-only). :func:`undo_modify`
checks each file again right before restoring it, then writes through like
every write command: the file atomically, then its index row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from pycomex_index.atomic import is_read_only, remove_stale_temporaries, write_atomic
from pycomex_index.discovery import METADATA_FILE_NAME
from pycomex_index.errors import UndoError
from pycomex_index.journal import (
    JournalEntry,
    ModifyRunInfo,
    content_digest,
    find_modify_run,
    journal_entries,
    mark_undone,
    modify_runs,
)
from pycomex_index.operations import reindex_experiment
from pycomex_index.paths import UnsafePathError, experiment_folder
from pycomex_index.store import ArchiveIndex

RESTORE, ALREADY_RESTORED, CONFLICT = "restore", "already restored", "conflict"
RESTORED, REFUSED = "restored", "refused"


@dataclass(frozen=True, slots=True)
class UndoItem:
    """One journaled file and what undo would do with it (restore, nothing, or refuse and why)."""

    rel_path: str
    action: str
    reason: str | None = None


@dataclass
class UndoPlan:
    run: ModifyRunInfo
    items: list[UndoItem]

    def with_action(self, action: str) -> list[UndoItem]:
        return [item for item in self.items if item.action == action]


@dataclass(frozen=True, slots=True)
class UndoOutcome:
    rel_path: str
    status: str
    reason: str | None = None


def plan_undo(index: ArchiveIndex, run_id: int | None = None) -> UndoPlan | None:
    """What undoing modify ``run_id`` (default: the last one not undone) would do; None when there is none."""
    if run_id is None:
        runs = [run for run in modify_runs(index) if run.file_count]
        if not runs:
            return None
        run = runs[0]
    else:
        found = find_modify_run(index, run_id)
        if found is None:
            raise UndoError(f"there is no modify with id {run_id} in this archive")
        if found.undone_at is not None:
            raise UndoError(f"modify {run_id} was already undone")
        run = found
    return UndoPlan(run, [_undo_item(index, entry) for entry in journal_entries(index, run.id)])


def undo_modify(index: ArchiveIndex, plan: UndoPlan) -> Iterator[UndoOutcome]:
    """Restore the files of ``plan`` (each checked again right before it is written), then mark the run undone.

    The run stays undoable while any file was refused, so a second undo,
    once the conflict is resolved, finishes the job.
    """
    complete = True
    for entry in journal_entries(index, plan.run.id):
        rel_path = entry.rel_path
        item = _undo_item(index, entry)
        if item.action == ALREADY_RESTORED:
            # A modify killed between journaling and renaming: the file is intact, only its temporary is left.
            if remove_stale_temporaries(os.path.join(experiment_folder(index.root, rel_path), METADATA_FILE_NAME)):
                reindex_experiment(index, rel_path)
            continue
        if item.action == CONFLICT:
            complete = False
            yield UndoOutcome(rel_path, REFUSED, item.reason)
            continue
        metadata_path = os.path.join(experiment_folder(index.root, rel_path), METADATA_FILE_NAME)
        try:
            write_atomic(metadata_path, entry.previous_content.encode("utf-8"))
        except OSError as error:
            complete = False
            yield UndoOutcome(rel_path, REFUSED, f"cannot write {METADATA_FILE_NAME}: {error.strerror or error}")
            continue
        reindex_experiment(index, rel_path)
        yield UndoOutcome(rel_path, RESTORED)
    if complete:
        mark_undone(index, plan.run.id)


def _undo_item(index: ArchiveIndex, entry: JournalEntry) -> UndoItem:
    rel_path = entry.rel_path
    try:
        metadata_path = os.path.join(experiment_folder(index.root, rel_path), METADATA_FILE_NAME)
    except UnsafePathError as error:
        return UndoItem(rel_path, CONFLICT, str(error))
    try:
        with open(metadata_path, "rb") as file:
            current = file.read()
    except FileNotFoundError:
        return UndoItem(rel_path, CONFLICT, "no longer exists")
    except OSError as error:
        return UndoItem(rel_path, CONFLICT, f"cannot read {METADATA_FILE_NAME}: {error.strerror}")
    if content_digest(current) == entry.written_sha256:
        if is_read_only(metadata_path):
            return UndoItem(rel_path, CONFLICT, f"{METADATA_FILE_NAME} is read-only")
        return UndoItem(rel_path, RESTORE)
    if current == entry.previous_content.encode("utf-8"):
        return UndoItem(rel_path, ALREADY_RESTORED)
    return UndoItem(rel_path, CONFLICT, "changed since the modify; not overwritten")
