"""What ``index status`` reports about an index."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pycomex_index.discovery import Outcome
from pycomex_index.exports import ExportSummary, recent_exports
from pycomex_index.store import ArchiveIndex, is_database_url, stored_revision


@dataclass
class IndexStatus:
    archive: str
    location: str
    size: int | None
    revision: str | None
    experiments: int
    unreadable: int
    last_sync_at: float | None
    last_sync_seconds: float | None
    exports: list[ExportSummary] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def index_status(index: ArchiveIndex) -> IndexStatus:
    db = index.db
    experiments, unreadable = db.fetch_row(
        f"SELECT COUNT(*), SUM(CASE WHEN outcome = '{Outcome.ERROR.value}' THEN 1 ELSE 0 END) FROM experiments "
        "WHERE archive_id = :archive_id",
        {"archive_id": index.archive_id},
    )
    last_sync_at, last_sync_seconds = db.fetch_row(
        "SELECT last_sync_at, last_sync_seconds FROM archives WHERE id = :archive_id",
        {"archive_id": index.archive_id},
    )
    size = None
    if not is_database_url(index.location) and os.path.exists(index.location):
        size = sum(
            os.path.getsize(index.location + suffix)
            for suffix in ("", "-wal")
            if os.path.exists(index.location + suffix)
        )
    return IndexStatus(
        archive=index.root,
        location=index.shown_location,
        size=size,
        revision=stored_revision(db),
        experiments=experiments,
        unreadable=unreadable or 0,
        last_sync_at=last_sync_at,
        last_sync_seconds=last_sync_seconds,
        exports=recent_exports(index),
    )
