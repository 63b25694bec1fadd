"""Running a sweep's plan on this machine: N processes at a time, with progress and an ETA.

`run_sweep` launches the unfinished runs of `research.sweeps.plan.plan(...)` as local processes
(`launch.py train`, each with its own workdir and log), records every attempt in the run's
cell.json, and prints one line per finished run and a status line. Runs with results.json are
skipped (research/sweeps/runs.py `status`), and interrupted ones resume from their checkpoints,
so the same call can always be repeated. research/sweeps/slurm.py writes the same plan as a SLURM
job array instead.
"""

import collections
import datetime
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from research.errors import ConfigError
from research.sweeps.plan import Run, plan, write_plan
from research.sweeps.runs import cell_dirname, read_cell, read_results, status
from research.workdir import write_json


def run_sweep(
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
    states = {run: status(run.workdir) for run in the_plan.runs}
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
                ok = proc.returncode == 0 and status(run.workdir) == "done"
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
        metrics = read_results(run.workdir)["metrics"]
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
