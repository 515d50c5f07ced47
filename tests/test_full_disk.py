"""A full disk, for real: write commands on a tiny tmpfs fail with one clear line and leave nothing behind.

Each test mounts its own small tmpfs inside ``tmp_path`` (root only: this
machine and CI run the tests as root; elsewhere these tests are skipped with
the reason), fills it where needed, and checks what a full disk may and may
not leave: no temporary files, no half ZIP, no damaged experiment_meta.json,
an index that still matches the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycomex_index.atomic import TEMPORARY_SUFFIX, write_atomic
from pycomex_index.errors import IndexFullError
from tests.conftest import index_query, make_metadata, write_meta
from tests.helpers_write import assert_index_matches_disk, generate_archive

NO_SPACE = "no space left on the device; nothing was lost"


class TinyFilesystem:
    """A mounted tmpfs of a few hundred KB, and a filler file to use up what is left of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Use up the free space, except ``leave`` bytes (rounded to whole pages by tmpfs)."""
        chunk = b"\0" * 4096
        with open(self.filler, "ab") as file:
            while shutil.disk_usage(self.path).free > leave:
                try:
                    file.write(chunk)
                    file.flush()
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def _mounted_tmpfs(mount_point: Path, size: str) -> Iterator[TinyFilesystem]:
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for the full-disk tests")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (full-disk tests need it): {mounted.stderr.strip()}")
    try:
        yield TinyFilesystem(mount_point)
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)  # still busy: detach it anyway


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[TinyFilesystem]:
    """512 KB: less than the ZIP of the compress test, a few experiment files."""
    with _mounted_tmpfs(tmp_path / "tiny", "512k") as filesystem:
        yield filesystem


@pytest.fixture
def index_filesystem(tmp_path: Path) -> Iterator[TinyFilesystem]:
    """4 MB: room for a new index with its write-ahead log while every migration runs, until filled."""
    with _mounted_tmpfs(tmp_path / "small", "4m") as filesystem:
        yield filesystem


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the index folder left out) with its content."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".pycomex_index" not in path.parts
    }


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return error


def test_compress_on_a_full_disk_leaves_no_temporary_and_no_zip(
    tmp_path: Path, tiny_filesystem: TinyFilesystem, run_cli
) -> None:
    archive = tmp_path / "results"
    generate_archive(archive, 12, payload=64 * 1024)  # random bytes: 768 KB that deflate cannot shrink below 512 KB
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    before = _files(archive)
    target = tiny_filesystem.path / "backup.zip"

    result = run_cli("archive", "compress", "--path", str(archive), "--all", "--name", str(target))

    assert result.exit_code == IndexFullError.exit_code, result.output
    assert _one_error_line(result) == f"Error: {NO_SPACE}, free some space and run the command again"
    assert os.listdir(tiny_filesystem.path) == []  # neither the ZIP nor its temporary
    assert _files(archive) == before
    assert index_query(archive, "SELECT COUNT(*) FROM exports") == [(0,)]
    assert_index_matches_disk(archive)


@pytest.mark.parametrize("size", [100, 9000, 200_000], ids=["buffered", "over-a-buffer", "bigger-than-the-disk"])
def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(
    tiny_filesystem: TinyFilesystem, size: int
) -> None:
    target = tiny_filesystem.path / "experiment_meta.json"
    target.write_bytes(b'{"old": true}')
    tiny_filesystem.fill()
    with pytest.raises(OSError) as raised:
        write_atomic(str(target), b"x" * size)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b'{"old": true}'
    assert sorted(os.listdir(tiny_filesystem.path)) == ["experiment_meta.json", "filler"]


@pytest.mark.parametrize(("note", "leave"), [(2_000, 0), (20_000, 64 * 1024)], ids=["no-room-at-all", "room-for-a-few"])
def test_modify_on_a_full_disk_leaves_every_file_old_or_new_and_undoable(
    tmp_path: Path, tiny_filesystem: TinyFilesystem, run_cli, note: int, leave: int
) -> None:
    archive = tiny_filesystem.path / "results"
    rel_paths = generate_archive(archive, 20)
    # The index on the big disk (through the index folder), so that only the experiment files run out of space.
    (tmp_path / "index-folder").mkdir()
    os.symlink(tmp_path / "index-folder", archive / ".pycomex_index")
    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    original = _files(archive)
    tiny_filesystem.fill(leave)

    result = run_cli(
        "archive", "modify", "--path", str(archive), "--all", "--modify-metadata", f"m['note'] = 'x' * {note}"
    )

    assert result.exit_code == 1, result.output
    assert "No space left on device; left untouched" in result.stderr
    changed = 0
    for rel_path in rel_paths:
        name = f"{rel_path}/experiment_meta.json"
        content = (archive / name).read_bytes()
        if content != original[name]:
            assert json.loads(content) == {**json.loads(original[name]), "note": "x" * note}, rel_path
            changed += 1
    assert changed < len(rel_paths) and (changed > 0) == (leave > 0)
    assert not list(archive.rglob(f"*{TEMPORARY_SUFFIX}"))
    assert_index_matches_disk(archive)  # right away: the command itself kept the index in step

    tiny_filesystem.free()
    undone = run_cli("archive", "undo", "--path", str(archive), "--yes")
    assert undone.exit_code == 0, undone.output
    assert _files(archive) == original


@pytest.mark.parametrize("leave", [0, 160 * 1024], ids=["full-before", "fills-during"])
@pytest.mark.parametrize("command", ["sync", "modify"])
def test_index_on_a_full_disk_is_a_clear_error_and_loses_nothing(
    tmp_path: Path, index_filesystem: TinyFilesystem, run_cli, command: str, leave: int
) -> None:
    archive = tmp_path / "results"
    generate_archive(archive, 40)
    index = ["--path", str(archive), "--index", str(index_filesystem.path / "index.sqlite3")]
    assert run_cli("archive", *index, "list").exit_code == 0
    if command == "sync":
        for number in range(150):  # new experiments, more than the index has room for
            write_meta(archive / "more" / f"run_{number:03d}", make_metadata(description="y" * 3000))
    original = _files(archive)
    index_filesystem.fill(leave)

    if command == "sync":
        result = run_cli("archive", *index, "list")
    else:
        result = run_cli("archive", *index, "modify", "--all", "--modify-metadata", "m['note'] = 'x' * 20000")

    assert result.exit_code == IndexFullError.exit_code, result.output
    assert NO_SPACE in _one_error_line(result)
    for name, content in _files(archive).items():
        if content != original[name]:  # a modify may have written some files before the index filled up
            assert json.loads(content) == {**json.loads(original[name]), "note": "x" * 20000}, name
    index_filesystem.free()
    listed = run_cli("archive", *index, "list")
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == sum(name.endswith("experiment_meta.json") for name in original)
    if command == "modify":
        undone = run_cli("archive", *index, "undo", "--yes")
        assert undone.exit_code == 0, undone.output
        assert _files(archive) == original
