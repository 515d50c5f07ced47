"""The figures of ``overview``/``info`` (SQL aggregates) and ``scan`` (groups by an expression).

A selection narrows the aggregates through a temporary table of the selected
ids, so there is one set of SQL for the whole archive and for any subset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pycomex_index.queries import iter_experiments
from pycomex_index.selection import CompiledExpression, EvaluationFailures, evaluate
from pycomex_index.store import ArchiveIndex


@dataclass
class ArchiveStatistics:
    """Everything ``overview`` and ``info`` show; None where there is nothing to measure."""

    total: int = 0
    successful: int = 0
    failed: int = 0
    running: int = 0
    unreadable: int = 0
    disk_usage: int = 0
    first_start_time: float | None = None
    last_start_time: float | None = None
    average_duration: float | None = None
    maximum_duration: float | None = None
    total_duration: float | None = None
    parameters_min: int | None = None
    parameters_max: int | None = None
    parameters_average: float | None = None
    assets_min: int | None = None
    assets_max: int | None = None
    assets_average: float | None = None
    error_types: list[tuple[str, int]] = field(default_factory=list)
    namespaces: list[tuple[str, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["error_types"] = [{"error_type": name, "count": count} for name, count in self.error_types]
        figures["namespaces"] = [{"namespace": name, "count": count} for name, count in self.namespaces]
        return figures


_SELECTED_TABLE = "selected_experiments"


def _restrict_to_selection(index: ArchiveIndex, selection: CompiledExpression | None, failures: EvaluationFailures) -> str:
    """A WHERE clause for the experiments ``selection`` keeps (filling a temporary table of their ids)."""
    where = "archive_id = :archive_id"
    if selection is None:
        return where
    db = index.db
    db.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_SELECTED_TABLE} (id INTEGER PRIMARY KEY)")
    db.execute(f"DELETE FROM {_SELECTED_TABLE}")
    db.executemany(
        f"INSERT INTO {_SELECTED_TABLE} (id) VALUES (:id)",
        ({"id": row.id} for row in iter_experiments(index, selection, failures=failures)),
    )
    return where + f" AND id IN (SELECT id FROM {_SELECTED_TABLE})"


def archive_statistics(
    index: ArchiveIndex,
    selection: CompiledExpression | None = None,
    failures: EvaluationFailures | None = None,
) -> ArchiveStatistics:
    """Overview figures of the whole archive, or of what ``selection`` keeps."""
    failures = failures if failures is not None else EvaluationFailures()
    where = _restrict_to_selection(index, selection, failures)
    params = {"archive_id": index.archive_id}
    db = index.db
    (
        total,
        successful,
        running,
        unreadable,
        disk_usage,
        first_start,
        last_start,
        average_duration,
        maximum_duration,
        total_duration,
        parameters_min,
        parameters_max,
        parameters_average,
        assets_min,
        assets_max,
        assets_average,
    ) = next(
        iter(
            db.execute(
                "SELECT COUNT(*), "
                "SUM(CASE WHEN outcome = 'done' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN outcome = 'running' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END), "
                "SUM(disk_usage), MIN(start_time), MAX(start_time), "
                "AVG(CASE WHEN duration > 0 THEN duration END), "
                "MAX(CASE WHEN duration > 0 THEN duration END), "
                "SUM(CASE WHEN duration > 0 THEN duration END), "
                "MIN(parameter_count), MAX(parameter_count), AVG(parameter_count), "
                "MIN(asset_count), MAX(asset_count), AVG(asset_count) "
                f"FROM experiments WHERE {where}",
                params,
            )
        )
    )
    statistics = ArchiveStatistics(
        total=total,
        successful=successful or 0,
        running=running or 0,
        unreadable=unreadable or 0,
        failed=total - (successful or 0) - (running or 0),
        disk_usage=int(disk_usage or 0),
        first_start_time=first_start,
        last_start_time=last_start,
        average_duration=average_duration,
        maximum_duration=maximum_duration,
        total_duration=total_duration,
        parameters_min=parameters_min,
        parameters_max=parameters_max,
        parameters_average=float(parameters_average) if parameters_average is not None else None,
        assets_min=assets_min,
        assets_max=assets_max,
        assets_average=float(assets_average) if assets_average is not None else None,
    )
    statistics.error_types = [
        (name, count)
        for name, count in db.execute(
            "SELECT CASE WHEN outcome = 'error' THEN '(metadata error)' "
            "ELSE COALESCE(error_type, 'Unknown') END AS kind, COUNT(*) AS n "
            f"FROM experiments WHERE {where} AND outcome IN ('failed', 'error') "
            "GROUP BY kind ORDER BY n DESC, kind",
            params,
        )
    ]
    statistics.namespaces = [
        (name, count)
        for name, count in db.execute(
            f"SELECT namespace, COUNT(*) AS n FROM experiments WHERE {where} GROUP BY namespace ORDER BY namespace",
            params,
        )
    ]
    return statistics


@dataclass
class ScanGroup:
    """One group of ``scan``: how many, how many succeeded, when the last finished, runtime and disk use."""

    key: str
    count: int = 0
    successful: int = 0
    last_end_time: float | None = None
    duration_sum: float = 0.0
    duration_count: int = 0
    disk_usage: int = 0

    @property
    def success_rate(self) -> float:
        return 100.0 * self.successful / self.count if self.count else 0.0

    @property
    def average_runtime(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "group": self.key,
            "count": self.count,
            "successful": self.successful,
            "success_rate": self.success_rate,
            "last_end_time": self.last_end_time,
            "seconds_since_last_end": (now - self.last_end_time) if self.last_end_time is not None else None,
            "average_runtime": self.average_runtime,
            "disk_usage": self.disk_usage,
        }


@dataclass
class ScanResult:
    groups: list[ScanGroup]
    unreadable: int
    group_failures: EvaluationFailures
    now: float


def scan_groups(
    index: ArchiveIndex,
    group_by: CompiledExpression,
    selection: CompiledExpression | None = None,
    failures: EvaluationFailures | None = None,
) -> ScanResult:
    """Group the selected experiments by ``str(group_by)``; an experiment on which it raises goes to group ``error``."""
    groups: dict[str, ScanGroup] = {}
    group_failures = EvaluationFailures()
    for row in iter_experiments(index, selection, also_evaluates=group_by, failures=failures):
        try:
            key = str(evaluate(group_by, row.evaluation_namespace))
        except Exception as error:
            group_failures.record(error)
            key = "error"
        group = groups.get(key)
        if group is None:
            group = groups[key] = ScanGroup(key)
        group.count += 1
        group.successful += row.outcome == "done"
        if row.end_time is not None and (group.last_end_time is None or row.end_time > group.last_end_time):
            group.last_end_time = row.end_time
        if row.duration is not None and row.duration > 0:
            group.duration_sum += row.duration
            group.duration_count += 1
        group.disk_usage += row.disk_usage
    unreadable = next(
        iter(
            index.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE archive_id = :archive_id AND outcome = 'error'",
                {"archive_id": index.archive_id},
            )
        )
    )[0]
    return ScanResult(
        groups=sorted(groups.values(), key=lambda group: group.key),
        unreadable=unreadable,
        group_failures=group_failures,
        now=time.time(),
    )
