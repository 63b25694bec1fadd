"""Declaring and planning a sweep: cells in experiment files, each run as an ordinary run.

An experiment file may define `sweep(arg=None) -> Sweep`. A *cell* is a named set of config
overrides (one row of the report); the first cell is the baseline. Every cell runs once per seed,
and each (cell, seed) is an ordinary `launch.py train` run with its own workdir, so resume,
checkpoints and provenance apply unchanged:

    def sweep(arg=None):
        return ablation(
            baseline={"train.steps": 300},
            variants={"sgd": {"optimizer.name": "sgd"}, "ema": {"optimizer.ema_decay": 0.99}},
            seeds=3,
        )

Helpers for the common shapes: `ablation` (named variants, each on top of the baseline),
`one_at_a_time` (each axis varied alone from the baseline), `grid` (every combination of the
axes) and `replicates` (one cell, several seeds).

A sweep's workdir:

    sweep.json                    the plan: experiment, cells, seeds, every run's command
    <cell>/seed_<s>/              a run's workdir (config.json, checkpoints/, results.json, ...)
    <cell>/seed_<s>/cell.json     the cell, its overrides, its command, and the runner's attempts
    <cell>/seed_<s>/launch.log    the run's output, appended per attempt

`plan` validates every run's config before anything is written; `write_plan` writes sweep.json
and the cell.json files. research/sweeps/local.py runs the unfinished runs as local processes, N at
a time: runs with results.json are skipped, interrupted ones resume from their checkpoints
(relaunching the same command does that) and failed ones run again. research/sweeps/slurm.py
writes the same runs as a SLURM job array. Their status comes from research/sweeps/runs.py.
"""

import dataclasses
import itertools
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from research.config import build_config, experiment_module
from research.errors import ConfigError
from research.sweeps.runs import SEED_KEY, cell_dirname, read_cell, run_dir
from research.workdir import write_json

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


# ---------------------------------------------------------------------------------------------
# Declaring a sweep.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Named cells of config overrides (the first is the baseline), each run at every seed.

    `config_arg` is the experiment variant every cell runs, as in `experiments/x.py:<config_arg>`
    (e.g. "smoke"); the sweep's own arg (`sweep(arg)`) is a different thing and only picks cells.
    """

    cells: Mapping[str, Mapping[str, Any]]
    seeds: Sequence[int] = (0,)
    config_arg: str | None = None

    def __post_init__(self):
        if not self.cells:
            raise ValueError("a sweep needs at least one cell")
        seeds = _as_seeds(self.seeds)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "cells", {n: dict(o) for n, o in self.cells.items()})
        for name, overrides in self.cells.items():
            if not name or name.startswith("."):
                raise ValueError(f"cell name {name!r} cannot name a directory")
            if SEED_KEY in overrides:
                raise ValueError(f"cell {name!r} sets {SEED_KEY}; seeds are the sweep's `seeds`")
        dirs = [cell_dirname(n) for n in self.cells]
        if len(set(dirs)) != len(dirs):
            raise ValueError(f"cell names {list(self.cells)} collide as directory names")

    @property
    def baseline(self) -> str:
        return next(iter(self.cells))


def _as_seeds(seeds: int | Iterable[int]) -> tuple[int, ...]:
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    return seeds


def ablation(
    baseline: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]],
    *,
    seeds: int | Sequence[int] = 1,
    config_arg: str | None = None,
    baseline_name: str = "baseline",
) -> Sweep:
    """The baseline plus named variants, each variant's overrides applied on top of the baseline's."""
    if baseline_name in variants:
        raise ValueError(f"a variant is named {baseline_name!r}, like the baseline")
    cells = {baseline_name: dict(baseline)}
    cells |= {name: {**baseline, **overrides} for name, overrides in variants.items()}
    return Sweep(cells, seeds, config_arg)


def one_at_a_time(
    baseline: Mapping[str, Any],
    axes: Mapping[str, Sequence[Any]],
    *,
    seeds: int | Sequence[int] = 1,
    config_arg: str | None = None,
) -> Sweep:
    """The baseline, then each axis varied alone: one cell "key=value" per value the baseline lacks."""
    variants = {}
    for key, values in axes.items():
        for value in values:
            if key in baseline and override_text(baseline[key]) == override_text(value):
                continue
            variants[f"{key}={override_text(value)}"] = {key: value}
    return ablation(baseline, variants, seeds=seeds, config_arg=config_arg)


def grid(
    axes: Mapping[str, Sequence[Any]],
    *,
    baseline: Mapping[str, Any] | None = None,
    seeds: int | Sequence[int] = 1,
    config_arg: str | None = None,
) -> Sweep:
    """Every combination of the axes' values ("k1=v1,k2=v2"); the first combination is the baseline.

    `baseline` holds overrides shared by every cell.
    """
    keys = list(axes)
    cells = {}
    for values in itertools.product(*(axes[k] for k in keys)):
        name = ",".join(f"{k}={override_text(v)}" for k, v in zip(keys, values))
        cells[name] = {**(baseline or {}), **dict(zip(keys, values))}
    return Sweep(cells, seeds, config_arg)


def replicates(
    overrides: Mapping[str, Any] | None = None,
    *,
    seeds: int | Sequence[int],
    config_arg: str | None = None,
    name: str = "baseline",
) -> Sweep:
    """One cell run at several seeds (e.g. to measure seed-to-seed spread)."""
    return Sweep({name: dict(overrides or {})}, seeds, config_arg)


def override_text(value: Any) -> str:
    """A value as `--config.key=<text>` spells it (research/config.py parses it back)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Planning: experiment file -> validated runs with their commands and workdirs.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One cell at one seed: an ordinary run with its own workdir and command line."""

    cell: str
    seed: int
    overrides: dict[str, str]  # The cell's overrides as command-line text, and train.seed.
    workdir: Path
    command: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "seed": self.seed,
            "overrides": self.overrides,
            "workdir": str(self.workdir),
            "command": list(self.command),
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sweep expanded into runs under `workdir`."""

    spec: str  # --config of the sweep, e.g. experiments/digits_cnn.py:quick
    config_spec: str  # --config of every run, e.g. experiments/digits_cnn.py:smoke
    sweep: Sweep
    workdir: Path
    runs: list[Run]

    def record(self) -> dict[str, Any]:
        return {
            "sweep": self.spec,
            "config": self.config_spec,
            "baseline": self.sweep.baseline,
            # Lists, not dicts: the cells' order is the table's (write_json sorts dict keys).
            "cells": [{"name": n, "overrides": _texts(o)} for n, o in self.sweep.cells.items()],
            "seeds": list(self.sweep.seeds),
            "runs": [r.record() for r in self.runs],
        }


def load_sweep(spec: str) -> Sweep:
    """Call `sweep(arg)` of the experiment file named by `spec` ("experiments/x.py[:arg]")."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(
            f"experiment file {path!r} not found; pass --config=experiments/<name>.py"
        )
    module = experiment_module(spec)
    if not callable(getattr(module, "sweep", None)):
        raise ConfigError(
            f"{path} defines no sweep(arg=None); see experiments/digits_cnn.py and research/sweeps/plan.py"
        )
    try:
        sweep = module.sweep(arg or None)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{spec}: sweep(): {e}") from None
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"{path}: sweep() must return a research.sweeps.Sweep (see its helpers)")
    return sweep


def plan(spec: str, workdir: str | Path, launcher: Sequence[str] | None = None) -> Plan:
    """Expand and validate the sweep: every run's overrides go through build_config first.

    `launcher` is the program that runs one run (default: this python and launch.py).
    Raises ConfigError if any cell is invalid or a run's workdir holds a different cell.
    """
    sweep = load_sweep(spec)
    path = spec.partition(":")[0]
    config_spec = f"{path}:{sweep.config_arg}" if sweep.config_arg else path
    launcher = tuple(launcher or (sys.executable, os.path.relpath(LAUNCH)))
    workdir = Path(workdir)
    runs = []
    for name, cell_overrides in sweep.cells.items():
        for seed in sweep.seeds:
            overrides = _texts(cell_overrides) | {SEED_KEY: str(seed)}
            try:
                build_config(config_spec, overrides)
            except ConfigError as e:
                raise ConfigError(f"sweep cell {name!r}: {e}") from None
            directory = run_dir(workdir, name, seed)
            command = (
                *launcher,
                "train",
                f"--config={config_spec}",
                f"--workdir={directory}",
                *(f"--config.{k}={v}" for k, v in overrides.items()),
            )
            runs.append(Run(name, seed, overrides, directory, command))
    for run in runs:
        _check_same_cell(run, config_spec)
    return Plan(spec, config_spec, sweep, workdir, runs)


def _texts(overrides: Mapping[str, Any]) -> dict[str, str]:
    return {k: override_text(v) for k, v in overrides.items()}


def _check_same_cell(run: Run, config_spec: str) -> None:
    """Refuse to count a run done that was made with other overrides under the same cell name."""
    previous = read_cell(run.workdir)
    if previous and (
        previous.get("overrides") != run.overrides or previous.get("config") != config_spec
    ):
        raise ConfigError(
            f"{run.workdir} was run as {previous.get('config')} with {previous.get('overrides')}, "
            f"but the sweep now declares {config_spec} with {run.overrides}; "
            "use a fresh --workdir or delete that directory"
        )


def write_plan(plan: Plan, runs: Iterable[Run]) -> None:
    """sweep.json for the whole plan, cell.json for `runs` (keeping earlier attempts)."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    write_json(plan.workdir / "sweep.json", plan.record())
    for run in runs:
        run.workdir.mkdir(parents=True, exist_ok=True)
        attempts = (read_cell(run.workdir) or {}).get("attempts", [])
        record = {"sweep": plan.spec, "config": plan.config_spec, "baseline": plan.sweep.baseline}
        write_json(run.workdir / "cell.json", record | run.record() | {"attempts": attempts})
