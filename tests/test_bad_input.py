"""Bad input gets a clear one-line error or warning and the right exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_metadata, write_meta

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
    errors = lines[-len(UNREADABLE):]
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
        ("p['X' > 1", "syntax error"),
        ("q['x'] == 1", "unknown name 'q'"),
        ("", "empty"),
        ("m['status'] = 'done'", "syntax error"),
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


def test_an_index_with_a_valid_header_but_damaged_pages_is_rebuilt(archive: Path, run_cli) -> None:
    assert run_cli("archive", "list", "--path", str(archive)).exit_code == 0
    index_file = archive / ".pycomex_index" / "index.sqlite3"
    run_cli("index", "status", "--path", str(archive))  # checkpoint happens on close; make the damage land in the main file
    data = bytearray(index_file.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the 100-byte header, wreck the schema page
    index_file.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(index_file) + suffix).unlink(missing_ok=True)
    result = run_cli("archive", "list", "--path", str(archive))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 8
    assert "unusable" in result.stderr
