"""archive compress: pycomex's ZIP layout, atomic creation, symlink safety, and the export recorded in the index."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from pycomex_index.compress import compress_experiments
from pycomex_index.exports import recent_exports
from pycomex_index.operations import select_experiments
from pycomex_index.store import open_archive_index
from pycomex_index.sync import sync_archive
from tests.conftest import index_query, make_metadata, write_meta
from tests.helpers_write import (
    add_spec_experiments,
    experiments,
    experiments_on_disk,
    freeze_index,
    oracle_selection,
    run_on_terminal,
    select_of,
    spec_args,
)

#: Every compress command of the spec (examples, use cases, workflows) and of issue 3.
SPEC_COMPRESS = [
    """pycomex archive compress --all""",
    """pycomex archive compress \\
  --select="m['status'] == 'done'" \\
  --name=successful_runs.zip""",
    """pycomex archive compress \\
  --select="p['MODEL'] == 'resnet'" \\
  --name=resnet_experiments.zip \\
  -v""",
    """pycomex archive compress --all --name=backup_$(date +%Y%m%d).zip""",
    """pycomex archive compress \\
  --select="m['status'] == 'done'" \\
  --name=share_results.zip""",
    """pycomex archive compress \\
  --select="m['status'] == 'failed'" \\
  --name=failed_experiments.zip""",
    """pycomex archive compress \\
  --select="p['LEARNING_RATE'] == 0.001 and m['status'] == 'done'" \\
  --name=lr_001_results.zip""",
    """pycomex archive compress \\
  --select="m['name'] == 'best_model'" \\
  --name=best_model.zip""",
    """pycomex archive compress --all --name="backup_$(date +%Y%m%d).zip\"""",
    """pycomex archive compress \\
  --select="m['status'] == 'done' and p['LEARNING_RATE'] < 0.01" \\
  --name="good_lr_experiments.zip\"""",
    """pycomex archive compress \\
  --select="m['start_time'] > '2024-01-10'" \\
  --name="recent_experiments.zip\"""",
    """pycomex archive compress \\
  --select="m.get('for_analysis', False)" \\
  --name="analysis_set.zip\"""",
    """pycomex archive compress --all --name="migrated_archive.zip\"""",
    """pycomex archive compress \\
  --select="m['duration'] > 600" \\
  --name="slow_experiments.zip\"""",
    """pycomex archive compress --all --name=backup.zip""",
    """pycomex-index archive compress --select "m['status'] == 'done'" --name successful_runs.zip -v""",
]


def zip_name_of(args: list[str]) -> str:
    for position, word in enumerate(args):
        if word.startswith("--name="):
            return word[len("--name=") :]
        if word == "--name":
            return args[position + 1]
    return "results.zip"


def expected_members(archive: Path, rel_paths: set[str]) -> dict[str, bytes]:
    """``results/<rel path>/<file>`` -> content, for every file of these experiments (pycomex's layout)."""
    members = {}
    for rel_path in rel_paths:
        for folder, _, files in os.walk(archive / rel_path):
            for name in files:
                path = Path(folder) / name
                members["results/" + path.relative_to(archive).as_posix()] = path.read_bytes()
    return members


@pytest.fixture
def spec_archive(archive: Path) -> Path:
    add_spec_experiments(archive)
    return archive


@pytest.mark.parametrize("command", SPEC_COMPRESS)
def test_spec_compress_examples_write_pycomex_layout_and_record_the_export(
    spec_archive: Path, tmp_path: Path, run_cli, command: str
) -> None:
    args = spec_args(command, spec_archive)
    selected = oracle_selection(spec_archive, select_of(args))
    assert selected
    workdir = tmp_path / "work"
    workdir.mkdir()

    result = run_cli(*args, cwd=workdir)

    assert result.exit_code == 0, result.output
    name = zip_name_of(args)
    zip_path = workdir / name
    with zipfile.ZipFile(zip_path) as archive_zip:
        assert archive_zip.testzip() is None
        contents = {info.filename: archive_zip.read(info) for info in archive_zip.infolist()}
    assert contents == expected_members(spec_archive, selected)
    assert result.stdout.startswith(f"Compressing {experiments(len(selected))}...\n")
    size = zip_path.stat().st_size
    from pycomex_index.formatting import format_size

    assert result.stdout.endswith(f"Created: {name} ({format_size(size)})\n")
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  results/")]
    assert sorted(listed) == (sorted(f"results/{rel}" for rel in selected) if "-v" in args else [])
    # Recorded by the command itself, read straight from the index:
    (export,) = index_query(spec_archive, "SELECT id, zip_path, size, sha256, experiment_count FROM exports")
    assert export[1:] == (str(zip_path), size, hashlib.sha256(zip_path.read_bytes()).hexdigest(), len(selected))
    members = {
        row[0]
        for row in index_query(
            spec_archive, "SELECT rel_path FROM export_members WHERE export_id = :export_id", {"export_id": export[0]}
        )
    }
    assert members == selected
    assert not [name for name in os.listdir(workdir) if name != zip_path.name]


def test_zip_extracts_to_the_same_tree(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    (spec_archive / "model/2024-01-15_10-30-45/.track/loss").mkdir(parents=True)
    (spec_archive / "model/2024-01-15_10-30-45/.track/loss/000.json").write_text("[1, 2]")
    (spec_archive / "model/2024-01-15_10-30-45/empty_folder").mkdir()
    result = run_cli("archive", "compress", "--path", str(spec_archive), "--all", "--name", str(tmp_path / "all.zip"))
    assert result.exit_code == 0, result.output

    with zipfile.ZipFile(tmp_path / "all.zip") as archive_zip:
        archive_zip.extractall(tmp_path / "unpacked")
    unpacked = tmp_path / "unpacked" / "results"
    for folder, subfolders, files in os.walk(spec_archive):
        subfolders[:] = [name for name in subfolders if name != ".pycomex_index"]
        relative = Path(folder).relative_to(spec_archive)
        assert sorted(os.listdir(unpacked / relative)) == sorted(subfolders + files), relative
        for name in files:
            assert (unpacked / relative / name).read_bytes() == (Path(folder) / name).read_bytes()


def test_default_name_is_results_zip_in_the_current_folder(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "archive", "compress", "--path", str(spec_archive), "--select", "m['name'] == 'best_model'", cwd=tmp_path
    )
    assert result.exit_code == 0, result.output
    assert "Created: results.zip (" in result.stdout
    with zipfile.ZipFile(tmp_path / "results.zip") as archive_zip:
        assert {Path(name).parent.as_posix() for name in archive_zip.namelist()} == {
            "results/model/2024-01-15_10-30-45"
        }


def test_symlinks_out_of_an_experiment_are_skipped_with_a_warning(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    run = archive / "ns" / "run"
    write_meta(run, make_metadata())
    (tmp_path / "secret.txt").write_text("not part of the experiment")
    (run / "data.csv").write_text("a,b\n")
    os.symlink(tmp_path / "secret.txt", run / "outside_link.txt")
    os.symlink(tmp_path, run / "outside_folder")
    os.symlink("data.csv", run / "inside_link.csv")
    (run / "sub").mkdir()
    os.symlink("..", run / "sub" / "loop")
    os.symlink("missing.txt", run / "dangling.txt")

    result = run_cli("archive", "compress", "--path", str(archive), "--all", "--name", str(tmp_path / "out.zip"))

    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "out.zip") as archive_zip:
        names = set(archive_zip.namelist())
        assert archive_zip.read("results/ns/run/inside_link.csv") == b"a,b\n"
    assert names == {
        "results/ns/run/experiment_meta.json",
        "results/ns/run/data.csv",
        "results/ns/run/inside_link.csv",
        "results/ns/run/sub/",
    }
    assert (
        f"Warning: skipped the symlink results/ns/run/outside_link.txt -> {tmp_path / 'secret.txt'}: it points outside the experiment"
        in result.stderr
    )
    assert "Warning: skipped the symlink results/ns/run/outside_folder" in result.stderr
    assert "Warning: skipped the symlink results/ns/run/sub/loop: it loops back to a folder above it" in result.stderr
    assert "dangling.txt" in result.stderr


def test_interrupted_compress_leaves_no_partial_zip_and_keeps_the_old_one(spec_archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "backup.zip"
    target.write_bytes(b"the previous backup")

    def interrupt_after_first(rel_path: str) -> None:
        if interrupt_after_first.calls:
            raise KeyboardInterrupt
        interrupt_after_first.calls += 1

    interrupt_after_first.calls = 0
    with open_archive_index(str(spec_archive)) as index:
        sync_archive(index)
        with pytest.raises(KeyboardInterrupt):
            compress_experiments(
                index, select_experiments(index, None), str(target), overwrite=True, on_experiment=interrupt_after_first
            )
        assert recent_exports(index) == []
    assert target.read_bytes() == b"the previous backup"
    assert sorted(os.listdir(tmp_path)) == sorted(["backup.zip", "results"])


def test_target_in_a_missing_folder_is_a_clear_error(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "archive", "compress", "--path", str(spec_archive), "--all", "--name", str(tmp_path / "nowhere" / "out.zip")
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        f"Error: cannot write {tmp_path / 'nowhere' / 'out.zip'}: the folder {tmp_path / 'nowhere'} does not exist"
    )
    assert not (tmp_path / "nowhere").exists()
    assert index_query(spec_archive, "SELECT COUNT(*) FROM exports") == [(0,)]


def test_target_that_is_a_folder_is_a_clear_error(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    (tmp_path / "taken.zip").mkdir()
    result = run_cli("archive", "compress", "--path", str(spec_archive), "--all", "--name", str(tmp_path / "taken.zip"))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: cannot write {tmp_path / 'taken.zip'}: it is a folder"
    assert os.listdir(tmp_path / "taken.zip") == []


def test_select_matching_nothing_writes_no_zip(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "archive", "compress", "--path", str(spec_archive), "--select", "m['status'] == 'nope'", cwd=tmp_path
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == "No experiments match the selection; nothing was changed.\n"
    assert not (tmp_path / "results.zip").exists()


def test_compress_needs_select_or_all(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("archive", "compress", "--path", str(spec_archive), cwd=tmp_path)
    assert result.exit_code == 2
    assert (
        "Error: choose the experiments to compress: give --select EXPR, or --all for every experiment" in result.stderr
    )
    assert not (tmp_path / "results.zip").exists()


def test_all_includes_experiments_with_unreadable_metadata(spec_archive: Path, tmp_path: Path, run_cli) -> None:
    write_meta(spec_archive / "broken" / "run", b"\xff\xfe not json")
    result = run_cli("archive", "compress", "--path", str(spec_archive), "--all", "--name", str(tmp_path / "all.zip"))
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "all.zip") as archive_zip:
        assert archive_zip.read("results/broken/run/experiment_meta.json") == b"\xff\xfe not json"


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of the archive with its content; the index (which commands write) by name only."""
    return {
        path.relative_to(folder).as_posix(): b"" if ".pycomex_index" in path.parts else path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["", "overwrite"])
@pytest.mark.parametrize(
    ("name", "cwd"),
    [
        ("results/model/2024-01-15_10-30-45/experiment_meta.json", "."),
        ("self.zip", "results/model/2024-01-15_10-30-45"),
        ("results/new.zip", "."),
        ("elsewhere/../results/model/new.zip", "."),
        ("into_archive/new.zip", "."),  # a symlinked folder leading into the archive
        ("linked.zip", "."),  # a symlink (dangling) leading into the archive
        ("results/.pycomex_index/index.sqlite3", "."),
    ],
    ids=[
        "own-metadata",
        "inside-an-experiment",
        "archive-root",
        "dot-dot",
        "symlinked-folder",
        "symlinked-file",
        "index",
    ],
)
def test_target_inside_the_archive_is_always_refused(
    spec_archive: Path, tmp_path: Path, run_cli, name: str, cwd: str, overwrite: list[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(spec_archive / "model", tmp_path / "into_archive")
    os.symlink(spec_archive / "model" / "linked.zip", tmp_path / "linked.zip")
    assert run_cli("index", "sync", "--path", str(spec_archive)).exit_code == 0
    before = _tree(spec_archive)

    result = run_cli(
        "archive", "compress", "--path", str(spec_archive), "--all", "--name", name, *overwrite, cwd=tmp_path / cwd
    )

    assert result.exit_code == 1, result.output
    target = os.path.abspath(tmp_path / cwd / name)
    assert (
        result.stderr
        == f"Error: cannot write {target}: it lies inside the archive {spec_archive}; write the ZIP outside it\n"
    )
    assert _tree(spec_archive) == before  # byte for byte, and no temporary either
    assert index_query(spec_archive, "SELECT COUNT(*) FROM exports") == [(0,)]  # the index is whole, too


def test_existing_file_is_not_replaced_without_overwrite_when_nobody_can_confirm(
    spec_archive: Path, tmp_path: Path, run_cli
) -> None:
    (tmp_path / "backup.zip").write_bytes(b"the previous backup")
    result = run_cli("archive", "compress", "--path", str(spec_archive), "--all", "--name", "backup.zip", cwd=tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: backup.zip already exists; add --overwrite to replace it. Nothing was written.\n"
    assert result.stdout == ""
    assert (tmp_path / "backup.zip").read_bytes() == b"the previous backup"
    assert sorted(os.listdir(tmp_path)) == ["backup.zip", "results"]
    assert index_query(spec_archive, "SELECT COUNT(*) FROM exports") == [(0,)]


@pytest.mark.parametrize(("answer", "replaces"), [("y", True), ("yes", True), ("n", False), ("", False)])
def test_existing_file_is_replaced_on_a_terminal_only_after_yes(
    spec_archive: Path, tmp_path: Path, run_cli, answer: str, replaces: bool
) -> None:
    run_cli("index", "sync", "--path", str(spec_archive))
    target = tmp_path / "backup.zip"
    target.write_bytes(b"the previous backup")

    exit_code, output = run_on_terminal(
        ["archive", "compress", "--path", str(spec_archive), "--all", "--name", str(target)], answer
    )

    assert f"{target} already exists. Replace it? [y/N]: " in output
    if replaces:
        assert exit_code == 0, output
        assert zipfile.is_zipfile(target)
        assert index_query(spec_archive, "SELECT COUNT(*) FROM exports") == [(1,)]
    else:
        assert exit_code == 1, output
        assert "Nothing was written." in output
        assert target.read_bytes() == b"the previous backup"
        assert index_query(spec_archive, "SELECT COUNT(*) FROM exports") == [(0,)]
    assert sorted(os.listdir(tmp_path)) == ["backup.zip", "results"]


def test_zip_written_inside_a_symlinked_experiment_does_not_pack_itself(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    elsewhere = tmp_path / "elsewhere" / "run"
    write_meta(elsewhere, make_metadata())
    (archive / "ns").mkdir(parents=True)
    os.symlink(elsewhere, archive / "ns" / "run")
    result = run_cli("archive", "compress", "--path", str(archive), "--all", "--name", "self.zip", cwd=elsewhere)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(elsewhere / "self.zip") as archive_zip:
        assert archive_zip.namelist() == ["results/ns/run/experiment_meta.json"]


def test_existing_zip_is_replaced_with_overwrite_whole_and_keeping_its_permissions(
    spec_archive: Path, tmp_path: Path, run_cli
) -> None:
    target = tmp_path / "out.zip"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    result = run_cli("archive", "compress", "--path", str(spec_archive), "--all", "--name", str(target), "--overwrite")
    assert result.exit_code == 0, result.output
    assert zipfile.is_zipfile(target)
    assert target.stat().st_mode & 0o777 == 0o640


def test_exports_are_listed_newest_first_and_known_to_delete_without_a_sync(
    spec_archive: Path, tmp_path: Path, run_cli
) -> None:
    run_cli("archive", "list", "--path", str(spec_archive))
    freeze_index(spec_archive)
    for name, select in (("first.zip", "m['status'] == 'done'"), ("second.zip", "m['status'] == 'failed'")):
        assert (
            run_cli(
                "archive", "compress", "--path", str(spec_archive), "--select", select, "--name", str(tmp_path / name)
            ).exit_code
            == 0
        )
    with open_archive_index(str(spec_archive)) as index:
        exports = recent_exports(index, limit=5)
        assert [Path(export.zip_path).name for export in exports] == ["second.zip", "first.zip"]
        assert [export.experiment_count for export in exports] == [
            len(oracle_selection(spec_archive, "m['status'] == 'failed'")),
            len(oracle_selection(spec_archive, "m['status'] == 'done'")),
        ]
        assert len(recent_exports(index, limit=1)) == 1
    preview = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] != 'running'")
    assert "never exported" not in preview.stderr
    assert experiments_on_disk(spec_archive)


def test_index_status_lists_the_last_exports(archive: Path, tmp_path: Path, run_cli) -> None:
    assert "Last exports: none" in run_cli("index", "status", "--path", str(archive)).stdout
    result = run_cli("archive", "compress", "--path", str(archive), "--all", "--name", "backup.zip", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    status = json.loads(run_cli("index", "status", "--path", str(archive), "--json").stdout)
    assert [(export["zip_path"], export["experiment_count"]) for export in status["exports"]] == [
        (str(tmp_path / "backup.zip"), 8)
    ]
    assert "backup.zip (8 experiments" in run_cli("index", "status", "--path", str(archive)).stdout
