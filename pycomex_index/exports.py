"""The index's record of exports: which ZIPs ``compress`` wrote, and which experiments each holds.

``compress`` records an export once its ZIP is whole; ``delete`` asks which
experiments were never exported; ``index status`` shows the latest ones.
Each member is recorded with its experiment_meta.json mtime, as it was packed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pycomex_index.store import ArchiveIndex


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """One recorded export, as ``index status`` shows it."""

    id: int
    zip_path: str
    created_at: float
    size: int
    sha256: str
    experiment_count: int


def record_export(index: ArchiveIndex, zip_path: str, size: int, sha256: str, members: list[tuple[str, int]]) -> int:
    """Record a written ZIP and its members ``(rel_path, meta_mtime_ns)``; returns the export's id."""
    db = index.db
    with db.transaction():
        inserted = list(
            db.execute(
                "INSERT INTO exports (archive_id, zip_path, created_at, size, sha256, experiment_count) "
                "VALUES (:archive_id, :zip_path, :created_at, :size, :sha256, :count) RETURNING id",
                {
                    "archive_id": index.archive_id,
                    "zip_path": zip_path,
                    "created_at": time.time(),
                    "size": size,
                    "sha256": sha256,
                    "count": len(members),
                },
            )
        )
        export_id = inserted[0][0]
        db.executemany(
            "INSERT INTO export_members (export_id, rel_path, meta_mtime_ns) VALUES (:export_id, :rel_path, :mtime)",
            [{"export_id": export_id, "rel_path": rel_path, "mtime": mtime} for rel_path, mtime in members],
        )
    return export_id


def exported_paths(index: ArchiveIndex) -> set[str]:
    """The experiments (by path) that some recorded export of this archive contains."""
    return {
        row[0]
        for row in index.db.execute(
            "SELECT DISTINCT m.rel_path FROM export_members m JOIN exports e ON e.id = m.export_id "
            "WHERE e.archive_id = :archive_id",
            {"archive_id": index.archive_id},
        )
    }


def recent_exports(index: ArchiveIndex, limit: int = 5) -> list[ExportSummary]:
    """The last ``limit`` exports of this archive, newest first."""
    return [
        ExportSummary(*row)
        for row in index.db.execute(
            "SELECT id, zip_path, created_at, size, sha256, experiment_count FROM exports "
            "WHERE archive_id = :archive_id ORDER BY created_at DESC, id DESC LIMIT :limit",
            {"archive_id": index.archive_id, "limit": int(limit)},
        )
    ]
