"""Know early: reference curves checked at every evaluation, and a console that says what happens."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import launch
from research import config as cfg
from research import train
from research.errors import TrainingHalted
from research.expected import Curve

SMOKE = "experiments/digits_cnn.py:smoke"
# Evaluations of the digits smoke run land at steps 6 and 12, its eval/loss between 1.8 and 2.3.
ON_CURVE = {
    "expected.curve.metric": "eval/loss",
    "expected.curve.steps": "(6, 12)",
    "expected.curve.values": "(2.0, 2.0)",
    "expected.curve.tolerance": "1.0",
    "expected.curve.source": "a test band wide enough for any smoke run",
}
OFF_CURVE = ON_CURVE | {"expected.curve.values": "(9.0, 9.0)", "expected.curve.tolerance": "0.5"}


def records(workdir: Path, split: str) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_curve_interpolates_between_declared_steps_and_judges_the_band():
    curve = Curve.from_fields(
        dict(metric="eval/loss", steps=(250, 500), values=(2.4, 2.2), tolerance=0.05, source="x")
    )
    assert curve.reference(250) == 2.4 and curve.reference(500) == 2.2
    assert curve.reference(375) == pytest.approx(2.3)
    assert curve.reference(249) is None and curve.reference(501) is None  # No extrapolation.
    on = curve.standing(375, {"eval/loss": 2.34})
    assert on.inside and on.delta == pytest.approx(0.04)
    assert on.short() == "on the reference curve (2.3 +/- 0.05)"
    off = curve.standing(375, {"eval/loss": 2.42})
    assert not off.inside
    assert off.warning() == (
        "eval/loss 2.42 at step 375 is 0.12 above the reference curve (2.3 +/- 0.05), source: x"
    )
    assert not curve.standing(375, {"eval/loss": float("nan")}).inside
    assert curve.standing(375, {"eval/accuracy": 0.5}) is None
    assert Curve.from_fields(dict(metric="", steps=(), values=(), tolerance=0, source="")) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"expected.curve.metric": "test/loss"}, "name an eval metric"),
        ({"expected.curve.metric": "eval/loss", "expected.curve.steps": "(1, 2)"}, "one value"),
        (ON_CURVE | {"expected.curve.steps": "(12, 6)"}, "must increase"),
        (ON_CURVE | {"train.off_curve": "panic"}, "train.off_curve"),
    ],
)
def test_bad_curves_are_config_errors(overrides, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.build_config(SMOKE, overrides)


def test_curve_metric_must_be_one_the_run_evaluates(tmp_path):
    config = cfg.build_config(SMOKE, ON_CURVE | {"expected.curve.metric": "eval/perplexity"})
    with pytest.raises(cfg.ConfigError, match="not a metric of this run"):
        train.prepare(config, tmp_path / "run")


def test_each_evaluation_prints_its_metrics_and_standing(tmp_path, capsys):
    assert launch.main([f"--config={SMOKE}", f"--workdir={tmp_path}", *_flags(ON_CURVE)]) == 0
    out = capsys.readouterr().out
    evals = [line for line in out.splitlines() if line.startswith("eval at step")]
    assert [line.split(":")[0] for line in evals] == ["eval at step 6", "eval at step 12"]
    assert all("accuracy" in line and "on the reference curve (2 +/- 1)" in line for line in evals)
    assert "warning" not in out
    assert out.count("compiled the train step in") == 1
    standing = records(tmp_path, "reference")
    assert [r["step"] for r in standing] == [6, 12] and all(r["inside"] for r in standing)
    losses = [r["loss"] for r in records(tmp_path, "eval")]
    np.testing.assert_allclose([r["value"] for r in standing], losses)
    np.testing.assert_allclose([r["delta"] for r in standing], np.array(losses) - 2.0)


def test_leaving_the_band_warns_once_and_stop_halts_with_a_checkpoint(tmp_path, capsys):
    assert (
        launch.main([f"--config={SMOKE}", f"--workdir={tmp_path / 'warn'}", *_flags(OFF_CURVE)])
        == 0
    )
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1  # Both evaluations are off the curve; one warning.
    assert "at step 6 is" in warnings[0] and "below the reference curve (9 +/- 0.5)" in warnings[0]
    assert "source: a test band" in warnings[0]

    stop = tmp_path / "stop"
    config = cfg.build_config(SMOKE, OFF_CURVE | {"train.off_curve": "stop"})
    with pytest.raises(TrainingHalted, match="stopped \\(train.off_curve=stop\\)"):
        train.run(config, stop)
    assert sorted(p.name for p in (stop / "checkpoints").iterdir()) == ["6"]
    # Going on is a resumable change; the warning is not repeated.
    capsys.readouterr()
    result = train.run(cfg.build_config(SMOKE, OFF_CURVE | {"train.off_curve": "warn"}), stop)
    assert result["step"] == 12 and "warning:" not in capsys.readouterr().out


def test_every_record_has_wall_clock_time_and_elapsed_seconds(tmp_path):
    train.run(cfg.build_config(SMOKE, {}), tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time"].endswith("+00:00") and r["elapsed_s"] > 0 for r in lines)
    elapsed = [r["elapsed_s"] for r in lines]
    assert elapsed == sorted(elapsed)
    # Throughput excludes the first (compiling) call: the first window counts 3 of its 4 steps.
    first = records(tmp_path, "train")[0]
    assert first["step"] == 4 and first["examples_per_s"] == pytest.approx(
        first["steps_per_s"] * 32
    )


def test_tfds_notes_without_news_are_filtered():
    from research.data import sources  # noqa: F401 - installs the filter on import.

    absl = logging.getLogger("absl")
    make = lambda message: logging.LogRecord("absl", logging.WARNING, "", 0, message, (), None)
    assert not absl.filter(make("Variant folder /x/1.0.0 has no dataset_info.json"))
    assert not absl.filter(make("Using custom data configuration: TextFileConfig(...)"))
    assert absl.filter(make("checkpoint step 12 is unreadable"))


def test_report_draws_the_reference_curve_behind_the_runs(tmp_path):
    from research.sweeps import plots, runs

    train.run(cfg.build_config(SMOKE, ON_CURVE), tmp_path / "run")
    cells = runs.group([runs.load_run(tmp_path / "run")])
    found = plots._reference_curves(cells)
    assert list(found) == ["eval/loss"] and found["eval/loss"].values == (2.0, 2.0)
    assert plots.plot_curves(cells, "test/accuracy", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def _flags(overrides: dict[str, str]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]
