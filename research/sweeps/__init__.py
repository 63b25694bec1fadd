"""Sweeps: declare cells in an experiment file, run them as ordinary runs, report on them.

A sweep flows one way:

    experiments/x.py sweep()  ->  plan.plan  ->  local.run_sweep | slurm.write  ->  runs  ->  report

    plan.py     declaring a sweep (Sweep, ablation, one_at_a_time, grid, replicates) and planning
                it: every (cell, seed) becomes a Run with its own workdir and `launch.py train`
                command, validated before anything is written; write_plan writes sweep.json and
                each run's cell.json
    runs.py     runs on disk, in one place: the sweep's directory layout, reading cell.json,
                results.json and metrics.jsonl, a run's status (done / failed / interrupted /
                pending), finding runs under paths, and grouping them into cells
    local.py    runs a plan's unfinished runs here, N processes at a time, with an ETA
    slurm.py    writes a plan's unfinished runs as a SLURM job array (and may submit it)
    report.py   tables (mean ± std over seeds, deltas vs the baseline), expected-result checks
    plots.py    curves and bars per cell, for the report
    stats.py    seed statistics: means, Student-t and Welch intervals

Imports go downward only: local, slurm -> plan -> runs; report -> plots -> runs, stats. Experiment
files import what they declare sweeps with from here:

    from research.sweeps import ablation

    def sweep(arg=None):
        return ablation({"train.steps": 300}, {"sgd": {"optimizer.name": "sgd"}}, seeds=3)

`python launch.py sweep --config=experiments/x.py --workdir=sweeps/x` runs it (`--slurm` writes
the job array instead); `python launch.py report sweeps/x` tabulates and plots it.
"""

from research.sweeps.plan import Sweep, ablation, grid, one_at_a_time, replicates

__all__ = ["Sweep", "ablation", "grid", "one_at_a_time", "replicates"]
