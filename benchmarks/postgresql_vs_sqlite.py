"""Time every read command on a SQLite index and on a PostgreSQL index of the same archive, side by side.

::

    python benchmarks/postgresql_vs_sqlite.py --archive /work/bench-archives/10000-seed0/results \\
        --archive /work/bench-archives/100000-seed0/results --repeat 5

For each archive it builds (or brings up to date) a SQLite index and a
PostgreSQL index in their own places (``--index-folder``; one database per
archive), then runs each read command on the two alternately, output to
/dev/null, and records the median wall time and the ratio PG / SQLite. The
outputs of the two are compared once per command (byte for byte). Modes:
``default`` (no watcher: every command first checks the disk) and ``daemon``
(``--daemon``: a watcher runs, commands trust the index; one backend after
the other, as an archive has one watcher). First, the fixed
cost of a command: ``tail -n 1`` on a 10-experiment archive.

PostgreSQL: ``--postgresql URL`` names a server whose role may create
databases (the password, if any, from ``PGPASSWORD`` or ``~/.pgpass``);
without it a throwaway cluster is started in a folder under /tmp, as the
tests do (initdb/pg_ctl of PostgreSQL 15, as ``nobody`` when run as root,
unix socket only), with PostgreSQL's default durability (fsync on) and
``shared_buffers`` 256 MB, and removed at the end.

The table (markdown) is printed and written to
``benchmarks/results-postgresql.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")
#: A ratio PG / SQLite above this fails issue 12's goal (marked in the table).
TARGET_RATIO = 2.0

sys.path.insert(0, str(HERE))
from generate_archive import generate_archive  # noqa: E402
from run_benchmarks import COMMANDS  # noqa: E402 - the same command set, timed on both backends


class ThrowawayCluster:
    """A PostgreSQL 15 cluster in a folder under /tmp, reached through a unix socket there."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pycomex-index-bench-pg-"))
        self.data = self.folder / "data"

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(POSTGRESQL_BIN / program), *arguments]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> str:
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"
        )
        options = f"-k {self.folder} -c listen_addresses='' -c shared_buffers=256MB"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")
        return f"postgresql+psycopg://postgres@/postgres?host={self.folder}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database replaced by ``database`` (created when missing)."""
    import psycopg2

    from pycomex_index.postgresql import libpq_conninfo

    # The product's own driver (pip install ".[postgresql]"), so the benchmark needs nothing more.
    connection = psycopg2.connect(libpq_conninfo(server_url))
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{database}"')
    finally:
        connection.close()
    head, _, rest = server_url.partition("://")
    authority, slash, path_and_query = rest.partition("/")
    query = path_and_query.partition("?")[2]
    return f"{head}://{authority}/{database}" + (f"?{query}" if query else "")


def run(command: list[str], env: dict[str, str], capture: bool = False) -> tuple[float, bytes]:
    started = time.perf_counter()
    result = subprocess.run(
        command, env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return seconds, result.stdout or b""


class Backend:
    """How to run a command against one index: the same archive arguments, the index in the environment."""

    def __init__(self, name: str, root: Path, index: str) -> None:
        self.name, self.root = name, root
        # The index is named in the environment, as a lab would do with a URL (never on a command line).
        self.env = {**os.environ, "PYCOMEX_INDEX": index, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
        self.executable = str(Path(sys.executable).with_name("pycomex-index"))

    def archive(self, arguments: list[str], capture: bool = False) -> tuple[float, bytes]:
        return run([self.executable, "archive", "--path", str(self.root), *arguments], self.env, capture)

    def daemon(self, action: str) -> None:
        run([self.executable, "daemon", action, "--path", str(self.root)], self.env)


def compare(label: str, backends: list[Backend], repeat: int, check_outputs: bool) -> tuple[float, float, str]:
    """Median seconds on each backend (run alternately) and whether their outputs were identical."""
    times: dict[str, list[float]] = {backend.name: [] for backend in backends}
    outputs: dict[str, bytes] = {}
    arguments = dict(COMMANDS)[label]
    for attempt in range(repeat):
        for backend in backends if attempt % 2 == 0 else reversed(backends):
            seconds, output = backend.archive(arguments, capture=check_outputs and attempt == 0)
            times[backend.name].append(seconds)
            if check_outputs and attempt == 0:
                outputs[backend.name] = output
    same = "—" if not check_outputs else ("yes" if len(set(outputs.values())) == 1 else "NO")
    sqlite, postgresql = (statistics.median(times[backend.name]) for backend in backends)
    return sqlite, postgresql, same


def row(label: str, sqlite: float, postgresql: float, same: str) -> str:
    ratio = postgresql / sqlite
    mark = "" if ratio <= TARGET_RATIO else " ⚠"
    return f"| {label} | {sqlite:.3f} | {postgresql:.3f} | {ratio:.2f}{mark} | {same} |"


def wait_for_watcher(backend: Backend, timeout: float = 600.0) -> None:
    """Until ``daemon status`` says the watcher caught up (its heartbeat left ``starting``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            [backend.executable, "daemon", "status", "--path", str(backend.root)],
            env=backend.env,
            capture_output=True,
            text=True,
        )
        if result.returncode == 0 and "starting" not in result.stdout and "running" in result.stdout.lower():
            return
        time.sleep(1.0)
    raise SystemExit(f"the {backend.name} watcher of {backend.root} did not catch up in {timeout:.0f} s")


def benchmark_archive(
    root: Path, sqlite_index: str, postgresql_index: str, repeat: int, daemon: bool, check_outputs: bool
) -> list[str]:
    backends = [Backend("sqlite", root, sqlite_index), Backend("postgresql", root, postgresql_index)]
    count = sum(1 for _ in root.rglob("experiment_meta.json")) if root.exists() else 0
    lines = [f"### {count:,} experiments ({root})", ""]
    for backend in backends:  # build or bring up to date, so the timed runs find a synced index
        seconds, _ = backend.archive(["list"])
        lines.append(f"- {backend.name}: index brought up to date in {seconds:.1f} s before timing")
    lines += ["", "| command (default: no watcher) | SQLite s | PostgreSQL s | PG / SQLite | same output |"]
    lines.append("|---|---:|---:|---:|:-:|")
    for label, _ in COMMANDS:
        lines.append(row(label, *compare(label, backends, repeat, check_outputs)))
        print(lines[-1], file=sys.stderr)
    if daemon:
        # One watcher per archive (its pid file is in the archive): each backend's in turn, not alternately.
        times: dict[str, dict[str, float]] = {}
        for backend in backends:
            backend.daemon("start")
            try:
                wait_for_watcher(backend)
                times[backend.name] = {
                    label: statistics.median(backend.archive(arguments)[0] for _ in range(repeat))
                    for label, arguments in COMMANDS
                }
            finally:
                backend.daemon("stop")
        lines += ["", "| command (daemon running) | SQLite s | PostgreSQL s | PG / SQLite | same output |"]
        lines.append("|---|---:|---:|---:|:-:|")
        for label, _ in COMMANDS:
            lines.append(row(label, times["sqlite"][label], times["postgresql"][label], "—"))
    return lines + [""]


def fixed_cost(folder: Path, server_url: str, repeat: int) -> list[str]:
    """``tail -n 1`` on a 10-experiment archive: start-up, imports, connecting and opening the index."""
    root = folder / "fixed-cost" / "results"
    if not root.exists():
        generate_archive(root, 10, seed=0)
    backends = [
        Backend("sqlite", root, str(folder / "fixed-cost.sqlite3")),
        Backend("postgresql", root, database_url(server_url, "pycomex_index_bench_fixed")),
    ]
    times: dict[str, list[float]] = {backend.name: [] for backend in backends}
    for backend in backends:
        backend.archive(["tail", "-n", "1"])
    for _ in range(repeat):
        for backend in backends:
            times[backend.name].append(backend.archive(["tail", "-n", "1"])[0])
    sqlite, postgresql = (statistics.median(times[backend.name]) for backend in backends)
    return [
        "### Fixed cost of a command (`tail -n 1`, 10 experiments)",
        "",
        "| | SQLite s | PostgreSQL s | PG / SQLite |",
        "|---|---:|---:|---:|",
        f"| median of {repeat} | {sqlite:.3f} | {postgresql:.3f} | {postgresql / sqlite:.2f} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", action="append", type=Path, required=True, help="a results folder (repeatable)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command and backend (median)")
    parser.add_argument("--postgresql", help="a server URL (default: start a throwaway cluster)")
    parser.add_argument("--index-folder", type=Path, default=Path(tempfile.gettempdir()) / "pycomex-index-bench")
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="also time with a watcher running (its pid file goes into the archive: not on an archive others use)",
    )
    parser.add_argument("--no-output-check", action="store_true", help="do not compare the outputs")
    parser.add_argument("--output", type=Path, default=HERE / "results-postgresql.md")
    options = parser.parse_args()
    options.index_folder.mkdir(parents=True, exist_ok=True)
    cluster = None if options.postgresql else ThrowawayCluster()
    server_url = options.postgresql or cluster.start()  # type: ignore[union-attr]
    try:
        lines = [
            "# pycomex-index on PostgreSQL vs SQLite",
            "",
            f"`python benchmarks/postgresql_vs_sqlite.py {' '.join(sys.argv[1:])}` on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M %Z')}. "
            f"Median of {options.repeat} runs per command and backend, run alternately; wall time of the whole "
            "command, output to /dev/null. PostgreSQL 15 on the same machine, unix socket, fsync on.",
            "",
        ]
        lines += fixed_cost(options.index_folder, server_url, max(options.repeat, 10))
        for root in options.archive:
            name = f"{root.parent.name}-{root.name}".replace(".", "_")
            sqlite_index = str(options.index_folder / f"{name}.sqlite3")
            postgresql_index = database_url(server_url, f"pycomex_index_bench_{name}".replace("-", "_").lower())
            lines += benchmark_archive(
                root.resolve(),
                sqlite_index,
                postgresql_index,
                options.repeat,
                daemon=options.daemon,
                check_outputs=not options.no_output_check,
            )
        text = "\n".join(lines)
        print(text)
        options.output.write_text(text)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
