"""SIGKILL in the middle of modify, compress and delete: files stay whole, and the next sync makes index == disk.

Each test runs the real CLI in a child process on a generated archive, waits
until it is well into its work (a random point, printed on failure as the
seed), kills it with SIGKILL, and then checks what a crash may and may not
leave behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pycomex_index.atomic import TEMPORARY_SUFFIX, remove_stale_temporaries, write_atomic
from pycomex_index.delete import TRASH_FOLDER
from tests.conftest import index_query, peek_index
from tests.helpers_write import (
    assert_index_matches_disk,
    cli_process,
    experiments_on_disk,
    generate_archive,
    index_paths,
)

EXPERIMENTS = 2000


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], extra_delay: float, timeout: float = 60.0) -> None:
    """SIGKILL ``process`` once ``ready()`` holds (plus a little random delay); it must still be running then."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the command finished before it could be killed"
        assert time.monotonic() < deadline, "the command made no progress"
        time.sleep(0.002)
    time.sleep(extra_delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL, "the command finished before it could be killed"


@pytest.fixture
def seed() -> int:
    return int.from_bytes(os.urandom(4), "big")


def test_modify_killed_at_a_random_moment_leaves_every_file_whole_and_undoable(
    tmp_path: Path, run_cli, seed: int
) -> None:
    chance = random.Random(seed)
    archive = tmp_path / "results"
    rel_paths = generate_archive(archive, EXPERIMENTS)
    original = {rel: (archive / rel / "experiment_meta.json").read_bytes() for rel in rel_paths}
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    kill_after = chance.randint(20, 600)

    process = cli_process(
        "archive",
        "modify",
        "--path",
        str(archive),
        "--all",
        "--modify-metadata",
        "m['touched'] = True; m['note'] = 'x' * 4000",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journaled = lambda: peek_index(archive, "SELECT COUNT(*) AS n FROM modify_journal")[0]["n"] >= kill_after  # noqa: E731
    _kill_when(process, journaled, chance.uniform(0, 0.004))

    changed = 0
    for rel_path in rel_paths:
        content = (archive / rel_path / "experiment_meta.json").read_bytes()
        metadata = json.loads(content)  # whole JSON, never half a file
        if content != original[rel_path]:
            assert metadata == {**json.loads(original[rel_path]), "touched": True, "note": "x" * 4000}, (seed, rel_path)
            changed += 1
    journal = index_query(archive, "SELECT COUNT(*) FROM modify_journal")[0][0]
    assert changed in (journal, journal - 1), seed  # every changed file was journaled first

    listed = run_cli("archive", "list", "--path", str(archive))  # the next command's sync mends the index
    assert listed.exit_code == 0 and len(listed.stdout.splitlines()) == EXPERIMENTS
    assert_index_matches_disk(archive)

    undone = run_cli("archive", "undo", "--path", str(archive), "--yes")
    assert undone.exit_code == 0, (seed, undone.output)
    assert {rel: (archive / rel / "experiment_meta.json").read_bytes() for rel in rel_paths} == original, seed
    assert not list(archive.rglob(f"*{TEMPORARY_SUFFIX}")), seed
    assert_index_matches_disk(archive)


@pytest.mark.parametrize("existing", [True, False], ids=["replacing-a-zip", "new-zip"])
def test_compress_killed_never_leaves_a_partial_zip_under_the_name(
    tmp_path: Path, run_cli, seed: int, existing: bool
) -> None:
    chance = random.Random(seed)
    archive = tmp_path / "results"
    generate_archive(archive, 300, payload=64 * 1024)
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    target = out / "backup.zip"
    if existing:
        target.write_bytes(b"the previous backup")
    kill_at_size = chance.randint(1, 12 * 1024 * 1024)

    def partial_is_big_enough() -> bool:
        partials = [entry for entry in os.scandir(out) if entry.name.endswith(TEMPORARY_SUFFIX)]
        return bool(partials) and partials[0].stat().st_size >= kill_at_size

    process = cli_process(
        "archive",
        "compress",
        "--path",
        str(archive),
        "--all",
        "--name",
        str(target),
        "--overwrite",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _kill_when(process, partial_is_big_enough, 0)

    if existing:
        assert target.read_bytes() == b"the previous backup", seed
    else:
        assert not target.exists(), seed
    assert index_query(archive, "SELECT COUNT(*) FROM exports") == [(0,)]

    again = run_cli("archive", "compress", "--path", str(archive), "--all", "--name", str(target), "--overwrite")
    assert again.exit_code == 0, again.output
    assert os.listdir(out) == ["backup.zip"]  # the dead run's temporary was cleared away
    with zipfile.ZipFile(target) as archive_zip:
        assert archive_zip.testzip() is None
        assert len(archive_zip.namelist()) == 600


def test_delete_killed_leaves_each_run_whole_or_gone_and_the_next_delete_clears_the_rest(
    tmp_path: Path, run_cli, seed: int
) -> None:
    chance = random.Random(seed)
    archive = tmp_path / "results"
    generate_archive(archive, EXPERIMENTS, payload=16)
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    kill_after = chance.randint(20, 600)

    process = cli_process(
        "archive",
        "delete",
        "--path",
        str(archive),
        "--all",
        "--yes",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def deleted_enough() -> bool:
        return peek_index(archive, "SELECT COUNT(*) AS n FROM experiments")[0]["n"] <= EXPERIMENTS - kill_after

    _kill_when(process, deleted_enough, chance.uniform(0, 0.004))

    on_disk = experiments_on_disk(archive)
    assert 0 < len(on_disk) < EXPERIMENTS, seed
    assert len(index_paths(archive) - on_disk) <= 1 and on_disk <= index_paths(archive), seed  # at most one out of step
    # Every run still in the archive is whole; one being deleted was taken out in one step.
    run_folders = {f"{namespace.name}/{run.name}" for namespace in archive.glob("ns*") for run in namespace.iterdir()}
    assert run_folders == on_disk, seed
    assert all((archive / rel_path / "data.bin").exists() for rel_path in on_disk), seed
    trash = archive / TRASH_FOLDER
    leftovers = len(os.listdir(trash)) if trash.exists() else 0
    assert leftovers <= 1, seed

    nothing = run_cli("archive", "delete", "--path", str(archive), "--select", "False", "--yes")  # the next delete
    assert nothing.exit_code == 0, (seed, nothing.output)
    assert ("Finished removing 1 experiment" in nothing.stderr) == bool(leftovers), seed
    assert not trash.exists() or os.listdir(trash) == [], seed
    listed = run_cli("archive", "list", "--path", str(archive))
    assert listed.exit_code == 0
    shown = {line.split(" ")[1].removeprefix("results/") for line in listed.stdout.splitlines()}
    assert shown == on_disk == index_paths(archive), seed
    assert_index_matches_disk(archive)


def test_writer_removes_temporaries_of_dead_processes_only(tmp_path: Path) -> None:
    target = tmp_path / "experiment_meta.json"
    target.write_text("{}")
    child = subprocess.Popen(["sleep", "30"])
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = tmp_path / f".experiment_meta.json.{dead.pid}.abcd{TEMPORARY_SUFFIX}"
        live = tmp_path / f".experiment_meta.json.{child.pid}.abcd{TEMPORARY_SUFFIX}"
        other = tmp_path / f".other.json.{dead.pid}.abcd{TEMPORARY_SUFFIX}"
        for path in (stale, live, other):
            path.write_text("half")
        write_atomic(str(target), b'{"a": 1}')
        assert target.read_text() == '{"a": 1}'
        assert not stale.exists() and live.exists() and other.exists()
        assert remove_stale_temporaries(str(target)) == 0
    finally:
        child.kill()
        child.wait()
