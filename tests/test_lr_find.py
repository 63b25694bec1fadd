"""research/lr_find.py: the learning-rate range test on the digits CNN, against what training measured.

The good range below was measured by training the full recipe (experiments/digits_cnn.py, AdamW,
warmup_cosine, 800 steps) at peak learning rates 1e-4 ... 3e-1: docs/results.md, section
"Learning-rate range test (digits CNN)".
"""

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import launch
from research import lr_find, workdir
from research.config import build_config
from research.errors import ConfigError, WorkdirBusy

# Peak learning rates whose 800-step recipe reached test accuracy >= 0.98 (docs/results.md):
# 3e-3 (0.9944) ... 1e-1 (0.9833); 1e-3 reached 0.9750 and 3e-1 diverged (0.1028).
GOOD_RANGE = (3e-3, 1e-1)
MIN_LR, MAX_LR, NUM_STEPS = 1e-5, 1.0, 200  # 40 steps a decade: the README's run.


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def numpy_smoothed(losses: np.ndarray, beta: float) -> np.ndarray:
    """fastai's bias-corrected EMA in closed form: sum_j beta^(i-j) (1-beta) loss_j / (1-beta^(i+1))."""
    i = np.arange(len(losses))
    weights = np.tril(beta ** np.subtract.outer(i, i).clip(min=0))
    return (1 - beta) * weights @ losses / (1 - beta ** (i + 1))


@pytest.fixture(scope="module")
def range_test(tmp_path_factory) -> tuple[Path, int, str]:
    """The README's command on the digits CNN, run through launch.py in this process: (workdir,
    exit status, what it printed)."""
    wd = tmp_path_factory.mktemp("lr_find") / "digits"
    argv = [
        "lr_find",
        "--config=experiments/digits_cnn.py",
        f"--workdir={wd}",
        f"--min_lr={MIN_LR}",
        f"--max_lr={MAX_LR}",
        f"--num_steps={NUM_STEPS}",
        "--config.train.batch_size=128",  # The recipe's own batch.
    ]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        status = launch.main(argv)
    return wd, status, printed.getvalue()


def test_suggestion_lies_in_the_range_that_trains_the_recipe(range_test):
    wd, status, printed = range_test
    assert status == 0
    assert {"lr_find.csv", "lr_find.json", "lr_find.png"} <= {p.name for p in wd.iterdir()}
    assert not (wd / workdir.LOCK_FILE).exists()  # Released.
    assert (wd / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((wd / "lr_find.json").read_text())
    assert GOOD_RANGE[0] <= record["suggested_lr"] <= GOOD_RANGE[1], record["suggested_lr"]
    assert record["rule"] == lr_find.RULE
    assert record["suggested_lr"] == pytest.approx(record["minimum_lr"] / 10)
    assert record["steepest_descent_lr"] < record["minimum_lr"]
    assert record["experiment"] == "digits_cnn"
    assert record["overrides"] == {"train.batch_size": "128"}
    assert record["config"]["schedule"]["name"] == "exponential"
    assert record["config"]["optimizer"]["name"] == "adamw"  # The recipe's optimizer, kept.
    assert record["config"]["optimizer"]["weight_decay"] == 1e-4
    final = printed.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"suggested learning rate: {record['suggested_lr']:.1e} \(the smoothed loss's minimum "
        rf"/ 10; steepest descent: {record['steepest_descent_lr']:.1e}\); lr_find.png, "
        rf"lr_find.csv in {re.escape(str(wd))}",
        final,
    ), final


def test_learning_rates_ramp_exponentially_and_the_loss_is_smoothed_as_fastai(range_test):
    wd = range_test[0]
    record = json.loads((wd / "lr_find.json").read_text())
    table = read_csv(wd / "lr_find.csv")
    n = record["steps_run"]
    np.testing.assert_array_equal(table["step"], np.arange(n))
    # The rates the real step used (its logged schedule value), against the closed form.
    ramp = MIN_LR * (MAX_LR / MIN_LR) ** (np.arange(n) / (NUM_STEPS - 1))
    np.testing.assert_allclose(table["lr"], ramp, rtol=1e-5)
    smoothed = numpy_smoothed(table["loss"], record["smoothing"])
    np.testing.assert_allclose(table["smoothed_loss"], smoothed, rtol=1e-9)
    at_min = int(np.argmin(smoothed))
    assert record["minimum_lr"] == pytest.approx(table["lr"][at_min])
    assert table["loss"][0] == pytest.approx(np.log(10), abs=0.05)  # Chance level, 10 classes.
    assert smoothed[at_min] < 0.5 * smoothed[0]  # It trained.


def test_divergence_stops_the_test_and_says_why(tmp_path):
    config = build_config("experiments/digits_cnn.py", {})
    record = lr_find.lr_find(config, tmp_path, min_lr=1e-2, max_lr=100.0, num_steps=20)
    assert record["stopped_early"] and record["steps_run"] < 20
    assert "exceeded 4 x its best" in record["stop_reason"]
    assert (
        json.loads((tmp_path / "lr_find.json").read_text())["stop_reason"] == record["stop_reason"]
    )
    assert len(read_csv(tmp_path / "lr_find.csv")["step"]) == record["steps_run"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--min_lr=1", "--max_lr=0.1"], "must be below --max_lr"),
        (["--min_lr=0"], "--min_lr=0.0: give a finite number > 0"),
        (["--max_lr=-1"], "--max_lr=-1.0: give a finite number > 0"),
        (["--num_steps=5"], "--num_steps=5: give at least 10"),
        (["--num_steps=ten"], "invalid int value"),
        (["--config.train.batch_size=0"], "train.batch_size must be a positive integer"),
        (["--config.optimizer.lr=0.1"], "unknown config key --config.optimizer.lr"),
    ],
)
def test_bad_flags_are_one_line_errors_and_write_nothing(flags, message, tmp_path, capsys):
    wd = tmp_path / "lr_find"
    status = launch.main(
        ["lr_find", "--config=experiments/digits_cnn.py", f"--workdir={wd}", *flags]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    assert not wd.exists()


def test_smoothing_and_diverge_factor_are_checked(tmp_path):
    config = build_config("experiments/digits_cnn.py", {})
    for bad in ({"smoothing": 1.0}, {"diverge_factor": 1.0}):
        with pytest.raises(ConfigError):
            lr_find.lr_find(config, tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


def test_a_busy_workdir_is_refused(tmp_path):
    lock = workdir.Lock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(WorkdirBusy, match="is in use by PID"):
            lr_find.lr_find(build_config("experiments/digits_cnn.py", {}), tmp_path)
    finally:
        lock.release()
    assert not list(tmp_path.glob("lr_find.*"))
