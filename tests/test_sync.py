"""Sync keeps the index equal to the disk and re-reads only what changed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from pycomex_index.walk import iter_folder_listings
from tests.conftest import make_metadata, write_meta


def _found(archive: Path) -> list[str]:
    return [folder.rel_path for listing in iter_folder_listings(str(archive)) for folder in listing.experiments]


def _sync(archive: Path, **options):
    with open_archive_index(str(archive)) as index:
        return sync_archive(index, **options)


def _listed(run_cli, archive: Path) -> dict[str, dict]:
    result = run_cli("archive", "list", "--path", str(archive), "--json")
    assert result.exit_code == 0, result.output
    return {item["rel_path"]: item for item in json.loads(result.stdout)}


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_discovery_finds_experiments_like_pycomex_and_does_not_descend_into_them(archive: Path) -> None:
    (archive / "neural_net" / "26_11_2026__14_03_22__p10123__h5wO" / "nested").mkdir()
    write_meta(archive / "neural_net" / "26_11_2026__14_03_22__p10123__h5wO" / "nested", make_metadata())
    write_meta(archive / "deep" / "a" / "b" / "c" / "run", make_metadata())
    found = set(_found(archive))
    assert "deep/a/b/c/run" in found
    assert "neural_net/26_11_2026__14_03_22__p10123__h5wO/nested" not in found
    assert len(found) == 9


def test_second_sync_reads_nothing_when_nothing_changed(archive: Path) -> None:
    first = _sync(archive)
    assert (first.added, first.updated, first.removed) == (8, 0, 0)
    second = _sync(archive)
    assert (second.added, second.updated, second.removed, second.assets_refreshed, second.unchanged) == (0, 0, 0, 0, 8)


def test_a_rewritten_metadata_file_is_read_again(archive: Path, run_cli) -> None:
    rel = "neural_net/26_11_2026__14_03_50__p11237__wKXG"
    _sync(archive)
    meta = json.loads((archive / rel / "experiment_meta.json").read_text())
    meta.update(status="done", duration=42.0, end_time=meta["start_time"] + 42.0)
    write_meta(archive / rel, meta)
    _bump_mtime(archive / rel / "experiment_meta.json")
    report = _sync(archive)
    assert (report.updated, report.unchanged) == (1, 7)
    assert _listed(run_cli, archive)[rel]["status"] == "done"


def test_same_size_same_mtime_content_is_not_reread_but_mtime_change_is(archive: Path) -> None:
    rel = "debug_runs/debug"
    _sync(archive)
    path = archive / rel / "experiment_meta.json"
    stat = path.stat()
    path.write_text(path.read_text().replace('"done"', '"xxxx"'))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _sync(archive).updated == 0  # (mtime_ns, size) is the contract, as for make
    _bump_mtime(path)
    assert _sync(archive).updated == 1


def test_vanished_experiments_are_dropped(archive: Path, run_cli) -> None:
    _sync(archive)
    shutil.rmtree(archive / "sweep")
    report = _sync(archive)
    assert report.removed == 2
    assert not any(rel.startswith("sweep/") for rel in _listed(run_cli, archive))


def test_a_metadata_file_removed_from_a_folder_drops_the_experiment(archive: Path, run_cli) -> None:
    _sync(archive)
    (archive / "debug_runs" / "debug" / "experiment_meta.json").unlink()
    assert _sync(archive).removed == 1
    assert "debug_runs/debug" not in _listed(run_cli, archive)


def test_assets_are_measured_again_when_the_folder_changes(archive: Path, run_cli) -> None:
    rel = "neural_net/26_11_2026__14_03_50__p11237__wKXG"
    _sync(archive)
    before = json.loads(run_cli("archive", "info", "--path", str(archive), "--json").stdout)
    (archive / rel / "model.bin").write_bytes(b"x" * 10_000)
    report = _sync(archive)
    assert report.assets_refreshed == 1 and report.updated == 0
    after = json.loads(run_cli("archive", "info", "--path", str(archive), "--json").stdout)
    assert after["disk_usage"] == before["disk_usage"] + 10_000


def test_read_commands_check_every_metadata_file_but_leave_asset_checks_to_index_sync(archive: Path, run_cli) -> None:
    rel = "debug_runs/debug"
    figures = lambda: json.loads(run_cli("archive", "overview", "--path", str(archive), "--json").stdout)  # noqa: E731
    before = figures()["disk_usage"]
    (archive / rel / "late_plot.png").write_bytes(b"x" * 7000)
    assert figures()["disk_usage"] == before  # one stat per experiment: folders of unchanged runs are trusted
    run_cli("index", "sync", "--path", str(archive))
    assert figures()["disk_usage"] == before + 7000


def test_new_experiments_appear_without_an_explicit_sync(archive: Path, run_cli) -> None:
    assert len(_listed(run_cli, archive)) == 8
    write_meta(archive / "brand_new" / "run", make_metadata())
    listed = _listed(run_cli, archive)
    assert "brand_new/run" in listed and len(listed) == 9


def test_a_symlinked_experiment_folder_is_indexed_once_and_link_cycles_end(archive: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside_run"
    write_meta(outside, make_metadata())
    (archive / "linked").mkdir()
    os.symlink(outside, archive / "linked" / "run")
    os.symlink(archive, archive / "linked" / "loop")  # a cycle back to the root
    found = _found(archive)
    assert "linked/run" in found
    assert len(found) == len(set(found)) == 9


def _walked_one_at_a_time(root: Path) -> dict[str, list[tuple]]:
    """What a walk must find, the plain way: each folder's entries in listing order, statted one by one."""
    found: dict[str, list[tuple]] = {}
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        experiments = found.setdefault(rel_dir, [])
        for entry in os.scandir(root / rel_dir if rel_dir else root):
            if not entry.is_dir() or entry.name == ".pycomex_index":
                continue
            rel_path = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            meta = Path(entry.path) / "experiment_meta.json"
            if meta.is_file():
                stamps = meta.stat()
                experiments.append((rel_path, stamps.st_mtime_ns, stamps.st_size, entry.stat().st_mtime_ns))
            else:
                pending.append(rel_path)
    return {folder: runs for folder, runs in found.items() if runs}


@pytest.mark.parametrize(
    ("chunk", "disk", "threaded"),
    [(3, "cold", True), (256, "cold", True), (3, "warm", False)],
)
def test_a_big_folder_on_a_cold_disk_is_statted_in_threads_and_listed_exactly_as_a_plain_walk_lists_it(
    tmp_path: Path, monkeypatch, chunk: int, disk: str, threaded: bool
) -> None:
    import threading

    import pycomex_index.walk as walk

    monkeypatch.setattr(walk, "WALK_CHUNK", chunk)  # 3: many rounds of threads even in a small archive
    # A stat slower than 0 s (every one) is what a cold disk looks like; none takes a second.
    monkeypatch.setattr(walk, "COLD_STAT_SECONDS", 0.0 if disk == "cold" else 1.0)
    root = tmp_path / "results"
    for number in range(700):
        write_meta(root / "big" / f"run{number:04d}", make_metadata(start_time=1700000000.0 + number))
        if number % 97 == 0:  # namespaces among the runs, walked after their folder
            write_meta(root / "big" / f"sub{number}" / "inner", make_metadata())
    (root / "big" / "empty_namespace").mkdir()
    write_meta(root / "small" / "only_run", make_metadata())
    walk_threads_seen = []
    listings = {}
    for listing in iter_folder_listings(str(root)):
        walk_threads_seen.append(any(t.name.startswith("pycomex-index-walk") for t in threading.enumerate()))
        if listing.experiments:
            listings[listing.rel_dir] = [tuple(folder) for folder in listing.experiments]
            assert len(listing.inodes) == len(listing.experiments)
    assert listings == _walked_one_at_a_time(root)
    assert any(walk_threads_seen) == threaded  # from the page cache, threads would only contend for the GIL
    assert not any(t.name.startswith("pycomex-index-walk") for t in threading.enumerate()), "stopped after the walk"


def test_the_index_folder_is_never_taken_for_an_experiment(archive: Path) -> None:
    _sync(archive)
    write_meta(archive / ".pycomex_index" / "odd", make_metadata())
    assert not any(rel.startswith(".pycomex_index") for rel in _found(archive))


def test_sync_reports_progress_with_a_known_total(archive: Path) -> None:
    calls = []
    _sync(archive, on_progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (8, 8)
    assert all(total == 8 for _, total in calls)


@pytest.mark.parametrize("count", [1200])
def test_sync_of_many_experiments_is_batched_and_complete(
    tmp_path: Path, count: int, monkeypatch, index_backend: str
) -> None:
    import pycomex_index.sync as sync_module

    monkeypatch.setattr(sync_module, "BATCH_SIZE", 250)
    root = tmp_path / "results"
    for number in range(count):
        write_meta(root / f"ns{number % 7}" / f"run{number}", make_metadata(start_time=1700000000.0 + number))
    batches = []
    report = _sync(root, on_progress=lambda done, total: batches.append(done))
    assert report.added == count
    # A first build counts the archive first (0 of a known total starts the bar), then one step per transaction.
    assert batches == [0, 250, 500, 750, 1000, 1200]
    with open_archive_index(str(root)) as index:
        assert index.db.fetch_one("SELECT COUNT(*) FROM experiment_fields")[0] == count


def test_a_first_build_stores_batches_while_it_walks_not_after_it(
    tmp_path: Path, monkeypatch, index_backend: str
) -> None:
    import pycomex_index.sync as sync_module

    monkeypatch.setattr(sync_module, "BATCH_SIZE", 10)
    root = tmp_path / "results"
    for number in range(60):
        write_meta(root / f"ns{number % 3}" / f"run{number}", make_metadata(start_time=1700000000.0 + number))
    walk = sync_module.iter_folder_listings
    events = []

    def logged_walk(*args, **kwargs):
        for listing in walk(*args, **kwargs):
            events.append(("folder", listing.rel_dir))
            yield listing

    monkeypatch.setattr(sync_module, "iter_folder_listings", logged_walk)
    calls = []
    report = _sync(root, on_progress=lambda done, total: (calls.append((done, total)), events.append(("batch", done))))
    assert report.added == 60
    reading = events[events.index(("batch", 0)) :]  # the second walk: the first one only counted
    last_folder = max(at for at, event in enumerate(reading) if event[0] == "folder")
    assert reading.index(("batch", 20)) < last_folder  # batches were stored before the walk ended
    assert all(total == 60 for _, total in calls) and calls[-1] == (60, 60)


def test_an_incremental_sync_reports_an_unknown_total_until_the_walk_ends(archive: Path, monkeypatch) -> None:
    import pycomex_index.sync as sync_module

    _sync(archive)
    monkeypatch.setattr(sync_module, "BATCH_SIZE", 1)
    for meta in sorted(archive.rglob("experiment_meta.json"))[:3]:
        _bump_mtime(meta)
    calls = []
    report = _sync(archive, check_assets=False, on_progress=lambda done, total: calls.append((done, total)))
    assert report.updated == 3
    assert [done for done, _ in calls][:3] == [1, 2, 3]  # one step per batch, stored as the walk finds them
    assert calls[-1] == (3, 3) and all(total in (None, 3) for _, total in calls)


def test_a_temporary_file_left_by_a_killed_write_is_no_asset(archive: Path, run_cli) -> None:
    rel = "debug_runs/debug"
    before = json.loads(run_cli("archive", "list", "--path", str(archive), "--json").stdout)
    (archive / rel / ".experiment_meta.json.12345.abcd1234.partial").write_bytes(b"x" * 5000)
    assert json.loads(run_cli("index", "sync", "--path", str(archive), "--json").stdout)["assets_refreshed"] == 1
    after = json.loads(run_cli("archive", "list", "--path", str(archive), "--json").stdout)
    by_rel = lambda listing: {item["rel_path"]: item for item in listing}  # noqa: E731
    assert by_rel(after)[rel]["disk_usage"] == by_rel(before)[rel]["disk_usage"]
    assert by_rel(after)[rel]["asset_count"] == by_rel(before)[rel]["asset_count"]


# Read commands sync without the asset check; they compare folder digests first and load only the
# rows of folders whose digest changed. These tests run that path and check it against the disk.


def _read_sync(archive: Path, statements: list[str] | None = None):
    with open_archive_index(str(archive)) as index:
        if statements is not None:
            index.db.connection.set_trace_callback(statements.append)
        return sync_archive(index, check_assets=False)


def _folder_loads(statements: list[str]) -> list[str]:
    """The folders whose stored rows a sync loaded (the traced SQL carries the bound values)."""
    return [
        statement.split("rel_path > '")[1].split("/'")[0] for statement in statements if "rel_path > '" in statement
    ]


@pytest.mark.sqlite_only("folder digests are trusted on SQLite only (sync.py): PostgreSQL compares every stamp")
def test_a_read_sync_loads_the_rows_of_changed_folders_only(archive: Path, run_cli) -> None:
    _read_sync(archive)
    statements: list[str] = []
    report = _read_sync(archive, statements)
    assert (report.unchanged, report.updated) == (8, 0) and _folder_loads(statements) == []

    rel = "neural_net/26_11_2026__14_03_50__p11237__wKXG"
    meta = json.loads((archive / rel / "experiment_meta.json").read_text())
    meta["name"] = "renamed"
    write_meta(archive / rel, meta)
    _bump_mtime(archive / rel / "experiment_meta.json")
    statements.clear()
    report = _read_sync(archive, statements)
    assert (report.updated, report.unchanged) == (1, 7)
    assert _folder_loads(statements) == ["neural_net"]
    assert _listed(run_cli, archive)[rel]["name"] == "renamed"


@pytest.mark.parametrize("how", ["folder removed", "folder emptied"])
def test_a_read_sync_drops_the_experiments_of_a_vanished_folder(archive: Path, run_cli, how: str) -> None:
    _read_sync(archive)
    if how == "folder removed":
        shutil.rmtree(archive / "neural_net")
    else:
        for run in (archive / "neural_net").iterdir():
            shutil.rmtree(run)
    assert _read_sync(archive).removed == 4
    assert not any(rel.startswith("neural_net/") for rel in _listed(run_cli, archive))
    assert _read_sync(archive).unchanged == 4


@pytest.mark.parametrize("digest_row", ["kept", "lost"])
def test_a_full_sync_drops_the_experiments_of_a_vanished_folder_with_or_without_its_digest_row(
    archive: Path, run_cli, digest_row: str
) -> None:
    # A full sync (index sync, the watcher's catch-up) loads one folder's rows at a time and trusts no digest
    # row: rows of a folder it no longer finds go even when that folder's digest row is missing.
    first = _sync(archive)
    assert first.added == 8
    if digest_row == "lost":
        with open_archive_index(str(archive)) as index:
            index.db.run_in_transaction(
                lambda: index.db.execute("DELETE FROM folder_digests WHERE folder = 'neural_net'")
            )
    shutil.rmtree(archive / "neural_net")
    report = _sync(archive)
    assert (report.removed, report.unchanged, report.added) == (4, 4, 0)
    assert not any(rel.startswith("neural_net/") for rel in _listed(run_cli, archive))


def test_a_row_another_writer_changed_is_compared_again_even_if_the_disk_returns_to_its_old_stamps(
    archive: Path, run_cli
) -> None:
    # A digest describes the rows, not only the disk: when the watcher (or a write command) stores a
    # newer version, a file later restored with its old mtime (cp -p, rsync -t) must still be re-read.
    from pycomex_index.operations import reindex_experiment

    rel = "debug_runs/debug"
    path = archive / rel / "experiment_meta.json"
    _read_sync(archive)
    original, original_stat = path.read_bytes(), path.stat()
    meta = json.loads(original)
    meta["name"] = "rewritten"
    write_meta(archive / rel, meta)
    _bump_mtime(path)
    with open_archive_index(str(archive)) as index:
        reindex_experiment(index, rel)
    path.write_bytes(original)
    os.utime(path, ns=(original_stat.st_atime_ns, original_stat.st_mtime_ns))

    assert _read_sync(archive).updated == 1
    assert _listed(run_cli, archive)[rel]["name"] == json.loads(original)["name"] != "rewritten"


def test_experiments_directly_in_the_archive_root_are_synced_by_digest_too(archive: Path, run_cli) -> None:
    write_meta(archive / "run_at_root", make_metadata())
    _read_sync(archive)
    assert "run_at_root" in _listed(run_cli, archive)
    shutil.rmtree(archive / "run_at_root")
    assert _read_sync(archive).removed == 1
    assert "run_at_root" not in _listed(run_cli, archive)


def test_a_sibling_folder_sharing_a_name_prefix_is_not_loaded_with_its_neighbour(archive: Path) -> None:
    # "neural_net-2" and "neural_net.old" sort next to "neural_net/"; neither may count as its rows.
    for sibling in ("neural_net-2", "neural_net.old", "neural_net0"):
        write_meta(archive / sibling / "run", make_metadata())
    _read_sync(archive)
    shutil.rmtree(archive / "neural_net" / "26_11_2026__14_03_22__p10123__h5wO")
    report = _read_sync(archive)
    assert (report.removed, report.unchanged) == (1, 10)
