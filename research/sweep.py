"""Sweeps: cells declared in experiment files, each run as an ordinary, resumable run.

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

`run_local` runs the unfinished runs as local processes, N at a time: runs with results.json are
skipped, interrupted ones resume from their checkpoints (relaunching the same command does that)
and failed ones run again. research/slurm.py writes the same runs as a SLURM job array.
"""

import collections
import dataclasses
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from research.config import ConfigError, build_config, experiment_module
from research.workdir import write_json

LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"
SEED_KEY = "train.seed"
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9._=,+-]")


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


def cell_dirname(name: str) -> str:
    """A cell's directory name: its name with characters unsafe in paths replaced by "_"."""
    return _UNSAFE_IN_PATH.sub("_", name)


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
            f"{path} defines no sweep(arg=None); see experiments/digits_cnn.py and research/sweep.py"
        )
    try:
        sweep = module.sweep(arg or None)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{spec}: sweep(): {e}") from None
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"{path}: sweep() must return a research.sweep.Sweep (see its helpers)")
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
            run_dir = workdir / cell_dirname(name) / f"seed_{seed}"
            command = (
                *launcher,
                "train",
                f"--config={config_spec}",
                f"--workdir={run_dir}",
                *(f"--config.{k}={v}" for k, v in overrides.items()),
            )
            runs.append(Run(name, seed, overrides, run_dir, command))
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


def read_cell(run_dir: Path) -> dict[str, Any] | None:
    """A run's cell.json, or None for a run not made by a sweep."""
    path = Path(run_dir) / "cell.json"
    return json.loads(path.read_text()) if path.exists() else None


def status(run: Run) -> str:
    """done (results.json), failed (last attempt's exit), interrupted (checkpoints), or pending."""
    if (run.workdir / "results.json").exists():
        return "done"
    attempts = (read_cell(run.workdir) or {}).get("attempts", [])
    if attempts and (attempts[-1].get("exit_code") or 0) > 0:  # < 0: killed by a signal.
        return "failed"
    if (run.workdir / "checkpoints").exists():
        return "interrupted"
    return "pending"


def write_plan(plan: Plan, runs: Iterable[Run]) -> None:
    """sweep.json for the whole plan, cell.json for `runs` (keeping earlier attempts)."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    write_json(plan.workdir / "sweep.json", plan.record())
    for run in runs:
        run.workdir.mkdir(parents=True, exist_ok=True)
        attempts = (read_cell(run.workdir) or {}).get("attempts", [])
        record = {"sweep": plan.spec, "config": plan.config_spec, "baseline": plan.sweep.baseline}
        write_json(run.workdir / "cell.json", record | run.record() | {"attempts": attempts})


# ---------------------------------------------------------------------------------------------
# Running locally: N processes at a time, with progress.
# ---------------------------------------------------------------------------------------------


def run_local(
    spec: str,
    workdir: str | Path,
    *,
    parallel: int | None = None,
    launcher: Sequence[str] | None = None,
    out: TextIO | None = None,
    poll_s: float = 0.5,
) -> int:
    """Run the sweep's unfinished runs, `parallel` (default 1) at a time.

    Returns 0 when every run is done, 1 if any failed (run the same call again to retry them).
    """
    parallel, out = parallel or 1, out or sys.stdout
    if parallel < 1:
        raise ConfigError(f"--parallel={parallel}: run at least one process at a time")
    the_plan = plan(spec, workdir, launcher)
    states = {run: status(run) for run in the_plan.runs}
    todo = [run for run in the_plan.runs if states[run] != "done"]
    write_plan(the_plan, todo)
    counts = collections.Counter(states.values())
    print(
        f"sweep {spec}: {len(the_plan.sweep.cells)} cells x {len(the_plan.sweep.seeds)} seeds = "
        f"{len(the_plan.runs)} runs; {counts['done']} done, {len(todo)} to run "
        f"({counts['interrupted']} to resume, {counts['failed']} failed before), "
        f"{parallel} at a time",
        file=out,
        flush=True,
    )
    progress = Progress(len(the_plan.runs), counts["done"], parallel, out)
    queue = collections.deque(todo)
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                run = queue.popleft()
                running[_start(run)] = (run, time.time())
            progress.show([started for _, started in running.values()], len(queue))
            time.sleep(poll_s)
            for proc in [p for p in running if p.poll() is not None]:
                run, started = running.pop(proc)
                seconds = time.time() - started
                _record_attempt(run, started, seconds, proc.returncode)
                ok = proc.returncode == 0 and status(run) == "done"
                progress.finished(run, seconds, ok, _outcome(run, proc.returncode, ok))
    except KeyboardInterrupt:
        for proc, (run, started) in running.items():
            proc.terminate()
            proc.wait()
            _record_attempt(run, started, time.time() - started, proc.returncode)
        progress.close()
        print("interrupted; run the same command again to resume", file=out, flush=True)
        return 130
    progress.show([], 0)
    progress.close()
    failed = progress.failed
    print(
        f"{progress.done}/{len(the_plan.runs)} runs done, {failed} failed, "
        f"{progress.elapsed_s():.0f}s"
        + ("; run the same command again to retry the failed runs" if failed else ""),
        file=out,
        flush=True,
    )
    return 1 if failed else 0


def _start(run: Run) -> subprocess.Popen:
    log = (run.workdir / "launch.log").open("a")
    log.write(f"\n=== {_now()} {' '.join(run.command)}\n")
    log.flush()
    with log:  # Popen keeps its own descriptor.
        return subprocess.Popen(
            run.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _record_attempt(run: Run, started: float, seconds: float, exit_code: int | None) -> None:
    record = read_cell(run.workdir)
    record["attempts"].append(
        {"started": _now(started), "wall_s": round(seconds, 1), "exit_code": exit_code}
    )
    write_json(run.workdir / "cell.json", record)


def _outcome(run: Run, exit_code: int, ok: bool) -> str:
    """What to show when a run ends: its headline metric, or why it failed."""
    if ok:
        metrics = json.loads((run.workdir / "results.json").read_text())["metrics"]
        shown = [k for k in metrics if k.startswith("test/")][:2]
        return "  ".join(f"{k} {metrics[k]:.4f}" for k in shown)
    lines = (run.workdir / "launch.log").read_text(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    return f"exit {exit_code}: {last[:120]}  (log: {run.workdir / 'launch.log'})"


def _now(t: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(t or time.time(), datetime.UTC).isoformat(
        timespec="seconds"
    )


class Progress:
    """Runs done / running / failed and an ETA from the mean duration of the runs finished so far.

    On a terminal the status line is redrawn in place; otherwise it is printed when it changes.
    """

    def __init__(self, total: int, done: int, parallel: int, out: TextIO):
        self.total, self.done, self.failed, self.parallel, self.out = total, done, 0, parallel, out
        self.durations: list[float] = []
        self.started = time.time()
        self.tty = out.isatty()
        self._last = ""

    def elapsed_s(self) -> float:
        return time.time() - self.started

    def finished(self, run: Run, seconds: float, ok: bool, outcome: str) -> None:
        if ok:
            self.done += 1
            self.durations.append(seconds)
        else:
            self.failed += 1
        self._print(
            f"{'done  ' if ok else 'FAILED'} {cell_dirname(run.cell)}/seed_{run.seed}  "
            f"{seconds:.0f}s  {outcome}"
        )

    def show(self, running_since: list[float], queued: int) -> None:
        line = (
            f"[{self.done}/{self.total} done, {len(running_since)} running, {self.failed} failed, "
            f"{queued} queued]  elapsed {_duration(self.elapsed_s())}  ETA {self._eta(running_since, queued)}"
        )
        if self.tty:
            self.out.write("\r" + line.ljust(len(self._last)))
            self.out.flush()
        elif line.split("]")[0] != self._last.split("]")[0]:
            print(line, file=self.out, flush=True)
        self._last = line

    def _eta(self, running_since: list[float], queued: int) -> str:
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        now = time.time()
        work = queued * mean + sum(max(mean - (now - t), 0.0) for t in running_since)
        return _duration(work / self.parallel)

    def _print(self, text: str) -> None:
        if self.tty and self._last:
            self.out.write("\r" + " " * len(self._last) + "\r")
        print(text, file=self.out, flush=True)
        if self.tty and self._last:
            self.out.write(self._last)
            self.out.flush()

    def close(self) -> None:
        if self.tty and self._last:
            self.out.write("\n")
            self.out.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
