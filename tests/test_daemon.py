"""The daemon as users run it: ``pycomex-index`` in subprocesses, a real detached watcher process, real folders.

Every daemon a test starts is stopped in the fixture's teardown (and killed by
its own pid if it does not stop), so no process outlives the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycomex_index.daemon import pid_file_name, pid_file_owner
from pycomex_index.paths import path_in_index, process_is_alive

from .conftest import peek_index
from .test_watcher import ODD_RUNS, _write_odd_run, wait_until, write_run

MODES = {
    "inotify": [],
    "polling": ["--polling", "--interval", "0.2"],
}

#: Runs the CLI with an audit hook counting directory listings and file opens below the archive
#: (the index folder aside): how much of the archive a command walks or reads.
COUNTING_WRAPPER = """
import os, sys
root, out = sys.argv[1], sys.argv[2]
skip = os.path.join(root, ".pycomex_index")
touched = [0]
def hook(event, args):
    if event in ("open", "os.scandir", "os.listdir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if (path == root or path.startswith(root + os.sep)) and not path.startswith(skip):
            touched[0] += 1
sys.addaudithook(hook)
sys.argv = ["pycomex-index"] + sys.argv[3:]
from pycomex_index.cli import main
try:
    main()
finally:
    with open(out, "w") as file:
        file.write(str(touched[0]))
"""


def pycomex_index(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pycomex_index", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    return result


def listed(archive: Path) -> dict[str, str]:
    """``archive list --json`` as ``{rel_path: status}``."""
    result = pycomex_index("archive", "list", "--json", "--path", str(archive))
    return {entry["rel_path"]: entry["status"] for entry in json.loads(result.stdout)}


def index_outcomes(archive: Path) -> dict[str, str]:
    return {row["rel_path"]: row["outcome"] for row in peek_index(archive, "SELECT rel_path, outcome FROM experiments")}


def files_touched_by(archive: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run one CLI command under the counting wrapper: (archive files/folders it opened or listed, stdout)."""
    wrapper = tmp_path / "count_walk.py"
    wrapper.write_text(COUNTING_WRAPPER)
    counter = tmp_path / "touched.txt"
    result = subprocess.run(
        [sys.executable, str(wrapper), str(archive), str(counter), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return int(counter.read_text()), result.stdout


def heartbeat(archive: Path) -> dict[str, Any] | None:
    """The watcher row of the index, read directly (cheaper than a ``daemon status`` process)."""
    rows = peek_index(archive, "SELECT * FROM watchers")
    return rows[0] if rows else None


@pytest.fixture
def daemon(archive: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., dict[str, Any]]]:
    """``daemon(*options)`` starts the archive's daemon and waits until its heartbeat vouches for the index."""
    pid_file = archive / ".pycomex_index" / pid_file_name()
    started: list[int] = []

    def start(*options: str) -> dict[str, Any]:
        result = pycomex_index("daemon", "start", "--path", str(archive), *options)
        assert "Started the daemon" in result.stdout
        pid, alive = pid_file_owner(str(pid_file))
        assert alive
        started.append(pid)
        ready = wait_until(
            lambda: (
                (row := heartbeat(archive)) is not None and row["pid"] == pid and row["mode"] in ("inotify", "polling")
            ),
            timeout=20,
        )
        assert ready, (archive / ".pycomex_index" / "daemon.log").read_text()
        return heartbeat(archive)

    yield start
    subprocess.run(
        [sys.executable, "-m", "pycomex_index", "daemon", "stop", "--path", str(archive)],
        capture_output=True,
        timeout=90,
    )
    for pid in started:
        if process_is_alive(pid) and is_this_archives_watcher(pid, archive):
            os.kill(pid, signal.SIGKILL)


def is_this_archives_watcher(pid: int, archive: Path) -> bool:
    """True only for the watcher process of this archive (never a process that reused the pid)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"watch" in arguments and os.fsencode(str(archive)) in arguments


@pytest.mark.parametrize("mode", MODES)
def test_new_run_shows_with_its_final_status_and_a_deleted_one_vanishes_within_a_second(archive, daemon, mode):
    # The delay is timed on the index (a CLI process alone takes ~0.3 s to start); `list --json`
    # then shows what a user sees.
    daemon(*MODES[mode])
    run = "neural_net/26_11_2026__15_00_00__p4242__abcd"
    write_run(archive / run, status="running")
    assert wait_until(lambda: index_outcomes(archive).get(run) == "running", timeout=3)
    time.sleep(0.3)
    write_run(archive / run, status="done")
    last_write = time.monotonic()
    assert wait_until(lambda: index_outcomes(archive).get(run) == "done", timeout=3)
    assert time.monotonic() - last_write <= 1.0
    assert listed(archive)[run] == "done"

    gone = "sweep/lr/26_11_2026__14_03_44__p10953__eCD6"
    shutil.rmtree(archive / gone)
    deleted_at = time.monotonic()
    assert wait_until(lambda: gone not in index_outcomes(archive), timeout=3)
    assert time.monotonic() - deleted_at <= 1.0
    assert gone not in listed(archive)


@pytest.mark.parametrize("mode", MODES)
def test_read_command_does_not_walk_the_archive_while_the_daemon_runs(archive, daemon, tmp_path, mode):
    without_daemon, _ = files_touched_by(archive, tmp_path, "archive", "list", "--path", str(archive))
    assert without_daemon >= 8  # it lists every namespace folder and reads nothing it need not
    daemon(*MODES[mode])
    with_daemon, output = files_touched_by(archive, tmp_path, "archive", "list", "--path", str(archive))
    assert with_daemon == 0
    assert output.count("results/") == 8


@pytest.mark.parametrize("mode", MODES)
def test_sigkilled_daemon_is_noticed_and_the_next_command_syncs_then_start_works(archive, daemon, tmp_path, mode):
    status = daemon(*MODES[mode])
    os.kill(status["pid"], signal.SIGKILL)
    assert wait_until(lambda: not process_is_alive(status["pid"]))
    write_run(archive / "debug_runs" / "after_the_kill", status="done")

    touched, output = files_touched_by(archive, tmp_path, "archive", "list", "--json", "--path", str(archive))
    assert touched > 0  # no live watcher vouches for the index: the command synced
    assert {entry["rel_path"] for entry in json.loads(output)} >= {"debug_runs/after_the_kill"}
    not_running = pycomex_index("daemon", "status", "--path", str(archive), check=False)
    assert (not_running.returncode, not_running.stdout) == (3, "not running\n")

    restarted = daemon(*MODES[mode])
    assert restarted["pid"] != status["pid"]
    assert "replaced the stale pid file" in (archive / ".pycomex_index" / "daemon.log").read_text()


def test_second_start_says_already_running(archive, daemon):
    status = daemon()
    again = pycomex_index("daemon", "start", "--path", str(archive), check=False)
    assert again.returncode == 1
    assert again.stderr == f"Error: a watcher is already running for {archive} (pid {status['pid']})\n"
    in_foreground = pycomex_index("watch", "--path", str(archive), check=False)
    assert in_foreground.returncode == 1 and "already running" in in_foreground.stderr


def test_status_line_and_exit_codes(archive, daemon):
    stopped = pycomex_index("daemon", "status", "--path", str(archive), check=False)
    assert (stopped.returncode, stopped.stdout) == (3, "not running\n")
    as_json = pycomex_index("daemon", "status", "--json", "--path", str(archive), check=False)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["running"] is False
    status = daemon()
    running = pycomex_index("daemon", "status", "--path", str(archive))
    first_line = running.stdout.splitlines()[0]
    assert first_line.startswith(f"running (pid {status['pid']}, since ")
    assert first_line.endswith(", backlog 0, mode inotify)") and "last change applied " in first_line


@pytest.mark.parametrize("how", ["daemon stop", "SIGTERM"])
def test_stopping_clears_the_heartbeat_and_the_pid_file(archive, daemon, tmp_path, how):
    status = daemon()
    if how == "SIGTERM":
        os.kill(status["pid"], signal.SIGTERM)
    else:
        assert (
            pycomex_index("daemon", "stop", "--path", str(archive)).stdout
            == f"Stopped the daemon (pid {status['pid']}).\n"
        )
    assert wait_until(lambda: not (archive / ".pycomex_index" / pid_file_name()).exists())
    assert peek_index(archive, "SELECT * FROM watchers") == []
    touched, _ = files_touched_by(archive, tmp_path, "archive", "list", "--path", str(archive))
    assert touched > 0
    assert "stopped watching" in (archive / ".pycomex_index" / "daemon.log").read_text()


def test_tiny_watch_limit_reports_polling_and_misses_no_change(archive, daemon):
    for number in range(30):
        write_run(archive / "neural_net" / f"done_{number:02d}", status="done")
    daemon("--max-watches", "2", "--interval", "0.2")
    status = pycomex_index("daemon", "status", "--path", str(archive)).stdout
    assert "mode polling" in status and "more than 2 inotify watches" in status
    assert "switching to polling" in (archive / ".pycomex_index" / "daemon.log").read_text()

    write_run(archive / "brand_new" / "namespace_run", status="running")
    (archive / "neural_net" / "done_07" / "plot.png").write_bytes(b"\0" * 1000)
    shutil.rmtree(archive / "neural_net" / "done_03")
    os.rename(archive / "neural_net" / "done_04", archive / "debug_runs" / "done_04")
    expected = {"brand_new/namespace_run", "debug_runs/done_04"}
    assert wait_until(
        lambda: (
            expected <= index_outcomes(archive).keys()
            and not {"neural_net/done_03", "neural_net/done_04"} & index_outcomes(archive).keys()
        ),
        timeout=3,
    )
    runs = {
        entry["rel_path"]: entry
        for entry in json.loads(pycomex_index("archive", "list", "--json", "--path", str(archive)).stdout)
    }
    assert runs["neural_net/done_07"]["asset_count"] == 2
    assert len(runs) == 8 + 30 - 2 + 1 + 1


def test_cli_and_daemon_write_the_index_concurrently_without_locked_errors(archive, daemon):
    daemon()
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "pycomex_index", *args, "--path", str(archive)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (
            ["index", "sync", "--rebuild"],
            ["index", "sync"],
            ["archive", "list"],
            ["index", "sync", "--rebuild"],
        )
    ]
    for number in range(60):
        write_run(archive / "burst" / f"run_{number:02d}", status="done")
    for command in commands:
        _, stderr = command.communicate(timeout=60)
        assert command.returncode == 0, stderr
        assert "locked" not in stderr and "busy" not in stderr and "Error" not in stderr, stderr
    assert wait_until(lambda: sum(path.startswith("burst/") for path in listed(archive)) == 60, timeout=5)


def test_pid_file_and_log_go_beside_an_index_kept_elsewhere(archive, tmp_path):
    index = tmp_path / "local-disk" / "results.sqlite3"
    started = pycomex_index("daemon", "start", "--path", str(archive), "--index", str(index))
    try:
        pid_files = list(index.parent.glob(f"results.sqlite3.*.{pid_file_name()}"))
        assert len(pid_files) == 1
        assert str(pid_files[0]).removesuffix(pid_file_name()) + "daemon.log" in started.stdout
        assert not list((archive / ".pycomex_index").glob("daemon.*"))  # only the archive id (archive.json) is there
        status = pycomex_index("daemon", "status", "--json", "--path", str(archive), "--index", str(index))
        assert json.loads(status.stdout)["pid_file"] == str(pid_files[0])
    finally:
        pycomex_index("daemon", "stop", "--path", str(archive), "--index", str(index))
    assert not pid_files[0].exists()


def test_an_archive_without_an_index_folder_keeps_its_daemon_files_in_the_user_cache(tmp_path, monkeypatch):
    """A database URL and no .pycomex_index folder to write to: the daemon's files sit with the archive's other files
    in the user cache, named per archive, so two archives of one folder name never share a pid file."""
    from pycomex_index.daemon import daemon_files
    from pycomex_index.store import user_cache_stem

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = "postgresql://lab@db.example/index"
    first, second = (tmp_path / place / "results" for place in ("a", "b"))
    first_files, second_files = daemon_files(str(first), url), daemon_files(str(second), url)
    cache = tmp_path / "cache" / "pycomex-index"
    assert first_files.pid_path == f"{user_cache_stem(str(first))}.{pid_file_name()}"
    assert Path(first_files.pid_path).parent == Path(first_files.log_path).parent == cache
    assert Path(first_files.pid_path).name.startswith("results-")
    assert {first_files.pid_path, first_files.log_path}.isdisjoint({second_files.pid_path, second_files.log_path})


def test_changes_lost_to_a_kernel_queue_overflow_are_found_by_a_rewalk(archive, daemon):
    # A real IN_Q_OVERFLOW: the daemon is stopped (SIGSTOP) while more events than the kernel queues
    # happen in a watched folder; the run written after them raises no event that arrives. Only the
    # re-walk the overflow triggers can find it: the periodic one is 300 s away.
    queue_limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if queue_limit > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events is {queue_limit}: too many events to flood the queue quickly")
    pid = daemon()["pid"]
    flood = str(archive / "neural_net" / "flood")
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"T")
        for _ in range(queue_limit // 2 + 100):  # a create and a delete each: more events than the queue holds
            os.close(os.open(flood, os.O_CREAT | os.O_WRONLY, 0o644))
            os.unlink(flood)
        write_run(archive / "neural_net" / "after_the_overflow", status="done")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: index_outcomes(archive).get("neural_net/after_the_overflow") == "done", timeout=20)
    log = (archive / ".pycomex_index" / "daemon.log").read_text()
    assert "re-walking the archive: the kernel's inotify queue overflowed" in log


def test_commands_sync_themselves_until_the_daemons_catch_up_is_done_then_trust_it(archive, tmp_path, catch_up_gate):
    gate = catch_up_gate
    pid = None
    try:
        pycomex_index("daemon", "start", "--path", str(archive))
        pid = pid_file_owner(str(archive / ".pycomex_index" / pid_file_name()))[0]
        assert wait_until((gate / "blocked").exists, timeout=20), "the daemon never started catching up"
        # The daemon runs, but is still catching up: its heartbeat vouches for nothing yet.
        assert heartbeat(archive)["mode"] == "starting"
        write_run(archive / "neural_net" / "written_while_catching_up", status="done")
        assert listed(archive).get("neural_net/written_while_catching_up") == "done"
        touched, _ = files_touched_by(archive, tmp_path, "archive", "list", "--path", str(archive))
        assert touched > 0  # it walked the archive itself

        (gate / "release").touch()
        assert wait_until(lambda: heartbeat(archive)["mode"] == "inotify", timeout=20)
        touched, output = files_touched_by(archive, tmp_path, "archive", "list", "--json", "--path", str(archive))
        assert touched == 0  # caught up: the index is trusted
        assert "neural_net/written_while_catching_up" in output
    finally:
        (gate / "release").touch()
        pycomex_index("daemon", "stop", "--path", str(archive), check=False)
        if pid is not None and process_is_alive(pid) and is_this_archives_watcher(pid, archive):
            os.kill(pid, signal.SIGKILL)


def test_runs_in_folders_named_with_odd_bytes_are_followed_by_the_daemon_as_sync_stores_them(archive, daemon, tmp_path):
    daemon()
    stored = {path_in_index(os.fsdecode(rel)) for rel in ODD_RUNS}

    def as_index_sync_stores_them() -> dict[str, str]:
        other = tmp_path / "by-sync.sqlite3"
        other.unlink(missing_ok=True)
        pycomex_index("index", "sync", "--path", str(archive), "--index", str(other))
        connection = sqlite3.connect(other)
        try:
            return dict(connection.execute("SELECT rel_path, outcome FROM experiments"))
        finally:
            connection.close()

    for status in ("running", "done"):
        for rel in ODD_RUNS:
            _write_odd_run(archive, rel, status)
        assert wait_until(
            lambda status=status: all(index_outcomes(archive).get(path) == status for path in stored), timeout=5
        )
        assert index_outcomes(archive) == as_index_sync_stores_them()
        time.sleep(0.3)
    for rel in ODD_RUNS:
        shutil.rmtree(os.path.join(os.fsencode(archive), rel))
    assert wait_until(lambda: not stored & index_outcomes(archive).keys(), timeout=5)
    assert index_outcomes(archive) == as_index_sync_stores_them()
    assert listed(archive).keys() == index_outcomes(archive).keys()
    log = (archive / ".pycomex_index" / "daemon.log").read_text()
    assert " ERROR " not in log and " WARNING " not in log and "Traceback" not in log, log
