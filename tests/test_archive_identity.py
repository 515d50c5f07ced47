"""One archive, whatever path reaches it (issue 12, item 2).

Each host of a lab mounts the shared archive at its own path, and a user may
reach it through a symlink or a bind mount: the id in
``<archive>/.pycomex_index/archive.json`` makes all of them one archive in
the index, with one set of rows, one modify journal and one export list.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import index_query


def _archives(archive: Path) -> list[tuple]:
    return index_query(archive, "SELECT id, uuid FROM archives")


def _one_archive_through(archive: Path, other: Path, run_cli) -> None:
    """``other`` reaches ``archive``: one archive row, one set of rows, a modify undone through the other path."""
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    listed = run_cli("archive", "list", "--path", str(other), "--json")
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.output)) == 8
    [(archive_id, identity)] = _archives(archive)
    assert identity == json.loads((archive / ".pycomex_index" / "archive.json").read_text())["uuid"]
    assert index_query(archive, "SELECT COUNT(*) FROM experiments") == [(8,)]
    roots = {row[0] for row in index_query(archive, "SELECT root FROM archive_roots WHERE archive_id = :archive_id")}
    assert roots == {str(archive), str(other)}

    metadata_files = sorted(archive.glob("*/*/experiment_meta.json"))
    before = [path.read_bytes() for path in metadata_files]
    modified = run_cli("archive", "modify", "--path", str(archive), "--all", "--modify-metadata", "m['lab'] = 1")
    assert modified.exit_code == 0, modified.output
    assert [path.read_bytes() for path in metadata_files] != before
    undone = run_cli("archive", "undo", "--path", str(other), "--yes")
    assert undone.exit_code == 0, undone.output
    assert [path.read_bytes() for path in metadata_files] == before
    assert index_query(archive, "SELECT COUNT(*) FROM experiments") == [(8,)]


def test_an_archive_through_a_symlink_is_the_same_archive(
    archive: Path, tmp_path: Path, run_cli, index_backend
) -> None:
    link = tmp_path / "link-to-results"
    link.symlink_to(archive)
    _one_archive_through(archive, link, run_cli)


def test_an_archive_through_a_bind_mount_is_the_same_archive(
    archive: Path, tmp_path: Path, run_cli, index_backend
) -> None:
    mount_point = tmp_path / "mnt" / "results"
    mount_point.mkdir(parents=True)
    bound = subprocess.run(["mount", "--bind", str(archive), str(mount_point)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"mount --bind needs root and a mount namespace that allows it: {bound.stderr.strip()}")
    try:
        _one_archive_through(archive, mount_point, run_cli)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_an_index_made_before_archive_ids_adopts_the_id_at_its_next_open(archive: Path, run_cli, index_backend) -> None:
    from pycomex_index.store import open_archive_index

    assert run_cli("index", "sync", "--path", str(archive)).exit_code == 0
    with open_archive_index(str(archive)) as index:
        index.db.execute("UPDATE archives SET uuid = NULL")  # as migration 0008 leaves an existing row
        index.db.execute("DELETE FROM archive_roots")
    (archive / ".pycomex_index" / "archive.json").unlink()
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    [(archive_id, identity)] = _archives(archive)
    assert identity == json.loads((archive / ".pycomex_index" / "archive.json").read_text())["uuid"]
    assert index_query(archive, "SELECT COUNT(*) FROM experiments WHERE archive_id = :archive_id") == [(8,)]


def test_two_processes_opening_a_new_archive_at_once_agree_on_its_id(archive: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from pycomex_index.archives import archive_identity

    with ProcessPoolExecutor(4) as pool:
        identities = set(pool.map(archive_identity, [str(archive)] * 8))
    assert len(identities) == 1 and None not in identities
