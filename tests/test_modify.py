"""archive modify and undo: p mapped back (added, removed, renamed), pycomex's format, atomic writes, the journal."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pycomex_index.modify import ModificationFailed, ModifyCode, apply_modification, transform_metadata
from pycomex_index.selection import compile_expression
from tests.conftest import index_query, make_metadata, read_meta, write_meta
from tests.helpers_write import (
    assert_index_matches_disk,
    experiments,
    freeze_index,
    index_documents,
    spec_args,
)

FAIL = "fail"
A, B, TYPO, RUNNING = "model/2024-01-15_10-30-45", "model/2024-01-15_11-20-10", "typo/run", "running/run"


def _experiment(parameters: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    metadata = make_metadata(parameters=parameters, **overrides)
    for name, entry in metadata["parameters"].items():
        entry["description"] = f"What {name} means."
    return metadata


@pytest.fixture
def modify_archive(tmp_path: Path) -> Path:
    """Four experiments covering every name the spec's modify examples use."""
    archive = tmp_path / "results"
    runs = {
        A: _experiment(
            {"LEARNING_RATE": 0.001, "BATCH_SIZE": 32, "EPOCHS": 50.0, "MODEL": "old_model", "ACCURACY": 0.95},
            name="test",
        ),
        B: _experiment(
            {"LEARNING_RATE": 0.0123456789, "BATCH_SIZE": 64, "EPOCHS": 10, "MODEL": "resnet", "ACCURACY": 0.5},
            version="1.0",
        ),
        TYPO: _experiment(
            {"LERNING_RATE": 0.01, "BATCH_SIZE": 16, "EPOCHS": 5, "MODEL": "resnet", "old_param": "x"},
            has_error=True,
            error_type="ValueError",
            duration=12.0,
        ),
        RUNNING: _experiment(
            {"LEARNING_RATE": 0.1, "BATCH_SIZE": 8, "EPOCHS": 1, "MODEL": "mlp"},
            status="running",
            duration=0,
            end_time=None,
        ),
    }
    for rel_path, metadata in runs.items():
        write_meta(archive / rel_path, metadata)
    return archive


def _values(metadata: dict[str, Any]) -> dict[str, Any]:
    return {name: entry["value"] for name, entry in metadata["parameters"].items()}


def _set_parameter(metadata: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    metadata["parameters"][name]["value"] = value
    return metadata


def _rename(old: str, new: str, when_missing: Any = None) -> Callable:
    def expect(rel_path: str, metadata: dict[str, Any]):
        if old not in metadata["parameters"]:
            return when_missing
        entry = metadata["parameters"].pop(old)
        entry["name"] = new
        metadata["parameters"][new] = entry
        return metadata

    return expect


def _scale_learning_rate(rel_path, metadata):
    if "LEARNING_RATE" not in metadata["parameters"]:
        return FAIL
    return _set_parameter(metadata, "LEARNING_RATE", _values(metadata)["LEARNING_RATE"] * 10)


def _set_keys(condition: Callable, **keys: Any) -> Callable:
    def expect(rel_path, metadata):
        if not condition(metadata):
            return None
        if all(metadata.get(key) == value for key, value in keys.items()):
            return None
        metadata.update(keys)
        return metadata

    return expect


def _round_learning_rate(digits: int, condition: Callable = lambda m: True, **keys: Any) -> Callable:
    def expect(rel_path, metadata):
        if not condition(metadata):
            return None
        if "LEARNING_RATE" not in metadata["parameters"]:
            return FAIL
        value = _values(metadata)["LEARNING_RATE"]
        metadata.update(keys)
        return _set_parameter(metadata, "LEARNING_RATE", round(value, digits))

    return expect


def _double_batch_and_more_epochs(rel_path, metadata):
    values = _values(metadata)
    _set_parameter(metadata, "BATCH_SIZE", values["BATCH_SIZE"] * 2)
    return _set_parameter(metadata, "EPOCHS", values["EPOCHS"] + 10)


def _epochs_as_int(rel_path, metadata):
    epochs = _values(metadata)["EPOCHS"]
    return None if isinstance(epochs, int) else _set_parameter(metadata, "EPOCHS", int(epochs))


ALWAYS = lambda m: True  # noqa: E731
NOTHING = lambda rel_path, metadata: None  # noqa: E731

#: (command as printed in the spec / issue 3, what it must do to each experiment's file: new dict, None, or FAIL)
SPEC_MODIFY = [
    (
        """pycomex archive modify \\
  --select="'LERNING_RATE' in p" \\
  --modify-parameters="p['LEARNING_RATE'] = p.pop('LERNING_RATE')\"""",
        _rename("LERNING_RATE", "LEARNING_RATE"),
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['LEARNING_RATE'] *= 10\"""",
        _scale_learning_rate,
    ),
    (
        """pycomex archive modify \\
  --select="p['MODEL'] == 'old_model'" \\
  --modify-parameters="p['MODEL'] = 'new_model'\"""",
        lambda rel, m: _set_parameter(m, "MODEL", "new_model") if _values(m)["MODEL"] == "old_model" else None,
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['BATCH_SIZE'] *= 2; p['EPOCHS'] += 10\"""",
        _double_batch_and_more_epochs,
    ),
    (
        """pycomex archive modify --all \\
  --modify-metadata="m['processed'] = True\"""",
        _set_keys(ALWAYS, processed=True),
    ),
    (
        """pycomex archive modify \\
  --select="m.get('has_error') and m['duration'] > 0" \\
  --modify-metadata="m['status'] = 'failed'\"""",
        _set_keys(lambda m: m.get("has_error") and m["duration"] > 0, status="failed"),
    ),
    (
        """pycomex archive modify --all \\
  --modify-metadata="m['version'] = '2.0'\"""",
        _set_keys(ALWAYS, version="2.0"),
    ),
    (
        """pycomex archive modify \\
  --select="m['name'] == 'test'" \\
  --modify-metadata="m['archived'] = True; m['archive_date'] = '2024-01-15'\"""",
        _set_keys(lambda m: m["name"] == "test", archived=True, archive_date="2024-01-15"),
    ),
    (
        """pycomex archive modify \\
  --select="m['status'] == 'done'" \\
  --modify-parameters="p['LEARNING_RATE'] = round(p['LEARNING_RATE'], 4)" \\
  --modify-metadata="m['reviewed'] = True\"""",
        _round_learning_rate(4, lambda m: m["status"] == "done", reviewed=True),
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['LEARNING_RATE'] *= 10" \\
  --dry-run""",
        _scale_learning_rate,
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['learning_rate'] = p.pop('LEARNING_RATE')" \\
  --dry-run""",
        _rename("LEARNING_RATE", "learning_rate", when_missing=FAIL),
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['LEARNING_RATE'] = round(p['LEARNING_RATE'], 6)\"""",
        _round_learning_rate(6),
    ),
    (
        """pycomex archive modify \\
  --select="'version' not in m" \\
  --modify-metadata="m['version'] = '1.0'\"""",
        _set_keys(lambda m: "version" not in m, version="1.0"),
    ),
    (
        """pycomex archive modify \\
  --select="m['status'] == 'done' and p['MODEL'] == 'resnet'" \\
  --modify-metadata="m['analyzed'] = True; m['best_accuracy'] = 0.95\"""",
        _set_keys(
            lambda m: m["status"] == "done" and _values(m)["MODEL"] == "resnet", analyzed=True, best_accuracy=0.95
        ),
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="p['EPOCHS'] = int(p['EPOCHS'])" \\
  --verbose""",
        _epochs_as_int,
    ),
    ("""pycomex archive modify --all --modify-parameters="..." --dry-run""", NOTHING),
    ("""pycomex archive modify --all --modify-parameters="...\"""", NOTHING),
    ("""pycomex archive modify --all --modify-metadata="...\"""", NOTHING),
    (
        """pycomex archive modify \\
  --select="m['name'] == 'test'" \\
  --modify-parameters="...\"""",
        NOTHING,
    ),
    (
        """pycomex archive modify \\
  --select="m['status'] == 'done' and p['ACCURACY'] > 0.9" \\
  --modify-metadata="m['for_analysis'] = True; m['high_accuracy'] = True\"""",
        _set_keys(
            lambda m: m["status"] == "done" and _values(m).get("ACCURACY", 0) > 0.9,
            for_analysis=True,
            high_accuracy=True,
        ),
    ),
    (
        """pycomex archive modify --all \\
  --modify-parameters="
if 'old_param' in p:
    p['new_param'] = p.pop('old_param')
" \\
  --dry-run""",
        _rename("old_param", "new_param"),
    ),
    (
        """pycomex archive modify --all \\
  --modify-metadata="m['schema_version'] = '2.0'\"""",
        _set_keys(ALWAYS, schema_version="2.0"),
    ),
    (
        """pycomex-index archive modify --all --modify-parameters "p['LEARNING_RATE'] *= 10" --dry-run""",
        _scale_learning_rate,
    ),
    (
        """pycomex-index archive modify --select "'LERNING_RATE' in p" --modify-parameters "p['LEARNING_RATE'] = p.pop('LERNING_RATE')\"""",
        _rename("LERNING_RATE", "LEARNING_RATE"),
    ),
    (
        """pycomex-index archive modify --all --modify-metadata "m['reviewed'] = True; m['version'] = '2.0'\"""",
        _set_keys(ALWAYS, reviewed=True, version="2.0"),
    ),
]


def _files(archive: Path) -> dict[str, bytes]:
    return {rel: (archive / rel / "experiment_meta.json").read_bytes() for rel in (A, B, TYPO, RUNNING)}


@pytest.mark.parametrize(("command", "expect"), SPEC_MODIFY, ids=[command for command, _ in SPEC_MODIFY])
def test_spec_modify_examples_change_exactly_what_they_say(modify_archive: Path, run_cli, command: str, expect) -> None:
    args = spec_args(command, modify_archive)
    dry_run = "--dry-run" in args
    before = _files(modify_archive)
    wanted = {rel: expect(rel, json.loads(content)) for rel, content in before.items()}
    # A running run is held back (pycomex would overwrite the change when the run ends), and said so last.
    must_hold_back = wanted[RUNNING] is not None
    wanted[RUNNING] = None
    changed = {
        rel
        for rel, outcome in wanted.items()
        if isinstance(outcome, dict) and json.dumps(outcome, indent=4, sort_keys=True).encode() != before[rel]
    }
    failed = {rel for rel, outcome in wanted.items() if outcome == FAIL}

    result = run_cli(*args)

    assert result.exit_code == (1 if failed else 0), result.output
    after = _files(modify_archive)
    for rel_path in before:
        if rel_path in changed and not dry_run:
            assert json.loads(after[rel_path]) == wanted[rel_path], rel_path
            assert after[rel_path] == json.dumps(wanted[rel_path], indent=4, sort_keys=True).encode()
        else:
            assert after[rel_path] == before[rel_path], rel_path
    for rel_path in failed:
        assert f"Failed: results/{rel_path}: " in result.stderr
    held_back = "Held back 1 running experiment; add --include-running to modify it too.\n"
    assert (held_back in result.stdout) >= must_hold_back
    stdout = result.stdout.removesuffix(held_back)
    lines = stdout.splitlines()
    # --verbose also lists selected experiments the code left as they were, each with "  No changes" (pycomex's words).
    shown = {
        line[len("Experiment: results/") :]
        for line, following in zip(lines, lines[1:] + [""], strict=True)
        if line.startswith("Experiment: ") and following != "  No changes"
    }
    if dry_run:
        assert stdout.startswith("DRY RUN - No changes will be saved\n")
        assert stdout.endswith(f"\nWould modify {experiments(len(changed))}.\n")
        assert shown == changed
    else:
        assert f"Successfully modified {experiments(len(changed))}" in stdout
        assert shown == (changed if "--verbose" in args else set())
    assert_index_matches_disk(modify_archive)  # the command updated the index itself


def test_dry_run_prints_the_spec_output_exactly(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    write_meta(
        archive / "model/2024-01-15_10-30-45",
        make_metadata(start_time=1705311045.0, parameters={"LEARNING_RATE": 0.001}),
    )
    write_meta(
        archive / "model/2024-01-15_11-20-10",
        make_metadata(start_time=1705314010.0, parameters={"LEARNING_RATE": 0.01}),
    )
    before = _files_in(archive)
    result = run_cli(
        *spec_args(
            """pycomex archive modify --all \\
  --modify-parameters="p['LEARNING_RATE'] *= 10" \\
  --dry-run""",
            archive,
        )
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "DRY RUN - No changes will be saved\n"
        "\n"
        "Experiment: results/model/2024-01-15_10-30-45\n"
        "  LEARNING_RATE: 0.001 → 0.01\n"
        "\n"
        "Experiment: results/model/2024-01-15_11-20-10\n"
        "  LEARNING_RATE: 0.01 → 0.1\n"
        "\n"
        "Would modify 2 experiments.\n"
    )
    assert _files_in(archive) == before
    assert index_query(archive, "SELECT COUNT(*) FROM modify_runs") == [(0,)]


def _files_in(archive: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(archive)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in archive.rglob("*")
        if path.is_file() and ".pycomex_index" not in path.parts
    }


def test_dry_run_shows_added_removed_renamed_and_metadata_changes(modify_archive: Path, run_cli) -> None:
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--select",
        "m['name'] == 'test'",
        "--dry-run",
        "--modify-parameters",
        "p['NEW'] = [1, 2]; del p['ACCURACY']; p['LR'] = p.pop('LEARNING_RATE'); p['MODEL'] = 'x'",
        "--modify-metadata",
        "m['status'] = 'failed'; m['tag'] = 'a'",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2:] == [
        f"Experiment: results/{A}",
        "  ACCURACY: 0.95 → (removed)",
        "  LEARNING_RATE → LR (renamed)",
        "  MODEL: 'old_model' → 'x'",
        "  NEW: (new) → [1, 2]",
        "  m['status']: 'done' → 'failed'",
        "  m['tag']: (absent) → 'a'",
        "",
        "Would modify 1 experiment.",
    ]


def test_added_removed_and_renamed_parameters_are_saved(modify_archive: Path, run_cli) -> None:
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--select",
        "m['name'] == 'test'",
        "--modify-parameters",
        "p['NEW'] = {'a': [1, 2]}; del p['ACCURACY']; p['LR'] = p.pop('LEARNING_RATE')",
    )
    assert result.exit_code == 0, result.output
    parameters = read_meta(modify_archive / A)["parameters"]
    assert "ACCURACY" not in parameters and "LEARNING_RATE" not in parameters
    assert parameters["NEW"] == {
        "name": "NEW",
        "value": {"a": [1, 2]},
        "type": "dict",
        "description": "",
        "usable": True,
    }
    assert parameters["LR"] == {
        "name": "LR",
        "value": 0.001,
        "type": "float",
        "description": "What LEARNING_RATE means.",
        "usable": True,
    }
    assert index_documents(modify_archive)[A]["p"] == {name: entry["value"] for name, entry in parameters.items()}


def test_in_place_changes_of_values_are_saved(modify_archive: Path, run_cli) -> None:
    write_meta(modify_archive / "lists" / "run", _experiment({"HIDDEN_UNITS": [128, 64], "SEED": 1}))
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--select",
        "'HIDDEN_UNITS' in p",
        "--modify-parameters",
        "p['HIDDEN_UNITS'].append(32)",
        "-v",
    )
    assert result.exit_code == 0, result.output
    assert "  HIDDEN_UNITS: [128, 64] → [128, 64, 32]" in result.stdout
    assert read_meta(modify_archive / "lists" / "run")["parameters"]["HIDDEN_UNITS"]["value"] == [128, 64, 32]


def test_values_json_cannot_hold_fail_that_experiment_only(modify_archive: Path, run_cli) -> None:
    before = _files(modify_archive)
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--all",
        "--include-running",
        "--modify-parameters",
        "p['TAGS'] = {'a', 'b'} if p['BATCH_SIZE'] == 32 else ['a']",
    )
    assert result.exit_code == 1
    assert f"Failed: results/{A}: p['TAGS'] = " in result.stderr
    assert "is not JSON-encodable (set); left untouched" in result.stderr
    assert "Successfully modified 3 experiments." in result.stdout
    assert _files(modify_archive)[A] == before[A]
    assert read_meta(modify_archive / B)["parameters"]["TAGS"]["value"] == ["a"]


def test_code_that_raises_is_reported_and_the_others_go_on(modify_archive: Path, run_cli) -> None:
    before = _files(modify_archive)
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--all",
        "--modify-metadata",
        "m['ratio'] = 1 / (p['BATCH_SIZE'] - 16)",
    )
    assert result.exit_code == 1
    assert (
        f"Failed: results/{TYPO}: --modify-metadata raised ZeroDivisionError: division by zero; left untouched\n"
        in result.stderr
    )
    assert "Failed to modify 1 experiment; their files are untouched." in result.stderr
    assert _files(modify_archive)[TYPO] == before[TYPO]
    assert read_meta(modify_archive / B)["ratio"] == 1 / 48
    assert_index_matches_disk(modify_archive)


def test_code_is_checked_before_anything_is_read(modify_archive: Path, run_cli) -> None:
    before = _files_in(modify_archive)
    for option, code, message in (
        ("--modify-parameters", "p['A'] = ", "Error: Syntax error in --modify-parameters"),
        ("--modify-metadata", "m['x'] = q['y']", "Error: --modify-metadata uses unknown name 'q'"),
    ):
        result = run_cli("archive", "modify", "--path", str(modify_archive), "--all", option, code)
        assert result.exit_code == 2
        assert result.stderr.startswith(message), result.stderr
    assert _files_in(modify_archive) == before
    assert not (modify_archive / ".pycomex_index").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all"], "Error: give at least one of --modify-parameters CODE and --modify-metadata CODE"),
        (["--modify-metadata", "m['x'] = 1"], "Error: choose the experiments to modify: give --select EXPR, or --all"),
        (
            ["--all", "--select", "True", "--modify-metadata", "m['x'] = 1"],
            "Error: give either --select or --all, not both",
        ),
    ],
)
def test_modify_needs_code_and_a_choice_of_experiments(modify_archive: Path, run_cli, args, message) -> None:
    before = _files(modify_archive)
    result = run_cli("archive", "modify", "--path", str(modify_archive), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert _files(modify_archive) == before


def test_select_matching_nothing_changes_nothing(modify_archive: Path, run_cli) -> None:
    before = _files_in(modify_archive)
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--select",
        "m['status'] == 'nope'",
        "--modify-metadata",
        "m['x'] = 1",
    )
    assert result.exit_code == 0
    assert result.stderr == "No experiments match the selection; nothing was changed.\n"
    assert _files_in(modify_archive) == before


def test_read_only_experiment_file_fails_and_stays_untouched(modify_archive: Path, run_cli) -> None:
    path = modify_archive / A / "experiment_meta.json"
    os.chmod(path, 0o444)
    before = path.read_bytes()
    result = run_cli("archive", "modify", "--path", str(modify_archive), "--all", "--modify-metadata", "m['x'] = 1")
    assert result.exit_code == 1
    assert f"Failed: results/{A}: experiment_meta.json is read-only; left untouched" in result.stderr
    assert path.read_bytes() == before and path.stat().st_mode & 0o777 == 0o444
    assert read_meta(modify_archive / B)["x"] == 1


def test_files_are_replaced_whole_never_rewritten_in_place(modify_archive: Path, run_cli) -> None:
    path = modify_archive / B / "experiment_meta.json"
    inode = path.stat().st_ino
    assert (
        run_cli(
            "archive", "modify", "--path", str(modify_archive), "--all", "--modify-metadata", "m['x'] = 1"
        ).exit_code
        == 0
    )
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(os.listdir(modify_archive / B)) == ["experiment_meta.json"]


def test_file_permissions_are_kept(modify_archive: Path, run_cli) -> None:
    path = modify_archive / B / "experiment_meta.json"
    os.chmod(path, 0o640)
    assert (
        run_cli(
            "archive", "modify", "--path", str(modify_archive), "--all", "--modify-metadata", "m['x'] = 1"
        ).exit_code
        == 0
    )
    assert path.stat().st_mode & 0o777 == 0o640
    assert read_meta(modify_archive / B)["x"] == 1
    assert not [name for name in os.listdir(modify_archive / B) if name != "experiment_meta.json"]


def test_unreadable_experiments_are_failed_and_untouched_with_all(modify_archive: Path, run_cli) -> None:
    write_meta(modify_archive / "broken" / "run", "{ not json")
    result = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--all",
        "--include-running",
        "--modify-metadata",
        "m['x'] = 1",
    )
    assert result.exit_code == 1
    assert "Failed: results/broken/run: metadata unreadable (experiment_meta.json is invalid JSON" in result.stderr
    assert (modify_archive / "broken" / "run" / "experiment_meta.json").read_text() == "{ not json"
    assert "Successfully modified 4 experiments." in result.stdout


def _modified(
    metadata: dict[str, Any], parameters_code: str | None = None, metadata_code: str | None = None, path: str = "/a/run"
):
    code = ModifyCode(
        compile_expression(parameters_code, mode="exec", what="p") if parameters_code else None,
        compile_expression(metadata_code, mode="exec", what="m") if metadata_code else None,
    )
    content, changes = apply_modification(
        json.dumps(metadata, indent=4, sort_keys=True).encode(), code, path=path, namespace="ns"
    )
    return (json.loads(content) if content is not None else None), changes


def test_derived_path_and_name_are_written_only_when_the_code_changes_them() -> None:
    metadata = make_metadata()
    del metadata["name"]
    written, _ = _modified(metadata, metadata_code="m['seen'] = (m['path'], m['name'])")
    assert written["seen"] == ["/a/run", "ns"]
    assert "path" not in written and "name" not in written
    renamed, _ = _modified(metadata, metadata_code="m['name'] = 'given'; m['path'] = m['path']")
    assert renamed["name"] == "given" and "path" not in renamed


def test_times_are_written_as_the_numbers_they_were() -> None:
    metadata = make_metadata(start_time=1700000000, end_time=1700000135.5)
    written, changes = _modified(
        metadata, metadata_code="m['copy'] = m['start_time']; m['later'] = m['end_time'] > '2020-01-01'"
    )
    assert written["start_time"] == 1700000000 and isinstance(written["start_time"], int)
    assert written["copy"] == 1700000000.0 and type(written["copy"]) is float
    assert written["later"] is True
    assert [change.name for change in changes] == ["copy", "later"]


def test_unchanged_files_are_not_rewritten_even_when_values_are_rebound() -> None:
    metadata = make_metadata(parameters={"LEARNING_RATE": 0.001, "FLAG": None})
    assert _modified(metadata, "p['LEARNING_RATE'] = round(p['LEARNING_RATE'], 4); p['FLAG'] = None") == (None, [])


def test_a_new_parameter_holding_a_shared_value_is_not_mistaken_for_a_rename() -> None:
    metadata = make_metadata(parameters={"OLD": True, "KEEP": 1})
    written, _ = _modified(metadata, "del p['OLD']; p['NEW'] = True")
    assert "OLD" not in written["parameters"]
    assert written["parameters"]["NEW"]["description"] == "" and written["parameters"]["NEW"]["name"] == "NEW"
    moved, _ = _modified(metadata, "p['NEW'] = p.pop('OLD')")
    assert moved["parameters"]["NEW"]["type"] == "bool" and "OLD" not in moved["parameters"]


def test_nan_values_are_written_as_pycomex_writes_them() -> None:
    written, _ = _modified(make_metadata(), metadata_code="m['score'] = float('nan')")
    assert math.isnan(written["score"])


# ------------------------------------------------------------------------------------------------ undo


def test_undo_restores_the_exact_previous_bytes_and_the_index(modify_archive: Path, run_cli) -> None:
    (modify_archive / A / "experiment_meta.json").write_text(
        json.dumps(read_meta(modify_archive / A))
    )  # not pycomex's format
    before = _files(modify_archive)
    modified = run_cli(
        "archive",
        "modify",
        "--path",
        str(modify_archive),
        "--all",
        "--include-running",
        "--modify-metadata",
        "m['x'] = 1",
        "--modify-parameters",
        "p['EPOCHS'] = p['EPOCHS'] + 1",
    )
    assert modified.exit_code == 0, modified.output
    assert "Undo with: pycomex-index archive undo --id 1" in modified.stdout
    assert _files(modify_archive) != before

    result = run_cli("archive", "undo", "--path", str(modify_archive), "--yes", "-v")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Modify 1 of ")
    assert "  --modify-parameters: p['EPOCHS'] = p['EPOCHS'] + 1\n  --modify-metadata: m['x'] = 1\n" in result.stdout
    assert f"Restored results/{A}\n" in result.stdout
    assert result.stdout.endswith("Restored 4 files.\n")
    assert _files(modify_archive) == before
    assert_index_matches_disk(modify_archive)
    assert index_query(modify_archive, "SELECT undone_at IS NOT NULL FROM modify_runs") == [(1,)]
    again = run_cli("archive", "undo", "--path", str(modify_archive), "--yes")
    assert again.exit_code == 0 and again.stderr == "Nothing to undo: no modify has changed files in this archive.\n"
    by_id = run_cli("archive", "undo", "--path", str(modify_archive), "--id", "1", "--yes")
    assert by_id.exit_code == 1 and by_id.stderr == "Error: modify 1 was already undone\n"


def test_undo_walks_back_one_modify_at_a_time_and_by_id(modify_archive: Path, run_cli) -> None:
    original = _files(modify_archive)
    for code in ("m['step'] = 1", "m['step'] = 2"):
        modify = ("archive", "modify", "--path", str(modify_archive), "--all", "--include-running")
        assert run_cli(*modify, "--modify-metadata", code).exit_code == 0
    refused = run_cli("archive", "undo", "--path", str(modify_archive), "--id", "1", "--yes")
    assert refused.exit_code == 1
    assert f"Not restored: results/{A}: changed since the modify; not overwritten" in refused.stderr
    assert all(read_meta(modify_archive / rel)["step"] == 2 for rel in original)

    assert run_cli("archive", "undo", "--path", str(modify_archive), "--yes").exit_code == 0
    assert all(read_meta(modify_archive / rel)["step"] == 1 for rel in original)
    assert run_cli("archive", "undo", "--path", str(modify_archive), "--yes").exit_code == 0
    assert _files(modify_archive) == original
    missing = run_cli("archive", "undo", "--path", str(modify_archive), "--id", "7", "--yes")
    assert missing.exit_code == 1 and missing.stderr == "Error: there is no modify with id 7 in this archive\n"


@pytest.mark.parametrize("run_id", ["99999999999999999999999", "9223372036854775808", "0", "-1"])
def test_undo_id_out_of_range_is_a_one_line_usage_error(modify_archive: Path, run_cli, run_id: str) -> None:
    before = _files(modify_archive)
    result = run_cli("archive", "undo", "--path", str(modify_archive), "--id", run_id, "--yes")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: Invalid value for '--id'") and run_id in error
    assert _files(modify_archive) == before


def test_undo_refuses_files_changed_since_and_restores_the_rest(modify_archive: Path, run_cli) -> None:
    before = _files(modify_archive)
    assert (
        run_cli(
            "archive",
            "modify",
            "--path",
            str(modify_archive),
            "--all",
            "--include-running",
            "--modify-metadata",
            "m['x'] = 1",
        ).exit_code
        == 0
    )
    hand_edited = read_meta(modify_archive / B) | {"edited": "by hand"}
    write_meta(modify_archive / B, hand_edited)

    preview = run_cli("archive", "undo", "--path", str(modify_archive))
    assert preview.exit_code == 1
    assert f"Will not be restored (1):\n  results/{B}: changed since the modify; not overwritten\n" in preview.stdout
    assert "Error: stdin is not a terminal, so nobody can confirm: nothing was restored." in preview.stderr
    assert read_meta(modify_archive / A)["x"] == 1

    result = run_cli("archive", "undo", "--path", str(modify_archive), "--yes")
    assert result.exit_code == 1
    assert "Restored 3 files." in result.stdout
    assert read_meta(modify_archive / B) == hand_edited
    assert {rel: content for rel, content in _files(modify_archive).items() if rel != B} == {
        rel: content for rel, content in before.items() if rel != B
    }
    assert index_query(modify_archive, "SELECT undone_at FROM modify_runs") == [(None,)]


def test_modify_and_undo_show_in_list_and_overview_without_a_sync(modify_archive: Path, run_cli) -> None:
    run_cli("archive", "list", "--path", str(modify_archive))
    freeze_index(modify_archive)  # from here on no command looks at the disk
    write_meta(modify_archive / "sentinel" / "run", make_metadata())  # seen only by a sync

    assert (
        run_cli(
            "archive",
            "modify",
            "--path",
            str(modify_archive),
            "--select",
            "m['status'] == 'running'",
            "--include-running",  # a run that only looks dead (no plugin record) is no longer held back
            "--modify-metadata",
            "m['status'] = 'done'; m['duration'] = 3723",
        ).exit_code
        == 0
    )
    listed = run_cli("archive", "list", "--path", str(modify_archive), "--select", "m['status'] == 'done'").stdout
    assert f"✅ results/{RUNNING} (1h 2m 3s)\n" in listed
    assert "Running: 0 (0.0%)" in run_cli("archive", "overview", "--path", str(modify_archive)).stdout

    assert run_cli("archive", "undo", "--path", str(modify_archive), "--yes").exit_code == 0
    assert f"⏳ results/{RUNNING} (running)\n" in run_cli("archive", "list", "--path", str(modify_archive)).stdout
    assert "Running: 1 (25.0%)" in run_cli("archive", "overview", "--path", str(modify_archive)).stdout
    assert "sentinel" not in run_cli("archive", "list", "--path", str(modify_archive)).stdout  # nothing synced
    shutil.rmtree(modify_archive / "sentinel")
    assert_index_matches_disk(modify_archive)


def test_a_modified_prefix_moves_the_run_to_its_new_scan_group_without_a_sync(modify_archive: Path, run_cli) -> None:
    def groups() -> dict[str, int]:
        scanned = run_cli("archive", "scan", "--path", str(modify_archive), "--json")
        return {group["group"]: group["count"] for group in json.loads(scanned.stdout)}

    assert groups() == {"unknown": 4}  # no run has a __PREFIX__
    freeze_index(modify_archive)  # from here on no command looks at the disk: the write itself updates the index
    changed = run_cli(
        "archive", "modify", "--path", str(modify_archive), "--select", "p.get('MODEL') == 'resnet'",
        "--modify-parameters", "p['__PREFIX__'] = 'ablation'",
    )  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert groups() == {"ablation": 2, "unknown": 2}
    prefixed = "SELECT COUNT(*) FROM experiments WHERE prefix = 'ablation'"
    assert index_query(modify_archive, prefixed) == [(2,)]  # grouped off the prefix index, not the documents
    assert run_cli("archive", "undo", "--path", str(modify_archive), "--yes").exit_code == 0
    assert groups() == {"unknown": 4}
    assert index_query(modify_archive, prefixed) == [(0,)]


def test_metadata_code_sees_the_parameters_the_parameter_code_set() -> None:
    written, _ = _modified(
        make_metadata(parameters={"LEARNING_RATE": 0.001}),
        "p['LEARNING_RATE'] *= 10; p['LR'] = p.pop('LEARNING_RATE')",
        "m['lr_seen'] = m['parameters']['LR']['value']; p['LR'] = 0.5",
    )
    assert written["lr_seen"] == 0.01
    assert written["parameters"]["LR"]["value"] == 0.5 and "LEARNING_RATE" not in written["parameters"]


def test_code_that_makes_m_hold_itself_fails_cleanly() -> None:
    with pytest.raises(ModificationFailed, match="m holds itself"):
        _modified(make_metadata(), metadata_code="m['self'] = m")


def test_transform_metadata_returns_new_metadata_changes_and_renames_and_leaves_the_original_alone() -> None:
    original = make_metadata(parameters={"LERNING_RATE": 0.01, "EPOCHS": 5})
    untouched = json.dumps(original, sort_keys=True)
    code = ModifyCode(
        compile_expression("p['LEARNING_RATE'] = p.pop('LERNING_RATE'); p['EPOCHS'] = 6", mode="exec", what="p"), None
    )
    transformation = transform_metadata(original, code, path="/a/run", namespace="ns")
    assert json.dumps(original, sort_keys=True) == untouched
    assert transformation.renames == {"LEARNING_RATE": "LERNING_RATE"}
    assert transformation.metadata["parameters"]["LEARNING_RATE"]["value"] == 0.01
    assert "LERNING_RATE" not in transformation.metadata["parameters"] and "path" not in transformation.metadata
    assert [(change.name, change.before, change.after, change.renamed_from) for change in transformation.changes] == [
        ("LEARNING_RATE", 0.01, 0.01, "LERNING_RATE"),
        ("EPOCHS", 5, 6, None),
    ]


def test_dry_run_and_undo_show_names_with_control_characters_on_one_line(tmp_path: Path, run_cli) -> None:
    archive = tmp_path / "results"
    write_meta(archive / "ns" / "run\nExperiment: forged\x1b[2J", make_metadata(parameters={"LR": 0.1}))
    change = "p['LR\\nforged\\x1b'] = p.pop('LR')"
    dry_run = run_cli("archive", "modify", "--path", str(archive), "--all", "--dry-run", "--modify-parameters", change)
    assert dry_run.exit_code == 0, dry_run.output
    assert dry_run.stdout.splitlines()[2:4] == [
        "Experiment: results/ns/run\\nExperiment: forged\\x1b[2J",
        "  LR → LR\\nforged\\x1b (renamed)",
    ]
    assert "\x1b" not in dry_run.output
    modified = run_cli("archive", "modify", "--path", str(archive), "--all", "--modify-parameters", change)
    assert modified.exit_code == 0, modified.output
    undo = run_cli("archive", "undo", "--path", str(archive), "--yes", "-v")
    assert undo.exit_code == 0, undo.output
    assert "  results/ns/run\\nExperiment: forged\\x1b[2J\n" in undo.stdout
    assert "Restored results/ns/run\\nExperiment: forged\\x1b[2J\n" in undo.stdout
    assert "\x1b" not in undo.output
