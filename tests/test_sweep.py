"""Sweeps: cell expansion, the resumable runner, SLURM scripts, report statistics, end to end."""

import ast
import csv
import graphlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

import launch
from research.errors import ConfigError
from research.sweeps import local, report, runs, slurm, stats
from research.sweeps import plan as sw

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "experiments/digits_cnn.py:smoke"  # 2 cells (baseline, sgd_momentum) x 2 seeds.

# A stand-in for launch.py that trains nothing: writes results.json (accuracy 0.5 + seed / 10),
# logs each call, and fails once where a `fail_once` file says so.
FAKE_LAUNCH = """
import json, pathlib, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[2:])
workdir = pathlib.Path(flags["workdir"])
with open(workdir.parent.parent / "calls.txt", "a") as f:
    f.write(f"{workdir.parent.name}/{workdir.name}\\n")
if (workdir / "fail_once").exists():
    (workdir / "fail_once").unlink()
    print("boom: a deliberate failure")
    sys.exit(1)
seed = int(flags["config.train.seed"])
result = {"experiment": "fake", "step": 1, "wall_s": 1.0 + seed,
          "metrics": {"test/accuracy": 0.5 + seed / 10}, "expected": None, "expected_met": None}
(workdir / "results.json").write_text(json.dumps(result))
"""


@pytest.fixture
def fake_launcher(tmp_path) -> list[str]:
    path = tmp_path / "fake_launch.py"
    path.write_text(FAKE_LAUNCH)
    return [sys.executable, str(path)]


def calls(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "calls.txt"
    return path.read_text().split() if path.exists() else []


# ---------------------------------------------------------------------------------------------
# Declaring cells.
# ---------------------------------------------------------------------------------------------


def test_ablation_applies_each_variant_on_top_of_the_baseline():
    s = sw.ablation(
        {"train.steps": 300, "optimizer.name": "adamw"},
        {"sgd": {"optimizer.name": "sgd"}, "ema": {"optimizer.ema_decay": 0.99}},
        seeds=3,
    )
    assert s.baseline == "baseline" and s.seeds == (0, 1, 2)
    assert s.cells == {
        "baseline": {"train.steps": 300, "optimizer.name": "adamw"},
        "sgd": {"train.steps": 300, "optimizer.name": "sgd"},
        "ema": {"train.steps": 300, "optimizer.name": "adamw", "optimizer.ema_decay": 0.99},
    }


def test_one_at_a_time_varies_each_axis_alone():
    s = sw.one_at_a_time(
        {"optimizer.name": "adamw", "optimizer.clip_norm": 0.0},
        {"optimizer.name": ["adamw", "sgd"], "optimizer.clip_norm": [0.0, 1.0, 2.0]},
        seeds=[3, 7],
    )
    base = {"optimizer.name": "adamw", "optimizer.clip_norm": 0.0}
    assert s.cells == {
        "baseline": base,
        "optimizer.name=sgd": base | {"optimizer.name": "sgd"},
        "optimizer.clip_norm=1.0": base | {"optimizer.clip_norm": 1.0},
        "optimizer.clip_norm=2.0": base | {"optimizer.clip_norm": 2.0},
    }
    assert s.seeds == (3, 7)


def test_grid_is_the_product_of_the_axes():
    s = sw.grid(
        {"optimizer.learning_rate": [0.1, 0.01], "data.augment.flip": [False, True]},
        baseline={"train.steps": 5},
    )
    assert list(s.cells) == [
        "optimizer.learning_rate=0.1,data.augment.flip=false",
        "optimizer.learning_rate=0.1,data.augment.flip=true",
        "optimizer.learning_rate=0.01,data.augment.flip=false",
        "optimizer.learning_rate=0.01,data.augment.flip=true",
    ]
    assert s.baseline == "optimizer.learning_rate=0.1,data.augment.flip=false"
    points = {(c["optimizer.learning_rate"], c["data.augment.flip"]) for c in s.cells.values()}
    assert points == {(0.1, False), (0.1, True), (0.01, False), (0.01, True)}
    assert all(c["train.steps"] == 5 for c in s.cells.values())
    assert s.seeds == (0,)


def test_replicates_and_bad_declarations():
    assert sw.replicates({"train.steps": 5}, seeds=4).cells == {"baseline": {"train.steps": 5}}
    assert sw.replicates(seeds=4).seeds == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="seeds"):
        sw.replicates(seeds=[1, 1])
    with pytest.raises(ValueError, match="train.seed"):
        sw.ablation({}, {"s": {"train.seed": 3}})
    with pytest.raises(ValueError, match="collide"):
        sw.Sweep({"a/b": {}, "a_b": {}})


def test_override_text_round_trips_through_the_config_parser():
    assert [sw.override_text(v) for v in ("rms", True, 3, 0.001, (32, 64), (5,))] == [
        "rms", "true", "3", "0.001", "(32,64)", "(5,)",
    ]  # fmt: skip


def test_plan_expands_cells_times_seeds_into_runs(tmp_path):
    plan = sw.plan(SMOKE, tmp_path / "sw", launcher=["python", "launch.py"])
    assert [(r.cell, r.seed) for r in plan.runs] == [
        ("baseline", 0), ("baseline", 1), ("sgd_momentum", 0), ("sgd_momentum", 1),
    ]  # fmt: skip
    run = plan.runs[3]
    assert run.workdir == tmp_path / "sw" / "sgd_momentum" / "seed_1"
    assert run.command == (
        "python", "launch.py", "train", "--config=experiments/digits_cnn.py:smoke",
        f"--workdir={run.workdir}", "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=0.1", "--config.train.seed=1",
    )  # fmt: skip
    assert not (tmp_path / "sw").exists()  # Planning writes nothing.


def test_an_invalid_cell_fails_the_whole_sweep_before_anything_runs(tmp_path, fake_launcher):
    experiment = tmp_path / "bad_sweep.py"
    experiment.write_text(
        textwrap.dedent(
            """
            from experiments.digits_cnn import get_config
            from research.sweeps import ablation

            def sweep(arg=None):
                return ablation({}, {"ok": {"train.steps": 500}, "typo": {"optimizer.lr": 0.1}})
            """
        )
    )
    with pytest.raises(
        ConfigError, match="sweep cell 'typo': unknown config key --config.optimizer.lr"
    ):
        local.run_sweep(str(experiment), tmp_path / "sw", launcher=fake_launcher, out=io.StringIO())
    assert not (tmp_path / "sw").exists()


# ---------------------------------------------------------------------------------------------
# The runner: skip finished runs, rerun failed ones.
# ---------------------------------------------------------------------------------------------


def test_runner_skips_finished_runs_and_reruns_a_failed_one(tmp_path, fake_launcher):
    sweep_dir = tmp_path / "sw"
    failing = sweep_dir / "sgd_momentum" / "seed_1"
    failing.mkdir(parents=True)
    (failing / "fail_once").touch()
    run = lambda: local.run_sweep(
        SMOKE, sweep_dir, parallel=2, launcher=fake_launcher, out=io.StringIO(), poll_s=0.02
    )

    assert run() == 1
    assert sorted(calls(sweep_dir)) == [
        "baseline/seed_0", "baseline/seed_1", "sgd_momentum/seed_0", "sgd_momentum/seed_1",
    ]  # fmt: skip
    plan = sw.plan(SMOKE, sweep_dir, launcher=fake_launcher)
    assert [runs.status(r.workdir) for r in plan.runs] == ["done", "done", "done", "failed"]
    cell = runs.read_cell(failing)
    assert [a["exit_code"] for a in cell["attempts"]] == [1]
    assert cell["overrides"] == {
        "optimizer.name": "sgd", "optimizer.learning_rate": "0.1", "train.seed": "1",
    }  # fmt: skip
    assert "boom" in (failing / "launch.log").read_text()

    assert run() == 0  # Only the failed run again.
    assert calls(sweep_dir)[4:] == ["sgd_momentum/seed_1"]
    assert [a["exit_code"] for a in runs.read_cell(failing)["attempts"]] == [1, 0]

    out = io.StringIO()
    assert local.run_sweep(SMOKE, sweep_dir, launcher=fake_launcher, out=out, poll_s=0.02) == 0
    assert len(calls(sweep_dir)) == 5  # Nothing left to do.
    assert "4 done, 0 to run" in out.getvalue()


def test_interrupted_runs_are_resumed_with_the_same_command(tmp_path, fake_launcher):
    plan = sw.plan(SMOKE, tmp_path / "sw", launcher=fake_launcher)
    sw.write_plan(plan, plan.runs)
    (plan.runs[0].workdir / "checkpoints").mkdir()
    assert runs.status(plan.runs[0].workdir) == "interrupted"
    assert runs.read_cell(plan.runs[0].workdir)["command"] == list(plan.runs[0].command)


def test_a_workdir_made_with_other_overrides_is_refused(tmp_path, fake_launcher):
    local.run_sweep(SMOKE, tmp_path / "sw", launcher=fake_launcher, out=io.StringIO(), poll_s=0.02)
    cell_json = tmp_path / "sw" / "baseline" / "seed_0" / "cell.json"
    cell = json.loads(cell_json.read_text())
    cell["overrides"]["optimizer.clip_norm"] = "1.0"
    cell_json.write_text(json.dumps(cell))
    with pytest.raises(ConfigError, match="use a fresh --workdir"):
        sw.plan(SMOKE, tmp_path / "sw")


# ---------------------------------------------------------------------------------------------
# SLURM: one array task per unfinished run, running the runner's exact command.
# ---------------------------------------------------------------------------------------------


def test_slurm_script_has_one_array_task_per_run(tmp_path, fake_launcher):
    sweep_dir = tmp_path / "sw"
    path = slurm.write(SMOKE, sweep_dir, parallel=2, options=["--time=00:10:00"])
    text = path.read_text()
    plan = sw.plan(SMOKE, sweep_dir)
    assert "#SBATCH --array=0-3%2" in text and "#SBATCH --time=00:10:00" in text
    for task, run in enumerate(plan.runs):
        assert (
            f"  {task})  # {run.cell}, seed {run.seed}\n    exec {' '.join(run.command)} ;;" in text
        )
        assert "launch.py train --config=experiments/digits_cnn.py:smoke" in " ".join(run.command)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    # Run array task 2 for real (with the stand-in launcher): it is sgd_momentum, seed 0.
    path = slurm.write(SMOKE, sweep_dir, launcher=fake_launcher)
    env = os.environ | {"SLURM_ARRAY_TASK_ID": "2"}
    subprocess.run(["bash", str(path)], env=env, check=True)
    assert calls(sweep_dir) == ["sgd_momentum/seed_0"]
    # The next script leaves the finished run out.
    text = slurm.write(SMOKE, sweep_dir, launcher=fake_launcher).read_text()
    assert "#SBATCH --array=0-2\n" in text and "sgd_momentum, seed 0" not in text
    assert text.count("exec ") == 3


@pytest.mark.parametrize("flag", ["--submit", "--sbatch=--time=01:00:00"])
def test_slurm_flags_without_slurm_are_one_line_and_run_nothing(tmp_path, capsys, flag):
    argv = ["sweep", f"--config={SMOKE}", f"--workdir={tmp_path / 'sw'}", flag]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: --submit and --sbatch go with --slurm (without it the sweep runs here)\n"
    assert not (tmp_path / "sw").exists()


# ---------------------------------------------------------------------------------------------
# Report statistics on hand-made runs, checked against numpy/scipy.
# ---------------------------------------------------------------------------------------------

ACCURACY = {"baseline": [0.95, 0.97, 0.96], "wide": [0.98, 0.985, 0.99], "deep": [0.90, 0.99]}


def make_run(path: Path, cell: str, seed: int, accuracy: float, overrides: dict, expected=None):
    """A finished run as a sweep leaves it: cell.json, config.json, results.json, metrics.jsonl."""
    path.mkdir(parents=True)
    cell_record = {"cell": cell, "seed": seed, "baseline": "baseline", "overrides": overrides}
    (path / "cell.json").write_text(json.dumps(cell_record | {"attempts": []}))
    (path / "config.json").write_text(json.dumps({"experiment": "x", "train": {"seed": seed}}))
    met = None if expected is None else accuracy >= expected["value"] - expected["tolerance"]
    results = {
        "experiment": "x",
        "step": 10,
        "wall_s": 10.0 + seed,
        "metrics": {"test/accuracy": accuracy, "test/loss": 1 - accuracy},
        "expected": expected,
        "expected_met": met,
    }
    (path / "results.json").write_text(json.dumps(results))
    records = [
        {"step": 5, "split": "train", "loss": 2 - accuracy},
        {"step": 10, "split": "eval", "loss": 1 - accuracy, "accuracy": accuracy},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def hand_made_sweep(tmp_path) -> Path:
    expected = {"metric": "test/accuracy", "value": 0.97, "tolerance": 0.005,
                "comparison": ">=", "source": "Table 1"}  # fmt: skip
    for cell, values in ACCURACY.items():
        overrides = {"train.steps": "10"} | ({} if cell == "baseline" else {"model.width": cell})
        for seed, value in enumerate(values):
            make_run(tmp_path / "sw" / cell / f"seed_{seed}", cell, seed, value,
                     overrides | {"train.seed": str(seed)}, expected)  # fmt: skip
    unfinished = tmp_path / "sw" / "deep" / "seed_2"  # Interrupted: not in the table, but noted.
    unfinished.mkdir()
    (unfinished / "checkpoints").mkdir()
    cell = {"cell": "deep", "seed": 2, "baseline": "baseline", "overrides": {}, "attempts": []}
    (unfinished / "cell.json").write_text(json.dumps(cell))
    (unfinished / "metrics.jsonl").write_text('{"step": 5, "split": "train", "loss": 1.5}\n')
    plan = {
        "runs": [{"cell": c, "seed": s} for c in ("baseline", "wide", "deep") for s in (0, 1, 2)]
    }
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(plan))  # The order of the rows.
    return tmp_path / "sw"


def test_report_statistics_match_numpy_and_scipy(hand_made_sweep, tmp_path):
    text = report.report([hand_made_sweep], out=tmp_path / "out")
    with (tmp_path / "out" / "table.csv").open() as f:
        table = {row["cell"]: row for row in csv.DictReader(f)}
    assert list(table) == ["baseline", "wide", "deep"]
    base = np.array(ACCURACY["baseline"])
    for cell, values in ACCURACY.items():
        values, row = np.array(values), table[cell]
        assert int(row["n"]) == len(values)
        assert float(row["test/accuracy mean"]) == pytest.approx(values.mean(), rel=1e-12)
        assert float(row["test/accuracy std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert float(row["wall_s mean"]) == pytest.approx(10 + np.arange(len(values)).mean())
        if cell == "baseline":
            assert row["test/accuracy delta"] == ""
            continue
        welch = scipy_stats.ttest_ind(values, base, equal_var=False).confidence_interval(0.95)
        assert float(row["test/accuracy delta"]) == pytest.approx(values.mean() - base.mean())
        assert float(row["test/accuracy delta_lo95"]) == pytest.approx(welch.low, rel=1e-9)
        assert float(row["test/accuracy delta_hi95"]) == pytest.approx(welch.high, rel=1e-9)

    # Expected-result checks use the mean over seeds: 0.96 >= 0.97 - 0.005 fails; 0.985 passes.
    with (tmp_path / "out" / "checks.csv").open() as f:
        checks = {row["cell"]: row for row in csv.DictReader(f)}
    assert {c: r["verdict"] for c, r in checks.items()} == {
        "baseline": "FAIL", "wide": "PASS", "deep": "FAIL",
    }  # fmt: skip
    assert checks["baseline"]["seeds met"] == "1/3" and checks["baseline"]["source"] == "Table 1"

    assert "Every cell: train.steps=10" in text
    assert (
        f"Not finished (not in the table): {hand_made_sweep}/deep/seed_2 (interrupted at step 5)"
        in text
    )
    assert "| wide | model.width=wide | 3 | 0.9850 ± 0.0050 |" in text
    for name in ("report.md", "curves.png", "bars_test_accuracy.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_mean_interval_matches_scipy():
    values = [0.91, 0.93, 0.96, 0.92]
    low, high = stats.mean_interval(values)
    expected = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(stats.mean_interval([0.9])).all()
    assert stats.difference_interval([0.5, 0.5], [0.4, 0.4]) == pytest.approx((0.1, 0.1, 0.1))


def test_plain_runs_group_when_they_differ_only_in_seed(tmp_path):
    """Run workdirs not made by a sweep: grouped by config minus seed, labelled by overrides."""
    for name, lr, seed, accuracy in [("a0", 0.1, 0, 0.9), ("a1", 0.1, 1, 0.8), ("b0", 0.3, 0, 0.7)]:
        path = tmp_path / name
        path.mkdir()
        config = {"experiment": "x", "optimizer": {"learning_rate": lr}, "train": {"seed": seed}}
        (path / "config.json").write_text(json.dumps(config))
        command = ["python", "launch.py", f"--config.optimizer.learning_rate={lr}",
                   f"--config.train.seed={seed}"]  # fmt: skip
        (path / "provenance.json").write_text(json.dumps({"command": command}))
        results = {"wall_s": 1.0, "metrics": {"test/accuracy": accuracy}, "expected": None}
        (path / "results.json").write_text(json.dumps(results))
    cells = runs.group([runs.load_run(p) for p in runs.find_runs([tmp_path])])
    assert [(c.name, c.values("test/accuracy")) for c in cells] == [
        ("x optimizer.learning_rate=0.1", [0.9, 0.8]),
        ("x optimizer.learning_rate=0.3", [0.7]),
    ]
    with pytest.raises(ConfigError, match="--out"):
        report.report([tmp_path / "a0", tmp_path / "b0"])
    text = report.report([tmp_path / "a0"])  # A single run: one row, no baseline delta.
    assert "| x optimizer.learning_rate=0.1 (baseline) | optimizer.learning_rate=0.1 | 1 |" in text


def test_report_skips_unreadable_runs_in_one_line_each_and_reports_the_rest(
    hand_made_sweep, tmp_path, capsys
):
    sw_dir = hand_made_sweep
    (sw_dir / "wide" / "seed_2" / "config.json").write_text('{"experiment": "x", "tra')
    (sw_dir / "baseline" / "seed_1" / "results.json").write_text("not json\n")
    metrics = sw_dir / "deep" / "seed_0" / "metrics.jsonl"  # Damaged before its last line.
    metrics.write_text('{"step": 5, "spl\n' + metrics.read_text())
    # A crash mid-write tears the last line: ignored, and the runs are still reported.
    for torn in (sw_dir / "deep" / "seed_1", sw_dir / "deep" / "seed_2"):
        with (torn / "metrics.jsonl").open("a") as f:
            f.write('{"step": 12, "split": "tr')

    assert launch.main(["report", str(sw_dir), f"--out={tmp_path / 'out'}"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"skipping {sw_dir}/baseline/seed_1: results.json is not valid JSON",
        f"skipping {sw_dir}/wide/seed_2: config.json is not valid JSON",
        f"skipping {sw_dir}/deep/seed_0: metrics.jsonl line 1 is not valid JSON",
    ]
    assert "Traceback" not in captured.out + captured.err
    with (tmp_path / "out" / "table.csv").open() as f:
        table = {row["cell"]: row for row in csv.DictReader(f)}
    assert {cell: (row["n"], row["seeds"]) for cell, row in table.items()} == {
        "baseline": ("2", "0 2"), "wide": ("2", "0 1"), "deep": ("1", "1"),
    }  # fmt: skip
    assert float(table["deep"]["test/accuracy mean"]) == pytest.approx(ACCURACY["deep"][1])
    assert f"{sw_dir}/deep/seed_2 (interrupted at step 5)" in captured.out


def test_report_with_no_readable_run_is_one_error_line(tmp_path, capsys):
    make_run(tmp_path / "a", "baseline", 0, 0.9, {"train.seed": "0"})
    (tmp_path / "a" / "config.json").write_text("{")
    assert launch.main(["report", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"skipping {tmp_path}/a: config.json is not valid JSON",
        f"error: none of the 1 run(s) under {tmp_path}/a could be read (see the lines above)",
    ]
    with pytest.raises(ConfigError, match="could be read"):
        report.report([tmp_path / "a"])


def test_sweeps_modules_import_downward_only():
    """No import cycle inside research/sweeps (plots once imported report, which imports plots)."""
    package = ROOT / "research" / "sweeps"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    imports = {}
    for name in modules:
        tree = ast.parse((package / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            module = getattr(node, "module", None) or ""  # ast.ImportFrom: from <module> import
            if module == "research.sweeps":
                found |= {a.name for a in node.names}
            elif module.startswith("research.sweeps."):
                found.add(module.rpartition(".")[2])
        imports[name] = found & modules
    assert imports["runs"] == set() and imports["stats"] == set()
    assert "report" not in imports["plots"]
    order = list(graphlib.TopologicalSorter(imports).static_order())  # Raises on a cycle.
    assert set(order) == modules


# ---------------------------------------------------------------------------------------------
# End to end: launch.py sweep, report, and a second sweep that does nothing.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_and_report_end_to_end(tmp_path, capsys):
    """The sweep in a subprocess as a user runs it; report and the no-op rerun in-process (faster)."""
    sweep_dir = tmp_path / "sw"
    command = ["sweep", f"--config={SMOKE}", f"--workdir={sweep_dir}", "--parallel=2"]
    done = subprocess.run(
        [sys.executable, "launch.py", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4 runs done, 0 failed" in done.stdout

    assert launch.main(["report", str(sweep_dir)]) == 0
    printed = capsys.readouterr().out
    accuracy = {
        cell: [
            json.loads((sweep_dir / cell / f"seed_{s}" / "results.json").read_text())["metrics"][
                "test/accuracy"
            ]
            for s in (0, 1)
        ]
        for cell in ("baseline", "sgd_momentum")
    }
    with (sweep_dir / "report" / "table.csv").open() as f:
        table = {row["cell"]: row for row in csv.DictReader(f)}
    for cell, values in accuracy.items():
        assert table[cell]["n"] == "2" and table[cell]["seeds"] == "0 1"
        assert float(table[cell]["test/accuracy mean"]) == pytest.approx(np.mean(values))
    assert "| sgd_momentum | optimizer.learning_rate=0.1, optimizer.name=sgd | 2 |" in printed
    assert {p.name for p in (sweep_dir / "report").iterdir()} == {
        "report.md", "table.csv", "curves.png", "bars_test_accuracy.png",
    }  # fmt: skip

    results = sorted(sweep_dir.glob("*/seed_*/results.json"))
    before = [p.stat().st_mtime_ns for p in results]
    assert launch.main(command) == 0
    assert "4 done, 0 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results] == before
    attempts = [json.loads(p.with_name("cell.json").read_text())["attempts"] for p in results]
    assert all(len(a) == 1 for a in attempts)
