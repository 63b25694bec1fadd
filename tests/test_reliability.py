"""Nothing lost: crashes at any moment, corrupt checkpoints and leftovers resume bit-exactly."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import assert_trees_equal, final_state

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "drivers" / "die_at.py"
# Long enough to have several checkpoints; augmentation on so the data order and draws matter.
OVERRIDES = (
    "--config.train.steps=16",
    "--config.train.checkpoint_every_steps=4",
    "--config.train.eval_every_steps=8",
    "--config.train.log_every_steps=1",
    "--config.optimizer.ema_decay=0.9",
    "--config.data.augment.flip=true",
)


def drive(
    workdir: Path, point: str = "never", step: int | str = 0, *extra: str
) -> subprocess.CompletedProcess:
    """Run the driver; `point`/`step` choose the fault (tests/drivers/die_at.py)."""
    return subprocess.run(
        [sys.executable, str(DRIVER), str(workdir), point, str(step), *OVERRIDES, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run's workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    assert drive(workdir).returncode == 0
    return workdir


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    """The uninterrupted run's final train state."""
    return final_state(reference_run)


@pytest.mark.parametrize(
    ("point", "step"),
    [
        ("log", 2),  # Before the first checkpoint exists: starts over.
        ("log", 10),  # Between checkpoints 8 and 12: steps 9-10 are redone.
        ("save", 12),  # While checkpoint 12 is being written asynchronously.
    ],
)
def test_sigkill_then_relaunch_is_bitwise_equal(tmp_path, reference, point, step):
    killed = drive(tmp_path, point, step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "results.json").exists()
    resumed = drive(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_trees_equal(final_state(tmp_path), reference)


def _step_dirs(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_truncated_latest_checkpoint_falls_back_to_the_previous_step(tmp_path, reference):
    assert drive(tmp_path, "stop", 12).returncode == 0
    assert _step_dirs(tmp_path) == [4, 8, 12]
    # Damage step 12: cut every array file short, as a disk-full or interrupted copy would.
    damaged = [p for p in (tmp_path / "checkpoints" / "12" / "state").rglob("*") if p.is_file()]
    assert damaged
    for path in damaged:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    resumed = drive(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint step 12 is unreadable" in resumed.stderr
    assert_trees_equal(final_state(tmp_path), reference)


def test_missing_files_and_leftover_temporary_directories(tmp_path, reference):
    assert drive(tmp_path, "stop", 12).returncode == 0
    shutil.rmtree(tmp_path / "checkpoints" / "12" / "state")  # A partially copied step.
    leftover = tmp_path / "checkpoints" / "13.orbax-checkpoint-tmp-1700000000"
    leftover.mkdir()
    (leftover / "junk").write_text("partial")
    resumed = drive(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not leftover.exists()
    assert_trees_equal(final_state(tmp_path), reference)


def test_no_pickle_in_checkpoints(reference_run, reference):
    for path in (reference_run / "checkpoints").rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"pickle-like file {path}"
    assert jax.tree.leaves(reference) and all(
        isinstance(x, np.ndarray) for x in jax.tree.leaves(reference)
    )


def _all_checkpoints_finite(workdir: Path) -> bool:
    steps = _step_dirs(workdir)
    assert steps
    return all(
        all(
            np.isfinite(x).all()
            for x in jax.tree.leaves(final_state(workdir, s))
            if x.dtype.kind == "f"
        )
        for s in steps
    )


def test_nan_halts_by_default_naming_the_step_and_last_good_checkpoint(tmp_path):
    out = drive(tmp_path, "nan", 5)  # Batch index 5 is step 6's; checkpoints at 4, 8, ...
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "non-finite loss or update at step 6" in errors[0]
    assert f"Last good checkpoint: step 4 in {tmp_path / 'checkpoints'}" in errors[0]
    assert _step_dirs(tmp_path) == [4]  # Nothing after the bad step was saved ...
    assert _all_checkpoints_finite(tmp_path)  # ... and nothing non-finite ever.
    assert not (tmp_path / "results.json").exists()


def test_skip_policy_skips_and_counts_then_finishes(tmp_path, reference):
    out = drive(tmp_path, "nan", "5:1", "--config.train.nonfinite=skip")
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_logs = {r["step"]: r for r in records if r["split"] == "train"}
    assert train_logs[5]["skipped_updates"] == 0
    assert train_logs[6]["skipped_updates"] == 1 and train_logs[6]["update_applied"] == 0.0
    assert train_logs[16]["skipped_updates"] == 1
    assert _all_checkpoints_finite(tmp_path)
    state = final_state(tmp_path)
    assert int(state["guard"]["skipped"]) == 1 and int(state["step"]) == 16
    assert not np.array_equal(
        state["params"]["Dense_1"]["kernel"], reference["params"]["Dense_1"]["kernel"]
    )


def test_skip_policy_stops_after_consecutive_skips(tmp_path):
    out = drive(
        tmp_path,
        "nan",
        5,
        "--config.train.nonfinite=skip",
        "--config.train.max_consecutive_skips=3",
    )
    assert out.returncode == 1
    assert (
        "3 consecutive updates skipped" in out.stderr
        and "Last good checkpoint: step 4" in out.stderr
    )
    assert _all_checkpoints_finite(tmp_path)


def test_loss_spike_guard_skips_the_spike_only_when_on(tmp_path):
    steps = (
        "--config.train.steps=28",
        "--config.train.checkpoint_every_steps=28",
        "--config.train.eval_every_steps=28",
    )
    on = drive(tmp_path / "on", "spike", 24, *steps, "--config.train.loss_spike_sigmas=3")
    off = drive(tmp_path / "off", "spike", 24, *steps)
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    skipped = lambda wd: int(final_state(wd)["guard"]["skipped"])
    assert skipped(tmp_path / "on") == 1 and skipped(tmp_path / "off") == 0


def test_failed_save_is_reported_and_earlier_checkpoints_survive(tmp_path, reference):
    out = drive(tmp_path, "diskfull", 8)
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "saving checkpoint step 8 failed" in errors[0]
    assert "No space left on device" in errors[0] and "earlier checkpoints [4]" in errors[0]
    assert _step_dirs(tmp_path) == [4]
    resumed = drive(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_trees_equal(final_state(tmp_path), reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_preemption_saves_at_the_current_step_and_the_restart_continues(tmp_path, signum):
    long_run = [
        "--config.train.steps=5000",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=5000",
    ]
    command = [sys.executable, str(DRIVER), str(tmp_path), "never", "0", *long_run]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]
    name = signal.Signals(signum).name
    match = re.search(rf"received {name} at step (\d+) of 5000: checkpoint saved", stdout)
    assert match, stdout[-2000:]
    stopped_at = int(match.group(1))
    assert stopped_at in _step_dirs(tmp_path)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert max(logged) == stopped_at  # Logs flushed up to the saved step.
    again = subprocess.run(
        [*command, f"--stop_after_step={stopped_at + 2}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from step {stopped_at}" in again.stderr
    assert int(final_state(tmp_path)["step"]) == stopped_at + 2


def test_when_one_process_dies_the_other_exits_nonzero_in_bounded_time(tmp_path):
    """2 local processes (jax.distributed on 127.0.0.1): SIGKILL one, the other must not hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--config=experiments/digits_cnn.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        "--config.train.steps=1000000",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=1000000",
        "--config.train.checkpoint_every_steps=1000000",
        f"--coordinator=127.0.0.1:{port}",
        "--num_processes=2",
        "--heartbeat_timeout_s=10",
    ]
    logs = [(tmp_path / f"p{i}.log").open("w") for i in range(2)]
    processes = [
        subprocess.Popen(
            [*command, f"--process_id={i}"], cwd=ROOT, env=env, stdout=logs[i], stderr=logs[i]
        )
        for i in range(2)
    ]
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 2
    ):
        assert all(p.poll() is None for p in processes), (tmp_path / "p0.log").read_text()[-2000:]
        time.sleep(0.5)
    processes[1].kill()
    killed_at = time.time()
    try:
        code = processes[0].wait(timeout=120)
    finally:
        for p in processes:
            p.kill()
    waited = time.time() - killed_at
    assert code != 0
    assert waited < 60, f"the survivor took {waited:.0f}s to stop"
    assert "stopped sending heartbeats" in (tmp_path / "p0.log").read_text()
