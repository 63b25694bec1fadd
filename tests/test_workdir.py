"""A workdir belongs to one run: its lock, the relaunch rules, forks, and finished runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from research import config as cfg
from research import train, workdir
from research.errors import ConfigMismatch
from tests.helpers import launch_here, snapshot

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "experiments/digits_cnn.py:smoke"


@pytest.fixture
def finished(tmp_path_factory) -> Path:
    """A finished 12-step smoke run (a fresh copy per test that changes it)."""
    wd = tmp_path_factory.mktemp("finished") / "run"
    train.run(cfg.build_config(SMOKE, {}), wd)
    return wd


# -------------------------------------------------------------------------------------------------
# Relaunch rules.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--config.model.hidden=64", "model.hidden: 128 -> 64"),
        ("--config.optimizer.learning_rate=0.01", "optimizer.learning_rate: 0.003 -> 0.01"),
        ("--config.train.seed=1", "train.seed: 0 -> 1"),
    ],
)
def test_relaunch_with_a_different_run_config_is_refused_and_changes_nothing(
    finished, capsys, override, named
):
    before = snapshot(finished)
    status, _, err = launch_here([f"--config={SMOKE}", f"--workdir={finished}", override], capsys)
    assert status == 2 and err.count("\n") == 1
    assert named in err and "--fork_from" in err
    assert snapshot(finished) == before  # config.json, metrics, checkpoints: byte for byte.
    assert not list(finished.parent.glob("corrupt_checkpoint_*"))


def test_relaunch_of_a_finished_run_prints_its_results_and_evaluates_nothing(finished, capsys):
    before = snapshot(finished)
    status, out, _ = launch_here([f"--config={SMOKE}", f"--workdir={finished}"], capsys)
    assert status == 0
    assert "has finished" in out and "test/accuracy" in out
    assert snapshot(finished) == before  # No second test record, no new provenance.


def test_extending_a_finished_run_resumes_it_and_retires_its_results(finished, capsys):
    old = json.loads((finished / "results.json").read_text())
    status, out, _ = launch_here(
        [f"--config={SMOKE}", f"--workdir={finished}", "--config.train.steps=18"], capsys
    )
    assert status == 0 and "resuming with changes: train.steps: 12 -> 18" in out
    assert json.loads((finished / "results_step12.json").read_text()) == old
    new = json.loads((finished / "results.json").read_text())
    assert new["step"] == 18
    records = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "test"] == [12, 18]
    provenance = json.loads((finished / "provenance.json").read_text())
    assert provenance["changed"] == {"train.steps": [12, 18]}
    assert len(provenance["earlier_launches"]) == 1


def test_resumable_changes_resume_and_are_recorded(tmp_path):
    wd = tmp_path / "run"
    config = cfg.build_config(SMOKE, {})
    assert train.run(config, wd, stop_after_step=6)["step"] == 6
    changed = cfg.build_config(SMOKE, {"train.log_every_steps": "3", "train.eval_batch_size": "32"})
    result = train.run(changed, wd)
    assert result["step"] == 12
    provenance = json.loads((wd / "provenance.json").read_text())
    assert provenance["changed"] == {
        "train.eval_batch_size": [64, 32],
        "train.log_every_steps": [4, 3],
    }
    for key in (
        "train.steps",
        "parallel.strategy",
        "expected.value",
        "data.data_dir",
        "data.workers",
    ):
        assert workdir.resumable(key), key
    for key in ("model.hidden", "optimizer.learning_rate", "train.seed", "data.name", "task"):
        assert not workdir.resumable(key), key


def test_fewer_steps_than_the_run_has_taken_is_refused(finished):
    with pytest.raises(ConfigMismatch, match="below step 12"):
        train.run(cfg.build_config(SMOKE, {"train.steps": "6"}), finished)


def test_a_checkpoint_that_does_not_fit_the_model_is_a_mismatch_not_corruption(finished):
    """Even with config.json gone, the checkpoint's shapes are checked, and nothing moved aside."""
    (finished / "config.json").unlink()
    (finished / "results.json").unlink()
    before = snapshot(finished)
    with pytest.raises(ConfigMismatch, match="does not fit this model"):
        train.run(cfg.build_config(SMOKE, {"model.hidden": "64"}), finished)
    assert snapshot(finished) == before
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["12", "6"]


# -------------------------------------------------------------------------------------------------
# Forks.
# -------------------------------------------------------------------------------------------------


def test_fork_continues_from_the_latest_checkpoint_under_a_new_config(finished, tmp_path, capsys):
    before = snapshot(finished)
    fork = tmp_path / "fork"
    status, out, _ = launch_here(
        [
            f"--config={SMOKE}",
            f"--workdir={fork}",
            f"--fork_from={finished}",
            "--config.optimizer.learning_rate=0.001",
            "--config.train.steps=18",
        ],
        capsys,
    )
    assert status == 0 and "forked from" in out
    assert snapshot(finished) == before  # The original run is untouched.
    provenance = json.loads((fork / "provenance.json").read_text())
    assert provenance["forked_from"]["step"] == 12
    assert provenance["forked_from"]["changed"] == {
        "optimizer.learning_rate": [0.003, 0.001],
        "train.steps": [12, 18],
    }
    records = [json.loads(x) for x in (fork / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [16, 18]  # From step 12 on.
    assert json.loads((fork / "results.json").read_text())["step"] == 18


def test_fork_into_a_used_workdir_or_from_nothing_is_refused(finished, tmp_path):
    with pytest.raises(cfg.ConfigError, match="already holds a run"):
        train.run(cfg.build_config(SMOKE, {}), finished, fork_from=finished)
    with pytest.raises(cfg.ConfigError, match="holds no run with a checkpoint"):
        train.run(cfg.build_config(SMOKE, {}), tmp_path / "new", fork_from=tmp_path / "nothing")
    with pytest.raises(ConfigMismatch, match="does not fit this model"):
        train.run(
            cfg.build_config(SMOKE, {"model.hidden": "64"}), tmp_path / "new", fork_from=finished
        )
    assert not (tmp_path / "new").exists()


# -------------------------------------------------------------------------------------------------
# The lock.
# -------------------------------------------------------------------------------------------------


def test_a_second_launch_on_a_busy_workdir_is_refused_in_one_line(finished, capsys):
    lock = workdir.Lock(finished)
    assert lock.acquire() is None
    try:
        before = snapshot(finished)
        status, _, err = launch_here(
            [f"--config={SMOKE}", f"--workdir={finished}", "--config.train.steps=18"], capsys
        )
        assert status == 2 and err.count("\n") == 1
        assert f"is in use by PID {os.getpid()}" in err
        assert snapshot(finished) == before
    finally:
        lock.release()
    assert not (finished / "lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(finished, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    holder = {"host": "elsewhere", "pid": int(dead.stdout), "started": "2026-01-01T00:00:00+00:00"}
    (finished / "lock").write_text(json.dumps(holder))  # As a killed run leaves it: unlocked.
    status, out, _ = launch_here(
        [f"--config={SMOKE}", f"--workdir={finished}", "--config.train.steps=18"], capsys
    )
    assert status == 0
    assert f"took over the lock of PID {holder['pid']} on elsewhere" in out
    assert not (finished / "lock").exists()  # Released at the end.


def test_two_launches_at_once_one_trains_the_other_is_refused(tmp_path):
    """Real processes: the second finds the first's lock; metrics get no duplicate steps."""
    wd = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "launch.py"),
        f"--config={SMOKE}",
        f"--workdir={wd}",
        "--config.train.steps=100000",
        "--config.train.log_every_steps=10",
        "--config.train.eval_every_steps=1000",
        "--config.train.checkpoint_every_steps=1000",
    ]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (wd / "metrics.jsonl").exists() and time.time() < deadline:
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.2)
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # Still training while the second was refused.
    finally:
        first.send_signal(signal.SIGTERM)  # Preemption: saves and exits 128 + 15.
        first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert "is in use by PID" in second.stderr and second.stderr.count("\n") == 1
    assert first.returncode == 128 + signal.SIGTERM
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps and train_steps == list(range(10, 10 * len(train_steps) + 1, 10))
    assert not (wd / "lock").exists()
