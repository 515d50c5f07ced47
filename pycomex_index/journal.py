"""The modify journal: what each ``archive modify`` replaced, kept in the index so ``archive undo`` can put it back.

One ``modify_runs`` row per modify that changed at least one file (with its
code), and one ``modify_journal`` entry per file: the file's previous
content, and the SHA-256 of what the modify wrote, by which undo later tells
an untouched file from one changed since. An entry is written before its file
is replaced, so a crash between the two leaves a journal that undo can read.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from pycomex_index.paths import this_host
from pycomex_index.store import ArchiveIndex


def content_digest(content: bytes) -> str:
    """The digest the journal keeps of a written file, and compares a file's current content with."""
    return hashlib.sha256(content).hexdigest()


class ModifyJournal:
    """The ``modify_runs`` row of one modify and its ``modify_journal`` entries, written before each file.

    The run row is created with the first entry, so a modify that changes
    nothing leaves no trace; :meth:`finish` closes it (or removes it again when
    every entry was forgotten).
    """

    def __init__(self, index: ArchiveIndex, *, parameters_code: str | None, metadata_code: str | None) -> None:
        self.index = index
        self.parameters_code = parameters_code
        self.metadata_code = metadata_code
        self.run_id: int | None = None
        self.entries = 0

    def record(self, rel_path: str, previous: bytes, written: bytes) -> int:
        """Journal that ``rel_path`` held ``previous`` and is about to hold ``written``; returns the run's id."""
        db = self.index.db
        with db.transaction():
            if self.run_id is None:
                self.run_id = list(
                    db.execute(
                        "INSERT INTO modify_runs (archive_id, started_at, parameters_code, metadata_code, host) "
                        "VALUES (:archive_id, :now, :parameters_code, :metadata_code, :host) RETURNING id",
                        {
                            "archive_id": self.index.archive_id,
                            "now": time.time(),
                            "host": this_host(),
                            "parameters_code": self.parameters_code,
                            "metadata_code": self.metadata_code,
                        },
                    )
                )[0][0]
            db.execute(
                "INSERT INTO modify_journal (run_id, rel_path, previous_content, written_sha256) "
                "VALUES (:run_id, :rel_path, :previous, :sha256)",
                {
                    "run_id": self.run_id,
                    "rel_path": rel_path,
                    "previous": previous.decode("utf-8"),
                    "sha256": content_digest(written),
                },
            )
        self.entries += 1
        return self.run_id

    def forget(self, rel_path: str) -> None:
        """Drop the entry of a file that could not be written after all."""
        with self.index.db.transaction():
            self.index.db.execute(
                "DELETE FROM modify_journal WHERE run_id = :run_id AND rel_path = :rel_path",
                {"run_id": self.run_id, "rel_path": rel_path},
            )
        self.entries -= 1

    def finish(self) -> None:
        if self.run_id is None:
            return
        db = self.index.db
        with db.transaction():
            if self.entries:
                db.execute(
                    "UPDATE modify_runs SET finished_at = :now WHERE id = :run_id",
                    {"now": time.time(), "run_id": self.run_id},
                )
            else:
                db.execute("DELETE FROM modify_runs WHERE id = :run_id", {"run_id": self.run_id})


@dataclass(frozen=True, slots=True)
class ModifyRunInfo:
    """A journaled modify: its id, when it ran (and was undone), the code, how many files it changed, its host."""

    id: int
    started_at: float
    finished_at: float | None
    parameters_code: str | None
    metadata_code: str | None
    file_count: int
    undone_at: float | None
    #: The host it ran on; None for a modify journaled before hosts were recorded.
    host: str | None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled file: its content before the modify, and the digest of what the modify wrote."""

    rel_path: str
    previous_content: str
    written_sha256: str


def modify_runs(index: ArchiveIndex) -> list[ModifyRunInfo]:
    """The journaled modifies of this archive not undone yet, newest first."""
    return _runs(index, " AND r.undone_at IS NULL", {})


def find_modify_run(index: ArchiveIndex, run_id: int) -> ModifyRunInfo | None:
    """Modify ``run_id`` of this archive, undone or not; None when there is no such modify."""
    runs = _runs(index, " AND r.id = :run_id", {"run_id": run_id})
    return runs[0] if runs else None


def _runs(index: ArchiveIndex, condition: str, params: dict[str, Any]) -> list[ModifyRunInfo]:
    return [
        ModifyRunInfo(*row)
        for row in index.db.execute(
            "SELECT r.id, r.started_at, r.finished_at, r.parameters_code, r.metadata_code, "
            "(SELECT COUNT(*) FROM modify_journal j WHERE j.run_id = r.id), r.undone_at, r.host "
            f"FROM modify_runs r WHERE r.archive_id = :archive_id{condition} ORDER BY r.id DESC",
            {"archive_id": index.archive_id, **params},
        )
    ]


def journal_entries(index: ArchiveIndex, run_id: int) -> list[JournalEntry]:
    """The files modify ``run_id`` changed, by path."""
    return [
        JournalEntry(*row)
        for row in index.db.execute(
            "SELECT rel_path, previous_content, written_sha256 FROM modify_journal WHERE run_id = :run_id ORDER BY rel_path",
            {"run_id": run_id},
        )
    ]


def mark_undone(index: ArchiveIndex, run_id: int) -> None:
    """Record that every file of modify ``run_id`` holds its previous content again."""
    with index.db.transaction():
        index.db.execute(
            "UPDATE modify_runs SET undone_at = :now WHERE id = :run_id", {"now": time.time(), "run_id": run_id}
        )
