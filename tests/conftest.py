"""Shared fixtures: real pycomex archives copied into tmp_path, and a CLI runner.

Tests never touch the user's files: the index env variable is cleared and the
user cache dir points into the test's own temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result


def _import_the_installed_package() -> None:
    """Import pycomex_index as installed (editable or not), never the checkout's folder of that name.

    ``python -m pytest`` puts the checkout first on ``sys.path``; its
    ``pycomex_index/`` lacks ``cli`` and ``migrations``, which exist inside the
    package only once installed. Importing it once with the checkout off the
    path caches the installed package for every later import.
    """
    import sys

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != checkout]
    try:
        import pycomex_index.cli  # noqa: F401 - cached in sys.modules for everything below
    except ImportError as error:
        raise pytest.UsageError(f"pycomex-index is not installed ({error}): pip install -e '.[test]'") from None
    finally:
        sys.path[:] = saved


_import_the_installed_package()

from pycomex_index.cli import cli  # noqa: E402 - after the installed package is in place

FIXTURE_ARCHIVE = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYCOMEX_INDEX", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.setenv("PYCOMEX_INDEX_NO_PROGRESS", "1")
    # A run made without the plugin, whose folder names a pid that is gone, counts as interrupted once its
    # files are an hour old (pycomex_index.liveness). The fixture archive's files are as old as the checkout,
    # so with the default the killed run would flip from running to interrupted an hour after checking out:
    # tests take file age out of it, and tests/test_liveness.py checks the threshold itself.
    monkeypatch.setenv("PYCOMEX_INDEX_INTERRUPTED_AFTER", "0")


def _copy_writable(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".pycomex_index"))
    for folder, _, files in os.walk(target):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
    return target


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A writable copy of the real pycomex archive in tests/fixtures/results (8 experiments)."""
    return _copy_writable(FIXTURE_ARCHIVE, tmp_path / "results")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Invoke the CLI in-process: ``run_cli('archive', 'list', '--path', str(archive))``."""

    def invoke(*args: str, input: str | None = None, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "experiment_meta.json").read_text())


def write_meta(folder: Path, metadata: dict[str, Any] | str | bytes) -> Path:
    """Write an experiment_meta.json (a dict in pycomex's format, or raw text/bytes for broken files)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment_meta.json"
    if isinstance(metadata, bytes):
        path.write_bytes(metadata)
    elif isinstance(metadata, str):
        path.write_text(metadata)
    else:
        path.write_text(json.dumps(metadata, indent=4, sort_keys=True))
    return path


def make_metadata(**overrides: Any) -> dict[str, Any]:
    """A small experiment_meta.json in pycomex's key structure; parameters given as ``parameters={NAME: value}``."""
    parameters = overrides.pop("parameters", {"LEARNING_RATE": 0.001, "BATCH_SIZE": 32})
    metadata: dict[str, Any] = {
        "__optuna__": False,
        "__track__": [],
        "base_path": "/tmp",
        "description": "A test experiment.",
        "duration": 135.0,
        "end_time": 1700000135.0,
        "error_type": None,
        "has_error": False,
        "hooks": {},
        "name": "test_experiment",
        "namespace": "tests",
        "parameters": {
            name: {"description": "", "name": name, "type": type(value).__name__, "usable": True, "value": value}
            for name, value in parameters.items()
        },
        "short_description": "A test experiment.",
        "start_time": 1700000000.0,
        "status": "done",
    }
    metadata.update(overrides)
    return metadata


# --- PostgreSQL: a throwaway cluster for the tests that run on both backends -------------------------

POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    """A PostgreSQL 15 cluster in a temporary folder, reached through a unix socket there (no TCP port).

    PostgreSQL refuses to run as root, and tests run as root here and in CI:
    then the server runs as the unprivileged ``nobody`` (``setpriv``), owning
    only its own folder; the tests connect as the ``postgres`` role, trusted
    on the socket. Settings trade durability for speed (fsync off): a crash
    loses a cluster that is thrown away anyway.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self._admin = None
        self._count = 0

    def _run(self, program: str, *arguments: str) -> None:
        import subprocess

        command = [str(POSTGRESQL_BIN / program), *arguments]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> None:
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"
        )
        options = (
            f"-k {self.folder} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str, *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@/{database}?host={self.folder}"

    def new_database(self, *, icu_locale: str | None = None) -> str:
        """The SQLAlchemy URL of a new, empty database; ``icu_locale`` gives it a non-C collation (e.g. ``en-US``)."""
        import psycopg

        if self._admin is None:
            self._admin = psycopg.connect(self.url("postgres", driver="postgresql"), autocommit=True)
        self._count += 1
        name = f"test_{self._count}"
        collation = f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
        self._admin.execute(f"CREATE DATABASE {name} TEMPLATE template0{collation}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgresql_cluster() -> Any:
    """One PostgreSQL cluster for the session, stopped and removed at its end (skipped without PostgreSQL 15)."""
    import tempfile

    if not (POSTGRESQL_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({POSTGRESQL_BIN}): apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install -e '.[test]'")
    # Not under pytest's tmp_path: that folder is root's alone (0700), and the server runs as nobody.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="pycomex-index-pg-")))
    try:
        cluster.start()
        yield cluster
    finally:
        if cluster.data.exists():
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture
def postgresql_url(postgresql_cluster: PostgresCluster) -> str:
    """A new, empty database in the session's cluster, for one test."""
    return postgresql_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both backends: SQLite (the default index file) and a new PostgreSQL database.

    The PostgreSQL index is named by the environment variable, as a lab would
    (credentials never on a command line), so the test's commands are the same.
    """
    if request.param == "postgresql":
        monkeypatch.setenv("PYCOMEX_INDEX", request.getfixturevalue("postgresql_url"))
    return request.param


def index_query(archive: Path, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows of a query on the archive's index, whichever backend holds it (``PYCOMEX_INDEX`` or the default file)."""
    from pycomex_index.store import open_archive_index

    with open_archive_index(str(archive)) as index:
        return [tuple(row) for row in index.db.execute(sql, {"archive_id": index.archive_id, **(params or {})})]
