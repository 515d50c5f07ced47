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


# ------------------------------------------------------------------ the index database: locked, full, foreign
# (helper-c: issue 9 items 2-3, issue 10 item 5)

import os  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402


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


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 1 MiB tmpfs (needs root), unmounted afterwards."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], capture_output=True)


def test_a_full_disk_under_the_index_is_a_one_line_error(archive: Path, tiny_filesystem: Path, run_cli) -> None:
    index_file = tiny_filesystem / "index.sqlite3"
    assert run_cli("archive", "list", "--path", str(archive), "--index", str(index_file)).exit_code == 0
    filler = tiny_filesystem / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the filesystem is full
        pass
    finally:
        os.close(descriptor)
    for number in range(40):  # something new to write into the index
        write_meta(archive / "more" / f"run_{number}", make_metadata(description="x" * 2000))
    result = run_cli("index", "sync", "--path", str(archive), "--index", str(index_file))
    _assert_one_line_error(result, 74, "no space left on the device; nothing was lost")
    filler.unlink()
    assert run_cli("index", "sync", "--path", str(archive), "--index", str(index_file)).exit_code == 0


FOREIGN_FILES = {
    "notes.txt": b"my notes, not an index\n" * 50,
    "paper.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(range(256)) * 20,
}


@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
def test_index_option_naming_a_users_file_refuses_and_leaves_it_untouched(archive: Path, tmp_path: Path, run_cli, name: str) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / name).write_bytes(FOREIGN_FILES[name])
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(folder / name))
    _assert_one_line_error(result, 2, "is not a pycomex-index index")
    assert os.listdir(folder) == [name]
    assert (folder / name).read_bytes() == FOREIGN_FILES[name]


def test_index_option_naming_another_applications_damaged_database_refuses(archive: Path, tmp_path: Path, run_cli) -> None:
    database = tmp_path / "accounts.sqlite3"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT)")
    connection.executemany("INSERT INTO ledger (note) VALUES (?)", [("entry %d " % n * 40,) for n in range(2000)])
    connection.commit()
    connection.close()
    data = bytearray(database.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 8192] = b"\xa5" * 8192  # header and page 1 intact, pages in the middle wrecked
    database.write_bytes(bytes(data))
    result = run_cli("archive", "list", "--path", str(archive), "--index", str(database))
    _assert_one_line_error(result, 2, "not made by pycomex-index")
    assert database.read_bytes() == bytes(data)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("accounts.sqlite3") and name != "accounts.sqlite3"]


@pytest.mark.parametrize("target", ["/dev/null", "folder"])
def test_index_option_naming_a_device_or_folder_is_refused_without_litter(archive: Path, tmp_path: Path, run_cli, target: str) -> None:
    if target == "folder":
        (tmp_path / "folder").mkdir()
        target = str(tmp_path / "folder")
    had_lock = os.path.lexists(target + ".lock")
    result = run_cli("archive", "list", "--path", str(archive), "--index", target)
    _assert_one_line_error(result, 2, "not a regular file" if target == "/dev/null" else "is a folder")
    assert os.path.lexists(target + ".lock") == had_lock
    assert not any(os.path.lexists(target + suffix) for suffix in ("-wal", "-shm", "-journal"))


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
    assert len([path for path in index_file.parent.glob("results.sqlite3.damaged-*") if not path.name.endswith(("-wal", "-shm"))]) == 1
