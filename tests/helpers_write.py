"""Helpers for the write-command tests: reading the index straight from its file, freezing it, spec commands.

The index is read with ``sqlite3`` directly (never through a command), so a
test sees exactly what the write command itself left in it, with no sync in
between. :func:`freeze_index` goes further: it records a live watcher
heartbeat (this test process), after which no command syncs at all, so what
``list``/``overview`` print afterwards can only come from what the write
command wrote into the index.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import index_query, make_metadata, write_meta

INDEX_FILE = Path(".pycomex_index") / "index.sqlite3"


def experiments(count: int) -> str:
    """``1 experiment``, ``3 experiments``: how the commands count."""
    return f"{count} experiment{'' if count == 1 else 's'}"


def index_file(archive: Path) -> Path:
    """The archive's SQLite index file (the default place; on PostgreSQL there is none)."""
    return archive / INDEX_FILE


def index_paths(archive: Path) -> set[str]:
    """The experiment paths the index holds right now."""
    return {row[0] for row in index_query(archive, "SELECT rel_path FROM experiments WHERE archive_id = :archive_id")}


def index_documents(archive: Path) -> dict[str, dict[str, Any] | None]:
    """What the index holds of every experiment's metadata: its small top-level keys and ``p`` (None when unreadable)."""
    rows = index_query(
        archive,
        "SELECT e.rel_path, f.summary_json, f.parameters_json FROM experiments e "
        "LEFT JOIN experiment_fields f ON f.experiment_id = e.id WHERE e.archive_id = :archive_id",
    )
    return {
        rel_path: {"summary": json.loads(summary), "p": json.loads(parameters)} if summary is not None else None
        for rel_path, summary, parameters in rows
    }


def indexed_form(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a metadata document the index keeps (see ``index_documents``)."""
    from pycomex_index.discovery import DOCUMENT_ONLY_KEYS, parameter_values

    if metadata is None:
        return None
    return {
        "summary": {key: value for key, value in metadata.items() if key not in DOCUMENT_ONLY_KEYS},
        "p": parameter_values(metadata),
    }


def index_stats(archive: Path) -> dict[str, tuple[int, int]]:
    """``rel_path -> (meta_mtime_ns, meta_size)`` as stored in the index."""
    rows = index_query(
        archive, "SELECT rel_path, meta_mtime_ns, meta_size FROM experiments WHERE archive_id = :archive_id"
    )
    return {rel_path: (mtime, size) for rel_path, mtime, size in rows}


def experiments_on_disk(archive: Path) -> set[str]:
    """Every folder below ``archive`` that holds an experiment_meta.json (pycomex's rule)."""
    found = set()
    for folder, subfolders, files in os.walk(archive, followlinks=True):
        relative = os.path.relpath(folder, archive)
        if relative.split(os.sep)[0] == ".pycomex_index":
            subfolders[:] = []
            continue
        if "experiment_meta.json" in files and relative != ".":
            found.add(relative.replace(os.sep, "/"))
            subfolders[:] = []
    return found


def disk_documents(archive: Path) -> dict[str, dict[str, Any] | None]:
    documents: dict[str, dict[str, Any] | None] = {}
    for rel_path in experiments_on_disk(archive):
        try:
            documents[rel_path] = json.loads((archive / rel_path / "experiment_meta.json").read_text())
        except (ValueError, UnicodeDecodeError):
            documents[rel_path] = None
    return documents


def assert_index_matches_disk(archive: Path) -> None:
    """The index lists exactly the experiments on disk, each with the metadata and file stamps it has now."""
    documents = index_documents(archive)
    assert set(documents) == experiments_on_disk(archive)
    assert documents == {rel_path: indexed_form(document) for rel_path, document in disk_documents(archive).items()}
    for rel_path, (mtime, size) in index_stats(archive).items():
        stat = (archive / rel_path / "experiment_meta.json").stat()
        assert (mtime, size) == (stat.st_mtime_ns, stat.st_size), rel_path


def freeze_index(archive: Path) -> None:
    """Make every following command trust the index without looking at the disk (a live watcher's heartbeat)."""
    from pycomex_index.heartbeat import write_heartbeat
    from pycomex_index.lease import Holder, acquire_lease
    from pycomex_index.store import open_archive_index

    holder = Holder.this_process()
    with open_archive_index(str(archive)) as index:
        assert acquire_lease(index.db, index.archive_id, holder, seconds=3600, started_at=time.time()).holder == holder
        write_heartbeat(index, holder, mode="polling", backlog=0, last_change_at=None)


def spec_args(command: str, archive: Path) -> list[str]:
    """A command line copied from the spec, with ``pycomex`` replaced by ``pycomex-index``, as CLI arguments."""
    command = command.replace("\\\n", " ").replace("$(date +%Y%m%d)", time.strftime("%Y%m%d"))
    words = shlex.split(command)
    assert words[0] in ("pycomex", "pycomex-index") and words[1] == "archive", command
    return ["archive", "--path", str(archive), *words[2:]]


def select_of(args: list[str]) -> str | None:
    """The ``--select`` expression of a command line (``--select=X`` or ``--select X``), None for ``--all``."""
    for position, word in enumerate(args):
        if word.startswith("--select="):
            return word[len("--select=") :]
        if word == "--select":
            return args[position + 1]
    assert "--all" in args, args
    return None


class _Time(float):
    """The oracle's own date-aware time (the spec compares start_time with ISO dates)."""

    def _seconds(self, other: Any) -> Any:
        return datetime.fromisoformat(other).timestamp() if isinstance(other, str) else other

    def __gt__(self, other: Any) -> bool:
        return float(self) > self._seconds(other)

    def __lt__(self, other: Any) -> bool:
        return float(self) < self._seconds(other)


def oracle_selection(archive: Path, select: str | None) -> set[str]:
    """What a selection must pick, worked out from the files alone (independent of the index and its code).

    pycomex's rule: m is the file's dict (plus path and name when missing), p its
    parameter values; an experiment on which the expression raises is not
    selected; with no expression (``--all``) every experiment, unreadable ones too.
    """
    picked = set()
    for rel_path, metadata in disk_documents(archive).items():
        if select is None:
            picked.add(rel_path)
            continue
        if metadata is None:
            continue
        metadata.setdefault("path", str(archive / rel_path))
        metadata.setdefault("name", rel_path.rpartition("/")[0])
        for key in ("start_time", "end_time"):
            if isinstance(metadata.get(key), (int, float)):
                metadata[key] = _Time(metadata[key])
        parameters = {name: info["value"] for name, info in metadata.get("parameters", {}).items() if "value" in info}
        try:
            if eval(
                select,
                {
                    "m": metadata,
                    "p": parameters,
                    "metadata": metadata,
                    "meta": metadata,
                    "params": parameters,
                    "parameters": parameters,
                },
            ):
                picked.add(rel_path)
        except Exception:
            continue
    return picked


def running_experiments(archive: Path) -> set[str]:
    return {
        rel for rel, metadata in disk_documents(archive).items() if metadata and metadata.get("status") == "running"
    }


def add_spec_experiments(archive: Path) -> None:
    """Experiments beside the real fixture runs so that every spec example selects something (and not everything)."""
    jan_15 = datetime(2024, 1, 15, 10, 30, 45).timestamp()
    runs = {
        "model/2024-01-15_10-30-45": make_metadata(
            name="best_model",
            start_time=jan_15,
            end_time=jan_15 + 700,
            duration=700.0,
            parameters={"LEARNING_RATE": 0.001, "BATCH_SIZE": 32, "MODEL": "resnet", "ACCURACY": 0.95, "EPOCHS": 60},
        ),
        "model/2024-01-15_11-20-10": make_metadata(
            name="test",
            status="failed",
            has_error=True,
            error_type="ValueError",
            start_time=jan_15 + 3000,
            end_time=jan_15 + 3003,
            duration=3.0,
            for_analysis=True,
            parameters={"LEARNING_RATE": 0.6, "BATCH_SIZE": 64, "MODEL": "old_model", "LERNING_RATE": 0.01},
        ),
        "model/2024-01-10_10-00-00": make_metadata(
            start_time=jan_15 - 5 * 86400,
            end_time=jan_15 - 5 * 86400 + 45,
            duration=45.0,
            version="1.0",
            parameters={"LEARNING_RATE": 0.01, "BATCH_SIZE": 64, "MODEL": "resnet", "old_param": 7, "EPOCHS": 30.0},
        ),
    }
    for rel_path, metadata in runs.items():
        folder = archive / rel_path
        write_meta(folder, metadata)
        (folder / "experiment_out.log").write_text(f"log of {rel_path}\n")
        (folder / "model.pt").write_bytes(os.urandom(2048))


def generate_archive(root: Path, count: int, *, per_folder: int = 200, payload: int = 0) -> list[str]:
    """``count`` small experiments (pycomex's format) in namespaces of ``per_folder``; returns their paths."""
    rel_paths = []
    for number in range(count):
        rel_path = f"ns{number // per_folder:03d}/run_{number:05d}"
        metadata = make_metadata(
            name=f"gen{number // per_folder}",
            start_time=1700000000.0 + number,
            end_time=1700000010.0 + number,
            duration=10.0,
            status="failed" if number % 7 == 0 else "done",
            has_error=number % 7 == 0,
            parameters={"LEARNING_RATE": 0.001 * (number % 10 + 1), "BATCH_SIZE": 16 << (number % 3), "SEED": number},
        )
        write_meta(root / rel_path, metadata)
        if payload:
            (root / rel_path / "data.bin").write_bytes(os.urandom(payload))
        rel_paths.append(rel_path)
    return rel_paths


def cli_process(*args: str, **popen: Any) -> subprocess.Popen:
    """The real CLI in a child process (for kills and terminals), without progress bars, on the test's backend."""
    env = {**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pycomex_index", *args], env=env, **popen)


def run_on_terminal(args: list[str], answer: str | None, timeout: float = 20.0) -> tuple[int, str]:
    """Run the CLI with a real pseudo-terminal as stdin, type ``answer`` at the prompt; (exit code, stdout)."""
    controller, terminal = pty.openpty()
    process = cli_process(*args, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    while b"[y/N]: " not in output and process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            output += process.stdout.read() or b""
    if answer is not None and b"[y/N]: " in output:
        os.write(controller, answer.encode() + b"\n")
    try:
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
    os.set_blocking(process.stdout.fileno(), True)
    output += process.stdout.read()
    os.close(controller)
    return process.returncode, output.decode()
