"""The wheel installs cli/ and migrations/ inside the package, and the installed command works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy_of_the_project(target: Path) -> Path:
    """The project's own files, to build from: setuptools builds in ./build and reuses what an earlier build
    left there (a renamed migration, say), and the checkout stays clean."""
    source = target / "pycomex-index"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pycomex_index", ".venvs"
        ),
    )
    return source


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = _copy_of_the_project(tmp_path_factory.mktemp("source"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("pycomex_index-*.whl"))


def test_wheel_maps_cli_and_migrations_into_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "pycomex_index/__init__.py",
        "pycomex_index/cli/__init__.py",
        "pycomex_index/watcher/__init__.py",  # a subpackage: pyproject's package list must name it
        "pycomex_index/migrations/env.py",
        "pycomex_index/migrations/script.py.mako",
        "pycomex_index/migrations/versions/0001_initial.py",
    ):
        assert required in names, required
    assert not any(name.startswith(("cli/", "migrations/", "tests/", "benchmarks/")) for name in names)
    assert "pycomex_index/main.py" in names  # the pycomex plugin: pycomex imports <package>.main


def _venv_with(tmp_path: Path, *pip_arguments: str) -> Path:
    """A fresh venv that sees this test environment's dependencies (not its pycomex_index) without a download."""
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # A .pth line adds our site-packages to the new venv's path; .pth files inside it (our editable
    # install of pycomex_index) are not processed, so the installed wheel is what gets imported.
    (environment / "lib" / version / "site-packages" / "test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(environment / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            *pip_arguments,
        ],
        check=True,
        capture_output=True,
    )
    return environment


def _run_installed(environment: Path, archive: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(environment / "bin" / "pycomex-index"), "archive", "list", "--path", str(archive), "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def test_installed_wheel_runs_on_a_real_archive(wheel: Path, archive: Path, tmp_path: Path) -> None:
    environment = _venv_with(tmp_path, "--force-reinstall", str(wheel))
    result = _run_installed(environment, archive, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"rel_path"') == 8
    located = subprocess.run(
        [str(environment / "bin" / "python"), "-c", "import pycomex_index.migrations as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert str(environment) in located


def test_the_suite_tests_a_non_editable_install_from_the_checkout(wheel: Path, tmp_path: Path) -> None:
    # `pip install . && python -m pytest`: the checkout's pycomex_index/ folder (no cli/, no migrations/)
    # comes first on sys.path and must not shadow the installed package.
    environment = _venv_with(tmp_path, "--force-reinstall", str(wheel))
    result = subprocess.run(
        [str(environment / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_scan.py"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_an_install_path_with_a_percent_sign_creates_a_new_index(wheel: Path, archive: Path, tmp_path: Path) -> None:
    # Alembic's Config is a ConfigParser: an unescaped "%" in script_location is an interpolation error.
    environment = _venv_with(tmp_path / "lab%20share", "--force-reinstall", str(wheel))
    result = _run_installed(environment, archive, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"rel_path"') == 8
    assert (archive / ".pycomex_index" / "index.sqlite3").is_file()


@pytest.mark.parametrize(
    ("editable_mode", "found"),
    [("strict", True), (None, False)],
    ids=["strict-editable-is-found", "default-editable-is-not"],
)
def test_which_editable_install_pycomex_finds_as_a_plugin(tmp_path: Path, editable_mode: str | None, found: bool):
    # pycomex finds plugins with pkgutil.iter_modules over sys.path. setuptools' default editable install maps
    # cli/ and migrations/ into the package with an import hook that iter_modules cannot see; the strict mode
    # puts a tree of links to the files on sys.path instead. The README tells developers which to use.
    source = _copy_of_the_project(tmp_path)
    settings = ["--config-settings", f"editable_mode={editable_mode}"] if editable_mode else []
    environment = _venv_with(tmp_path, "--no-build-isolation", *settings, "-e", str(source))
    result = subprocess.run(
        [
            str(environment / "bin" / "python"),
            "-c",
            "from pycomex.config import Config; import pycomex_index.cli; print(sorted(Config().plugins))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr  # either way the package, cli/ included, imports
    assert ("pycomex_index" in result.stdout) is found, result.stdout
