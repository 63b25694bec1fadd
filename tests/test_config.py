"""Experiment loading, overrides, validation and the launcher's one-line errors (exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from research import config as cfg
from research.expected import Expected

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_"))


def test_overrides_are_typed():
    c = cfg.build_config(
        "experiments/digits_cnn.py",
        {
            "optimizer.learning_rate": "0.05",
            "train.steps": "70",
            "data.augment.flip": "true",
            "schedule.boundaries": "(3, 5)",
            "optimizer.name": "sgd",
        },
    )
    assert c.optimizer.learning_rate == 0.05 and isinstance(c.optimizer.learning_rate, float)
    assert c.train.steps == 70 and c.data.augment.flip is True
    assert c.schedule.boundaries == (3, 5)
    assert c.experiment == "digits_cnn"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer.lr": "0.1"}, "unknown config key --config.optimizer.lr"),
        ({"nope.x": "1"}, "unknown config key --config.nope"),
        ({"train.steps": "1.5"}, "expected an integer"),
        ({"optimizer.learning_rate": "fast"}, "expected a number"),
        ({"data.augment.flip": "maybe"}, "expected true or false"),
        ({"optimizer.learning_rate": "-0.1"}, "learning_rate"),
        ({"train.batch_size": "0"}, "train.batch_size must be a positive integer"),
        ({"optimizer.name": "lamb"}, "optimizer.name"),
        ({"model.name": "transformer9000"}, "model.name"),
        ({"optimizer.grad_accum_steps": "3"}, "not divisible by optimizer.grad_accum_steps"),
        ({"data": "x"}, "is a section"),
    ],
)
def test_bad_overrides_raise_one_line(overrides, message):
    with pytest.raises(cfg.ConfigError) as error:
        cfg.build_config("experiments/digits_cnn.py", overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_batch_must_split_over_devices():
    c = cfg.build_config("experiments/digits_cnn.py", {"train.batch_size": "12"})
    with pytest.raises(cfg.ConfigError, match="does not split over 8 batch shards"):
        cfg.validate(c, device_count=8)
    cfg.validate(c, device_count=4)


def test_variant_parsing():
    assert cfg.parse_arg("depth=56,smoke", depth=20, smoke=False).to_dict() == {
        "depth": 56,
        "smoke": True,
    }
    with pytest.raises(cfg.ConfigError, match="unknown variant 'dpeth'"):
        cfg.parse_arg("dpeth=56", depth=20)
    c = cfg.load_experiment("experiments/cifar10_resnet56.py:smoke")
    assert (c.model.depth, c.data.mock, c.experiment) == (8, True, "cifar10_resnet56:smoke")
    assert cfg.load_experiment("experiments/cifar10_resnet56.py").model.depth == 56


def test_resnet110_warmup_schedule():
    from research import optim

    c = cfg.load_experiment("experiments/cifar10_resnet110.py")
    schedule = optim.build_schedule(c.schedule, c.optimizer.learning_rate, c.train.steps)
    values = [float(schedule(s)) for s in (0, 399, 400, 31999, 32000, 48000, 63999)]
    assert values == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_is_documented_and_complete(path):
    """Docstring gives the command, the expected result's source and the runtime; sections exist."""
    if path.stem in ("__init__",):
        return
    module = cfg.experiment_module(str(path))
    doc = module.__doc__ or ""
    assert "python launch.py --config=experiments/" in doc, "docstring lacks the exact command"
    assert "Expected" in doc and "Runtime" in doc
    c = cfg.load_experiment(f"{path}:smoke")
    assert set(cfg.SECTIONS) <= set(c.keys())
    assert json.loads(json.dumps(c.to_dict())) is not None  # Configs are data: JSON-serialisable.
    cfg.validate(cfg.load_experiment(str(path)))


def test_expected_check():
    fields = dict(metric="test/accuracy", value=0.9, tolerance=0.01, comparison=">=")
    at_least = Expected.from_fields(fields)
    assert at_least.met({"test/accuracy": 0.895}) is True
    assert at_least.met({"test/accuracy": 0.88}) is False
    assert at_least.met({}) is False
    at_most = Expected.from_fields(fields | {"comparison": "<="})
    assert at_most.met({"test/accuracy": 0.905}) is True
    assert at_most.met({"test/accuracy": 0.92}) is False
    assert (
        Expected.from_fields(fields | {"comparison": "within"}).met({"test/accuracy": 0.92})
        is False
    )
    assert Expected.from_fields(fields | {"metric": ""}) is None
    # A results.json record from before `comparison` was stored reads with the declared default.
    assert Expected.from_fields({"metric": "test/accuracy", "value": 0.9}).comparison == ">="


def launch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run launch.py in a subprocess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config=experiments/nope.py"], "experiment file 'experiments/nope.py' not found"),
        (["--config=experiments/digits_cnn.py", "--config.train.stpes=3"], "unknown config key"),
        (["--config=experiments/digits_cnn.py", "--config.train.steps=x"], "expected an integer"),
        (
            ["--config=experiments/digits_cnn.py", "--config.optimizer.learning_rate=-1"],
            "learning_rate",
        ),
        (["--config=experiments/digits_cnn.py", "--config.train.steps"], "give a value"),
        (["--config=experiments/digits_cnn.py:smok"], "unknown variant"),
        (["--config=experiments/digits_cnn.py", "--bogus"], "unrecognised argument"),
        (
            ["--config=experiments/digits_cnn.py", "--config.data.name=no_such_dataset"],
            "no_such_dataset",
        ),
    ],
)
def test_launcher_errors_exit_2_with_one_line_and_write_nothing(tmp_path, args, message):
    out = launch(*args, f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists()


def test_launcher_refuses_another_experiments_workdir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"experiment": "cifar10_resnet20"}))
    before = sorted(p.name for p in run.iterdir())
    out = launch("--config=experiments/digits_cnn.py:smoke", f"--workdir={run}")
    assert out.returncode == 2
    assert "holds a run of 'cifar10_resnet20'" in out.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def test_model_smaller_than_the_data_is_refused_before_writing(tmp_path):
    out = launch(
        "--config=experiments/digits_cnn.py:smoke",
        "--config.model.num_classes=5",
        f"--workdir={tmp_path / 'run'}",
    )
    assert out.returncode == 2
    assert "the model has 5 outputs but the data has 10 classes" in out.stderr
    assert not (tmp_path / "run").exists()
