"""Nothing lost: crashes at any moment, corrupt checkpoints and leftovers resume bit-exactly."""

import shutil
import signal
import subprocess
import sys
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


def drive(workdir: Path, point: str = "never", step: int = 0) -> subprocess.CompletedProcess:
    """Run the driver; `point`/`step` choose where it kills itself."""
    return subprocess.run(
        [sys.executable, str(DRIVER), str(workdir), point, str(step), *OVERRIDES],
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
