"""Running, finished or interrupted: the derived state of runs whose status says running (pycomex_index.liveness).

The real-pycomex side (a live run, a SIGKILLed one) is in tests/test_pycomex_plugin.py;
here the two other sources are simulated: the plugin's record of a run on another
host, and the pid in the folder name of a run made without the plugin.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_metadata, read_meta, sqlite_plan, statements_sent, write_meta
from tests.helpers_write import freeze_index

NAMESPACE = "ns"


def _running_run(archive: Path, name: str, *, start_time: float | None = None) -> str:
    start = time.time() - 60 if start_time is None else start_time
    write_meta(archive / NAMESPACE / name, make_metadata(status="running", end_time=None, duration=0, start_time=start))
    return f"{NAMESPACE}/{name}"


def _finished_run(archive: Path) -> str:
    write_meta(archive / NAMESPACE / "finished", make_metadata())
    return f"{NAMESPACE}/finished"


def _states(run_cli, archive: Path) -> dict[str, str]:
    result = run_cli("archive", "list", "--path", str(archive), "--json")
    assert result.exit_code == 0, result.output
    return {item["rel_path"]: item["state"] for item in json.loads(result.stdout)}


def _write_record(
    archive: Path, rel_path: str, *, hostname: str, pid: int, heartbeat_age: float, interval: float = 30.0
) -> None:
    """A run_liveness row as the plugin writes it, for a process on ``hostname``."""
    from pycomex_index.store import open_archive_index

    now = time.time()
    with open_archive_index(str(archive)) as index:
        with index.db.transaction():
            index.db.execute(
                "INSERT INTO run_liveness (archive_id, rel_path, hostname, pid_namespace, pid, process_started_at, "
                "started_at, heartbeat_at, heartbeat_interval) VALUES (:archive_id, :rel_path, :hostname, NULL, :pid, "
                ":started, :started, :heartbeat, :interval)",
                {
                    "archive_id": index.archive_id,
                    "rel_path": rel_path,
                    "hostname": hostname,
                    "pid": pid,
                    "started": now - 600,
                    "heartbeat": now - heartbeat_age,
                    "interval": interval,
                },
            )


def _backdate(folder: Path, seconds: float) -> None:
    moment = time.time() - seconds
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (moment, moment))


def test_a_run_on_another_host_is_interrupted_once_its_heartbeat_is_stale(
    tmp_path: Path, run_cli, index_backend: str
) -> None:
    archive = tmp_path / "results"
    stale = _running_run(archive, "stale")
    fresh = _running_run(archive, "fresh")
    finished = _finished_run(archive)
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    # pid 1 runs here too: on another host it must not matter whether this host has such a pid.
    _write_record(archive, stale, hostname="elsewhere.example", pid=1, heartbeat_age=91)  # > 3 × 30 s
    _write_record(archive, fresh, hostname="elsewhere.example", pid=1, heartbeat_age=60)

    assert _states(run_cli, archive) == {stale: "interrupted", fresh: "live", finished: "finished"}
    listed = run_cli("archive", "list", "--path", str(archive)).stdout
    assert f"💀 results/{stale} (interrupted)\n" in listed and f"⏳ results/{fresh} (running)\n" in listed
    overview = json.loads(run_cli("archive", "info", "--path", str(archive), "--json").stdout)
    assert (overview["running"], overview["interrupted"], overview["successful"], overview["failed"]) == (1, 1, 1, 0)

    # A certain death: delete needs no --include-running for it, and still holds back the live one.
    deleted = run_cli("archive", "delete", "--path", str(archive), "--select", "m['status'] == 'running'", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "Held back 1 running experiment; add --include-running to delete it too." in deleted.stdout
    assert not (archive / stale).exists() and (archive / fresh).exists()


@pytest.mark.parametrize("run_host_clock_offset", [-3600.0, 3600.0])
def test_a_run_hosts_clock_being_off_neither_kills_nor_revives_its_run(
    tmp_path: Path, run_cli, index_backend: str, monkeypatch: pytest.MonkeyPatch, run_host_clock_offset: float
) -> None:
    """The plugin's heartbeat keeps the database's time, so the reader's clock and the run host's need not agree."""
    from pycomex_index.liveness import MISSED_HEARTBEATS_VARIABLE, record_heartbeat, record_run_start
    from pycomex_index.paths import HOSTNAME_ENV_VARIABLE
    from pycomex_index.store import open_archive_index

    archive = tmp_path / "results"
    run = _running_run(archive, "elsewhere")
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    true_time = time.time
    with monkeypatch.context() as run_host, open_archive_index(str(archive)) as index:
        run_host.setenv(HOSTNAME_ENV_VARIABLE, "elsewhere.example")
        run_host.setattr(time, "time", lambda: true_time() + run_host_clock_offset)
        record_run_start(index.db, index.archive_id, run, heartbeat_interval=1.0)
        record_heartbeat(index.db, index.archive_id, run)
    monkeypatch.setenv(MISSED_HEARTBEATS_VARIABLE, "1")
    assert _states(run_cli, archive) == {run: "live"}

    time.sleep(1.5)  # the run's host went silent for more than one beat
    assert _states(run_cli, archive) == {run: "interrupted"}


def test_the_number_of_missed_heartbeats_is_configurable(tmp_path: Path, run_cli, monkeypatch) -> None:
    archive = tmp_path / "results"
    run = _running_run(archive, "quiet")
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    _write_record(archive, run, hostname="elsewhere.example", pid=1, heartbeat_age=200)
    assert _states(run_cli, archive) == {run: "interrupted"}
    monkeypatch.setenv("PYCOMEX_INDEX_MISSED_HEARTBEATS", "10")
    assert _states(run_cli, archive) == {run: "live"}


def test_a_record_on_this_host_is_judged_by_its_process_not_its_heartbeat(tmp_path: Path, run_cli) -> None:
    from pycomex_index.liveness import process_started_at

    archive = tmp_path / "results"
    alive = _running_run(archive, "alive")
    reused = _running_run(archive, "reused")
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    # This very process, with an old heartbeat: alive on this host, so live.
    _write_record(archive, alive, hostname=socket.gethostname(), pid=os.getpid(), heartbeat_age=10_000)
    # This process's pid, recorded with another start time: the pid was reused, the run's process is gone.
    _write_record(archive, reused, hostname=socket.gethostname(), pid=os.getpid(), heartbeat_age=1)
    from pycomex_index.store import open_archive_index

    with open_archive_index(str(archive)) as index:
        index.db.execute(
            "UPDATE run_liveness SET process_started_at = :started WHERE rel_path = :rel_path",
            {"started": process_started_at(os.getpid()) - 3600, "rel_path": reused},
        )
        index.db.execute(
            "UPDATE run_liveness SET process_started_at = :started WHERE rel_path = :rel_path",
            {"started": process_started_at(os.getpid()), "rel_path": alive},
        )
    assert _states(run_cli, archive) == {alive: "live", reused: "interrupted"}


def test_a_run_without_the_plugin_is_guessed_interrupted_only_after_the_file_age_threshold(
    tmp_path: Path, run_cli, monkeypatch
) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")  # the default (conftest sets 0 for the fixture)
    archive = tmp_path / "results"
    pid_gone = 2**22 + 12345  # above Linux's largest pid (pid_max is at most 2**22): never alive
    guessed = _running_run(archive, f"26_11_2026__14_03_50__p{pid_gone}__wKXG")
    # The folder names this very process, which started after the run did: a reused pid.
    reused = _running_run(archive, f"26_11_2026__14_03_51__p{os.getpid()}__aBcD", start_time=1_700_000_000.0)
    # The folder names this very process, which started before the run: it may be the run's, so live.
    own = _running_run(archive, f"26_11_2026__14_03_52__p{os.getpid()}__eFgH", start_time=time.time())
    unnamed = _running_run(archive, "no_pid_in_the_name")
    fresh = _states(run_cli, archive)
    assert set(fresh.values()) == {"live"}  # files younger than an hour: the run may live on another host

    for rel_path in (guessed, reused, own, unnamed):
        _backdate(archive / rel_path, 2 * 3600)
    assert _states(run_cli, archive) == {guessed: "interrupted", reused: "interrupted", own: "live", unnamed: "live"}
    assert "Interrupted: 2 (50.0%)" in run_cli("archive", "overview", "--path", str(archive)).stdout.splitlines()
    # scan judges them on a thread while SQL groups (one key read), or after Python grouped them.
    for options in ([], ["--select", "m['status'] == 'running'"], ["--group", "m['name'] + '!'"]):
        scan = run_cli("archive", "scan", "--path", str(archive), *options)
        assert "💀 2 interrupted: status 'running'" in scan.stdout, (options, scan.output)

    # Only a guess: delete holds it back without --include-running.
    selection = "m['state'] == 'interrupted'"
    held = run_cli("archive", "delete", "--path", str(archive), "--select", selection, "--yes")
    assert held.exit_code == 0, held.output
    assert "Held back 2 running experiments (2 of them look interrupted" in held.stdout
    assert (archive / guessed).exists() and (archive / reused).exists()
    gone = run_cli("archive", "delete", "--path", str(archive), "--select", selection, "--yes", "--include-running")
    assert gone.exit_code == 0, gone.output
    assert not (archive / guessed).exists() and not (archive / reused).exists() and (archive / own).exists()


@pytest.mark.parametrize("with_log", [True, False])
def test_files_dated_at_the_epoch_are_as_old_as_can_be(tmp_path: Path, run_cli, monkeypatch, with_log: bool) -> None:
    # An unpacked or synced archive can carry mtime 0: a time like any other, not a missing one.
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    archive = tmp_path / "results"
    rel_path = _running_run(archive, f"26_11_2026__14_03_50__p{2**22 + 12345}__wKXG")
    folder = archive / rel_path
    if with_log:
        (folder / "experiment_out.log").write_text("")
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (0, 0))
    assert _states(run_cli, archive) == {rel_path: "interrupted"}


def test_the_fixture_archives_killed_run_is_interrupted_by_default_once_its_files_are_old(
    archive: Path, run_cli, monkeypatch
) -> None:
    monkeypatch.delenv("PYCOMEX_INDEX_INTERRUPTED_AFTER")
    killed = archive / "neural_net" / "26_11_2026__14_03_50__p11237__wKXG"
    _backdate(killed, 3601)  # as the run's files are, an hour after a fresh checkout
    listed = run_cli("archive", "list", "--path", str(archive)).stdout
    assert "💀 results/neural_net/26_11_2026__14_03_50__p11237__wKXG (interrupted)\n" in listed
    tail = run_cli("archive", "tail", "--path", str(archive), "-n", "8").stdout
    assert "Status: interrupted 💀" in tail and "Ended: (interrupted)" in tail
    scan = run_cli("archive", "scan", "--path", str(archive)).stdout
    assert "💀 1 interrupted: status 'running', but the process is gone" in scan


def test_modify_leaves_running_runs_alone_unless_their_death_is_certain_or_include_running(
    tmp_path: Path, run_cli, monkeypatch
) -> None:
    """pycomex rewrites a run's metadata when the run ends: a change to a live run's file would be lost."""
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    archive = tmp_path / "results"
    dead = _running_run(archive, "dead")  # its heartbeat stopped on another host: certainly interrupted
    live = _running_run(archive, "live")
    guessed = _running_run(archive, f"26_11_2026__14_03_50__p{2**22 + 12345}__wKXG")  # a pid never alive here
    _backdate(archive / guessed, 2 * 3600)
    finished = _finished_run(archive)
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    _write_record(archive, dead, hostname="elsewhere.example", pid=1, heartbeat_age=91)
    _write_record(archive, live, hostname="elsewhere.example", pid=1, heartbeat_age=5)

    def batch_sizes() -> dict[str, int]:
        return {rel: read_meta(archive / rel)["parameters"]["BATCH_SIZE"]["value"] for rel in (dead, live, guessed)}

    modify = ("archive", "modify", "--path", str(archive), "--all", "--modify-parameters", "p['BATCH_SIZE'] = 64")
    result = run_cli(*modify)
    assert result.exit_code == 0, result.output
    summary, held_back = result.stdout.splitlines()
    # pycomex's words first (scripts look for them), for the finished and the dead; then what was left alone.
    assert summary.startswith("Successfully modified 2 experiments.")
    assert held_back == (
        "Held back 2 running experiments (1 of them look interrupted, but that is a guess from a folder name's "
        "pid and the files' age); add --include-running to modify them too."
    )
    assert read_meta(archive / finished)["parameters"]["BATCH_SIZE"]["value"] == 64
    assert batch_sizes() == {dead: 64, live: 32, guessed: 32}

    everything = run_cli(*modify, "--include-running")
    assert everything.exit_code == 0, everything.output
    assert "Held back" not in everything.stdout and "Successfully modified 2 experiments" in everything.stdout
    assert batch_sizes() == {dead: 64, live: 64, guessed: 64}

    # Only running runs selected: says what it held back, changes nothing, and that is no failure.
    only_live = run_cli(*modify[:4], "--select", f"m['path'].endswith('{live}')", "--modify-parameters", "p['X'] = 1")
    assert only_live.exit_code == 0, only_live.output
    assert only_live.stdout == "Held back 1 running experiment; add --include-running to modify it too.\n"
    assert "X" not in read_meta(archive / live)["parameters"]


KILLED_RUN = "neural_net/26_11_2026__14_03_50__p11237__wKXG"


def _fresh_mtimes(archive: Path) -> None:
    """Every file and folder changed just now, as after a git checkout, an unzip or a plain cp."""
    for folder, _, files in os.walk(archive):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            os.utime(path)


def _listed(run_cli, archive: Path, rel_path: str) -> str:
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if rel_path in line]
    return line


def test_a_fresh_checkout_shows_the_killed_run_interrupted_at_once(archive: Path, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")  # the default (conftest sets 0 for the fixture)
    _fresh_mtimes(archive)
    # The files are a second old, but the run wrote its metadata and its last log line days before that.
    assert _listed(run_cli, archive, KILLED_RUN) == f"💀 results/{KILLED_RUN} (interrupted)"
    overview = run_cli("archive", "overview", "--path", str(archive)).stdout.splitlines()
    assert "Running: 0 (0.0%)" in overview and "Interrupted: 1 (12.5%)" in overview


def test_a_run_whose_metadata_says_it_began_just_now_stays_running(archive: Path, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    killed = archive / KILLED_RUN
    write_meta(killed, {**read_meta(killed), "start_time": time.time() - 60})
    _fresh_mtimes(archive)
    assert _listed(run_cli, archive, KILLED_RUN) == f"⏳ results/{KILLED_RUN} (running)"


def test_a_run_still_logging_stays_running_though_its_metadata_was_rewritten_since_it_began(
    archive: Path, run_cli, monkeypatch
) -> None:
    """As after ``modify`` on a long run: the metadata's mtime is hours past its start_time, the log is current."""
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    killed = archive / KILLED_RUN
    began = 5 * 3600
    write_meta(killed, {**read_meta(killed), "start_time": time.time() - began})
    log = killed / "experiment_out.log"
    first_record = datetime.strptime(log.read_text()[:23], "%Y-%m-%d %H:%M:%S,%f")
    last_record = first_record + timedelta(seconds=began - 60)  # a minute ago, in the log's own clock
    with log.open("a") as file:
        file.write(f"{last_record:%Y-%m-%d %H:%M:%S},{last_record.microsecond // 1000:03d} - epoch 001\n")
    _fresh_mtimes(archive)
    assert _listed(run_cli, archive, KILLED_RUN) == f"⏳ results/{KILLED_RUN} (running)"


def test_only_the_head_and_the_tail_of_a_long_log_are_read(tmp_path: Path) -> None:
    from pycomex_index.liveness import LOG_TAIL_BYTES, log_record_times

    log = tmp_path / "experiment_out.log"
    lines = ["2026-11-26 14:03:50,741 - started"]
    lines += [f"2026-11-26 14:{second // 60:02d}:{second % 60:02d},000 - step {second}" for second in range(300, 3600)]
    lines += ["2026-11-26 15:00:00,500 - Traceback follows", "x" * (LOG_TAIL_BYTES // 2), "  File …, line 3"]
    log.write_text("\n".join(lines) + "\n")
    size = log.stat().st_size
    assert size > LOG_TAIL_BYTES
    assert log_record_times(str(log), size) == (
        datetime(2026, 11, 26, 14, 3, 50, 741000),
        datetime(2026, 11, 26, 15, 0, 0, 500000),
    )
    log.write_text("x" * (2 * LOG_TAIL_BYTES))  # no record at all: nothing to judge by
    assert log_record_times(str(log), log.stat().st_size) is None


def test_the_state_is_selected_in_python_and_grouped_by(archive: Path, run_cli) -> None:
    from pycomex_index.pushdown import prefilter_for
    from pycomex_index.selection import compile_expression

    assert prefilter_for(compile_expression("m['state'] == 'interrupted'")) is None
    both = prefilter_for(compile_expression("m['status'] == 'running' and m['state'] == 'interrupted'"))
    assert both is not None and both.pushed == ["m['status'] == 'running'"]  # the state part is Python's

    for select in ("m['state'] == 'interrupted'", "m['status'] == 'running' and m['state'] == 'interrupted'"):
        result = run_cli("archive", "list", "--path", str(archive), "--select", select)
        assert result.stdout == "💀 results/neural_net/26_11_2026__14_03_50__p11237__wKXG (interrupted)\n", select
    groups = json.loads(run_cli("archive", "scan", "--path", str(archive), "--group", "m['state']", "--json").stdout)
    assert {group["group"]: group["count"] for group in groups} == {"finished": 7, "interrupted": 1}


@pytest.mark.parametrize("value", ["", "soon", "-5", "nan"])
def test_a_threshold_that_is_no_number_falls_back_to_the_default(monkeypatch, value: str) -> None:
    from pycomex_index.liveness import QUIET_AFTER_SECONDS, QUIET_AFTER_VARIABLE, seconds_from_environment

    monkeypatch.setenv(QUIET_AFTER_VARIABLE, value)
    assert seconds_from_environment(QUIET_AFTER_VARIABLE, QUIET_AFTER_SECONDS) == QUIET_AFTER_SECONDS


@pytest.mark.parametrize("rel_path", ["/etc", "a//b", "a/./b", "a/../../etc", "..", ".", "", "a/b/"])
def test_a_stored_path_that_is_not_plainly_below_the_root_reaches_no_folder(rel_path: str) -> None:
    from pycomex_index.errors import UnsafePathError
    from pycomex_index.paths import experiment_folder

    with pytest.raises(UnsafePathError):
        experiment_folder("/archive/results", rel_path)


@pytest.mark.parametrize(
    ("root", "rel_path", "folder"),
    [
        ("/archive/results", "ns/run", "/archive/results/ns/run"),
        ("/archive/results/", "ns/deep/run", "/archive/results/ns/deep/run"),
        ("/archive/results", "ns/caf\\\\x/run", "/archive/results/ns/caf\\x/run"),  # stored escaped
        ("/archive/results", "...hidden/run", "/archive/results/...hidden/run"),
        ("/", "ns/run", "/ns/run"),  # an archive at the file system's root
        ("", "ns/run", "ns/run"),  # as os.path.join joins them
    ],
)
def test_a_plain_stored_path_is_its_folder_below_the_root(root: str, rel_path: str, folder: str) -> None:
    from pycomex_index.paths import experiment_folder

    assert experiment_folder(root, rel_path) == folder


def test_an_error_while_judging_on_a_thread_reaches_the_caller(archive: Path) -> None:
    from pycomex_index.liveness import InterruptedCount, RunStates
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import sync_archive

    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        run_states = RunStates(index)
        killed = run_states.running_rel_paths()
        assert InterruptedCount(run_states, killed).result() == 1
        with pytest.raises(AttributeError):
            InterruptedCount(RunStates(index), [None]).result()  # type: ignore[list-item] - no path: it raises


@pytest.mark.sqlite_only("SQLite's query plan")
def test_the_running_runs_are_read_off_their_own_index(tmp_path: Path) -> None:
    from pycomex_index.liveness import RunStates
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import sync_archive

    archive = tmp_path / "results"
    running = {_running_run(archive, f"run{number}") for number in range(3)}
    _finished_run(archive)
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        with statements_sent(index.db) as sent:
            assert set(RunStates(index).running_rel_paths()) == running
        sql, params = next((sql, params) for sql, params in sent if "FROM experiments" in sql)
        # The partial index of the running runs alone: not a walk of every run's entry in a wider index.
        assert "COVERING INDEX ix_experiments_running" in sqlite_plan(index.db, sql, params)


@pytest.mark.parametrize(
    ("how", "stated"),
    [
        ("not refreshed", {"folder", "experiment_meta.json", "experiment_out.log"}),
        # A read command's sync compares every metadata file's time, not the folders' (refresh_index).
        ("read command's sync", {"folder", "experiment_out.log"}),
        ("full sync", {"experiment_out.log"}),
        ("fresh watcher", {"experiment_out.log"}),
    ],
)
def test_judging_reads_the_file_times_the_index_holds_where_they_are_the_disks(
    tmp_path: Path, monkeypatch, how: str, stated: set[str]
) -> None:
    from pycomex_index.liveness import INTERRUPTED, RunStates
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import refresh_index, sync_archive

    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "3600")
    archive = tmp_path / "results"
    killed = _running_run(archive, f"26_11_2026__14_03_50__p{2**22 + 12345}__wKXG")  # a pid never alive
    (archive / killed / "experiment_out.log").write_text("2026-11-26 14:03:50,754 - started\n")
    _backdate(archive / killed, 2 * 3600)
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
    with open_archive_index(str(archive)) as index:
        if how == "read command's sync":
            assert refresh_index(index) is not None
        elif how == "full sync":
            sync_archive(index)
        elif how == "fresh watcher":
            freeze_index(archive)
            assert refresh_index(index) is None  # trusted: no sync
        # A spy, not a stand-in: every stat still reaches the disk.
        real_stat, stated_names = os.stat, []

        def spying_stat(path, *args, **kwargs):
            stated_names.append(Path(path).name)
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", spying_stat)
        assert RunStates(index).judge(killed).state == INTERRUPTED
        monkeypatch.setattr(os, "stat", real_stat)
    folder_name = killed.rpartition("/")[2]
    assert {"folder" if name == folder_name else name for name in stated_names} == stated
