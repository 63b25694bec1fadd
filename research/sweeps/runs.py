"""Runs on disk: the one place that reads a run's files, decides its status and finds runs.

A run is a workdir holding config.json (and, when a sweep made it, cell.json). A sweep lays its
runs out as `<sweep>/<cell_dirname(cell)>/seed_<seed>/`, in the order of its sweep.json. A run's
status is, in this order:

    done         results.json exists
    failed       the last attempt the runner recorded in cell.json exited with a status > 0
    interrupted  checkpoints/ exists: relaunching the same command resumes it
    pending      none of the above (planned, or never started)

The local runner and SLURM writer (what to launch) and the report (what to tabulate, what to list
as unfinished) all ask `status`. A file that cannot be read is a ConfigError naming the run and
the file, so the report can skip that run in one line and go on with the rest.
"""

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from research.errors import ConfigError
from research.writer import read_metrics

SEED_KEY = (
    "train.seed"  # The override a sweep sets per seed; cells are runs that differ only in it.
)
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9._=,+-]")
_REQUIRED = {  # Keys the report and runner rely on, per file.
    "cell.json": ("cell", "seed", "overrides"),
    "config.json": ("train",),
    "results.json": ("metrics", "wall_s"),
}


def cell_dirname(name: str) -> str:
    """A cell's directory name: its name with characters unsafe in paths replaced by "_"."""
    return _UNSAFE_IN_PATH.sub("_", name)


def run_dir(sweep_dir: Path, cell: str, seed: int) -> Path:
    """Where a sweep keeps the run of `cell` at `seed`."""
    return Path(sweep_dir) / cell_dirname(cell) / f"seed_{seed}"


# ---------------------------------------------------------------------------------------------
# Reading a run's files.
# ---------------------------------------------------------------------------------------------


def _read_json(run: Path, name: str) -> Any:
    """`run/name` parsed, None if absent; ConfigError naming the run if it cannot be read."""
    path = Path(run) / name
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{run}: {name} cannot be read ({e.strerror or e})") from None
    except ValueError:  # JSONDecodeError, or bytes that are not text.
        raise ConfigError(f"{run}: {name} is not valid JSON") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{run}: {name} is not a JSON object")
    missing = [key for key in _REQUIRED.get(name, ()) if key not in record]
    if missing:
        raise ConfigError(f"{run}: {name} has no {', '.join(missing)}")
    return record


def read_cell(run: Path) -> dict[str, Any] | None:
    """A run's cell.json, or None for a run not made by a sweep."""
    return _read_json(run, "cell.json")


def read_results(run: Path) -> dict[str, Any] | None:
    """A run's results.json (research/workdir.py `results`), or None until it finishes."""
    return _read_json(run, "results.json")


def _read_metrics(run: Path) -> list[dict[str, Any]]:
    try:
        records = read_metrics(run)
    except OSError as e:
        raise ConfigError(f"{run}: metrics.jsonl cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{run}: metrics.jsonl is not text") from None
    except ValueError as e:  # A bad line before the last; a torn last line is dropped.
        raise ConfigError(f"{run}: metrics.jsonl {e}") from None
    if not all(isinstance(r, dict) and {"step", "split"} <= r.keys() for r in records):
        raise ConfigError(f"{run}: metrics.jsonl has a line without step and split")
    return records


def status(run: Path) -> str:
    """done, failed, interrupted or pending (see the module docstring)."""
    run = Path(run)
    if (run / "results.json").exists():
        return "done"
    if _exit_code(read_cell(run)) > 0:  # < 0: killed by a signal, e.g. the runner interrupted.
        return "failed"
    if (run / "checkpoints").exists():
        return "interrupted"
    return "pending"


def _exit_code(cell: dict[str, Any] | None) -> int:
    """The last recorded attempt's exit status; 0 when none was recorded (or it was killed)."""
    attempts = (cell or {}).get("attempts", [])
    return (attempts[-1].get("exit_code") or 0) if attempts else 0


# ---------------------------------------------------------------------------------------------
# A run's record, and cells: runs that differ only in their seed.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunRecord:
    """What a run's workdir says about it."""

    path: Path
    status: str  # See `status`.
    config: dict[str, Any]
    results: dict[str, Any] | None  # None until the run finishes.
    cell: dict[str, Any] | None  # cell.json, for runs made by a sweep.
    overrides: dict[str, str]  # Command-line overrides, without the seed.
    metrics: list[dict[str, Any]]  # metrics.jsonl: {"step", "split", <metrics>} per line.

    @property
    def seed(self) -> int | None:
        return self.config["train"].get("seed")  # config.json as written; None: not started.

    @property
    def exit_code(self) -> int:
        return _exit_code(self.cell)

    @property
    def last_step(self) -> int:
        return max((r["step"] for r in self.metrics), default=0)


def load_run(path: Path) -> RunRecord:
    """Read a run's files; ConfigError naming the run and the file if one cannot be read."""
    state = status(path)  # First: results.json does not vanish, so "done" implies results below.
    cell = read_cell(path)
    # Planned but never started: its seed is in the plan (or unknown, outside a sweep).
    config = _read_json(path, "config.json") or {"train": {"seed": cell and cell["seed"]}}
    if cell is not None:
        overrides = dict(cell["overrides"])
    else:
        command = (_read_json(path, "provenance.json") or {}).get("command") or []
        overrides = dict(
            a[len("--config.") :].split("=", 1)
            for a in command
            if a.startswith("--config.") and "=" in a
        )
    overrides.pop(SEED_KEY, None)
    return RunRecord(path, state, config, read_results(path), cell, overrides, _read_metrics(path))


@dataclasses.dataclass
class Cell:
    """Runs that differ only in their seed: one row of the report's table."""

    name: str
    overrides: dict[str, str]
    runs: list[RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.results is not None]

    def values(self, metric: str) -> list[float]:
        return [
            float(r.results["metrics"][metric])
            for r in self.finished
            if metric in r.results["metrics"]
        ]


def group(runs: Sequence[RunRecord]) -> list[Cell]:
    """Cells in order of first appearance; a sweep's runs by cell, others by config minus seed."""
    cells: dict[tuple, Cell] = {}
    for run in runs:
        if run.cell is not None:
            key = ("sweep", str(run.path.resolve().parent.parent), run.cell["cell"])
            name = run.cell["cell"]
        else:
            config = json.loads(json.dumps(run.config))
            config.get("train", {}).pop("seed", None)
            key = ("config", json.dumps(config, sort_keys=True))
            name = _label(run)
        if key not in cells:
            cells[key] = Cell(name, run.overrides, [])
        cells[key].runs.append(run)
    names = [c.name for c in cells.values()]
    for key, cell in cells.items():
        if names.count(cell.name) > 1:  # Same name in two sweeps, or two unlabeled runs.
            cell.name = (
                f"{Path(key[1]).name}/{cell.name}" if key[0] == "sweep" else str(cell.runs[0].path)
            )
    return list(cells.values())


def _label(run: RunRecord) -> str:
    experiment = run.config.get("experiment") or run.path.name
    return " ".join([experiment, *(f"{k}={v}" for k, v in run.overrides.items())])


def baseline_of(cells: Sequence[Cell]) -> Cell:
    """The cell a sweep declared as its baseline (its first), else the first cell."""
    for cell in cells:
        for run in cell.runs:
            if run.cell is not None and run.cell.get("baseline") == run.cell["cell"]:
                return cell
    return cells[0]


# ---------------------------------------------------------------------------------------------
# Finding runs.
# ---------------------------------------------------------------------------------------------


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run workdirs named by `paths`: each path is a run or a directory of runs (e.g. a sweep).

    A sweep's runs come in its plan's order (sweep.json), others in path order.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory; pass a run or sweep workdir")
        if (path / "config.json").exists() or (path / "cell.json").exists():
            runs = [path]
        else:
            runs = sorted(
                {
                    p.parent
                    for name in ("config.json", "cell.json")
                    for p in path.rglob(name)
                    if "checkpoints" not in p.relative_to(path).parts
                }
            )
            order = _plan_order(path)
            runs.sort(key=lambda r: order.get(r.resolve(), len(order)))
        if not runs:
            raise ConfigError(f"{path} holds no runs (no config.json under it)")
        found += [r for r in runs if r not in found]
    return found


def _plan_order(sweep_dir: Path) -> dict[Path, int]:
    """Run directory -> position in the sweep's plan (cells in declared order, then seeds)."""
    plan = _read_json(sweep_dir, "sweep.json")
    if plan is None:
        return {}
    return {
        run_dir(sweep_dir, r["cell"], r["seed"]).resolve(): i
        for i, r in enumerate(plan.get("runs", []))
    }
