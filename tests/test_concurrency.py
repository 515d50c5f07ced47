"""Several processes writing one index at once (issue 12, item 3): the lab's normal day, on both backends.

Hosts sync the same archive, the daemon applies changes, write commands
write through: their transactions overlap on the same rows. Writes go in
rel_path order and a deadlock or conflict re-runs the unit of work, so no
command fails; each written row is checked against the disk while it is
locked, so the last commit describes the disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import index_query, make_metadata, write_meta

NAMESPACES = [f"ns{number}" for number in range(5)]
RUNS = [f"run{number:02d}" for number in range(12)]

# One worker: rounds of changing random runs (rewrite, delete, create) in every folder, each followed by a
# sync of the whole archive and the write-through of a few runs, as `modify` does. All start at one moment.
WORKER = r"""
import json, os, random, shutil, sys, time
from pycomex_index.operations import reindex_experiment
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive

archive, seed, rounds, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
namespaces, runs = json.loads(sys.argv[5]), json.loads(sys.argv[6])
rng = random.Random(seed)

def write(folder, name):
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".meta.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        json.dump({"name": name, "namespace": "tests", "status": "done", "has_error": False,
                   "start_time": 1700000000.0 + rng.random(), "end_time": 1700000100.0, "duration": 100.0,
                   "parameters": {"SEED": {"name": "SEED", "value": seed, "type": "int", "usable": True}},
                   "padding": "x" * rng.randrange(50)}, file)
    os.replace(temporary, os.path.join(folder, "experiment_meta.json"))

time.sleep(max(0.0, start_at - time.time()))
with open_archive_index(archive) as index:  # the test's backend, by PYCOMEX_INDEX
    for round_number in range(rounds):
        touched = []
        for _ in range(15):
            rel = f"{rng.choice(namespaces)}/{rng.choice(runs)}"
            folder = os.path.join(archive, rel)
            if rng.random() < 0.2:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                try:
                    write(folder, f"w{seed}-r{round_number}")
                except OSError:
                    continue  # another worker removed the folder meanwhile
            touched.append(rel)
        sync_archive(index)
        for rel in rng.sample(touched, 4):
            reindex_experiment(index, rel)
"""


def test_processes_syncing_and_writing_overlapping_runs_at_once_leave_the_index_equal_to_the_disk(
    tmp_path: Path, index_backend: str
) -> None:
    archive = tmp_path / "results"
    for namespace in NAMESPACES:
        for run in RUNS:
            write_meta(archive / namespace / run, make_metadata(name=f"{namespace}-{run}"))
    start_at = str(time.time() + 3)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(archive),
                str(seed),
                "12",
                start_at,
                json.dumps(NAMESPACES),
                json.dumps(RUNS),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    errors = [worker.communicate(timeout=300)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * len(workers), "\n".join(errors)

    on_disk = {}
    for meta in archive.glob("*/*/experiment_meta.json"):
        stat = meta.stat()
        on_disk[str(meta.parent.relative_to(archive))] = (
            stat.st_mtime_ns,
            stat.st_size,
            json.loads(meta.read_text())["name"],
        )
    in_index = {
        rel_path: (mtime, size, name)
        for rel_path, mtime, size, name in index_query(
            archive,
            "SELECT rel_path, meta_mtime_ns, meta_size, name FROM experiments WHERE archive_id = :archive_id",
        )
    }
    assert in_index == on_disk


def test_a_write_that_waits_longer_than_the_busy_timeout_is_index_busy(
    archive: Path, run_cli, postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv("PYCOMEX_INDEX", postgresql_url)
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    write_meta(archive / "new" / "run", make_metadata(name="new"))
    # Another client holds the experiments table, as a long transaction of another host would.
    with psycopg.connect(postgresql_url.replace("postgresql+psycopg", "postgresql")) as holder:
        holder.execute("LOCK TABLE experiments IN EXCLUSIVE MODE")
        started = time.monotonic()
        command = subprocess.run(
            [sys.executable, "-m", "pycomex_index", "index", "sync", "--path", str(archive)],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "PYCOMEX_INDEX_BUSY_TIMEOUT": "1"},
        )
        waited = time.monotonic() - started
    assert command.returncode == 75, command.stderr
    assert "busy" in command.stderr
    assert waited < 15


def test_a_sync_that_read_a_run_before_another_process_stored_its_change_does_not_store_the_old_content(
    archive: Path, run_cli, index_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon stores a run's new metadata while a sync (another host's command) holds the old content
    # it read a moment before: committed after the daemon's write, the old content would stay in the index
    # until the daemon's next re-walk, since the daemon already handled that change.
    import pycomex_index.sync as sync_module
    from pycomex_index.operations import reindex_experiment
    from pycomex_index.store import open_archive_index

    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    run = archive / "changing" / "run"
    write_meta(run, make_metadata(name="old"))
    original_read = sync_module.read_experiment
    daemon_wrote = []

    def read_then_the_daemon_stores_a_change(root, folder):
        record = original_read(root, folder)
        if folder.rel_path == "changing/run" and not daemon_wrote:
            daemon_wrote.append(True)
            write_meta(run, make_metadata(name="new, and longer"))
            with open_archive_index(str(archive)) as daemon:
                reindex_experiment(daemon, "changing/run")
        return record

    monkeypatch.setattr(sync_module, "read_experiment", read_then_the_daemon_stores_a_change)
    with open_archive_index(str(archive)) as command:
        sync_module.sync_archive(command)
    monkeypatch.setattr(sync_module, "read_experiment", original_read)
    stat = (run / "experiment_meta.json").stat()
    rows = index_query(
        archive,
        "SELECT name, meta_mtime_ns, meta_size FROM experiments WHERE archive_id = :archive_id AND rel_path = 'changing/run'",
    )
    assert rows == [("new, and longer", stat.st_mtime_ns, stat.st_size)]
