"""The same commands give the same output on SQLite and on PostgreSQL (``--index postgresql+psycopg://...``).

A representative set, not the whole suite: each PostgreSQL test costs a new
database and a first sync (~0.2 s), and the cluster ~2 s per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import add_awkward_runs, index_query, make_metadata, write_meta
from tests.helpers_write import experiments_on_disk, index_paths

READ_COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["list", "--select", "p['LEARNING_RATE'] > 0.0001", "--json"],
    ["tail", "-n", "3"],
    ["tail", "-n", "10", "--select", "m['has_error'] == True", "--json"],
    ["overview"],
    ["overview", "--json"],
    ["info"],
    ["info", "--json"],
    ["scan"],
    ["scan", "--group", "m['namespace']", "--json"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_read_command_prints_the_same_on_sqlite_and_postgresql(
    archive: Path, run_cli, postgresql_url: str, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    on_sqlite = run_cli("archive", *command, "--path", str(archive))
    assert on_sqlite.exit_code == 0, on_sqlite.output
    monkeypatch.setenv("PYCOMEX_INDEX", postgresql_url)
    on_postgresql = run_cli("archive", *command, "--path", str(archive))
    assert on_postgresql.exit_code == 0, on_postgresql.output
    if "--json" in command:
        assert _timeless(json.loads(on_postgresql.output)) == _timeless(json.loads(on_sqlite.output))
    else:
        assert on_postgresql.output == on_sqlite.output


def _timeless(document):
    """A JSON document without the figures that depend on when the command ran."""
    if isinstance(document, list):
        return [_timeless(item) for item in document]
    if isinstance(document, dict):
        return {key: _timeless(value) for key, value in document.items() if key != "seconds_since_last_end"}
    return document


def test_sync_adds_updates_and_removes_rows_on_either_backend(archive: Path, run_cli, index_backend: str) -> None:
    def sync() -> dict:
        result = run_cli("index", "sync", "--path", str(archive), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    first = sync()
    assert (first["added"], first["removed"]) == (8, 0)
    write_meta(archive / "extra" / "run", make_metadata(name="extra"))
    moved = next(archive.glob("debug_runs/*__*"))
    moved.rename(archive / "debug_runs" / "renamed")
    later = sync()
    assert (later["added"], later["removed"], later["unchanged"]) == (2, 1, 7)
    rows = index_query(archive, "SELECT rel_path FROM experiments WHERE archive_id = :archive_id ORDER BY rel_path")
    assert ("extra/run",) in rows and ("debug_runs/renamed",) in rows and len(rows) == 9
    assert sync()["unchanged"] == 9


def _oldest_first(runs: dict[str, float | None]) -> list[str]:
    """SQLite's order, which every backend must give: no start time first, then by time, ties by path bytes."""
    return sorted(runs, key=lambda rel_path: (runs[rel_path] is not None, runs[rel_path] or 0.0, rel_path.encode()))


@pytest.mark.parametrize("select", [[], ["--select", "True"]], ids=["index order", "selection"])
def test_runs_without_start_time_with_equal_times_or_punctuation_sort_alike_on_every_backend(
    tmp_path: Path, run_cli, select: list[str]
) -> None:
    archive = tmp_path / "results"
    runs = add_awkward_runs(archive)

    def rel_paths(*command: str) -> list[str]:
        result = run_cli("archive", *command, "--json", *select, "--path", str(archive))
        assert result.exit_code == 0, result.output
        return [entry["rel_path"] for entry in json.loads(result.stdout)]

    assert rel_paths("list") == _oldest_first(runs)
    assert rel_paths("tail", "-n", "4") == _oldest_first(runs)[::-1][:4]


def test_deleting_a_folders_runs_leaves_its_punctuation_siblings_on_every_backend(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    runs = add_awkward_runs(archive)
    result = run_cli(
        "archive", "delete", "--path", str(archive), "--select", "m['name'].startswith('exp/run/')", "--yes"
    )
    assert result.exit_code == 0, result.output
    assert index_paths(archive) == set(runs) - {"exp/run/a", "exp/run/b"} == experiments_on_disk(archive)
