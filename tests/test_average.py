"""`launch.py average`: the mean of a run's last checkpoints, as an evaluable checkpoint."""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import launch
from research import average, checkpoint, train
from research import config as cfg


def snapshot(directory: Path, skip: str) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and skip not in p.parts
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A smoke run with checkpoints at steps 6 and 12 (EMA on, so that is averaged too)."""
    wd = tmp_path_factory.mktemp("average") / "run"
    train.run(
        cfg.build_config("experiments/digits_cnn.py:smoke", {"optimizer.ema_decay": "0.5"}), wd
    )
    return wd


def test_the_average_of_two_checkpoints_is_their_elementwise_mean(run_dir, capsys):
    before = snapshot(run_dir, "average_last2")
    assert launch.main(["average", f"--workdir={run_dir}", "--last=2"]) == 0
    assert "averaged steps [6, 12]" in capsys.readouterr().out
    out = run_dir / "average_last2"
    _, six = checkpoint.restore_state(run_dir / "checkpoints", 6)
    _, twelve = checkpoint.restore_state(run_dir / "checkpoints", 12)
    step, averaged = checkpoint.restore_state(out / "checkpoints")
    assert step == 12 and int(averaged["step"]) == 12
    for part in ("params", "ema_params"):
        for a, b, m in zip(*(jax.tree.leaves(s[part]) for s in (six, twelve, averaged))):
            np.testing.assert_allclose(m, (np.asarray(a, np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
            assert not np.array_equal(m, b)  # It is not the last checkpoint.
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 12 and 0 <= results["metrics"]["test/accuracy"] <= 1
    assert results["experiment"] == "digits_cnn:smoke:average_last2"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["earlier_launches"][0]["averaged_from"]["steps"] == [6, 12]
    assert snapshot(run_dir, "average_last2") == before  # The run itself is only read.


def test_average_of_one_checkpoint_evaluates_it_unchanged(run_dir, tmp_path):
    result = average.average(run_dir, 1, tmp_path / "one")
    original = json.loads((run_dir / "results.json").read_text())
    assert result["metrics"]["test/accuracy"] == original["metrics"]["test/accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--last=3"], "fewer than --last=3"),
        (["--last=0"], "at least one"),
    ],
)
def test_bad_requests_are_one_line(run_dir, capsys, args, message):
    assert launch.main(["average", f"--workdir={run_dir}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_workdir_without_a_run_is_refused(tmp_path, capsys):
    assert launch.main(["average", f"--workdir={tmp_path}", "--last=2"]) == 2
    assert "has no config.json" in capsys.readouterr().err
