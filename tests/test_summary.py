"""The experiment summary that SQLite's triggers keep is always what a full GROUP BY would compute.

Writes go through rows.py, as in sync, the watcher and the write commands, on
a real index file; after each sequence the maintained table is compared with
the figures recomputed from every row.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycomex_index.discovery import ExperimentRecord
from pycomex_index.rows import remove_experiments, store_records, update_assets
from pycomex_index.stats import archive_statistics
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import make_metadata, write_meta

_RECOMPUTED = (
    "SELECT outcome, namespace, "
    "CASE WHEN outcome = 'error' THEN '(metadata error)' WHEN outcome = 'failed' THEN COALESCE(error_type, 'Unknown') "
    "ELSE '' END AS kind, COUNT(*), SUM(disk_usage), SUM(CASE WHEN duration > 0 THEN duration ELSE 0 END), "
    "SUM(CASE WHEN duration > 0 THEN 1 ELSE 0 END), SUM(COALESCE(parameter_count, 0)), COUNT(parameter_count), "
    "SUM(asset_count) FROM experiments WHERE archive_id = :archive_id GROUP BY outcome, namespace, kind"
)
_MAINTAINED = (
    "SELECT outcome, namespace, error_kind, experiments, disk_usage, duration_sum, duration_count, "
    "parameter_sum, parameter_known, asset_sum FROM experiment_summary WHERE archive_id = :archive_id"
)


def _record(
    rel_path: str, outcome: str, namespace: str, error_type, duration, parameter_count, assets: int
) -> ExperimentRecord:
    return ExperimentRecord(
        rel_path=rel_path,
        namespace=namespace,
        name="run",
        outcome=outcome,
        status=None,
        has_error=None,
        error_type=error_type,
        start_time=1.7e9,
        end_time=None,
        duration=duration,
        parameter_count=parameter_count,
        asset_count=assets,
        disk_usage=assets * 100,
        meta_mtime_ns=1,
        meta_size=1,
        folder_mtime_ns=1,
        read_error="unreadable" if outcome == "error" else None,
        special_parameters_json=None if outcome == "error" else "{}",
        prefix=None,
        summary_json=None if outcome == "error" else "{}",
        parameters_json=None if outcome == "error" else "{}",
    )


RECORD = st.tuples(
    st.sampled_from(["done", "failed", "running", "error"]),
    st.sampled_from(["a", "b/c", ""]),
    st.sampled_from([None, "ValueError", "KeyError"]),
    st.one_of(st.none(), st.just(0.0), st.floats(min_value=0.5, max_value=1e5, allow_nan=False)),
    st.one_of(st.none(), st.integers(0, 30)),
    st.integers(0, 9),
)
OPERATION = st.one_of(
    st.tuples(st.just("store"), st.integers(0, 7), RECORD),
    st.tuples(st.just("remove"), st.integers(0, 7), st.none()),
    st.tuples(st.just("assets"), st.integers(0, 7), st.integers(0, 50)),
)


def _rows(index, sql: str) -> dict[tuple, tuple]:
    return {tuple(row[:3]): tuple(row[3:]) for row in index.db.execute(sql, {"archive_id": index.archive_id})}


def _same(maintained: dict, recomputed: dict) -> bool:
    if maintained.keys() != recomputed.keys():
        return False
    for key, figures in recomputed.items():
        for ours, exact in zip(maintained[key], figures, strict=True):
            if abs(ours - exact) > 1e-6 * max(1.0, abs(exact)):  # float sums may differ in the last bits
                return False
    return True


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATION, min_size=1, max_size=25))
def test_the_maintained_summary_equals_a_full_recount_after_any_writes(tmp_path: Path, operations) -> None:
    root = tmp_path / "results"
    root.mkdir(exist_ok=True)
    with open_archive_index(str(root), str(tmp_path / "index.sqlite3")) as index:
        remove_experiments(index.db, index.archive_id, [f"run{number}" for number in range(8)])
        for action, number, argument in operations:
            rel_path = f"run{number}"
            if action == "store":
                store_records(index.db, index.archive_id, [_record(rel_path, *argument)])
            elif action == "remove":
                remove_experiments(index.db, index.archive_id, [rel_path])
            else:
                update_assets(index.db, index.archive_id, [(rel_path, argument, argument * 100, 2)])
        maintained, recomputed = _rows(index, _MAINTAINED), _rows(index, _RECOMPUTED)
        assert _same(maintained, recomputed), (maintained, recomputed)


def test_overview_from_the_summary_equals_overview_from_a_full_scan(archive: Path) -> None:
    (archive / "debug_runs" / "debug" / "experiment_meta.json").write_text("{ half-written")
    write_meta(archive / "late" / "run", make_metadata(start_time=1.9e9))
    shutil.rmtree(min((archive / "sweep" / "lr").iterdir()))
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        from_summary = asdict(archive_statistics(index))
        from_scan = asdict(archive_statistics(index, use_summary=False))
    assert (from_scan["total"], from_scan["unreadable"]) == (8, 1)
    assert from_summary.keys() == from_scan.keys()
    for key, exact in from_scan.items():
        if isinstance(exact, float):
            assert math.isclose(from_summary[key], exact, rel_tol=1e-9), key  # sums taken in another order
        else:
            assert from_summary[key] == exact, key
