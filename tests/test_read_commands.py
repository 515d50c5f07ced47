"""list, tail, overview, info and scan on real pycomex output: text formats and the --json contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_ARCHIVE, make_metadata, read_meta, write_meta

RUNS = {
    "done": "neural_net/26_11_2026__14_03_22__p10123__h5wO",
    "value_error": "neural_net/26_11_2026__14_03_26__p10255__6cfT",
    "zero_division": "neural_net/26_11_2026__14_03_40__p10772__nsXy",
    "killed": "neural_net/26_11_2026__14_03_50__p11237__wKXG",
    "sweep": "sweep/lr/26_11_2026__14_03_44__p10953__eCD6",
    "prefixed": "sweep/lr/ablation__26_11_2026__14_04_00__p11677__yV5I",
    "key_error": "debug_runs/26_11_2026__14_04_04__p11897__jETv",
    "debug": "debug_runs/debug",
}


def _expected_order() -> list[str]:
    """The fixture runs ordered by the start_time in their own files (not by folder name)."""
    return sorted(RUNS.values(), key=lambda rel: read_meta(FIXTURE_ARCHIVE / rel)["start_time"])


def test_list_prints_one_line_per_experiment_sorted_by_start_time(archive: Path, run_cli) -> None:
    result = run_cli("archive", "--path", str(archive), "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ")[1] for line in lines] == [f"results/{rel}" for rel in _expected_order()]
    by_path = {line.split(" ")[1]: line for line in lines}
    assert by_path[f"results/{RUNS['done']}"] == f"✅ results/{RUNS['done']} (0.08s)"
    # Its status says running, but the process that made it is long gone (tests/test_liveness.py).
    assert by_path[f"results/{RUNS['killed']}"] == f"💀 results/{RUNS['killed']} (interrupted)"
    assert by_path[f"results/{RUNS['value_error']}"].startswith("❌ ")


def test_path_is_accepted_after_the_subcommand_too(archive: Path, run_cli) -> None:
    before = run_cli("archive", "--path", str(archive), "list")
    after = run_cli("archive", "list", "--path", str(archive))
    assert after.exit_code == 0, after.output
    assert after.stdout == before.stdout


def test_default_path_is_results_in_the_current_folder(archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", cwd=archive.parent)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(RUNS)


def test_long_paths_are_not_wrapped_when_stdout_is_not_a_terminal(tmp_path: Path, run_cli) -> None:
    long_name = "x" * 150
    write_meta(tmp_path / "results" / "ns" / long_name, make_metadata())
    result = run_cli("archive", "list", "--path", str(tmp_path / "results"))
    assert result.stdout == f"✅ results/ns/{long_name} (2m 15s)\n"


def test_list_json_is_one_array_with_the_documented_fields(archive: Path, run_cli) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--json")
    assert result.exit_code == 0, result.output
    experiments = json.loads(result.stdout)
    assert [item["rel_path"] for item in experiments] == _expected_order()
    by_rel = {item["rel_path"]: item for item in experiments}
    done = by_rel[RUNS["done"]]
    meta = read_meta(archive / RUNS["done"])
    assert done["path"] == str(archive / RUNS["done"])
    assert done["namespace"] == "neural_net"
    assert done["status"] == "done"
    assert done["has_error"] is False
    assert done["error_type"] is None
    assert (done["start_time"], done["end_time"], done["duration"]) == (
        meta["start_time"],
        meta["end_time"],
        meta["duration"],
    )
    assert done["parameters"] == {name: info["value"] for name, info in meta["parameters"].items()}
    assert by_rel[RUNS["value_error"]]["status"] == "failed"
    assert by_rel[RUNS["value_error"]]["error_type"] == "ValueError"
    assert by_rel[RUNS["killed"]]["status"] == "running"  # as on disk; the state is derived
    assert by_rel[RUNS["killed"]]["state"] == "interrupted"
    assert {by_rel[RUNS[name]]["state"] for name in RUNS if name != "killed"} == {"finished"}
    assert by_rel[RUNS["killed"]]["end_time"] is None


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        ("m['status'] == 'done'", {"done", "sweep", "debug"}),
        ("m['has_error'] == True", {"value_error", "zero_division", "prefixed", "key_error"}),
        ("m['status'] == 'running'", {"killed"}),
        ("m['state'] == 'interrupted'", {"killed"}),
        ("m['state'] == 'finished' and m['status'] == 'done'", {"done", "sweep", "debug"}),
        ("m['name'].startswith('debug')", {"key_error", "debug"}),
        ("'debug' in m['path']", {"key_error", "debug"}),
        ("m['error_type'] in ('ValueError', 'KeyError')", {"value_error", "key_error"}),
        ("p.get('__PREFIX__') == 'ablation'", {"prefixed"}),
        ("len(m['description']) > 0 and m['namespace'] == 'sweep/lr'", {"sweep", "prefixed"}),
        ("any(name.startswith('LEARN') for name in p)", set(RUNS)),
    ],
)
def test_select_keeps_exactly_the_matching_experiments(archive: Path, run_cli, select: str, expected: set[str]) -> None:
    result = run_cli("archive", "list", "--path", str(archive), "--select", select, "--json")
    assert result.exit_code == 0, result.output
    assert {item["rel_path"] for item in json.loads(result.stdout)} == {RUNS[key] for key in expected}


def test_select_matches_pure_python_evaluation_of_every_file(archive: Path, run_cli) -> None:
    """The index must never change a result: compare with evaluating the expression on each file directly."""
    select = "m['status'] == 'done' or p['LEARNING_RATE'] < 0.01"
    expected = set()
    for rel in RUNS.values():
        m = read_meta(archive / rel)
        p = {name: info["value"] for name, info in m["parameters"].items() if "value" in info}
        if eval(select, {"m": m, "p": p}):
            expected.add(rel)
    result = run_cli("archive", "list", "--path", str(archive), "--select", select, "--json")
    assert {item["rel_path"] for item in json.loads(result.stdout)} == expected
    assert expected, "the expression should select something on the fixtures"


def test_tail_shows_the_newest_first_in_spec_blocks(archive: Path, run_cli) -> None:
    result = run_cli("archive", "tail", "-n", "2", "--path", str(archive))
    assert result.exit_code == 0, result.output
    blocks = result.stdout.strip("\n").split("\n\n" + "─" * 40 + "\n\n")
    newest = list(reversed(_expected_order()))
    assert len(blocks) == 2
    for block, rel in zip(blocks, newest[: len(blocks)], strict=True):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        meta = read_meta(archive / rel)
        assert fields["Path"] == f"results/{rel}"
        assert fields["Experiment"] == meta["name"]
        assert set(fields) >= {"Experiment", "Status", "Started", "Ended", "Duration", "Description"}
        assert fields["Description"] == meta["short_description"]


def test_tail_truncates_long_descriptions(tmp_path: Path, run_cli) -> None:
    write_meta(tmp_path / "results" / "ns" / "run", make_metadata(short_description="word " * 100))
    result = run_cli("archive", "tail", "--path", str(tmp_path / "results"))
    description = next(line for line in result.stdout.splitlines() if line.startswith("Description: "))
    assert description.endswith("...")
    assert len(description) <= len("Description: ") + 100


def test_tail_select_and_num(archive: Path, run_cli) -> None:
    result = run_cli(
        "archive", "tail", "-n", "10", "--path", str(archive), "--select", "m['has_error'] == True", "--json"
    )
    experiments = json.loads(result.stdout)
    assert [item["rel_path"] for item in experiments] == [
        rel for rel in reversed(_expected_order()) if read_meta(archive / rel)["has_error"]
    ]
    assert all(item["description"] for item in experiments)


@pytest.mark.parametrize("num", [0, 1, 2, 100])
@pytest.mark.parametrize("select", ["m['status'] == 'done'", "m['status'] != 'done'"])
def test_tail_num_counts_what_sql_selects_and_what_python_selects_alike(
    archive: Path, run_cli, num: int, select: str
) -> None:
    # The first is decided in SQL row by row (pushdown), the second only in Python: -n must count both the same.
    result = run_cli("archive", "tail", "-n", str(num), "--path", str(archive), "--select", select, "--json")
    assert result.exit_code == 0, result.output
    wants_done = "==" in select
    newest_first = [
        rel for rel in reversed(_expected_order()) if (read_meta(archive / rel)["status"] == "done") == wants_done
    ]
    assert [item["rel_path"] for item in json.loads(result.stdout)] == newest_first[:num]


def test_overview_figures_match_the_files(archive: Path, run_cli) -> None:
    result = run_cli("archive", "overview", "--path", str(archive), "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    metas = [read_meta(archive / rel) for rel in RUNS.values()]
    durations = [meta["duration"] for meta in metas if meta["duration"] > 0]
    assert figures["total"] == 8
    assert (figures["successful"], figures["failed"], figures["running"], figures["interrupted"]) == (3, 4, 0, 1)
    assert figures["first_start_time"] == min(meta["start_time"] for meta in metas)
    assert figures["last_start_time"] == max(meta["start_time"] for meta in metas)
    assert figures["maximum_duration"] == max(durations)
    assert figures["total_duration"] == pytest.approx(sum(durations))
    user_parameter_counts = [sum(1 for name in meta["parameters"] if not name.startswith("__")) for meta in metas]
    assert figures["parameters_min"] == min(user_parameter_counts)
    assert figures["parameters_max"] == max(user_parameter_counts)
    asset_counts = [sum(1 for entry in os.scandir(archive / rel) if entry.is_file()) for rel in RUNS.values()]
    assert (figures["assets_min"], figures["assets_max"]) == (min(asset_counts), max(asset_counts))
    disk = sum(path.stat().st_size for rel in RUNS.values() for path in (archive / rel).rglob("*") if path.is_file())
    assert figures["disk_usage"] == disk
    assert {item["error_type"]: item["count"] for item in figures["error_types"]} == {
        "ValueError": 1,
        "ZeroDivisionError": 1,
        "RuntimeError": 1,
        "KeyError": 1,
    }


def test_overview_text_has_the_spec_sections(archive: Path, run_cli) -> None:
    result = run_cli("archive", "overview", "--path", str(archive))
    text = result.stdout
    for line in (
        "Total Experiments: 8",
        "Successful: 3 (37.5%)",
        "Failed: 4 (50.0%)",
        "Running: 0 (0.0%)",
        "Interrupted: 1 (12.5%)",
        "Parameters per Experiment:",
        "Assets per Experiment:",
        "Error Types:",
        "  ValueError: 1 (25.0%)",
    ):
        assert line in text.splitlines(), line
    for heading in ("Total Disk Space:", "First Experiment:", "Average Duration:", "Maximum Duration:", "Total Time:"):
        assert heading in text


def test_overview_select_with_a_date_string_compares_start_times(archive: Path, run_cli) -> None:
    everything = run_cli(
        "archive", "overview", "--path", str(archive), "--select", "m['start_time'] > '2024-01-10'", "--json"
    )
    nothing = run_cli(
        "archive", "overview", "--path", str(archive), "--select", "m['start_time'] > '2999-01-01'", "--json"
    )
    assert everything.exit_code == 0, everything.output
    assert json.loads(everything.stdout)["total"] == 8
    assert json.loads(nothing.stdout)["total"] == 0


def test_info_adds_namespaces(archive: Path, run_cli) -> None:
    result = run_cli("archive", "info", "--path", str(archive), "--json")
    figures = json.loads(result.stdout)
    assert {item["namespace"]: item["count"] for item in figures["namespaces"]} == {
        "neural_net": 4,
        "sweep/lr": 2,
        "debug_runs": 2,
    }
    text = run_cli("archive", "info", "--path", str(archive)).stdout
    assert "  sweep/lr: 2" in text.splitlines()


def test_scan_groups_by_the_default_prefix_and_by_an_expression(archive: Path, run_cli) -> None:
    default = json.loads(run_cli("archive", "scan", "--path", str(archive), "--json").stdout)
    assert {group["group"]: group["count"] for group in default} == {
        "ablation": 1,
        "": 7,
    }  # pycomex writes __PREFIX__ = ""
    by_namespace = json.loads(
        run_cli("archive", "scan", "--path", str(archive), "--group", "m['namespace']", "--json").stdout
    )
    groups = {group["group"]: group for group in by_namespace}
    assert groups["neural_net"]["count"] == 4
    assert groups["neural_net"]["successful"] == 1
    assert groups["neural_net"]["success_rate"] == pytest.approx(25.0)
    assert groups["neural_net"]["disk_usage"] > 0
    text = run_cli("archive", "scan", "--path", str(archive), "--group", "p.get('MODEL', 'unknown')")
    assert text.exit_code == 0, text.output
    assert "Success Rate" in text.stdout and "Summary:" in text.stdout


def test_python_dash_m_runs_the_same_cli(archive: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pycomex_index", "archive", "list", "--path", str(archive)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(RUNS)


def test_every_command_has_help_with_an_example(run_cli) -> None:
    import click

    from pycomex_index.cli import cli

    def walk(group, prefix):
        for name in group.list_commands(None):  # the groups are lazy: get_command imports the command
            command = group.get_command(None, name)
            yield prefix + [name], command
            if isinstance(command, click.Group):
                yield from walk(command, prefix + [name])

    for path, _ in walk(cli, []):
        result = run_cli(*path, "--help")
        assert result.exit_code == 0, path
        assert "Example" in result.stdout, f"{' '.join(path)} --help has no example"


@pytest.mark.parametrize("command", ["list", "tail", "overview", "info", "scan"])
def test_a_command_whose_reader_went_away_stops_quietly(archive: Path, command: str) -> None:
    # `pycomex-index archive list | head -1` on a big archive: head exits, the next write meets a closed pipe.
    # Every read command ends the same way (rich, left alone, made scan exit 1).
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "pycomex_index", "archive", command, "--path", str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYCOMEX_INDEX_NO_PROGRESS": "1"},
    )
    process.stdout.close()  # before the command writes anything
    stderr = process.stderr.read().decode()
    assert (process.wait(timeout=60), stderr) == (141, "")


@pytest.mark.parametrize("outcome", ["done", "failed", "running", "error"])
def test_an_outcome_is_its_plain_value_in_text_json_and_the_icon_table(outcome: str) -> None:
    from pycomex_index.discovery import Outcome
    from pycomex_index.formatting import STATUS_ICONS

    member = Outcome(outcome)
    assert f"{member}" == str(member) == outcome
    assert json.dumps({"status": member}) == json.dumps({"status": outcome})
    assert STATUS_ICONS[outcome] == STATUS_ICONS[member]


DURATIONS = {
    None: "unknown",
    float("nan"): "unknown",
    float("inf"): "unknown",
    0: "0s",
    0.08: "0.08s",
    5.0: "5s",
    9.999: "10.00s",
    45: "45s",
    59.5: "1m 0s",  # Python rounds half to even, as before the whole seconds were cached
    60.5: "1m 0s",
    135.2: "2m 15s",
    3600: "1h 0m 0s",
    20250.4: "5h 37m 30s",
    True: "1s",
}


def test_durations_are_spelled_the_same_however_often_and_in_whatever_order_they_are_asked() -> None:
    from pycomex_index.formatting import format_duration

    for values in (list(DURATIONS), list(reversed(DURATIONS))):
        assert {value: format_duration(value) for value in values} == DURATIONS
