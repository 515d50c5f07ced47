"""Shared fixtures: real pycomex archives copied into tmp_path, and a CLI runner.

Tests never touch the user's files: the index env variable is cleared and the
user cache dir points into the test's own temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

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
