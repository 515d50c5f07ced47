"""Several hosts, one archive, one index, all at once (issue 12): the stress test of a lab's normal day.

Each "host" is a real OS process with its own ``PYCOMEX_INDEX_HOSTNAME`` and
its own mount point of the one archive (the real path, a symlink, a bind
mount). At the same moment they start and end runs (pycomex's folder format,
written through as the plugin does at a run's start and end), and run the real
CLI in subprocesses: ``archive modify``, ``archive delete --yes``, ``archive
compress``, ``archive list|tail|overview --json``, ``index sync``, and
``archive undo --id N`` of a modify another host made. A daemon polls on the
first host throughout (PostgreSQL; on one SQLite file each read command's
own sync races the writers instead).

At the end every command has exited 0 and the index, never synced after the
workload, holds exactly the rows an index built from scratch by a fresh walk
of the disk holds; the archive is one archive row whatever path reached it,
every journal row belongs to a modify of it, no run is left on record as
running and no temporary file is left behind.

The workload is drawn from a seed: ``PYCOMEX_INDEX_STRESS_SEED=N`` replays
one (the process interleaving is the operating system's); failures name it.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pycomex_index
from tests.conftest import FIXTURE_ARCHIVE, make_metadata, write_meta

SEED = int(os.environ.get("PYCOMEX_INDEX_STRESS_SEED", "20261202"))
HOSTS = ["host-a", "host-b", "host-c"]
STEPS_PER_HOST = 12
WORK_NAMESPACES = ["sweep/lr", "sweep/batch", "baseline"]
WORK_RUNS = 8  # per namespace, made before the workload starts
SLOTS = 4  # a work run's SLOT parameter: what a modify or a delete picks
#: How long an undo step waits for another host's announced modify (every host announces one early on).
MAILBOX_WAIT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 120.0

#: A real pycomex experiment each host runs beside its other steps: the plugin writes it through at its
#: start and end (and its heartbeat thread runs), as on a lab's node.
PYCOMEX_EXPERIMENT = """
import os

from pycomex.functional.experiment import Experiment

LEARNING_RATE = 0.01

experiment = Experiment(base_path=os.environ["ARCHIVE"], namespace="pycomex_runs", glob=globals(), notify=False)


@experiment
def run(e):
    e["host"] = os.environ["PYCOMEX_INDEX_HOSTNAME"]


experiment.run_if_main()
"""


@dataclass(frozen=True)
class HostPlan:
    """What one host process needs: who it is, where it sees the archive, where the index is, its seed."""

    name: str  # the process's own name: its runs, its announcements
    host: str  # the host name it poses as (PYCOMEX_INDEX_HOSTNAME)
    mount_point: str
    index_url: str | None  # None: the default SQLite file inside the archive
    seed: int
    start_at: float
    mailbox: str  # a folder outside the archive where hosts announce modifies for others to undo
    undoes: str  # the name of the process whose announced modify this one undoes (a ring: each undoes one)
    scratch: str  # this host's folder outside the archive (ZIPs)
    experiment: str  # the pycomex experiment module to run (PYCOMEX_EXPERIMENT)
    plugin_path: str  # a PYTHONPATH folder through which pycomex finds this checkout's plugin
    starts_daemon: bool  # its first step starts the polling daemon (the others' first steps race it)


@dataclass
class CommandRecord:
    process: str
    arguments: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class HostReport:
    commands: list[CommandRecord] = field(default_factory=list)
    modified_files: int = 0  # files the host's modifies changed ("Successfully modified N")
    deleted: int = 0  # runs the host's deletes removed ("Deleted N experiments.")
    undone: list[int] = field(default_factory=list)  # ids of other hosts' modifies this host undid


# --------------------------------------------------------------------------------- one host's process


def _pycomex_metadata(
    rng: random.Random, *, kind: str, status: str, start_time: float, slot: int | None = None, **extra: Any
) -> dict:
    slot = rng.randrange(SLOTS) if slot is None else slot
    parameters = {"LEARNING_RATE": round(rng.uniform(1e-4, 1e-1), 6), "SLOT": slot, "KIND": kind}
    metadata = make_metadata(
        parameters=parameters,
        name=kind,
        namespace="stress",
        status=status,
        start_time=start_time,
        end_time=None if status == "running" else start_time + 1.0,
        duration=None if status == "running" else 1.0,
        kind=kind,
    )
    metadata.update(extra)
    return metadata


def _write_like_pycomex(folder: str, metadata: dict) -> None:
    """pycomex writes its metadata in place, not atomically (``save_metadata``): readers may see half a file."""
    with open(os.path.join(folder, "experiment_meta.json"), "w") as file:
        json.dump(metadata, file, indent=4, sort_keys=True)


class HostWorkload:
    """The steps of one host, run in its own process (see :func:`run_host`)."""

    def __init__(self, plan: HostPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.report = HostReport()
        self.open_runs: list[str] = []
        self.run_count = 0
        self.environment = {**os.environ, "PYCOMEX_INDEX_HOSTNAME": plan.host}
        if plan.index_url is not None:
            self.environment["PYCOMEX_INDEX"] = plan.index_url

    def cli(self, *arguments: str) -> CommandRecord:
        command = [sys.executable, "-m", "pycomex_index", *arguments]
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=self.environment,
            cwd=self.plan.scratch,
            timeout=COMMAND_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
        record = CommandRecord(self.plan.name, list(arguments), finished.returncode, finished.stdout, finished.stderr)
        self.report.commands.append(record)
        return record

    def archive(self, command: str, *arguments: str) -> CommandRecord:
        return self.cli("archive", command, "--path", self.plan.mount_point, *arguments)

    # --- runs, written as pycomex with the plugin writes them

    def start_run(self, kind: str = "work", **extra: Any) -> str:
        from pycomex_index.live_runs import index_run

        self.run_count += 1
        folder = os.path.join(self.plan.mount_point, "runs", f"{self.plan.name}__{self.run_count:03d}")
        os.makedirs(folder)
        with open(os.path.join(folder, "experiment_code.py"), "w") as file:
            file.write("# the experiment's code\n")
        _write_like_pycomex(
            folder, _pycomex_metadata(self.rng, kind=kind, status="running", start_time=time.time(), **extra)
        )
        index_run(self.plan.mount_point, folder, liveness="start", heartbeat_interval=30.0, busy_timeout=30.0)
        return folder

    def end_run(self, folder: str) -> None:
        from pycomex_index.live_runs import index_run

        with open(os.path.join(folder, "experiment_meta.json")) as file:
            metadata = json.load(file)  # what the run holds now, a modify of another host included
        metadata.update(status="done", end_time=metadata["start_time"] + 1.0, duration=1.0)
        with open(os.path.join(folder, "experiment_out.log"), "w") as file:
            file.write("done\n")
        _write_like_pycomex(folder, metadata)
        index_run(self.plan.mount_point, folder, liveness="end", busy_timeout=30.0)

    # --- the steps

    def step_start(self) -> None:
        self.open_runs.append(self.start_run())

    def step_end(self) -> None:
        if self.open_runs:
            self.end_run(self.open_runs.pop(0))

    def step_modify(self) -> None:
        slot = self.rng.randrange(SLOTS)
        record = self.archive(
            "modify",
            "--select",
            f"p.get('KIND') == 'work' and p.get('SLOT') == {slot}",
            "--modify-parameters",
            f"p['LEARNING_RATE'] = {self.rng.uniform(1e-4, 1e-1)!r}",
            "--modify-metadata",
            f"m['modified_by'] = {self.plan.name!r}",
        )
        self.report.modified_files += _count(r"Successfully modified (\d+) experiment", record.stdout)

    def step_delete(self) -> None:
        slot = self.rng.randrange(SLOTS)
        record = self.archive("delete", "--yes", "--select", f"p.get('KIND') == 'work' and p.get('SLOT') == {slot}")
        self.report.deleted += _count(r"Deleted (\d+) experiment", record.stdout)

    def step_compress(self) -> None:
        name = os.path.join(self.plan.scratch, f"export-{len(self.report.commands)}.zip")
        self.archive("compress", "--select", f"p.get('SLOT') == {self.rng.randrange(SLOTS)}", "--name", name)

    def step_read(self) -> None:
        command = self.rng.choice([["list", "--json"], ["tail", "-n", "5", "--json"], ["overview", "--json"]])
        record = self.archive(*command)
        if record.returncode == 0:
            json.loads(record.stdout)  # one whole JSON document, whatever the others were doing

    def step_sync(self) -> None:
        self.cli("index", "sync", "--path", self.plan.mount_point)

    def step_hand_off(self) -> None:
        """Finished runs only this host writes, modified here, announced for another host to undo."""
        tag = f"{self.plan.name}-handoff"
        for _ in range(2):
            self.end_run(self.start_run(kind="handoff", handoff=tag))
        record = self.archive(
            "modify",
            "--select",
            f"m.get('handoff') == {tag!r}",
            "--modify-metadata",
            f"m['modified_by'] = {self.plan.name!r}",
        )
        self.report.modified_files += _count(r"Successfully modified (\d+) experiment", record.stdout)
        found = re.search(r"undo --id (\d+)", record.stdout)
        if record.returncode == 0 and found:
            announcement = os.path.join(self.plan.mailbox, self.plan.name)
            with open(announcement + ".tmp", "w") as file:
                file.write(found.group(1))
            os.rename(announcement + ".tmp", announcement)  # whole or not at all

    def step_undo_another_hosts_modify(self) -> None:
        deadline = time.monotonic() + MAILBOX_WAIT_SECONDS
        announcement = os.path.join(self.plan.mailbox, self.plan.undoes)
        while time.monotonic() < deadline:
            if os.path.exists(announcement):
                with open(announcement) as file:
                    run_id = int(file.read())
                self.archive("undo", "--id", str(run_id), "--yes")
                self.report.undone.append(run_id)
                return
            time.sleep(0.2)
        # No announcement: another host's hand-off failed; the test names that command (and counts the undos).

    def run(self) -> HostReport:
        steps = [self.step_start, self.step_end, self.step_modify, self.step_delete, self.step_compress]
        steps += [self.step_read, self.step_sync]
        weights = [4, 3, 2, 2, 1, 3, 1]
        plan = [self.step_start, self.step_hand_off]
        # Every host modifies and deletes at least once, whatever the seed draws for the rest.
        middle = [self.step_modify, self.step_delete, *self.rng.choices(steps, weights, k=STEPS_PER_HOST - 6)]
        self.rng.shuffle(middle)
        plan += middle
        plan += [self.step_undo_another_hosts_modify, self.step_read]
        time.sleep(max(0.0, self.plan.start_at - time.time()))
        if self.plan.starts_daemon:
            self.cli("daemon", "start", "--path", self.plan.mount_point, "--polling", "--interval", "1")
        experiment = self.start_pycomex_experiment()
        for step in plan:
            step()
        while self.open_runs:
            self.step_end()
        stdout, stderr = experiment.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
        record = CommandRecord(self.plan.name, ["pycomex experiment"], experiment.returncode, stdout, stderr)
        self.report.commands.append(record)
        return self.report

    def start_pycomex_experiment(self) -> subprocess.Popen:
        # pycomex finds plugins with pkgutil.iter_modules(), blind to an editable install's import hook.
        environment = {**self.environment, "ARCHIVE": self.plan.mount_point, "PYTHONPATH": self.plan.plugin_path}
        environment["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
        command = [sys.executable, self.plan.experiment]
        return subprocess.Popen(
            command, env=environment, cwd=self.plan.scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def _count(pattern: str, stdout: str) -> int:
    found = re.search(pattern, stdout)
    return int(found.group(1)) if found else 0


def run_host(plan: HostPlan) -> HostReport:
    """The entry point of one host's process (spawned: nothing of the test process's state is shared)."""
    os.environ["PYCOMEX_INDEX_HOSTNAME"] = plan.host
    if plan.index_url is not None:
        os.environ["PYCOMEX_INDEX"] = plan.index_url
    return HostWorkload(plan).run()


# ------------------------------------------------------------------------------------------- the test


@pytest.fixture
def mount_points(tmp_path: Path) -> Any:
    """The archive and, per host, the path it reaches it by: the real path, a symlink, a bind mount.

    A bind mount needs root (and a mount namespace allowing it); without one
    the third host uses a second symlink, and says so in a warning.
    """
    archive = tmp_path / "results"
    shutil.copytree(FIXTURE_ARCHIVE, archive, ignore=shutil.ignore_patterns(".pycomex_index"))
    subprocess.run(["chmod", "-R", "u+w", str(archive)], check=True)
    symlink = tmp_path / "host-b" / "mnt" / "results"
    symlink.parent.mkdir(parents=True)
    symlink.symlink_to(archive)
    bind = tmp_path / "host-c" / "mnt" / "results"
    bind.mkdir(parents=True)
    bound = subprocess.run(["mount", "--bind", str(archive), str(bind)], capture_output=True, text=True)
    if bound.returncode != 0:
        warnings.warn(
            f"host-c reaches the archive through a symlink, not a bind mount: {bound.stderr.strip()}", stacklevel=2
        )
        bind.rmdir()
        bind.symlink_to(archive)
    try:
        yield archive, [archive, symlink, bind]
    finally:
        if bound.returncode == 0:
            subprocess.run(["umount", str(bind)], check=True)


def _add_work_runs(archive: Path, seed: int) -> None:
    rng = random.Random(seed)
    for namespace in WORK_NAMESPACES:
        for number in range(WORK_RUNS):
            # Every slot holds finished runs from the start, so a host's first delete always finds some.
            start_time = 1700000000.0 + rng.random() * 1e6
            metadata = _pycomex_metadata(rng, kind="work", status="done", start_time=start_time, slot=number % SLOTS)
            write_meta(archive / namespace / f"run{number:02d}", metadata)


def _cli(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pycomex_index", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


#: What an index row says about a run, every column but the surrogate ids (one query per table).
ROW_QUERIES = {
    "experiments": (
        "SELECT e.rel_path, e.namespace, e.name, e.outcome, e.status, e.has_error, e.error_type, e.start_time, "
        "e.end_time, e.duration, e.parameter_count, e.asset_count, e.disk_usage, e.meta_mtime_ns, e.meta_size, "
        "e.folder_mtime_ns, e.read_error, e.special_parameters_json, f.summary_json, f.parameters_json, "
        "f.needs_python FROM experiments e LEFT JOIN experiment_fields f ON f.experiment_id = e.id "
        "WHERE e.archive_id = :archive_id"
    ),
    "experiment_parameters": (
        "SELECT e.rel_path, n.name, p.number, p.text FROM experiment_parameters p "
        "JOIN experiments e ON e.id = p.experiment_id JOIN parameter_names n ON n.id = p.name_id "
        "WHERE e.archive_id = :archive_id"
    ),
    "experiment_summary": (
        "SELECT outcome, namespace, error_kind, experiments, disk_usage, duration_sum, duration_count, "
        "parameter_sum, parameter_known, asset_sum FROM experiment_summary WHERE archive_id = :archive_id"
    ),
}


def _comparable(value: Any) -> Any:
    # Sums of floats added in another order differ in the last bits.
    return round(value, 6) if isinstance(value, float) and math.isfinite(value) else value


def _index_rows(root: str, index_url: str | None) -> dict[str, list[tuple]]:
    from pycomex_index.store import open_archive_index

    with open_archive_index(root, index_url) as index:
        return {
            table: sorted(
                (
                    tuple(_comparable(value) for value in row)
                    for row in index.db.execute(sql, {"archive_id": index.archive_id})
                ),
                key=repr,
            )
            for table, sql in ROW_QUERIES.items()
        }


def _differences(live: list[tuple], rebuilt: list[tuple]) -> str:
    only_live = [row for row in live if row not in rebuilt]
    only_rebuilt = [row for row in rebuilt if row not in live]
    return f"only in the index: {only_live[:5]}\nonly in the rebuilt index: {only_rebuilt[:5]}"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_hosts_writing_modifying_deleting_and_reading_at_once_leave_the_index_equal_to_the_disk(
    backend: str, mount_points: Any, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, roots = mount_points
    seed = SEED
    if backend == "postgresql":
        cluster = request.getfixturevalue("postgresql_cluster")
        index_url: str | None = cluster.new_database()
        rebuilt_url = cluster.new_database()
        hosts = HOSTS  # one shared index, each process another host
    else:
        index_url, rebuilt_url = None, str(tmp_path / "rebuilt.sqlite3")
        hosts = [HOSTS[0]] * len(HOSTS)  # SQLite lives on one host: its processes share the index file
    about = f"(seed {seed}: PYCOMEX_INDEX_STRESS_SEED={seed} replays this workload; backend {backend})"
    _add_work_runs(archive, seed)
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    experiment = tmp_path / "stress_experiment.py"
    experiment.write_text(PYCOMEX_EXPERIMENT)
    plugin_path = tmp_path / "plugin_path"
    plugin_path.mkdir()
    (plugin_path / "pycomex_index").symlink_to(Path(pycomex_index.__file__).parent)
    first_host = {
        **os.environ,
        "PYCOMEX_INDEX_HOSTNAME": hosts[0],
        **({"PYCOMEX_INDEX": index_url} if index_url else {}),
    }
    # No index yet: the hosts' first steps create it together (migrations, the archive's id, its roots).
    # PostgreSQL: a lab's set-up, the daemon polling on one host (reads then trust the index). SQLite: none,
    # so every read command's own sync races the writers too.
    with_daemon = backend == "postgresql"

    start_at = time.time() + 2.0
    names = [f"p{number}-{host}" for number, host in enumerate(hosts)]
    plans = []
    for number, (name, host, root) in enumerate(zip(names, hosts, roots, strict=True)):
        scratch = tmp_path / name
        scratch.mkdir()
        plans.append(
            HostPlan(
                name=name,
                host=host,
                mount_point=str(root),
                index_url=index_url,
                seed=seed * 100 + number,
                start_at=start_at,
                mailbox=str(mailbox),
                undoes=names[(number + 1) % len(names)],
                scratch=str(scratch),
                experiment=str(experiment),
                plugin_path=str(plugin_path),
                starts_daemon=with_daemon and number == 0,
            )
        )
    try:
        with ProcessPoolExecutor(len(plans), mp_context=multiprocessing.get_context("spawn")) as pool:
            reports = list(pool.map(run_host, plans))
    finally:
        if with_daemon:
            stopped = _cli(first_host, "daemon", "stop", "--path", str(roots[0]))
            assert stopped.returncode == 0, stopped.stderr

    commands = [record for report in reports for record in report.commands]
    failed = [f"{r.process}: {' '.join(r.arguments)} -> {r.returncode}\n{r.stderr}" for r in commands if r.returncode]
    assert not failed, f"{len(failed)} of {len(commands)} commands failed {about}:\n" + "\n".join(failed)
    workload = {"commands": len(commands), "seconds": round(time.time() - start_at, 1)}
    workload |= {"modified": sum(r.modified_files for r in reports), "deleted": sum(r.deleted for r in reports)}
    workload["plugin warnings"] = sum("pycomex-index:" in record.stderr for record in commands)
    print(f"{backend}: {workload}")
    print(
        [line for record in commands for line in record.stderr.splitlines() if "pycomex-index:" in line]
    )  # shown with -s, and beside a failure
    assert workload["modified"] and workload["deleted"], f"the workload changed too little {about}: {workload}"
    undos = [record for record in commands if record.arguments[:2] == ["archive", "undo"]]
    assert len(undos) == len(plans), about
    assert all("Restored 2 files." in record.stdout for record in undos), about

    # The index as the workload left it (no sync since) against one built from a fresh walk of the disk.
    monkeypatch.setenv("PYCOMEX_INDEX_HOSTNAME", hosts[0])
    rebuilt = _cli({**first_host, "PYCOMEX_INDEX": rebuilt_url}, "index", "sync", "--path", str(roots[0]))
    assert rebuilt.returncode == 0, rebuilt.stderr
    live_rows, rebuilt_rows = _index_rows(str(roots[0]), index_url), _index_rows(str(roots[0]), rebuilt_url)
    assert len(live_rows["experiments"]) > len(WORK_NAMESPACES) * WORK_RUNS // 2, about
    pycomex_runs = [row for row in live_rows["experiments"] if row[1] == "pycomex_runs"]
    assert [row[4] for row in pycomex_runs] == ["done"] * len(plans), about
    for table in ROW_QUERIES:
        assert live_rows[table] == rebuilt_rows[table], f"{table} {about}:\n" + _differences(
            live_rows[table], rebuilt_rows[table]
        )

    from pycomex_index.store import open_archive_index

    with open_archive_index(str(roots[0]), index_url) as index:
        db, archive_id = index.db, index.archive_id
        assert [tuple(row) for row in db.execute("SELECT id FROM archives")] == [(archive_id,)], about
        reached = {tuple(row) for row in db.execute("SELECT host, root FROM archive_roots")}
        assert reached == {(host, str(root)) for host, root in zip(hosts, roots, strict=True)}, about
        runs = {row[0]: row[1:] for row in db.execute("SELECT id, archive_id, finished_at, undone_at FROM modify_runs")}
        assert all(run_archive == archive_id and finished is not None for run_archive, finished, _ in runs.values())
        assert {run_id for run_id, (_, _, undone) in runs.items() if undone is not None} == {
            run_id for report in reports for run_id in report.undone
        }, about
        # Each modify's code names the process that ran it: its journal rows are the files that one changed.
        journaled: Counter[str] = Counter()
        for run_id, code in db.execute(
            "SELECT j.run_id, r.metadata_code FROM modify_journal j LEFT JOIN modify_runs r ON r.id = j.run_id"
        ):
            assert run_id in runs, about
            journaled[re.fullmatch(r"m\['modified_by'\] = '([^']+)'", code).group(1)] += 1
        expected = {plan.name: report.modified_files for plan, report in zip(plans, reports, strict=True)}
        assert journaled == Counter(expected), about
        assert list(db.execute("SELECT rel_path FROM run_liveness")) == [], about

    leftovers = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(archive)
        for name in names
        if name.endswith((".partial", ".tmp"))
    ]
    trash = archive / ".pycomex_index" / "deleting"
    assert leftovers == [] and (not trash.exists() or not any(trash.iterdir())), about


# ------------------------------------------------------------------- what the stress test found, pinned


def test_a_run_another_host_deletes_after_modify_selected_it_is_gone_not_a_failure(
    archive: Path, run_cli, index_backend: str
) -> None:
    # Found by the stress test: host A's modify selected a run, host B's delete removed it, and A's
    # modify failed ("cannot read experiment_meta.json", exit 1) for a run nobody asked it to keep.
    from pycomex_index.modify import GONE, MODIFIED, ModifyCode, modify_experiments
    from pycomex_index.operations import select_experiments
    from pycomex_index.selection import compile_expression
    from pycomex_index.store import open_archive_index
    from tests.conftest import index_query

    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    code = ModifyCode(parameters=None, metadata=compile_expression("m['reviewed'] = True", mode="exec"))
    with open_archive_index(str(archive)) as index:
        targets = select_experiments(index, compile_expression("m['status'] == 'done'"))
        deleted = targets[0].rel_path
        shutil.rmtree(archive / deleted)  # another host's delete, between the selection and the writing
        outcomes = {outcome.rel_path: outcome.status for outcome in modify_experiments(index, targets, code)}
    assert outcomes[deleted] == GONE
    assert set(outcomes.values()) == {GONE, MODIFIED}
    rows = index_query(archive, "SELECT rel_path FROM experiments WHERE archive_id = :archive_id")
    assert (deleted,) not in rows and len(rows) == 7


def _delete_every_run(root: str, rel_paths: list[str], start_at: float) -> list[tuple[str, str, str | None]]:
    """One host's delete of the runs ``rel_paths``, one at a time from ``start_at``: (rel_path, status, message)."""
    from pycomex_index.delete import delete_experiment
    from pycomex_index.store import open_archive_index

    with open_archive_index(root) as index:
        time.sleep(max(0.0, start_at - time.time()))
        outcomes = [delete_experiment(index, rel_path) for rel_path in rel_paths]
    return [(outcome.rel_path, outcome.status, outcome.message) for outcome in outcomes]


def test_hosts_deleting_the_same_runs_at_once_all_succeed(tmp_path: Path, run_cli) -> None:
    # Found by the stress test: two hosts deleting one run, the second one's rename into the trash found the
    # folder gone ("cannot move the folder out of the archive: No such file or directory", exit 1).
    from pycomex_index.delete import FAILED

    archive = tmp_path / "results"
    rel_paths = [f"ns/run{number:03d}" for number in range(150)]
    for rel_path in rel_paths:
        write_meta(archive / rel_path, make_metadata())
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    start_at = time.time() + 2.0
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = [
            outcome
            for outcomes in pool.map(_delete_every_run, [str(archive)] * 4, [rel_paths] * 4, [start_at] * 4)
            for outcome in outcomes
        ]
    assert [outcome for outcome in outcomes if outcome[1] == FAILED] == []
    assert not any((archive / "ns").iterdir())
