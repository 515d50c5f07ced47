"""Bad input gets a clear one-line error or warning and the right exit code, never a traceback."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_metadata, sqlite_index_at_revision, write_meta

READ_COMMANDS = [["list"], ["tail"], ["overview"], ["info"], ["scan"]]


def _assert_one_line_error(result, exit_code: int, contains: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert contains in error_lines[0]


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_missing_archive_is_a_clear_error(tmp_path: Path, run_cli, command: list[str]) -> None:
    result = run_cli("archive", *command, "--path", str(tmp_path / "nowhere"))
    _assert_one_line_error(result, 2, "archive not found")


def test_archive_path_that_is_a_file_is_a_clear_error(tmp_path: Path, run_cli) -> None:
    (tmp_path / "results").write_text("not a folder")
    result = run_cli("archive", "list", "--path", str(tmp_path / "results"))
    _assert_one_line_error(result, 2, "not a folder")


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_empty_archive_does_not_crash(tmp_path: Path, run_cli, command: list[str]) -> None:
    (tmp_path / "results").mkdir()
    result = run_cli("archive", *command, "--path", str(tmp_path / "results"))
    assert result.exit_code == 0, result.output
    as_json = run_cli("archive", *command, "--path", str(tmp_path / "results"), "--json")
    document = json.loads(as_json.stdout)
    assert document == [] or document["total"] == 0


def test_empty_overview_says_zero_everywhere(tmp_path: Path, run_cli) -> None:
    (tmp_path / "results").mkdir()
    result = run_cli("archive", "overview", "--path", str(tmp_path / "results"))
    assert "Total Experiments: 0" in result.stdout
    assert "Successful: 0 (0.0%)" in result.stdout


@pytest.fixture
def broken_archive(tmp_path: Path) -> Path:
    """One good experiment beside every kind of broken or odd metadata file."""
    root = tmp_path / "results"
    write_meta(root / "ns" / "good", make_metadata(parameters={"X": 2}))
    write_meta(root / "ns" / "corrupt", '{"status": "done", "duration": ')
    write_meta(root / "ns" / "not_an_object", "[1, 2, 3]")
    write_meta(root / "ns" / "not_utf8", b'{"status": "done", "name": "caf\xe9"}')
    write_meta(root / "ns" / "empty_file", "")
    write_meta(
        root / "ns" / "nulls",
        {"status": None, "has_error": None, "duration": None, "start_time": None, "end_time": None, "parameters": None},
    )
    write_meta(root / "ns" / "null_duration", make_metadata(duration=None, parameters={"X": 1}))
    write_meta(root / "ns" / "string_start", make_metadata(start_time="yesterday", parameters={}))
    write_meta(root / "ns" / "no_keys", {})
    write_meta(root / "ns" / "folder with spaces ü", make_metadata(parameters={"X": 3}))
    return root


UNREADABLE = {"corrupt", "not_an_object", "not_utf8", "empty_file"}


def test_list_shows_unreadable_metadata_as_metadata_errors_last(broken_archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(broken_archive))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 10
    errors = lines[-len(UNREADABLE) :]
    assert {line.split(" ")[1].split("/")[-1] for line in errors} == UNREADABLE
    assert all(line.startswith("❌ ") and line.endswith(" (metadata error)") for line in errors)
    assert "✅ results/ns/folder with spaces ü (2m 15s)" in lines


def test_json_marks_unreadable_metadata_with_status_error_and_a_reason(broken_archive: Path, run_cli) -> None:
    experiments = json.loads(run_cli("archive", "list", "--path", str(broken_archive), "--json").stdout)
    by_name = {item["rel_path"].split("/")[-1]: item for item in experiments}
    for name in UNREADABLE:
        assert by_name[name]["status"] == "error"
        assert by_name[name]["metadata_error"]
    assert "not UTF-8" in by_name["not_utf8"]["metadata_error"]
    assert "not a JSON object" in by_name["not_an_object"]["metadata_error"]
    assert by_name["null_duration"]["duration"] is None
    assert by_name["string_start"]["start_time"] is None
    assert by_name["nulls"]["status"] == "failed"


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_every_read_command_survives_broken_files(broken_archive: Path, run_cli, command: list[str]) -> None:
    result = run_cli("archive", *command, "--path", str(broken_archive))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_overview_counts_unreadable_metadata_as_failed(broken_archive: Path, run_cli) -> None:
    figures = json.loads(run_cli("archive", "overview", "--path", str(broken_archive), "--json").stdout)
    assert figures["total"] == 10
    assert figures["unreadable"] == len(UNREADABLE)
    assert figures["successful"] == 4  # good, null_duration, string_start, folder with spaces
    assert figures["failed"] == 6  # the unreadable ones, nulls, no_keys
    kinds = {item["error_type"]: item["count"] for item in figures["error_types"]}
    assert kinds["(metadata error)"] == len(UNREADABLE)


def test_select_on_a_parameter_only_some_have_skips_the_others_with_one_warning(broken_archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(broken_archive), "--select", "p['X'] > 1", "--json")
    assert result.exit_code == 0, result.output
    assert {item["rel_path"] for item in json.loads(result.stdout)} == {"ns/good", "ns/folder with spaces ü"}
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1
    # nulls (parameters null), string_start (no parameters), no_keys: KeyError; unreadable ones are never evaluated
    assert "raised on 3 experiments" in warnings[0] and "KeyError: 'X' ×3" in warnings[0]


def test_unreadable_metadata_is_selected_by_nothing(broken_archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(broken_archive), "--select", "True", "--json")
    assert not {item["rel_path"].split("/")[-1] for item in json.loads(result.stdout)} & UNREADABLE


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("p['X' > 1", "Syntax error"),
        ("q['x'] == 1", "unknown name 'q'"),
        ("", "empty"),
        ("m['status'] = 'done'", "Syntax error"),
    ],
)
@pytest.mark.parametrize("command", READ_COMMANDS)
def test_a_bad_select_is_a_usage_error_before_anything_runs(
    tmp_path: Path, run_cli, command: list[str], select: str, message: str
) -> None:
    # The archive does not even exist: the expression is checked first.
    result = run_cli("archive", *command, "--path", str(tmp_path / "nowhere"), "--select", select)
    _assert_one_line_error(result, 2, message)


def test_a_bad_group_expression_is_a_usage_error(archive: Path, run_cli) -> None:
    _assert_one_line_error(run_cli("archive", "scan", "--path", str(archive), "--group", "p[["), 2, "--group")


@pytest.mark.parametrize("command", READ_COMMANDS)
@pytest.mark.parametrize("code", ["exit(3)", "quit()", "__import__('sys').exit('bye')"])
def test_an_expression_that_exits_is_a_failed_evaluation_not_the_commands_exit(
    archive: Path, run_cli, command: list[str], code: str
) -> None:
    result = run_cli("archive", *command, "--path", str(archive), "--select", code)
    assert result.exit_code == 0, result.output
    assert "--select raised on 8 experiments" in result.stderr and "exit(" in result.stderr


def test_a_group_expression_that_exits_is_a_failed_evaluation(archive: Path, run_cli) -> None:
    result = run_cli("archive", "scan", "--path", str(archive), "--group", "exit(3)")
    assert result.exit_code == 0, result.output
    assert "--group raised on" in result.stderr


@pytest.mark.parametrize("number", [str(2**63), "99999999999999999999999"])
def test_a_count_beyond_what_sql_takes_is_a_usage_error(archive: Path, run_cli, number: str) -> None:
    result = run_cli("archive", "tail", "-n", number, "--path", str(archive))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "-n" in result.stderr


def test_tail_of_zero_shows_nothing_and_does_not_call_the_archive_empty(archive: Path, run_cli) -> None:
    result = run_cli("archive", "tail", "-n", "0", "--path", str(archive))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_no_match_says_so_and_exits_zero(archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--select", "m['status'] == 'nope'")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No experiments match" in result.stderr


@pytest.mark.sqlite_only("a damaged SQLite file is set aside; a PostgreSQL server keeps its own files")
def test_an_index_file_that_is_garbage_is_set_aside_and_rebuilt(archive: Path, run_cli) -> None:
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    index_file.parent.mkdir()
    index_file.write_bytes(b"this is not sqlite" * 100)
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 8
    assert "Warning:" in result.stderr and "unusable" in result.stderr
    set_aside = list(index_file.parent.glob("index.sqlite3.damaged-*"))
    assert len(set_aside) == 1 and set_aside[0].read_bytes().startswith(b"this is not sqlite")


@pytest.mark.sqlite_only("a damaged SQLite file is set aside; a PostgreSQL server keeps its own files")
def test_an_index_with_a_valid_header_but_damaged_pages_is_rebuilt(archive: Path, run_cli) -> None:
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    run_cli(
        "index", "status", "--path", str(archive)
    )  # checkpoint happens on close; make the damage land in the main file
    data = bytearray(index_file.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the 100-byte header, wreck the schema page
    index_file.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(index_file) + suffix).unlink(missing_ok=True)
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 8
    assert "unusable" in result.stderr


# ------------------------------------------------------------------ the index database: locked, full, foreign


@pytest.mark.sqlite_only("holds SQLite's file write lock")
def test_a_locked_index_is_a_one_line_busy_error(archive: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    holder = sqlite3.connect(archive / ".pycomex_index" / "index.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv("PYCOMEX_INDEX_BUSY_TIMEOUT", "0.2")
    try:
        result = run_cli("index", "sync", "--path", str(archive))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _assert_one_line_error(result, 75, "the index is busy (another pycomex-index process is writing); try again")


# A full disk under the index: tests/test_full_disk.py::test_index_on_a_full_disk_is_a_clear_error_and_loses_nothing.


FOREIGN_FILES = {
    "notes.txt": b"my notes, not an index\n" * 50,
    "paper.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(range(256)) * 20,
}


@pytest.mark.sqlite_only("--index names a file: SQLite")
@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
def test_index_option_naming_a_users_file_refuses_and_leaves_it_untouched(
    archive: Path, tmp_path: Path, run_cli, name: str
) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / name).write_bytes(FOREIGN_FILES[name])
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(folder / name))
    _assert_one_line_error(result, 2, "is not a pycomex-index index")
    assert os.listdir(folder) == [name]
    assert (folder / name).read_bytes() == FOREIGN_FILES[name]


@pytest.mark.sqlite_only("--index names a SQLite file")
def test_index_option_naming_another_applications_damaged_database_refuses(
    archive: Path, tmp_path: Path, run_cli
) -> None:
    database = tmp_path / "accounts.sqlite3"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT)")
    connection.executemany("INSERT INTO ledger (note) VALUES (?)", [(f"entry {n} " * 40,) for n in range(2000)])
    connection.commit()
    connection.close()
    data = bytearray(database.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 8192] = b"\xa5" * 8192  # header and page 1 intact, pages in the middle wrecked
    database.write_bytes(bytes(data))
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(database))
    _assert_one_line_error(result, 2, "not made by pycomex-index")
    assert database.read_bytes() == bytes(data)
    assert not [
        name for name in os.listdir(tmp_path) if name.startswith("accounts.sqlite3") and name != "accounts.sqlite3"
    ]


@pytest.mark.sqlite_only("--index names a file: SQLite")
@pytest.mark.parametrize("target", ["/dev/null", "folder"])
def test_index_option_naming_a_device_or_folder_is_refused_without_litter(
    archive: Path, tmp_path: Path, run_cli, target: str
) -> None:
    if target == "folder":
        (tmp_path / "folder").mkdir()
        target = str(tmp_path / "folder")
    had_lock = os.path.lexists(target + ".lock")
    result = run_cli("archive", "list", "--path", str(archive), "--index", target)
    _assert_one_line_error(result, 2, "not a regular file" if target == "/dev/null" else "is a folder")
    assert os.path.lexists(target + ".lock") == had_lock
    assert not any(os.path.lexists(target + suffix) for suffix in ("-wal", "-shm", "-journal"))


@pytest.mark.sqlite_only("a damaged SQLite file is set aside")
def test_a_users_file_that_is_a_damaged_pycomex_index_is_set_aside(archive: Path, tmp_path: Path, run_cli) -> None:
    """Named with --index, outside our folders: our mark in its header makes it ours to rebuild."""
    index_file = tmp_path / "indexes" / "results.sqlite3"
    assert run_cli("archive", "list", "--path", str(archive), "--index", str(index_file)).exit_code == 0
    data = bytearray(index_file.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page wrecked: only the header's mark says whose it is
    index_file.write_bytes(bytes(data))
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(index_file))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 8 and "unusable" in result.stderr
    assert (
        len(
            [
                path
                for path in index_file.parent.glob("results.sqlite3.damaged-*")
                if not path.name.endswith(("-wal", "-shm"))
            ]
        )
        == 1
    )


# --- Hostile metadata values and folder names (issue 9): one run never stops the archive. ---


def _hostile_archive(tmp_path: Path, hostile: dict[str, dict | str | bytes]) -> Path:
    """Two ordinary runs beside the given hostile ones (folder name -> metadata, or raw file content)."""
    root = tmp_path / "results"
    write_meta(root / "ns" / "ordinary_a", make_metadata(parameters={"X": 1}))
    write_meta(root / "ns" / "ordinary_b", make_metadata(parameters={"X": 2}, start_time=1700000500.0))
    for name, metadata in hostile.items():
        write_meta(root / "ns" / name, metadata)
    return root


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _meta_text(**overrides) -> str:
    """A pycomex metadata file as text, with raw JSON text spliced in for ``overrides`` (e.g. deep nesting)."""
    text = json.dumps(make_metadata(parameters={"X": 3}))
    body = ", ".join(f'"{key}": {value}' for key, value in overrides.items())
    return text[:-1] + ", " + body + "}"


DEEP = 5000


@pytest.mark.parametrize(
    "content",
    [
        _meta_text(description=_nested(DEEP)),
        _meta_text(parameters='{"A": {"value": ' + _nested(DEEP) + "}}"),
        _meta_text(deep_key=_nested(DEEP)),
        _meta_text(deep_key='{"a": ' * DEEP + "1" + "}" * DEEP),
        _meta_text(deep_key="[NaN, " + _nested(DEEP) + "]"),  # read by the json module, not orjson
        _meta_text(deep_key=_nested(250)),  # orjson reads this deep, Python's recursion would not be safe
    ],
    ids=["description", "parameter", "top-level-key", "objects", "python-dialect", "250-levels"],
)
def test_deeply_nested_metadata_is_a_metadata_error_and_the_rest_is_listed(
    tmp_path: Path, run_cli, content: str
) -> None:
    root = _hostile_archive(tmp_path, {"deep": content})
    for command in READ_COMMANDS + [
        ["list", "--json"],
        ["list", "--select", "p['X'] > 0"],
        ["list", "--select", "'deep' in m['description']"],
    ]:
        result = run_cli("archive", *command, "--path", str(root))
        assert result.exit_code == 0, (command, result.output)
        assert "Traceback" not in result.output and not result.stderr.startswith("Error:")
    lines = run_cli("archive", "list", "--path", str(root)).stdout.splitlines()
    assert lines[-1] == "❌ results/ns/deep (metadata error)"
    assert len(lines) == 3
    experiments = {
        item["rel_path"]: item for item in json.loads(run_cli("archive", "list", "--path", str(root), "--json").stdout)
    }
    assert experiments["ns/deep"]["metadata_error"] == "experiment_meta.json is nested more than 200 levels deep"
    assert experiments["ns/ordinary_b"]["parameters"] == {"X": 2}


def test_nesting_within_the_limit_is_indexed_exactly(tmp_path: Path, run_cli) -> None:
    nested: list = []
    for _ in range(150):
        nested = [nested]
    root = _hostile_archive(tmp_path, {"nested": make_metadata(parameters={"A": nested}, description=nested)})
    result = run_cli("archive", "list", "--path", str(root), "--json", "--select", f"p['A'] == {nested!r}")
    assert result.exit_code == 0, result.output
    (experiment,) = json.loads(result.stdout)
    assert experiment["parameters"]["A"] == nested
    for command in READ_COMMANDS + [["scan", "--group", "p.get('A')"], ["tail", "--json"]]:
        assert run_cli("archive", *command, "--path", str(root)).exit_code == 0, command


@pytest.mark.parametrize(
    ("name", "stored", "shown"),
    [
        (b"run-\xff", "run-\\xff", "run-\\xff"),
        (b"caf\xe9 \xc3\xbc", "caf\\xe9 \u00fc", "caf\\xe9 \u00fc"),
        (b"back\\slash-\xfe", "back\\\\slash-\\xfe", "back\\\\slash-\\xfe"),
        (b"new\nline", "new\nline", "new\\nline"),
        (b"tab\tand\x1bescape", "tab\tand\x1bescape", "tab\\tand\\x1bescape"),
    ],
    ids=["not-utf8", "latin1-and-utf8", "backslash-and-not-utf8", "newline", "control-characters"],
)
def test_odd_folder_names_are_listed_escaped_and_written_through_to_the_real_folder(
    tmp_path: Path, run_cli, name: bytes, stored: str, shown: str
) -> None:
    """Stored (and in --json) with non-UTF-8 bytes as \\xNN and a backslash doubled; in text, control characters escaped too."""
    root = _hostile_archive(tmp_path, {})
    folder = os.path.join(os.fsencode(root / "ns"), name)
    os.mkdir(folder)
    with open(os.path.join(folder, b"experiment_meta.json"), "w") as file:
        json.dump(make_metadata(parameters={"X": 9}, start_time=1700000900.0), file)
    for command in READ_COMMANDS:
        result = run_cli("archive", *command, "--path", str(root))
        assert result.exit_code == 0, (command, result.output)
    lines = run_cli("archive", "list", "--path", str(root)).stdout.splitlines()
    assert len(lines) == 3
    assert lines[-1] == f"✅ results/ns/{shown} (2m 15s)"
    (odd,) = json.loads(run_cli("archive", "list", "--path", str(root), "--json", "--select", "p['X'] == 9").stdout)
    assert odd["rel_path"] == f"ns/{stored}"
    assert odd["path"].endswith(odd["rel_path"])
    # m['path'] is the real path, as pycomex gives it.
    real_path = os.fsdecode(folder)
    assert (
        run_cli("archive", "list", "--path", str(root), "--select", f"m['path'] == {real_path!r}").stdout.count("\n")
        == 1
    )

    modified = run_cli(
        "archive", "modify", "--path", str(root), "--select", "p['X'] == 9", "--modify-parameters", "p['X'] = 10"
    )
    assert modified.exit_code == 0, modified.output
    with open(os.path.join(folder, b"experiment_meta.json")) as file:
        assert json.load(file)["parameters"]["X"]["value"] == 10
    zip_path = tmp_path / "odd.zip"
    compressed = run_cli(
        "archive", "compress", "--path", str(root), "--select", "p['X'] == 10", "--name", str(zip_path)
    )
    assert compressed.exit_code == 0, compressed.output
    with zipfile.ZipFile(zip_path) as archive_zip:
        assert [member for member in archive_zip.namelist() if member.endswith("experiment_meta.json")]
    deleted = run_cli("archive", "delete", "--path", str(root), "--select", "p['X'] == 10", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert not os.path.exists(folder)
    assert sorted(os.listdir(root / "ns")) == ["ordinary_a", "ordinary_b"]


def test_a_literal_backslash_name_and_its_lookalike_stay_two_experiments(tmp_path: Path, run_cli) -> None:
    """``\\xff`` typed as four characters and the byte 0xff are different folders; the index keeps them apart."""
    root = _hostile_archive(tmp_path, {"run-\\xff": make_metadata(parameters={"X": 7})})
    folder = os.path.join(os.fsencode(root / "ns"), b"run-\xff")
    os.mkdir(folder)
    with open(os.path.join(folder, b"experiment_meta.json"), "w") as file:
        json.dump(make_metadata(parameters={"X": 8}), file)
    lines = run_cli("archive", "list", "--path", str(root)).stdout.splitlines()
    assert "✅ results/ns/run-\\\\xff (2m 15s)" in lines and "✅ results/ns/run-\\xff (2m 15s)" in lines
    assert run_cli("archive", "delete", "--path", str(root), "--select", "p['X'] == 8", "--yes").exit_code == 0
    assert not os.path.exists(folder) and (root / "ns" / "run-\\xff").exists()


@pytest.mark.parametrize(
    ("value", "as_json", "select"),
    [
        (float("inf"), "Infinity", "p['V'] > 100"),
        (float("-inf"), "-Infinity", "p['V'] < -100"),
        (float("nan"), "NaN", "p['V'] != p['V']"),
        (
            [1.0, float("nan"), {"deeper": float("inf")}],
            [1.0, "NaN", {"deeper": "Infinity"}],
            "p['V'][2]['deeper'] > 1e308",
        ),
    ],
    ids=["inf", "-inf", "nan", "nested"],
)
def test_non_finite_parameter_values_reach_select_as_floats_and_json_as_strings(
    tmp_path: Path, run_cli, value, as_json, select: str
) -> None:
    # json.dumps writes NaN / Infinity / -Infinity, as pycomex does.
    root = _hostile_archive(tmp_path, {"odd": make_metadata(parameters={"V": value, "X": 5})})
    selected = run_cli("archive", "list", "--path", str(root), "--select", select, "--json")
    assert selected.exit_code == 0, selected.output
    (experiment,) = json.loads(selected.stdout, parse_constant=pytest.fail)  # strict JSON: no NaN tokens
    assert experiment["rel_path"] == "ns/odd" and experiment["parameters"] == {"V": as_json, "X": 5}
    everything = json.loads(
        run_cli("archive", "list", "--path", str(root), "--json").stdout, parse_constant=pytest.fail
    )
    assert len(everything) == 3
    # The rest of the document still goes through SQL, and the odd run through Python, with one answer.
    assert run_cli("archive", "list", "--path", str(root), "--select", "p['X'] > 2").stdout.splitlines() == [
        "✅ results/ns/odd (2m 15s)"
    ]
    grouped = json.loads(
        run_cli("archive", "scan", "--path", str(root), "--group", "p.get('V', 'none')", "--json").stdout
    )
    assert {group["group"]: group["count"] for group in grouped} == {"none": 2, str(value): 1}
    tail = run_cli("archive", "tail", "--path", str(root), "--json")
    assert tail.exit_code == 0 and json.loads(tail.stdout, parse_constant=pytest.fail)[-1]["rel_path"] in {
        "ns/odd",
        "ns/ordinary_a",
    }


@pytest.mark.parametrize(
    "value",
    [2**64 + 1, -(2**64) - 1, 2**63, -(2**63), 2**63 - 1, 10**400, [2**70, {"x": 10**30}]],
    ids=["2**64+1", "-2**64-1", "2**63", "-2**63", "2**63-1", "10**400", "nested"],
)
def test_integers_at_and_beyond_the_64_bit_edges_stay_exact(tmp_path: Path, run_cli, value) -> None:
    root = _hostile_archive(tmp_path, {"big": make_metadata(parameters={"SEED": value}, big_key=value)})
    for select in [
        f"p['SEED'] == {value!r}",
        f"m['big_key'] == {value!r}",
        f"m['parameters']['SEED']['value'] == {value!r}",
    ]:
        result = run_cli("archive", "list", "--path", str(root), "--select", select, "--json")
        assert result.exit_code == 0, result.output
        (experiment,) = json.loads(result.stdout)
        assert experiment["parameters"] == {"SEED": value}
    assert len(json.loads(run_cli("archive", "list", "--path", str(root), "--json").stdout)) == 3
    grouped = json.loads(run_cli("archive", "scan", "--path", str(root), "--group", "p.get('SEED')", "--json").stdout)
    assert {group["group"] for group in grouped} == {"None", str(value)}
    # modify rewrites the file with the integer as it was
    modified = run_cli(
        "archive", "modify", "--path", str(root), "--select", "'SEED' in p", "--modify-metadata", "m['seen'] = 1"
    )
    assert modified.exit_code == 0, modified.output
    assert (
        json.loads((root / "ns" / "big" / "experiment_meta.json").read_text())["parameters"]["SEED"]["value"] == value
    )


ABSURD_TIMES = [
    {"start_time": 1e300},
    {"start_time": -1e300},
    {"start_time": float("nan"), "end_time": float("inf")},
    {"start_time": 10**400},
    {"duration": 1e300},
    {"duration": float("inf")},
    {"duration": -(10**400), "end_time": -1.0},
]


@pytest.mark.parametrize("times", ABSURD_TIMES, ids=lambda times: ",".join(f"{k}={v!r:.12}" for k, v in times.items()))
def test_one_absurd_time_does_not_spoil_the_figures_of_the_others(tmp_path: Path, run_cli, times: dict) -> None:
    root = _hostile_archive(tmp_path, {"absurd": make_metadata(parameters={"X": 3}, **times)})
    figures = json.loads(run_cli("archive", "overview", "--path", str(root), "--json").stdout)
    # Exactly the figures of the two ordinary runs (the absurd run counts, but adds no time).
    assert figures["total"] == 3 and figures["successful"] == 3
    assert figures["first_start_time"] == 1700000000.0
    assert figures["last_start_time"] == 1700000500.0
    assert figures["maximum_duration"] == 135.0 and figures["average_duration"] == 135.0
    for command in READ_COMMANDS + [
        ["tail", "-n", "3"],
        ["list", "--json"],
        ["list", "--select", "m['duration'] > 100"],
    ]:
        result = run_cli("archive", *command, "--path", str(root))
        assert result.exit_code == 0, (command, result.output)
    text = run_cli("archive", "overview", "--path", str(root)).stdout
    assert "First Experiment: unknown" not in text and "Average Duration: 2m 15s" in text


# --- Property: no hostile archive stops a read command. ---

ODD_STRINGS = [
    "",
    "\x00",
    "a\nb",
    "\r\n",
    "\x1b[31mred",
    "\u2028",
    "\ud800",
    "x\udfffy",
    "é" * 3,
    "x" * 20000,
    "NaN",
    "done",
]
ODD_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64 + 1, -(2**70), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, float("nan"), float("inf")]),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=8),
)
ODD_VALUES = st.recursive(
    ODD_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(ODD_STRINGS + ["a"]), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _nested_deep(draw) -> object:
    value: object = draw(ODD_SCALARS)
    for _ in range(draw(st.sampled_from([1, 50, 199, 201, 1500]))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


HOSTILE_VALUES = st.one_of(ODD_VALUES, _nested_deep())
HOSTILE_METADATA = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "status": st.one_of(st.sampled_from(["done", "running", "failed"]), HOSTILE_VALUES),
            "has_error": HOSTILE_VALUES,
            "error_type": st.one_of(st.sampled_from(["ValueError", "\ud800", "a\nb"]), HOSTILE_VALUES),
            "start_time": st.one_of(st.floats(1.6e9, 1.8e9), HOSTILE_VALUES),
            "end_time": HOSTILE_VALUES,
            "duration": st.one_of(st.floats(0, 1e5), HOSTILE_VALUES),
            "name": HOSTILE_VALUES,
            "namespace": HOSTILE_VALUES,
            "description": HOSTILE_VALUES,
            "parameters": st.one_of(
                st.dictionaries(
                    st.sampled_from(["X", "MODEL", "\ud800", "a\nb", ""]),
                    st.one_of(st.fixed_dictionaries({"value": HOSTILE_VALUES}), HOSTILE_VALUES),
                    max_size=3,
                ),
                HOSTILE_VALUES,
            ),
            "\ud800odd key": HOSTILE_VALUES,
            "": HOSTILE_VALUES,
        },
    ),
    HOSTILE_VALUES,  # not even an object
)
ODD_FOLDER_NAMES = st.sampled_from(
    [b"run", b"run-\xff", b"a\nb", b"back\\slash", b"\xc3\xbc\xe9", b"tab\t", b"x" * 200, b"\\xff"]
)
HOSTILE_SELECTS = [
    "p['X'] > 0",
    "m['status'] == 'done' and p['MODEL'] == 'resnet'",
    "m['start_time'] > '2024-01-01'",
    "str(m) != ''",
]
_hostile_counter = itertools.count()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(runs=st.lists(st.tuples(ODD_FOLDER_NAMES, HOSTILE_METADATA), min_size=1, max_size=4))
def test_no_hostile_archive_stops_a_read_command(tmp_path: Path, run_cli, runs) -> None:
    root = tmp_path / f"hostile{next(_hostile_counter)}" / "results"
    namespace = os.path.join(os.fsencode(root), b"ns")
    os.makedirs(namespace)
    for number, (name, metadata) in enumerate(runs):
        folder = os.path.join(namespace, b"%d-" % number + name)
        os.mkdir(folder)
        with open(os.path.join(folder, b"experiment_meta.json"), "w") as file:
            try:
                file.write(json.dumps(metadata, indent=4, sort_keys=True))  # pycomex's format, NaN and all
            except (RecursionError, TypeError):
                file.write(json.dumps(metadata))  # keys of mixed kinds cannot be sorted
    commands = [
        ["list"],
        ["list", "--json"],
        ["tail", "-n", "10"],
        ["overview"],
        ["info"],
        ["scan"],
        ["scan", "--group", "p.get('X')"],
    ]
    commands += [["list", "--select", select] for select in HOSTILE_SELECTS]
    for command in commands:
        result = run_cli("archive", *command, "--path", str(root))
        assert result.exit_code == 0, (command, result.output)
        assert "Traceback" not in result.output and not result.stderr.startswith("Error:"), (command, result.output)
        assert "\nError:" not in result.stderr, (command, result.output)
    listed = run_cli("archive", "list", "--path", str(root)).stdout.splitlines()
    assert len(listed) == len(runs)
    assert sorted(int(line.split("/ns/")[1].split("-")[0]) for line in listed) == list(range(len(runs)))
    experiments = json.loads(
        run_cli("archive", "list", "--path", str(root), "--json").stdout, parse_constant=pytest.fail
    )
    assert len(experiments) == len(runs)
    figures = json.loads(
        run_cli("archive", "overview", "--path", str(root), "--json").stdout, parse_constant=pytest.fail
    )
    assert figures["total"] == len(runs)


@pytest.mark.sqlite_only("a SQLite file built at revision 0008 is upgraded")
def test_the_upgrade_that_types_parameters_takes_the_smallest_64_bit_integer(tmp_path: Path) -> None:
    # Migration 0009 fills experiment_parameters from the stored documents; ABS(-2**63) overflowed in SQLite.
    from pycomex_index.store import run_migrations

    root = _hostile_archive(tmp_path, {"edge": make_metadata(parameters={"SEED": -(2**63)})})
    old = sqlite_index_at_revision(tmp_path / "old.sqlite3", "0008", root)
    old.execute(
        "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, asset_count, disk_usage, "
        "meta_mtime_ns, meta_size, folder_mtime_ns) VALUES (1, 1, 'ns/edge', 'ns', 'done', 0, 0, 1, 1, 1)"
    )
    old.execute(
        "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json) VALUES (1, '{}', :parameters)",
        {"parameters": json.dumps({"SEED": -(2**63), "LR": 0.5})},
    )
    run_migrations(old, "head")
    typed = dict(
        old.execute("SELECT n.name, p.number FROM experiment_parameters p JOIN parameter_names n ON n.id = p.name_id")
    )
    old.close()
    assert typed == {"SEED": None, "LR": 0.5}  # no exact float for -2**63: Python decides, as for any huge integer


@pytest.mark.sqlite_only("--index names a SQLite file built at revision 0005")
def test_an_index_from_revision_0005_reads_again_what_it_stored_lossily(tmp_path: Path, run_cli) -> None:
    """Revision 0005 wrote Infinity as null and kept absurd times; the upgrade makes the next sync re-read such runs."""
    from pycomex_index.db import SqliteFileDatabase
    from pycomex_index.walk import iter_folder_listings, listing_digest

    root = _hostile_archive(tmp_path, {"odd": make_metadata(parameters={"V": float("inf")}, duration=1e300)})
    old = sqlite_index_at_revision(tmp_path / "old.sqlite3", "0005", root)
    for number, name in enumerate(sorted(os.listdir(root / "ns")), start=1):
        meta = os.stat(root / "ns" / name / "experiment_meta.json")
        old.execute(
            "INSERT INTO experiments (id, archive_id, rel_path, namespace, outcome, start_time, duration, asset_count, "
            "disk_usage, meta_mtime_ns, meta_size, folder_mtime_ns) "
            "VALUES (:id, 1, :rel_path, 'ns', 'done', 1700000000.0, :duration, 1, 10, :mtime, :size, 1)",
            {
                "id": number,
                "rel_path": f"ns/{name}",
                "mtime": meta.st_mtime_ns,
                "size": meta.st_size,
                "duration": 1e300 if name == "odd" else 135.0,
            },
        )
        parameters = '{"V":null}' if name == "odd" else json.dumps({"X": number})
        old.execute(
            "INSERT INTO experiment_fields (experiment_id, summary_json, parameters_json) VALUES (:id, '{}', :parameters)",
            {"id": number, "parameters": parameters},
        )
    # A digest equal to the disk's, as 0005 left it: without the upgrade a sync would trust the stored rows.
    old.execute(
        "INSERT INTO folder_digests (archive_id, folder, digest) VALUES (1, 'ns', :digest)",
        {
            "digest": next(
                listing_digest(listing.experiments)
                for listing in iter_folder_listings(str(root))
                if listing.experiments
            )
        },
    )
    old.close()

    index = ["--path", str(root), "--index", str(tmp_path / "old.sqlite3")]
    selected = run_cli("archive", "list", *index, "--select", "p['V'] > 100", "--json")
    assert selected.exit_code == 0, selected.output
    assert [item["rel_path"] for item in json.loads(selected.stdout)] == ["ns/odd"]
    figures = json.loads(run_cli("archive", "overview", *index, "--json").stdout)
    assert figures["maximum_duration"] == 135.0
    unchanged = SqliteFileDatabase(str(tmp_path / "old.sqlite3"))
    # The ordinary runs were not read again: their rows are still the ones written above.
    ordinary = unchanged.fetch_one(
        "SELECT f.parameters_json FROM experiment_fields f JOIN experiments e ON e.id = f.experiment_id "
        "WHERE e.rel_path = 'ns/ordinary_a'"
    )
    assert ordinary[0] == '{"X": 2}'
    unchanged.close()
