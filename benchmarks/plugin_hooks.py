"""What the pycomex plugin's hooks add to an experiment's start and end (target: at most 20 ms each).

Runs N small experiments through real pycomex, in one process, into an archive
that already holds ``--existing`` runs, and times the plugin's two hooks
(``after_experiment_initialize``, ``after_experiment_finalize``) around each
run. With ``--existing 0`` the first run creates the index (a one-time cost,
shown apart); otherwise the index exists and is in step, as after a sync.

    python benchmarks/plugin_hooks.py --runs 30 --existing 1000

Needs pycomex installed (the test extra has it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make_plugin_findable(scratch: Path) -> None:
    """pycomex finds plugins with pkgutil.iter_modules(), which does not see an editable install's import hook."""
    shim = scratch / "plugin_path"
    shim.mkdir()
    (shim / "pycomex_index").symlink_to(REPO / "pycomex_index")
    sys.path.insert(0, str(shim))


def _fill_archive(archive: Path, count: int) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from generate_archive import generate_archive  # type: ignore[import-not-found]

    generate_archive(archive, count)
    from pycomex_index.store import open_archive_index
    from pycomex_index.sync import refresh_index

    with open_archive_index(str(archive)) as index:
        refresh_index(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--existing", type=int, default=1000, help="runs already in the archive (and its index)")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="plugin-hooks-"))
    _make_plugin_findable(scratch)
    archive = scratch / "results"
    archive.mkdir()
    if options.existing:
        _fill_archive(archive, options.existing)

    # pycomex first: importing it loads its plugins, ours included (importing our plugin module first would
    # make pycomex's plugin loader meet it half-initialized).
    from pycomex.config import Config
    from pycomex.functional.experiment import Experiment

    import pycomex_index.plugin as plugin

    assert "pycomex_index" in Config().plugins, "pycomex did not load the plugin"
    timings: dict[str, list[float]] = {"start": [], "end": []}
    original = plugin._index_run

    def timed(experiment, moment):
        started = time.perf_counter()
        try:
            return original(experiment, moment)
        finally:
            timings[moment].append(time.perf_counter() - started)

    plugin._index_run = timed
    module = scratch / "bench_experiment.py"
    module.write_text('"""A benchmark run."""\n')
    for run in range(options.runs + 1):
        glob = {"__name__": "__main__", "__file__": str(module), "__doc__": "A benchmark run.", "VALUE": run}
        experiment = Experiment(base_path=str(archive), namespace="bench", glob=glob, notify=False)
        experiment(lambda e: e.__setitem__("value", 1))
        experiment.execute()

    first_start, first_end = timings["start"].pop(0), timings["end"].pop(0)
    print(f"archive with {options.existing} runs, {options.runs} runs timed")
    print(
        f"first run{' (creates the index)' if not options.existing else ''}: start {first_start * 1000:.1f} ms, end {first_end * 1000:.1f} ms"
    )
    for moment in ("start", "end"):
        values = sorted(timings[moment])
        print(
            f"{moment:>5}: median {statistics.median(values) * 1000:.1f} ms, "
            f"p90 {values[int(len(values) * 0.9) - 1] * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
