"""Time pycomex 0.29.0 and pycomex-index side by side on the same synthetic archives.

One command runs it all::

    python benchmarks/run_benchmarks.py                 # N = 10,000 and 100,000
    python benchmarks/run_benchmarks.py --quick         # N = 300, one repeat (what CI runs)
    python benchmarks/run_benchmarks.py --sizes 20000 --repeat 5
    python benchmarks/run_benchmarks.py --sizes 100000 --no-pycomex --daemon-only --archives /tmp/archives
    python benchmarks/run_benchmarks.py --startup-only --reinstall   # start-up alone, of this checkout as it is now
    python benchmarks/run_benchmarks.py --first-build-only --compare-with main --sizes 100000 \
        --archives /work/bench-archives --index-dir /tmp/first-build-index   # first build, cold, A/B and pycomex list

It builds two virtual environments under ``benchmarks/.venvs/`` (pycomex from
``benchmarks/requirements-pycomex.txt``; pycomex-index from this checkout, a
normal non-editable install), generates each archive once (cached under
``benchmarks/archives/``), then for every command runs pycomex and
pycomex-index alternately, output to /dev/null, and records the median wall
time and the peak RSS of each process (from ``wait4``; with the daemon, of
the command server's worker too, which does the work). pycomex-index is
measured in three states: ``default`` (the index exists; every command syncs
first), ``daemon`` (the background watcher runs, commands skip the walk) and
``first build`` (no index yet). Then the daemon itself: time from ``daemon
start`` until its catch-up is done (the heartbeat leaves ``starting``), its
threads and RSS, and its CPU over 30 s of an idle archive (3 s with
``--quick``). First of all, start-up: the interpreter alone, ``--help`` and
a daemon-mode ``tail`` on a 300-experiment archive, 30 alternating runs each
(min and median). The results table (markdown) is printed and written to
``benchmarks/results-<N>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
ARCHIVES = HERE / "archives"
SELECT = "m['status'] == 'done' and p['LEARNING_RATE'] < 0.01"

#: (label, archive arguments) of every command timed.
COMMANDS: list[tuple[str, list[str]]] = [
    ("list", ["list"]),
    ("tail", ["tail"]),
    ("tail -n 10", ["tail", "-n", "10"]),
    ("overview", ["overview"]),
    ("info", ["info"]),
    ("scan", ["scan"]),
    ("list --select", ["list", "--select", SELECT]),
]


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    exit_code: int
    #: User plus system CPU time of the process (and any child it waited for): on a shared machine, steadier than wall.
    cpu_seconds: float = 0.0


def run_once(arguments: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run a command with output to /dev/null; wall time and the child's own peak RSS."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(arguments, stdout=devnull, stderr=devnull, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measurement(seconds, usage.ru_maxrss / 1024, process.returncode, usage.ru_utime + usage.ru_stime)


#: Where pycomex-index's client writes what the command server's worker used (pycomex_index.command_server).
SERVED_USAGE_FILE_VARIABLE = "PYCOMEX_INDEX_SERVED_USAGE_FILE"


def run_measuring_the_server(arguments: list[str], env: dict[str, str] | None = None) -> Measurement:
    """:func:`run_once`, counting the command server's worker too when the command ran there.

    With a daemon running, a read command's work is done in a worker forked
    from the daemon's command server, not in the process started here: the
    peak RSS is the larger of the two, the CPU time their sum.
    """
    with tempfile.TemporaryDirectory() as folder:
        usage_file = Path(folder) / "usage.jsonl"
        measured = run_once(arguments, {**(env or os.environ), SERVED_USAGE_FILE_VARIABLE: str(usage_file)})
        if usage_file.exists():
            worker = json.loads(usage_file.read_text().splitlines()[-1])
            measured.peak_rss_mb = max(measured.peak_rss_mb, worker["max_rss_kib"] / 1024)
            measured.cpu_seconds += worker["cpu_seconds"]
    return measured


def median(measurements: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(m.seconds for m in measurements),
        max(m.peak_rss_mb for m in measurements),
        max(m.exit_code for m in measurements),
        statistics.median(m.cpu_seconds for m in measurements),
    )


def ensure_venv(name: str, install: list[str]) -> Path:
    """A venv under benchmarks/.venvs/NAME with ``pip install *install`` done once (and redone with --reinstall)."""
    folder = VENVS / name
    marker = folder / ".installed"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *install], check=True)
        marker.write_text(" ".join(install))
    return folder / "bin"


def ensure_archive(count: int, seed: int, archives: Path = ARCHIVES) -> Path:
    root = archives / f"{count}-seed{seed}" / "results"
    marker = root.parent / ".complete"
    if not marker.exists():
        shutil.rmtree(root.parent, ignore_errors=True)
        started = time.perf_counter()
        # In a process of its own: Linux reports a child's peak RSS as at least its parent's size when it started,
        # and generating 1,000,000 runs here grew this process to 334 MB, the "peak" of every command timed after.
        subprocess.run(
            [sys.executable, str(HERE / "generate_archive.py"), str(root), "--count", str(count), "--seed", str(seed)],
            check=True,
        )
        marker.write_text(f"{time.perf_counter() - started:.1f}")  # the generator said what it made on stderr
    return root


def drop_page_cache() -> bool:
    """Make the next read come from disk, where the machine lets us (root, not in a container)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as file:
            file.write("3\n")
        return True
    except OSError:
        return False


def remove_index(root: Path, index_file: Path | None = None) -> None:
    """Remove the archive's index: the folder inside the archive, or ``index_file`` and its companions."""
    if index_file is None:
        shutil.rmtree(root / ".pycomex_index", ignore_errors=True)
        return
    for suffix in ("", "-wal", "-shm", ".lock", ".bulk-load"):
        Path(f"{index_file}{suffix}").unlink(missing_ok=True)


def index_file_in(index_dir: Path | None, count: int) -> Path | None:
    """Where ``--index-dir`` puts the index of the N = ``count`` archive (None: in the archive, the default)."""
    return None if index_dir is None else index_dir / f"index-{count}.sqlite3"


def baseline_bin(ref: str) -> Path:
    """A venv with pycomex-index as it was at git ``ref`` (for an A/B of the same measurement)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    source = VENVS / f"source-{commit}"
    if not (source / "pyproject.toml").exists():
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return ensure_venv(f"pycomex-index-{commit}", [str(source)])


def first_build_table(
    count: int,
    repeat: int,
    pycomex_bin: Path | None,
    builds: list[tuple[str, Path]],
    seed: int,
    *,
    archives: Path = ARCHIVES,
    index_dir: Path | None = None,
) -> list[str]:
    """The first build alone: ``index sync`` with no index, from a cold cache, and one pycomex ``list`` per round.

    Each round times every build in ``builds`` (label, venv bin) and pycomex's
    list, alternately, each after dropping the page cache, so ratios come from
    the same minutes of a shared machine.
    """
    root = ensure_archive(count, seed, archives)
    index_file = index_file_in(index_dir, count)
    env = {**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
    if index_file is not None:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        env["PYCOMEX_INDEX"] = str(index_file)
    lines = [
        f"### First build, N = {count:,} experiments",
        "",
        "| round | command | wall | CPU | peak RSS | pycomex `list` wall ÷ this wall |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for round_number in range(1, repeat + 1):
        results: list[tuple[str, Measurement]] = []
        for label, bin_folder in builds:
            remove_index(root, index_file)
            cold = drop_page_cache()
            measured = run_once([str(bin_folder / "pycomex-index"), "index", "sync", "--path", str(root)], env)
            results.append((f"{label} first build" + ("" if cold else " (warm cache)"), measured))
        remove_index(root, index_file)
        reference = None
        if pycomex_bin:
            drop_page_cache()
            reference = run_once([str(pycomex_bin / "pycomex"), "archive", "--path", str(root), "list"], env)
            results.append(("pycomex 0.29.0 `list`", reference))
        for label, measured in results:
            failed = " (exit≠0)" if measured.exit_code else ""
            lines.append(
                f"| {round_number} | {label}{failed} | {measured.seconds:.1f} s | {measured.cpu_seconds:.1f} s | "
                f"{_mb(measured)} | {_ratio(reference, measured)} |"
            )
    return lines


def benchmark_size(
    count: int,
    repeat: int,
    pycomex_bin: Path | None,
    index_bin: Path,
    seed: int,
    *,
    keep_index: bool = False,
    archives: Path = ARCHIVES,
    idle_seconds: float = 30.0,
    daemon_only: bool = False,
    index_dir: Path | None = None,
) -> list[str]:
    root = ensure_archive(count, seed, archives)
    env = {**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
    index_file = index_file_in(index_dir, count)
    if index_file is not None:
        # This size's index alone: the start-up table's small archive keeps its own, in that archive.
        index_file.parent.mkdir(parents=True, exist_ok=True)
        env["PYCOMEX_INDEX"] = str(index_file)
    if daemon_only:
        subprocess.run([str(index_bin / "pycomex-index"), "index", "sync", "--path", str(root)], env=env, check=True)
        footprint = daemon_footprint(root, [str(index_bin / "pycomex-index")], env, idle_seconds)
        return [f"### N = {count:,} experiments", *_footprint_table(footprint, idle_seconds)]
    pycomex = [str(pycomex_bin / "pycomex"), "archive", "--path", str(root)] if pycomex_bin else None
    index = [str(index_bin / "pycomex-index"), "archive", "--path", str(root)]
    rows: list[tuple[str, Measurement | None, Measurement]] = []

    if keep_index:
        # Bring an existing index up to date (and to the current schema) without timing it.
        subprocess.run([str(index_bin / "pycomex-index"), "index", "sync", "--path", str(root)], env=env, check=True)
    else:
        # First build: no index at all, then `list` (which builds it).
        remove_index(root, index_file)
        cold = drop_page_cache()
        first_build = run_once(index + ["list"], env)
        reference_list = run_once(pycomex + ["list"], env) if pycomex else None
        label = "first index build (`list`, " + ("cold cache" if cold else "warm cache") + ")"
        rows.append((label, reference_list, first_build))

    for label, arguments in COMMANDS:
        reference, default = [], []
        for _ in range(repeat):
            if pycomex:
                reference.append(run_once(pycomex + arguments, env))
            default.append(run_once(index + arguments, env))
        rows.append((f"`{label}`", median(reference) if reference else None, median(default)))

    help_reference = (
        median([run_once([str(pycomex_bin / "pycomex"), "--help"], env) for _ in range(repeat)]) if pycomex else None
    )
    help_index = median([run_once([str(index_bin / "pycomex-index"), "--help"], env) for _ in range(repeat)])
    rows.append(("`--help`", help_reference, help_index))

    daemon_rows = _daemon_rows(root, index_bin, index, pycomex, repeat, env)
    footprint = daemon_footprint(root, [str(index_bin / "pycomex-index")], env, idle_seconds)
    return _table(count, rows, daemon_rows) + _footprint_table(footprint, idle_seconds) + _fresh_archive_note(root)


def _fresh_archive_note(root: Path) -> list[str]:
    """A caveat for timings on an archive generated less than an hour before the run ended, or nothing."""
    minutes = (time.time() - (root.parent / ".complete").stat().st_mtime) / 60
    if minutes >= 60:
        return []
    # A run whose status says running counts as interrupted once its files have been quiet for an hour. Files
    # younger than that, holding a start_time long past, look like a copy's: judging then reads the run's log.
    return [
        "",
        f"The archive was generated {minutes:.0f} min before this run ended: its runs whose status says running "
        "look recently active, and every command that shows their state reads each one's log to judge it "
        "(a quiet archive's runs are judged by their file times alone).",
    ]


def _daemon_rows(root, index_bin, index, pycomex, repeat, env) -> list[tuple[str, Measurement]]:
    """The same commands with the background watcher running (read commands skip the walk)."""
    daemon = [str(index_bin / "pycomex-index"), "daemon"]
    started = subprocess.run(daemon + ["start", "--path", str(root)], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        print(f"daemon did not start: {started.stderr.strip()}", file=sys.stderr)
        return []
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            status = subprocess.run(daemon + ["status", "--path", str(root)], env=env, capture_output=True, text=True)
            if status.returncode == 0 and "backlog 0" in status.stdout and "mode starting" not in status.stdout:
                break
            time.sleep(1)
        time.sleep(2)
        results = []
        for label, arguments in COMMANDS:
            measured = [run_measuring_the_server(index + arguments, env) for _ in range(repeat)]
            results.append((f"`{label}`", median(measured)))
        return results
    finally:
        subprocess.run(daemon + ["stop", "--path", str(root)], env=env, capture_output=True)


@dataclass
class DaemonFootprint:
    """A daemon from ``daemon start`` to idle: how soon its index is trusted, and what it then holds."""

    catch_up_seconds: float
    threads: int
    rss_mb: float
    idle_cpu_percent: float
    note: str
    #: The command server the watcher started beside itself (None: none runs).
    server_rss_mb: float | None = None


def daemon_footprint(
    root: Path, command: list[str], env: dict[str, str], idle_seconds: float
) -> DaemonFootprint | None:
    """Start the archive's daemon (``command`` runs pycomex-index) and measure it.

    Catch-up time: from ``daemon start`` until the heartbeat leaves mode
    ``starting`` (read commands trust the index from then on), read from the
    index directly every 50 ms, so no polling process competes with the
    daemon. Then the daemon's threads and RSS (``/proc/PID/status``) and its
    CPU time over ``idle_seconds`` of an unchanged archive (``/proc/PID/stat``).
    """
    import sqlite3

    # The index --index-dir put outside the archive, else the archive's own.
    index_file = Path(env.get("PYCOMEX_INDEX") or root / ".pycomex_index" / "index.sqlite3")
    started = time.perf_counter()
    launched = subprocess.run(
        command + ["daemon", "start", "--path", str(root)], env=env, capture_output=True, text=True
    )
    if launched.returncode != 0:
        print(f"daemon did not start: {launched.stderr.strip()}", file=sys.stderr)
        return None
    try:
        row = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            connection = sqlite3.connect(index_file, timeout=5)
            try:
                row = connection.execute("SELECT pid, mode, note FROM watchers").fetchone()
            except sqlite3.Error:
                row = None
            finally:
                connection.close()
            if row is not None and row[1] != "starting":
                break
            time.sleep(0.05)
        else:
            print("the daemon did not catch up within 900 s", file=sys.stderr)
            return None
        catch_up = time.perf_counter() - started
        pid, _, note = row
        time.sleep(2)  # let the start-up work drain before measuring idle
        cpu_before = _cpu_seconds(pid)
        time.sleep(idle_seconds)
        idle_cpu = 100 * (_cpu_seconds(pid) - cpu_before) / idle_seconds
        status = _process_status(pid)
        threads = int(status["Threads"])
        rss_mb = int(status["VmRSS"].split()[0]) / 1024
        servers = [
            child
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if b"pycomex_index.cli.serve" in Path(f"/proc/{child}/cmdline").read_bytes()
        ]
        server_rss_mb = int(_process_status(int(servers[0]))["VmRSS"].split()[0]) / 1024 if servers else None
        return DaemonFootprint(catch_up, threads, rss_mb, idle_cpu, note or "", server_rss_mb)
    finally:
        subprocess.run(command + ["daemon", "stop", "--path", str(root)], env=env, capture_output=True)


#: The start-up table's archive: small, so what is timed is starting, not reading.
STARTUP_COUNT = 300
#: The start-up target (issue 13): `--help` and a daemon-mode `tail` within this many seconds.
STARTUP_TARGET_SECONDS = 0.12


def startup_table(index_bin: Path, seed: int, runs: int, archives: Path = ARCHIVES) -> list[str]:
    """Start-up: the venv's bare ``python -c pass``, ``--help`` and ``tail`` with the daemon running (no walk).

    A small archive, so the ``tail`` time is start-up (imports) plus a few
    queries; ``runs`` alternating runs each, min and median wall time (short
    runs on a shared machine vary a lot: the min is the least disturbed). No
    RSS column: a process this short peaks at the size of the benchmark's own
    fork before it execs.
    """
    root = ensure_archive(STARTUP_COUNT, seed, archives)
    env = {**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
    index = str(index_bin / "pycomex-index")
    subprocess.run([index, "index", "sync", "--path", str(root)], env=env, check=True, capture_output=True)
    commands = [
        ("`python -c pass` (the interpreter alone)", [str(index_bin / "python"), "-c", "pass"]),
        ("`pycomex-index --help`", [index, "--help"]),
        ("`pycomex-index archive tail` (daemon running)", [index, "archive", "--path", str(root), "tail"]),
    ]
    if subprocess.run([index, "daemon", "start", "--path", str(root)], env=env, capture_output=True).returncode:
        print("daemon did not start: tail is timed with its walk", file=sys.stderr)
    try:
        time.sleep(2)  # the daemon's catch-up on an indexed archive is instant; let its start-up work drain
        times: dict[str, list[Measurement]] = {label: [] for label, _ in commands}
        for _ in range(runs):
            for label, arguments in commands:
                times[label].append(run_measuring_the_server(arguments, env))
    finally:
        subprocess.run([index, "daemon", "stop", "--path", str(root)], env=env, capture_output=True)
    lines = [
        f"### Start-up ({runs} runs each, N = {STARTUP_COUNT}; target ≤ {STARTUP_TARGET_SECONDS:.2f} s)",
        "",
        "| command | min | median |",
        "| --- | ---: | ---: |",
    ]
    for label, _ in commands:
        measured = times[label]
        failed = " (exit≠0)" if any(m.exit_code for m in measured) else ""
        lines.append(
            f"| {label}{failed} | {min(m.seconds for m in measured):.3f} s | {median(measured).seconds:.3f} s |"
        )
    return lines


def _process_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict of its fields."""
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _footprint_table(footprint: DaemonFootprint | None, idle_seconds: float) -> list[str]:
    if footprint is None:
        return ["daemon: did not start or catch up (see its log)"]
    server = (
        f"; its command server RSS {footprint.server_rss_mb:.0f} MB"
        if footprint.server_rss_mb is not None
        else "; no command server"
    )
    return [
        "",
        f"Daemon (index already built): `daemon start` to catch-up done {footprint.catch_up_seconds:.1f} s; "
        f"then {footprint.threads} threads, RSS {footprint.rss_mb:.0f} MB, "
        f"idle CPU {footprint.idle_cpu_percent:.2f}% of a core over {idle_seconds:g} s{server}",
        f"({footprint.note}).",
    ]


def _ratio(reference: Measurement | None, ours: Measurement | None) -> str:
    if reference is None or ours is None or ours.seconds == 0:
        return "n/a"
    return f"{reference.seconds / ours.seconds:.1f}×"


def _table(count: int, rows, daemon_rows) -> list[str]:
    daemon = dict(daemon_rows)
    lines = [
        f"### N = {count:,} experiments",
        "",
        "| command | pycomex 0.29.0 | pycomex-index default (sync) | ratio | pycomex-index daemon running | ratio | peak RSS pycomex / default / daemon |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, reference, ours in rows:
        in_daemon = daemon.get(label)
        failed = " (exit≠0)" if ours.exit_code or (reference and reference.exit_code) else ""
        lines.append(
            f"| {label}{failed} | {_seconds(reference)} | {_seconds(ours)} | {_ratio(reference, ours)} | "
            f"{_seconds(in_daemon)} | {_ratio(reference, in_daemon)} | "
            f"{_mb(reference)} / {_mb(ours)} / {_mb(in_daemon)} |"
        )
    return lines


def _seconds(measurement: Measurement | None) -> str:
    return f"{measurement.seconds:.3f} s" if measurement else "–"


def _mb(measurement: Measurement | None) -> str:
    return f"{measurement.peak_rss_mb:.0f} MB" if measurement else "–"


def machine_description() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 300, one repeat: proves the benchmark works (CI)")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated archive sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pycomex", action="store_true", help="time pycomex-index alone (e.g. at 1,000,000)")
    parser.add_argument("--reinstall", action="store_true", help="rebuild the benchmark venvs")
    parser.add_argument(
        "--keep-index",
        action="store_true",
        help="reuse the archives' existing indexes instead of timing a first build (a 1,000,000 build takes ~4 min)",
    )
    parser.add_argument(
        "--daemon-only",
        action="store_true",
        help="only the daemon's cold start, threads, RSS and idle CPU (the index is brought up to date first)",
    )
    parser.add_argument("--archives", type=Path, default=ARCHIVES, help="where generated archives are cached")
    parser.add_argument(
        "--first-build-only",
        action="store_true",
        help="only the first build (cold cache): wall, CPU and peak RSS, beside one pycomex list per round",
    )
    parser.add_argument(
        "--compare-with",
        metavar="GIT_REF",
        help="with --first-build-only: also time the first build of pycomex-index at this git ref (e.g. main)",
    )
    parser.add_argument(
        "--index-dir",
        type=Path,
        help="keep each size's index in this folder (index-N.sqlite3) instead of inside its archive",
    )
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help=f"only the start-up table: --help and a daemon-mode tail on N = {STARTUP_COUNT}, 30 runs each",
    )
    options = parser.parse_args()
    sizes = [300] if options.quick else [int(size) for size in options.sizes.split(",")]
    repeat = 1 if options.quick else options.repeat

    if options.reinstall:
        shutil.rmtree(VENVS, ignore_errors=True)
    index_bin = ensure_venv("pycomex-index", [str(REPO)])
    pycomex_bin = None
    if not options.no_pycomex and not options.startup_only:
        try:
            pycomex_bin = ensure_venv("pycomex", ["-r", str(HERE / "requirements-pycomex.txt")])
        except subprocess.CalledProcessError:
            if not options.quick:
                raise
            # The quick mode proves the benchmark runs; without the registry it still runs our side.
            print("warning: pycomex could not be installed; timing pycomex-index alone", file=sys.stderr)

    report = [f"Machine: {machine_description()}", ""]
    if options.first_build_only:
        builds = [("pycomex-index", index_bin)]
        if options.compare_with:
            builds.append((f"pycomex-index {options.compare_with}", baseline_bin(options.compare_with)))
        for count in sizes:
            report += first_build_table(
                count,
                repeat,
                pycomex_bin,
                builds,
                options.seed,
                archives=options.archives,
                index_dir=options.index_dir,
            ) + [""]
        print("\n".join(report))  # benchmarks/results-first-build.md quotes it with the command and the analysis
        return 0
    report += startup_table(index_bin, options.seed, 3 if options.quick else 30, options.archives) + [""]
    if options.startup_only:
        print("\n".join(report))
        return 0
    for count in sizes:
        report += benchmark_size(
            count,
            repeat,
            pycomex_bin,
            index_bin,
            options.seed,
            keep_index=options.keep_index,
            archives=options.archives,
            idle_seconds=3.0 if options.quick else 30.0,
            daemon_only=options.daemon_only,
            index_dir=options.index_dir,
        ) + [""]
        if not options.quick and not options.daemon_only:
            (HERE / f"results-{count}.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
