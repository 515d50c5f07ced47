"""The pycomex plugin with real pycomex: experiments run through pycomex are indexed as they happen.

Every test runs pycomex in a subprocess, as a user does: pycomex finds
plugins with ``pkgutil.iter_modules()``, which does not see an editable
install's import hook, so the subprocess gets a folder on PYTHONPATH holding
a link to this checkout's package (a regular ``pip install`` needs no such
help). Each pycomex start costs 1-3 s (pycomex imports matplotlib), so the
tests share runs where they can.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pycomex_index

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pycomex") is None, reason="pycomex is not installed")

PYCOMEX = str(Path(sys.executable).with_name("pycomex"))

EXPERIMENT_SOURCE = textwrap.dedent(
    '''
    """An experiment for the plugin tests: MODE says whether it succeeds, fails or hangs."""
    import os
    import time

    from pycomex.functional.experiment import Experiment

    LEARNING_RATE = 0.01

    experiment = Experiment(base_path=os.environ["ARCHIVE"], namespace="plugin_test", glob=globals(), notify=False)


    @experiment
    def run(e):
        e["answer"] = 42
        if os.environ.get("MODE") == "fail":
            raise ValueError("the experiment failed on purpose")
        if os.environ.get("MODE") == "hang":
            open(os.environ["STARTED"], "w").close()
            time.sleep(120)


    experiment.run_if_main()
    '''
)


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a pycomex process that finds this checkout's plugin."""
    shim = tmp_path / "plugin_path"
    shim.mkdir()
    (shim / "pycomex_index").symlink_to(Path(pycomex_index.__file__).parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYCOMEX_INDEX")}
    env["PYTHONPATH"] = str(shim)
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


@pytest.fixture
def experiment_module(tmp_path: Path) -> Path:
    module = tmp_path / "plugin_experiment.py"
    module.write_text(EXPERIMENT_SOURCE)
    return module


def run_experiment(module: Path, archive: Path, env: dict[str, str], mode: str = "ok") -> subprocess.CompletedProcess:
    archive.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(module)],
        env={**env, "ARCHIVE": str(archive), "MODE": mode},
        capture_output=True,
        text=True,
        timeout=120,
    )


def indexed_rows(archive: Path) -> dict[str, str]:
    """{run folder name: outcome} straight from the index file: what the hooks wrote, with no sync."""
    connection = sqlite3.connect(archive / ".pycomex_index" / "index.sqlite3")
    try:
        return {
            rel_path.split("/")[-1]: outcome
            for rel_path, outcome in connection.execute("SELECT rel_path, outcome FROM experiments")
        }
    finally:
        connection.close()


def run_folders(archive: Path) -> list[Path]:
    return sorted(path for path in (archive / "plugin_test").iterdir() if path.is_dir())


def plugin_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "pycomex-index:" in line]


def test_successful_and_failing_runs_are_in_the_index_when_they_end(
    tmp_path: Path, plugin_env: dict[str, str], experiment_module: Path
) -> None:
    archive = tmp_path / "results"
    done = run_experiment(experiment_module, archive, plugin_env)
    assert done.returncode == 0, done.stderr
    failed = run_experiment(experiment_module, archive, plugin_env, mode="fail")
    assert failed.returncode != 0 and "the experiment failed on purpose" in failed.stderr

    folders = run_folders(archive)
    assert len(folders) == 2
    outcomes = {json.loads((folder / "experiment_meta.json").read_text())["status"] for folder in folders}
    assert outcomes == {"done", "failed"}
    assert sorted(indexed_rows(archive).values()) == ["done", "failed"]
    assert liveness_rows(archive) == []  # the end hook removes the run's liveness record
    assert not plugin_warnings(done.stderr + failed.stderr)

    listed = subprocess.run(
        [PYCOMEX, "archive", "--path", str(archive), "list"],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert [line[0] for line in listed.stdout.splitlines()] == ["✅", "❌"]


def liveness_rows(archive: Path) -> list[tuple]:
    connection = sqlite3.connect(archive / ".pycomex_index" / "index.sqlite3")
    try:
        return list(
            connection.execute(
                "SELECT hostname, pid, process_started_at, heartbeat_at, heartbeat_interval FROM run_liveness"
            )
        )
    finally:
        connection.close()


def test_a_live_run_shows_as_running_and_once_killed_as_interrupted_and_deletable(
    tmp_path: Path, plugin_env: dict[str, str], experiment_module: Path, run_cli, monkeypatch
) -> None:
    # The folder-name guess must not be what finds it dead: its files are seconds old, far below this threshold.
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    archive = tmp_path / "results"
    archive.mkdir()
    started = tmp_path / "started"
    process = subprocess.Popen(
        [sys.executable, str(experiment_module)],
        env={
            **plugin_env,
            "ARCHIVE": str(archive),
            "MODE": "hang",
            "STARTED": str(started),
            "PYCOMEX_INDEX_HEARTBEAT_INTERVAL": "0.2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not started.exists():
            assert process.poll() is None, "the experiment ended before it began its work"
            assert time.monotonic() < deadline, "the experiment did not start"
            time.sleep(0.05)
        # The start hook ran before the experiment's own code: the run is already in the index, with its process.
        assert list(indexed_rows(archive).values()) == ["running"]
        [(hostname, pid, process_started_at, first_beat, interval)] = liveness_rows(archive)
        assert (hostname, pid, interval) == (socket.gethostname(), process.pid, 0.2)
        assert process_started_at is not None and abs(process_started_at - time.time()) < 120
        listed = run_cli("archive", "list", "--path", str(archive))
        assert listed.stdout.startswith("⏳ ") and listed.stdout.endswith(" (running)\n"), listed.output
        kept = run_cli("archive", "delete", "--path", str(archive), "--all", "--yes")
        assert "Held back 1 running experiment; add --include-running" in kept.stdout
        # pycomex rewrites the metadata when the run ends, so a change now would be lost: modify holds it back.
        unmodified = run_cli("archive", "modify", "--path", str(archive), "--all", "--modify-metadata", "m['x'] = 1")
        assert unmodified.stdout == "Held back 1 running experiment; add --include-running to modify it too.\n"
        # The daemon thread refreshes the heartbeat while the experiment sleeps.
        deadline = time.monotonic() + 30
        while liveness_rows(archive)[0][3] == first_beat:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert list(indexed_rows(archive).values()) == ["running"]  # the status on disk and in the index stays

    # Right away (no heartbeat threshold on this host): its recorded process is gone.
    listed = run_cli("archive", "list", "--path", str(archive), "--select", "m['state'] == 'interrupted'")
    assert listed.stdout.startswith("💀 ") and listed.stdout.endswith(" (interrupted)\n"), listed.output
    assert "Interrupted: 1 (100.0%)" in run_cli("archive", "overview", "--path", str(archive)).stdout.splitlines()
    # A certain death lifts the protection: no --include-running needed.
    modified = run_cli("archive", "modify", "--path", str(archive), "--all", "--modify-metadata", "m['x'] = 1")
    assert modified.exit_code == 0 and "Held back" not in modified.stdout, modified.output
    assert modified.stdout.startswith("Successfully modified 1 experiment.")
    deleted = run_cli("archive", "delete", "--path", str(archive), "--all", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "Held back" not in deleted.stdout
    assert run_folders(archive) == []


@pytest.mark.parametrize("damage", ["a folder", "locked"])
def test_a_broken_index_never_breaks_an_experiment(
    tmp_path: Path, plugin_env: dict[str, str], experiment_module: Path, damage: str
) -> None:
    archive = tmp_path / "results"
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    index_file.parent.mkdir(parents=True)
    holder = None
    if damage == "a folder":
        index_file.mkdir()
    else:
        # A working index that another process holds an exclusive lock on for longer than the hook waits.
        ready = run_experiment(experiment_module, archive, plugin_env)
        assert ready.returncode == 0, ready.stderr
        holder = sqlite3.connect(index_file, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    before = set(run_folders(archive)) if (archive / "plugin_test").is_dir() else set()
    try:
        started = time.monotonic()
        result = run_experiment(experiment_module, archive, plugin_env)
        elapsed = time.monotonic() - started
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()

    assert result.returncode == 0, result.stderr
    (new_run,) = set(run_folders(archive)) - before
    assert json.loads((new_run / "experiment_meta.json").read_text())["status"] == "done"
    warnings = plugin_warnings(result.stderr)
    assert len(warnings) == 1, result.stderr  # one warning, however many hooks met the problem
    assert "catches up at its next sync" in warnings[0]
    assert elapsed < 60


def test_a_damaged_index_is_set_aside_and_the_run_goes_into_a_fresh_one(
    tmp_path: Path, plugin_env: dict[str, str], experiment_module: Path
) -> None:
    archive = tmp_path / "results"
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    index_file.parent.mkdir(parents=True)
    index_file.write_bytes(b"not a database at all " * 100)
    result = run_experiment(experiment_module, archive, plugin_env)
    assert result.returncode == 0, result.stderr
    assert list(indexed_rows(archive).values()) == ["done"]
    assert list(index_file.parent.glob("index.sqlite3.damaged-*"))


def test_pycomex_archive_runs_the_indexed_commands_and_the_switch_turns_them_off(
    tmp_path: Path, plugin_env: dict[str, str], archive: Path
) -> None:
    ours = subprocess.run(
        [PYCOMEX, "archive", "--path", str(archive), "overview"],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ours.returncode == 0, ours.stderr
    assert "Total Experiments: 8" in ours.stdout
    assert (archive / ".pycomex_index" / "index.sqlite3").exists()

    help_text = subprocess.run(
        [PYCOMEX, "archive", "--help"],
        env={**plugin_env, "PYCOMEX_INDEX_PLUGIN": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "undo" not in help_text.stdout and "pycomex-index" not in help_text.stdout


def test_importing_the_plugin_costs_little_and_loads_nothing_heavy(plugin_env: dict[str, str]) -> None:
    # Importing pycomex already imports its plugins, so the probe starts with ours switched off, forgets
    # what that import left, switches it on and imports it again, as pycomex's plugin loader does.
    probe = textwrap.dedent(
        """
        import os, sys, time
        import pycomex.plugin
        for name in [name for name in sys.modules if name.startswith("pycomex_index")]:
            del sys.modules[name]
        os.environ["PYCOMEX_INDEX_PLUGIN"] = "1"
        before = set(sys.modules)
        started = time.perf_counter()
        import pycomex_index.main
        elapsed = time.perf_counter() - started
        assert hasattr(pycomex_index.main, "IndexPlugin")
        print(elapsed, *sorted(set(sys.modules) - before))
        """
    )
    env = {**plugin_env, "PYCOMEX_INDEX_PLUGIN": "0"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    elapsed, *loaded = result.stdout.split()
    heavy = [name for name in loaded if name.split(".")[0] in ("sqlalchemy", "alembic", "watchdog", "rich", "click")]
    assert not heavy
    assert float(elapsed) < 0.05  # ~1 ms measured; generous for a loaded CI machine
