"""archive delete: preview, confirmation, protection of running runs, symlinks, and write-through to the index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import make_metadata, write_meta
from tests.helpers_write import (
    add_spec_experiments,
    assert_index_matches_disk,
    experiments,
    experiments_on_disk,
    freeze_index,
    index_paths,
    oracle_selection,
    run_on_terminal,
    running_experiments,
    select_of,
    spec_args,
)

#: Every delete command of the spec and of issue 3 that runs without asking.
SPEC_DELETE_WITH_YES = [
    """pycomex archive delete --select="m['status'] == 'failed'" --yes""",
    """pycomex archive delete --select="m['duration'] < 10" --yes -v""",
    """pycomex archive delete --all --yes""",
    """pycomex archive delete --select="m['has_error'] == True" --yes""",
    """pycomex archive delete --select="'debug' in m['path']" --yes""",
    """pycomex archive delete --select="m['duration'] < 5" --yes -v""",
    """pycomex-index archive delete --select "m['duration'] < 5" --yes -v""",
    """pycomex-index archive delete --all --yes""",
]

#: The ones that ask first.
SPEC_DELETE_ASKING = [
    """pycomex archive delete --select="m['status'] == 'failed'\"""",
    """pycomex archive delete --select="p['LEARNING_RATE'] > 0.5\"""",
    """pycomex-index archive delete --select "m['status'] == 'failed'"          # preview + [y/N]""".split("  #")[0],
]


@pytest.fixture
def spec_archive(archive: Path) -> Path:
    add_spec_experiments(archive)
    return archive


@pytest.mark.parametrize("command", SPEC_DELETE_WITH_YES)
def test_spec_delete_examples_remove_exactly_the_selection_and_update_the_index(
    spec_archive: Path, run_cli, command
) -> None:
    args = spec_args(command, spec_archive)
    expected = oracle_selection(spec_archive, select_of(args)) - running_experiments(spec_archive)
    before = experiments_on_disk(spec_archive)
    assert expected and expected != before

    result = run_cli(*args)

    assert result.exit_code == 0, result.output
    after = experiments_on_disk(spec_archive)
    assert before - after == expected
    assert after == index_paths(spec_archive)  # read from the index file right away: no sync in between
    assert f"Selected {experiments(len(expected))} for deletion." in result.stdout
    assert f"Deleted {experiments(len(expected))}." in result.stdout
    for rel_path in expected:
        assert (f"Deleted results/{rel_path}\n" in result.stdout) == ("-v" in args)


@pytest.mark.parametrize("command", SPEC_DELETE_ASKING)
def test_spec_delete_examples_that_ask_refuse_without_a_terminal(spec_archive: Path, run_cli, command) -> None:
    args = spec_args(command, spec_archive)
    expected = oracle_selection(spec_archive, select_of(args)) - running_experiments(spec_archive)
    before = experiments_on_disk(spec_archive)

    result = run_cli(*args)

    assert result.exit_code == 1, result.output
    assert experiments_on_disk(spec_archive) == before
    assert index_paths(spec_archive) == before
    assert result.stdout.startswith(f"Selected {experiments(len(expected))} for deletion.\n\nExperiments to delete:\n")
    for rel_path in expected:
        assert f"  results/{rel_path}\n" in result.stdout
    assert result.stderr.strip().endswith(
        "Error: stdin is not a terminal, so nobody can confirm: nothing was deleted. Add --yes to go ahead without asking."
    )
    assert "Delete these experiments?" not in result.output


@pytest.mark.parametrize(
    ("answer", "deletes"), [("y", True), ("YES", True), ("n", False), ("", False), ("sure", False)]
)
def test_prompt_on_a_real_terminal_deletes_only_on_y_or_yes(spec_archive: Path, run_cli, answer, deletes) -> None:
    run_cli("index", "sync", "--path", str(spec_archive))  # the child then only opens the index
    failed = oracle_selection(spec_archive, "m['status'] == 'failed'")
    before = experiments_on_disk(spec_archive)

    exit_code, output = run_on_terminal(
        ["archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'failed'"], answer
    )

    assert "Experiments to delete:\n" in output
    assert "\nDelete these experiments? [y/N]: " in output
    if deletes:
        assert exit_code == 0, output
        assert experiments_on_disk(spec_archive) == before - failed
        assert f"Deleted {experiments(len(failed))}." in output
    else:
        assert exit_code == 1, output
        assert experiments_on_disk(spec_archive) == before
        assert "Nothing was deleted." in output
    assert index_paths(spec_archive) == experiments_on_disk(spec_archive)


def test_delete_needs_select_or_all_but_not_both(spec_archive: Path, run_cli) -> None:
    before = experiments_on_disk(spec_archive)
    neither = run_cli("archive", "delete", "--path", str(spec_archive), "--yes")
    both = run_cli("archive", "delete", "--path", str(spec_archive), "--all", "--select", "True", "--yes")
    assert neither.exit_code == 2 and both.exit_code == 2
    assert (
        "Error: choose the experiments to delete: give --select EXPR, or --all for every experiment" in neither.stderr
    )
    assert "Error: give either --select or --all, not both" in both.stderr
    assert experiments_on_disk(spec_archive) == before


def test_running_experiments_are_held_back_unless_included(spec_archive: Path, run_cli) -> None:
    running = running_experiments(spec_archive)
    assert len(running) == 1

    kept = run_cli("archive", "delete", "--path", str(spec_archive), "--all", "--yes")
    assert kept.exit_code == 0, kept.output
    # The fixture's killed run: made without the plugin, so its death is a guess that keeps the protection.
    assert (
        "Held back 1 running experiment (it looks interrupted, but that is a guess from a folder name's pid and "
        "the files' age); add --include-running to delete it too." in kept.stdout
    )
    assert experiments_on_disk(spec_archive) == running == index_paths(spec_archive)

    gone = run_cli("archive", "delete", "--path", str(spec_archive), "--all", "--yes", "--include-running")
    assert gone.exit_code == 0, gone.output
    assert experiments_on_disk(spec_archive) == set() == index_paths(spec_archive)


def test_preview_warns_about_experiments_never_exported(spec_archive: Path, run_cli, tmp_path: Path) -> None:
    failed = oracle_selection(spec_archive, "m['status'] == 'failed'")
    preview = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'failed'")
    assert (
        f"Warning: {len(failed)} of the selected experiments were never exported with `archive compress`."
        in preview.stderr
    )

    exported = run_cli(
        "archive",
        "compress",
        "--path",
        str(spec_archive),
        "--select",
        "m['status'] == 'failed' and m['duration'] < 1",
        "--name",
        str(tmp_path / "failed.zip"),
    )
    assert exported.exit_code == 0, exported.output
    not_exported = failed - oracle_selection(spec_archive, "m['status'] == 'failed' and m['duration'] < 1")
    again = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'failed'")
    assert f"Warning: {len(not_exported)} of the selected experiments" in again.stderr


def test_preview_is_cut_after_a_screenful_with_a_count(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    for number in range(60):
        write_meta(archive / "many" / f"run_{number:02d}", make_metadata(start_time=1700000000.0 + number))
    result = run_cli("archive", "delete", "--path", str(archive), "--all")
    listed = [line for line in result.stdout.splitlines() if line.startswith("  results/many/")]
    assert 10 <= len(listed) < 60
    assert f"  ... and {60 - len(listed)} more" in result.stdout
    assert len(experiments_on_disk(archive)) == 60


def test_symlinked_experiment_is_unlinked_and_its_target_kept(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    elsewhere = tmp_path / "elsewhere" / "run"
    write_meta(elsewhere, make_metadata(status="failed", has_error=True))
    (elsewhere / "weights.npy").write_bytes(b"keep me")
    (archive / "linked").mkdir(parents=True)
    os.symlink(elsewhere, archive / "linked" / "run")
    write_meta(archive / "real" / "run", make_metadata())

    result = run_cli("archive", "delete", "--path", str(archive), "--select", "m['status'] == 'failed'", "--yes", "-v")

    assert result.exit_code == 0, result.output
    assert "Deleted results/linked/run (symlink removed, its target kept)" in result.stdout
    assert not os.path.lexists(archive / "linked" / "run")
    assert (elsewhere / "weights.npy").read_bytes() == b"keep me"
    assert (elsewhere / "experiment_meta.json").exists()
    assert index_paths(archive) == {"real/run"} == experiments_on_disk(archive)


def test_experiment_reached_through_a_symlinked_folder_is_refused(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    outside = tmp_path / "shared_namespace"
    write_meta(outside / "run", make_metadata())
    archive.mkdir()
    os.symlink(outside, archive / "ns")
    write_meta(archive / "inside" / "run", make_metadata())

    result = run_cli("archive", "delete", "--path", str(archive), "--all", "--yes")

    assert result.exit_code == 1, result.output
    assert (
        "Failed: results/ns/run: lies outside the archive root (through a symlinked folder); not deleted"
        in result.stderr
    )
    assert "Deleted 1 experiment (1 could not be deleted)." in result.stdout
    assert (outside / "run" / "experiment_meta.json").exists()
    assert not (archive / "inside" / "run").exists()
    assert index_paths(archive) == {"ns/run"}


def test_folder_that_is_no_longer_an_experiment_is_skipped_with_a_warning(spec_archive: Path, run_cli) -> None:
    run_cli("archive", "list", "--path", str(spec_archive))
    freeze_index(spec_archive)  # the command now trusts the index, which still lists the run
    (spec_archive / "model/2024-01-15_11-20-10/experiment_meta.json").unlink()

    result = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "'/model/' in m['path']", "--yes")

    assert result.exit_code == 0, result.output
    assert (
        "Warning: skipped results/model/2024-01-15_11-20-10: is no longer an experiment (no experiment_meta.json)"
        in result.stderr
    )
    assert (spec_archive / "model/2024-01-15_11-20-10/experiment_out.log").exists()
    assert not (spec_archive / "model/2024-01-10_10-00-00").exists()
    assert "Selected 3 experiments for deletion.\nDeleted 2 experiments (1 skipped).\n" in result.stdout
    assert index_paths(spec_archive) == experiments_on_disk(spec_archive)


def test_list_and_overview_show_the_deletion_without_a_sync(spec_archive: Path, run_cli) -> None:
    run_cli("archive", "list", "--path", str(spec_archive))
    freeze_index(spec_archive)  # from here on no command looks at the disk
    deleted = oracle_selection(spec_archive, "m['status'] == 'failed'")
    write_meta(spec_archive / "sentinel" / "run", make_metadata())  # seen only by a sync

    assert (
        run_cli(
            "archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'failed'", "--yes"
        ).exit_code
        == 0
    )

    listed = run_cli("archive", "list", "--path", str(spec_archive)).stdout
    assert "sentinel" not in listed  # so nothing synced: what list shows, delete wrote
    shutil.rmtree(spec_archive / "sentinel")
    assert not any(f"results/{rel_path} " in listed or listed.endswith(f"results/{rel_path}\n") for rel_path in deleted)
    assert len(listed.splitlines()) == len(experiments_on_disk(spec_archive))
    overview = run_cli("archive", "overview", "--path", str(spec_archive)).stdout
    assert f"Total Experiments: {len(experiments_on_disk(spec_archive))}\n" in overview
    assert "Failed: 0 (0.0%)" in overview
    assert_index_matches_disk(spec_archive)


def test_unreadable_experiments_are_deleted_by_all_only(spec_archive: Path, run_cli) -> None:
    write_meta(spec_archive / "broken" / "run", "{ not json")
    by_select = run_cli(
        "archive", "delete", "--path", str(spec_archive), "--select", "True", "--include-running", "--yes"
    )
    assert by_select.exit_code == 0, by_select.output
    assert experiments_on_disk(spec_archive) == {"broken/run"}
    by_all = run_cli("archive", "delete", "--path", str(spec_archive), "--all", "--yes")
    assert by_all.exit_code == 0, by_all.output
    assert experiments_on_disk(spec_archive) == set() == index_paths(spec_archive)


def test_select_matching_nothing_changes_nothing(spec_archive: Path, run_cli) -> None:
    before = experiments_on_disk(spec_archive)
    result = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'nope'", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stderr == "No experiments match the selection; nothing was changed.\n"
    assert experiments_on_disk(spec_archive) == before == index_paths(spec_archive)


@pytest.mark.parametrize("command", ["delete", "compress", "modify", "undo"])
def test_archive_path_that_is_a_file_is_a_clear_error(tmp_path: Path, run_cli, command: str) -> None:
    (tmp_path / "results").write_text("not a folder")
    extra = {
        "delete": ["--all", "--yes"],
        "compress": ["--all"],
        "modify": ["--all", "--modify-metadata", "m['x'] = 1"],
        "undo": ["--yes"],
    }
    result = run_cli("archive", command, "--path", str(tmp_path / "results"), *extra[command])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: archive path is not a folder: {tmp_path / 'results'}"
    assert (tmp_path / "results").read_text() == "not a folder"


def test_select_with_a_syntax_error_is_a_usage_error_before_anything_happens(spec_archive: Path, run_cli) -> None:
    before = experiments_on_disk(spec_archive)
    result = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] ==", "--yes")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Syntax error in --select")
    assert experiments_on_disk(spec_archive) == before
    assert not (spec_archive / ".pycomex_index").exists()


def test_selection_errors_on_some_experiments_are_reported_not_fatal(spec_archive: Path, run_cli) -> None:
    result = run_cli(
        "archive",
        "delete",
        "--path",
        str(spec_archive),
        "--select",
        "str(p['LERNING_RATE']).startswith('0.01')",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    assert "Warning: --select raised on" in result.stderr
    assert not (spec_archive / "model/2024-01-15_11-20-10").exists()
    assert (
        json.loads((spec_archive / "model/2024-01-15_10-30-45/experiment_meta.json").read_text())["name"]
        == "best_model"
    )


@pytest.mark.parametrize("yes", [True, False], ids=["deleting", "preview"])
def test_folder_holding_other_experiments_is_refused_and_the_rest_deleted(tmp_path: Path, run_cli, yes: bool) -> None:
    archive = tmp_path / "results"
    write_meta(archive / "ns", make_metadata(status="failed", has_error=True))  # stray: hides the runs below
    for hidden in ("ns/run_a", "ns/run_b", "ns/sub/run_c"):
        write_meta(archive / hidden, make_metadata())
        (archive / hidden / "weights.npy").write_bytes(b"keep me")
    write_meta(archive / "other" / "run", make_metadata(status="failed", has_error=True))
    assert experiments_on_disk(archive) == {"ns", "other/run"}

    result = run_cli(
        "archive", "delete", "--path", str(archive), "--select", "m['status'] == 'failed'", *(["--yes"] if yes else [])
    )

    assert result.exit_code == 1, result.output
    assert (
        "Refused: results/ns: holds 3 other experiments below it (run_a, ...), "
        "hidden from listings by its own experiment_meta.json; not deleted\n"
    ) in result.stderr
    assert "Selected 1 experiment for deletion." in result.stdout
    for hidden in ("ns/run_a", "ns/run_b", "ns/sub/run_c"):
        assert (archive / hidden / "weights.npy").read_bytes() == b"keep me"
    assert (archive / "ns" / "experiment_meta.json").exists()
    if yes:
        assert "Deleted 1 experiment (1 refused: holding other experiments).\n" in result.stdout
        assert experiments_on_disk(archive) == {"ns"} == index_paths(archive)
    else:
        assert "  results/ns\n" not in result.stdout and "  results/other/run\n" in result.stdout
        assert experiments_on_disk(archive) == {"ns", "other/run"} == index_paths(archive)


def test_folder_that_came_to_hold_other_experiments_after_the_preview_is_not_deleted(
    tmp_path: Path, index_backend: str
) -> None:
    from pycomex_index.delete import FAILED, delete_experiments, plan_delete
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import sync_archive

    archive = tmp_path / "results"
    write_meta(archive / "ns", make_metadata())
    with open_archive_index(str(archive)) as index:
        sync_archive(index)
        plan = plan_delete(index, None)
        write_meta(archive / "ns" / "late" / "run", make_metadata())
        (outcome,) = delete_experiments(index, plan.targets)
    assert outcome.status == FAILED and outcome.message.startswith("holds 1 other experiment below it (late/run)")
    assert (archive / "ns" / "late" / "run" / "experiment_meta.json").exists()


def test_next_delete_finishes_removing_what_a_killed_delete_left_out_of_the_archive(
    spec_archive: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged by pid on its own host; another host's tree (whose pid means nothing here) only once it is old."""
    from pycomex_index.delete import OTHER_HOST_TRASH_SECONDS, TRASH_FOLDER, trash_entry_name

    monkeypatch.setenv("PYCOMEX_INDEX_HOSTNAME", "node-a.lab")
    trash = spec_archive / TRASH_FOLDER
    trash.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        entries = {
            "killed here": trash_entry_name(dead.pid, "node-a.lab", "run"),
            "at work here": trash_entry_name(alive.pid, "node-a.lab", "run"),
            # node-b's delete may be at work, whatever this host's pids say; one untouched for long is not.
            "at work on node-b": trash_entry_name(dead.pid, "node-b.lab", "run"),
            "killed long ago on node-b": trash_entry_name(alive.pid, "node-b.lab", "run"),
        }
        for name in entries.values():
            (trash / name / "sub").mkdir(parents=True)
            (trash / name / "sub" / "data.bin").write_bytes(b"x" * 100)
        long_ago = time.time() - OTHER_HOST_TRASH_SECONDS - 60
        os.utime(trash / entries["killed long ago on node-b"], (long_ago, long_ago))
        before = experiments_on_disk(spec_archive)

        result = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'nope'", "--yes")

        assert result.exit_code == 0, result.output
        assert (
            "Finished removing 2 experiments an interrupted delete had already taken out of the archive."
            in result.stderr
        )
        assert sorted(os.listdir(trash)) == sorted([entries["at work here"], entries["at work on node-b"]])
        assert experiments_on_disk(spec_archive) == before == index_paths(spec_archive)
    finally:
        alive.kill()
        alive.wait()


def test_a_deleted_runs_tree_in_the_trash_names_its_host(spec_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pycomex_index.delete import TRASH_FOLDER, _move_to_trash

    monkeypatch.setenv("PYCOMEX_INDEX_HOSTNAME", "node-a.lab/x%")
    folder = spec_archive / "ns" / "moved"
    write_meta(folder, make_metadata())
    moved = Path(_move_to_trash(str(spec_archive), str(folder)) or "")
    assert moved.parent == spec_archive / TRASH_FOLDER
    pid, host, _token, basename = moved.name.split(".", 3)
    assert (int(pid), host, basename) == (os.getpid(), "node-a%2Elab%2Fx%25", "moved")


def test_deleted_run_never_shows_up_in_the_trash_as_an_experiment(spec_archive: Path, run_cli) -> None:
    result = run_cli("archive", "delete", "--path", str(spec_archive), "--select", "m['status'] == 'failed'", "--yes")
    assert result.exit_code == 0, result.output
    listed = run_cli("archive", "list", "--path", str(spec_archive))
    assert ".pycomex_index" not in listed.stdout
    assert_index_matches_disk(spec_archive)


def test_preview_and_report_show_a_folder_name_with_control_characters_on_one_line(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    write_meta(archive / "ns" / "run\nDeleted everything\x1b[2J", make_metadata(status="failed", has_error=True))
    write_meta(archive / "ns" / "kept", make_metadata())
    preview = run_cli("archive", "delete", "--path", str(archive), "--select", "m['status'] == 'failed'")
    assert "  results/ns/run\\nDeleted everything\\x1b[2J\n" in preview.stdout
    assert "\x1b" not in preview.output and "\nDeleted everything" not in preview.output
    deleted = run_cli("archive", "delete", "--path", str(archive), "--select", "m['status'] == 'failed'", "--yes", "-v")
    assert deleted.exit_code == 0, deleted.output
    assert "Deleted results/ns/run\\nDeleted everything\\x1b[2J\n" in deleted.stdout
    assert "\x1b" not in deleted.output
    assert experiments_on_disk(archive) == {"ns/kept"}
