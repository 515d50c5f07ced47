"""Whether an experiment whose status says "running" still runs: *live*, or *interrupted* (its process is gone).

pycomex writes ``"status": "running"`` when a run starts and its outcome when
it ends; a run killed in between (SIGKILL, out of memory, a reboot) stays
"running" on disk forever. The status on disk is never changed here: the
state (``live``/``finished``/``interrupted``) is derived when shown or
selected, and only for the rows whose status says running, so a listing of
100,000 runs pays nothing for the rest.

Two sources, from certain to guessed:

- **The plugin's record** (table ``run_liveness``, written by the experiment
  process through :mod:`pycomex_index.live_runs`): its host, pid namespace, pid
  and the process's start time, and a heartbeat refreshed every
  ``heartbeat_interval`` seconds. On the same host (and pid namespace) the run
  is interrupted when that process is gone or the pid now belongs to a process
  that started later; on another host, when its heartbeat is older than
  :data:`MISSED_HEARTBEATS` intervals (written and aged on the database's
  clock, as hosts' clocks may disagree). Both are *certain*: they lift the
  protection of running runs in ``delete`` and ``modify``.
- **The folder name** (``…__p11237__…``) for runs made without the plugin: the
  run is taken for interrupted when that pid is not alive on this host (or is
  alive but started after the run began: a reused pid) *and* it has been quiet
  for :data:`QUIET_AFTER_SECONDS`: its folder, metadata and log have not
  changed, or, when those files were plainly copied or checked out since (their
  mtimes far past the times written inside them), the last record of its log is
  that old. pycomex records no host, so on a shared filesystem the files are
  the only sign that the run is not alive elsewhere. A *guess*: delete and
  modify still want ``--include-running``.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from pycomex_index.db import IndexDatabase
from pycomex_index.discovery import METADATA_IN_FOLDER
from pycomex_index.lease import database_now
from pycomex_index.paths import UnsafePathError, experiment_folder, process_is_alive, process_start_ticks, this_host
from pycomex_index.store import ArchiveIndex

LIVE, FINISHED, INTERRUPTED = "live", "finished", "interrupted"

#: How often the plugin's thread refreshes a run's heartbeat (``PYCOMEX_INDEX_HEARTBEAT_INTERVAL``; 0 turns it off).
RUN_HEARTBEAT_INTERVAL_SECONDS = 30.0
RUN_HEARTBEAT_INTERVAL_VARIABLE = "PYCOMEX_INDEX_HEARTBEAT_INTERVAL"
#: A heartbeat older than this many intervals means the run's process is gone (``PYCOMEX_INDEX_MISSED_HEARTBEATS``).
MISSED_HEARTBEATS = 3.0
MISSED_HEARTBEATS_VARIABLE = "PYCOMEX_INDEX_MISSED_HEARTBEATS"
#: A run without the plugin's record whose pid is gone is taken for interrupted once its files are this old
#: (``PYCOMEX_INDEX_INTERRUPTED_AFTER``).
QUIET_AFTER_SECONDS = 3600.0
QUIET_AFTER_VARIABLE = "PYCOMEX_INDEX_INTERRUPTED_AFTER"
#: Process start times are read in clock ticks against a boot time that NTP may move by a second.
START_TIME_SLACK_SECONDS = 2.0

#: The log pycomex appends to while a run prints.
LOG_FILE_NAME = "experiment_out.log"

_FOLDER_PID = re.compile(r"__p(\d{1,9})__")

#: A file changed this long after the newest time written inside it was not changed by the run: copied, checked
#: out, touched. Wider than a DST shift and the clock differences of a cluster's hosts, far below a copy's usual age.
COPIED_AFTER_SECONDS = 3 * 3600.0
#: How much of a run's log is read to find its first and last record: the head and the tail, never the whole.
LOG_HEAD_BYTES = 512
LOG_TAIL_BYTES = 16384
#: The time logging's default format (``%(asctime)s - %(message)s``, as pycomex uses) puts before a record.
_LOG_RECORD_TIME = re.compile(rb"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d),(\d{3}) - ")


def seconds_from_environment(variable: str, default: float) -> float:
    """A non-negative number of seconds from the environment; the default when unset or not a number."""
    try:
        value = float(os.environ.get(variable, ""))
    except ValueError:
        return default
    return value if value >= 0 and value == value and value != float("inf") else default


# ------------------------------------------------------------------------------------ process facts


def this_pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started, as a POSIX time (``/proc/<pid>/stat`` starttime + boot time); None where unknown."""
    ticks = process_start_ticks(pid)
    if ticks is None:
        return None
    try:
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def _boot_time() -> float:
    with open("/proc/stat", "rb") as file:
        for line in file:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _runs_since(pid: int, started_at: float | None) -> bool:
    """True when a process ``pid`` is alive and is the one that started at ``started_at`` (or none is known)."""
    if not process_is_alive(pid):
        return False
    if started_at is None:
        return True
    now_started = process_started_at(pid)
    return now_started is None or abs(now_started - started_at) <= START_TIME_SLACK_SECONDS


# ----------------------------------------------------------------------------- the plugin's record


def record_run_start(db: IndexDatabase, archive_id: int, rel_path: str, *, heartbeat_interval: float | None) -> None:
    """Record that this process runs the experiment ``rel_path`` from now on (and drop records of ended runs)."""
    now = time.time()
    pid = os.getpid()
    row = {
        "archive_id": archive_id,
        "rel_path": rel_path,
        "hostname": this_host(),
        "pid_namespace": this_pid_namespace(),
        "pid": pid,
        "process_started_at": process_started_at(pid),
        "now": now,
        "interval": heartbeat_interval,
    }
    with db.transaction():
        db.execute(
            "INSERT INTO run_liveness (archive_id, rel_path, hostname, pid_namespace, pid, process_started_at, "
            "started_at, heartbeat_at, heartbeat_interval) VALUES (:archive_id, :rel_path, :hostname, :pid_namespace, "
            f":pid, :process_started_at, :now, {database_now(db)}, :interval) ON CONFLICT (archive_id, rel_path) DO UPDATE SET "
            "hostname = excluded.hostname, pid_namespace = excluded.pid_namespace, pid = excluded.pid, "
            "process_started_at = excluded.process_started_at, started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, heartbeat_interval = excluded.heartbeat_interval",
            row,
        )
        # Records of runs that ended without their end hook (or were deleted) are of no use to anyone.
        db.execute(
            "DELETE FROM run_liveness WHERE archive_id = :archive_id AND rel_path NOT IN "
            "(SELECT rel_path FROM experiments WHERE archive_id = :archive_id AND outcome = 'running')",
            {"archive_id": archive_id},
        )


def record_heartbeat(db: IndexDatabase, archive_id: int, rel_path: str) -> None:
    """Refresh this process's heartbeat for ``rel_path``; a record already removed (the run ended) stays removed."""
    with db.transaction():
        db.execute(
            f"UPDATE run_liveness SET heartbeat_at = {database_now(db)} "
            "WHERE archive_id = :archive_id AND rel_path = :rel_path AND pid = :pid AND hostname = :hostname",
            {
                "archive_id": archive_id,
                "rel_path": rel_path,
                "pid": os.getpid(),
                "hostname": this_host(),
            },
        )


def forget_run(db: IndexDatabase, archive_id: int, rel_path: str) -> None:
    """The run ended: its status on disk says how, its record is no longer needed."""
    with db.transaction():
        db.execute(
            "DELETE FROM run_liveness WHERE archive_id = :archive_id AND rel_path = :rel_path",
            {"archive_id": archive_id, "rel_path": rel_path},
        )


# ---------------------------------------------------------------------------------- judging a run


class Judgement(NamedTuple):
    """The state of a run whose status says running; ``certain`` when the plugin's record proves its death."""

    state: str
    certain: bool = False


_UNKNOWN_LIVE = Judgement(LIVE)


class _RunningRow(NamedTuple):
    """What the index holds about an experiment whose status says running, for judging it."""

    start_time: float | None
    meta_mtime_ns: int
    folder_mtime_ns: int


class RunStates:
    """The derived state of an archive's experiments, judged once per running row when first asked.

    Nothing is read until the first running row is asked about; then the
    archive's running rows (their start times and file times) and the plugin's
    records are read in two small queries, and each running row is judged at
    most once.
    """

    def __init__(self, index: ArchiveIndex, *, now: float | None = None) -> None:
        self.index = index
        self.now = now
        #: The time runs are judged at: ``now``, or when the first one is judged (set by :meth:`_load`).
        self._judged_at: float
        self._loaded = False
        self._running: dict[str, _RunningRow] = {}
        self._records: dict[str, tuple[Any, ...]] = {}
        self._judged: dict[str, Judgement] = {}

    def state(self, rel_path: str, outcome: str) -> str | None:
        """``finished`` (done or failed), ``live`` or ``interrupted`` (running), None (metadata unreadable)."""
        if outcome == "running":
            return self.judge(rel_path).state
        return FINISHED if outcome in ("done", "failed") else None

    def running_rel_paths(self) -> list[str]:
        """The archive's experiments whose status says running (read once, with their start times)."""
        self._load()
        return list(self._running)

    def certainly_dead(self, rel_path: str) -> bool:
        judgement = self.judge(rel_path)
        return judgement.state == INTERRUPTED and judgement.certain

    def judge(self, rel_path: str) -> Judgement:
        judgement = self._judged.get(rel_path)
        if judgement is None:
            self._load()
            try:
                judgement = self._judge(rel_path)
            except (OSError, ValueError):
                judgement = _UNKNOWN_LIVE
            self._judged[rel_path] = judgement
        return judgement

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.now is None:
            self.now = time.time()
        self._judged_at = self.now
        self.host, self.pid_namespace = this_host(), this_pid_namespace()
        self.missed = seconds_from_environment(MISSED_HEARTBEATS_VARIABLE, MISSED_HEARTBEATS)
        self.quiet_after = seconds_from_environment(QUIET_AFTER_VARIABLE, QUIET_AFTER_SECONDS)
        params = {"archive_id": self.index.archive_id}
        db = self.index.db
        self._running = {
            row[0]: _RunningRow(*row[1:])
            for row in db.execute(
                "SELECT rel_path, start_time, meta_mtime_ns, folder_mtime_ns FROM experiments "
                "WHERE archive_id = :archive_id AND outcome = 'running'",
                params,
            )
        }
        self._records = {
            row[0]: tuple(row[1:])
            for row in db.execute(
                "SELECT rel_path, hostname, pid_namespace, pid, process_started_at, "
                f"{database_now(db)} - heartbeat_at, heartbeat_interval FROM run_liveness WHERE archive_id = :archive_id",
                params,
            )
        }

    def _judge(self, rel_path: str) -> Judgement:
        record = self._records.get(rel_path)
        if record is not None:
            return self._judge_record(*record)
        return self._guess_from_folder(rel_path, self._running.get(rel_path))

    def _judge_record(self, hostname, pid_namespace, pid, started_at, heartbeat_age, interval) -> Judgement:
        here = hostname == self.host and (
            pid_namespace is None or self.pid_namespace is None or pid_namespace == self.pid_namespace
        )
        if here:
            return Judgement(LIVE) if _runs_since(pid, started_at) else Judgement(INTERRUPTED, certain=True)
        # The age comes from the database's clock, which wrote the beat too: the hosts' clocks may disagree.
        if interval and heartbeat_age > self.missed * interval:
            return Judgement(INTERRUPTED, certain=True)
        return Judgement(LIVE)

    def _guess_from_folder(self, rel_path: str, row: _RunningRow | None) -> Judgement:
        match = _FOLDER_PID.search(rel_path.rpartition("/")[2])
        if match is None:
            return _UNKNOWN_LIVE  # nothing tells: trust the status
        pid = int(match.group(1))
        if process_is_alive(pid):
            run_start = None if row is None else row.start_time
            process_start = process_started_at(pid)
            # The run's process started before the run did; one that started later took over a freed pid.
            if run_start is None or process_start is None or process_start <= run_start + START_TIME_SLACK_SECONDS:
                return _UNKNOWN_LIVE
        age = self._age_of_files(rel_path, row)
        if age is None or age < self.quiet_after:
            return _UNKNOWN_LIVE
        return Judgement(INTERRUPTED)

    def _age_of_files(self, rel_path: str, row: _RunningRow | None) -> float | None:
        """Seconds since the run last did something: its folder, metadata or log changed, or its log last wrote.

        Three times, no listing: the folder's own time moves whenever a file is
        added or removed in it, and pycomex appends to its log as the run prints.
        The index holds the first two, and where it holds the disk's (a sync
        just compared them, or a watcher keeps them current) they are read
        there: a stat a run instead of three for the thousands of killed runs
        an archive gathers (5,089 of 100,000 runs: ~75 ms of every ``scan``).
        Those times are the run's own unless the files were copied or checked
        out (every file then has the time of the copy): see
        :func:`_activity_recorded_inside`.
        """
        try:
            folder = experiment_folder(self.index.root, rel_path)
        except UnsafePathError:
            return None
        index = self.index
        if row is not None and index.metadata_times_current:
            metadata_mtime: float | None = row.meta_mtime_ns / 1e9
        else:
            metadata_mtime = _mtime(folder + METADATA_IN_FOLDER)
        folder_mtime = row.folder_mtime_ns / 1e9 if row is not None and index.folder_times_current else _mtime(folder)
        # Concatenated, not os.path.join'ed, and no helper called: this runs for every running row a listing shows.
        log_path = folder + _LOG_IN_FOLDER
        try:
            log: os.stat_result | None = os.stat(log_path)
        except OSError:
            log = None
        if log is not None and folder_mtime is not None and metadata_mtime is not None:
            newest = max(folder_mtime, metadata_mtime, log.st_mtime)  # the common case, without building a list
        else:
            known = [
                mtime
                for mtime in (folder_mtime, metadata_mtime, None if log is None else log.st_mtime)
                if mtime is not None
            ]
            if not known:
                return None
            newest = max(known)
        age = self._judged_at - newest
        if age >= self.quiet_after or metadata_mtime is None or log is None:
            return age
        start_time = None if row is None else row.start_time
        recorded = _activity_recorded_inside(start_time, metadata_mtime, log_path, log)
        return age if recorded is None else self._judged_at - recorded


def _activity_recorded_inside(
    start_time: float | None, metadata_mtime: float, log_path: str, log: os.stat_result
) -> float | None:
    """When the run last wrote, by the times inside its files, if their mtimes are not the run's; else None.

    While a run runs, pycomex 0.29.0 writes ``experiment_meta.json`` once,
    at ``start_time``, and stamps every log record with the time it was
    written (``2026-11-26 14:03:50,754 - …``, the writing host's local
    time). Files written by the run therefore carry mtimes close to the
    times they hold. Only when *both* files changed long after the newest
    time they hold (:data:`COPIED_AFTER_SECONDS`) are their mtimes taken for
    a copy's and the recorded times used instead. A live run's log gets its
    mtime from its latest record, so a run that is alive anywhere keeps
    being judged by its mtimes, even after ``modify`` rewrote its metadata.
    """
    if not isinstance(start_time, float | int) or not math.isfinite(start_time):
        return None  # no start time, or an absurd one: nothing to compare the mtimes with
    if metadata_mtime - start_time <= COPIED_AFTER_SECONDS:
        return None
    record_times = log_record_times(log_path, log.st_size)
    if record_times is None:
        return None
    first, last = record_times
    # The log's times are local and name no zone: only their distance is used. The first record is the
    # start panel, written right after the metadata.
    last_record = start_time + (last - first).total_seconds()
    if log.st_mtime - last_record <= COPIED_AFTER_SECONDS:
        return None
    return last_record


class InterruptedCount:
    """How many of ``rel_paths`` (runs whose status says running) are interrupted, judged on a thread of its own.

    Judging is disk work (a pid check and three stats a run: ~0.08 s for the
    5,000 running runs of a 100,000-run archive), and a database query lets
    other threads run while it works: started before scan's GROUP BY, the two
    overlap on a second core. The thread touches the disk and ``run_states``
    alone, which the caller leaves alone until :meth:`result`; the database is
    read before it starts.
    """

    def __init__(self, run_states: RunStates, rel_paths: list[str]) -> None:
        import threading

        run_states._load()
        self._count = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._judge, args=(run_states, rel_paths), name="judging running runs", daemon=True
        )
        self._thread.start()

    def _judge(self, run_states: RunStates, rel_paths: list[str]) -> None:
        try:
            self._count = sum(run_states.judge(rel_path).state == INTERRUPTED for rel_path in rel_paths)
        except BaseException as error:  # handed to the caller's thread by result()
            self._error = error

    def result(self) -> int:
        """The count, once every run is judged; an error the judging raised is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._count


_LOG_IN_FOLDER = os.sep + LOG_FILE_NAME


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def log_record_times(log_path: str, size: int) -> tuple[datetime, datetime] | None:
    """The times of the first and the last record of a pycomex log, reading its head and tail only."""
    tail_start = max(0, size - LOG_TAIL_BYTES)
    try:
        with open(log_path, "rb") as file:
            head = file.read(LOG_HEAD_BYTES)
            file.seek(tail_start)
            tail = file.read(LOG_TAIL_BYTES)
    except OSError:
        return None
    tail_lines = tail.split(b"\n")
    if tail_start > 0:
        del tail_lines[0]  # cut by the seek
    # A record's message may span lines; only the first line of a record starts with its time.
    first = _first_record_time(head.split(b"\n"))
    last = _first_record_time(reversed(tail_lines))
    return None if first is None or last is None else (first, last)


def _first_record_time(lines: Iterable[bytes]) -> datetime | None:
    for line in lines:
        match = _LOG_RECORD_TIME.match(line)
        if match is not None:
            year, month, day, hour, minute, second, millisecond = map(int, match.groups())
            try:
                return datetime(year, month, day, hour, minute, second, millisecond * 1000)
            except ValueError:
                return None
    return None
