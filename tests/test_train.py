"""The trainer end to end on tiny runs: workdir contract, resume, accumulation, EMA, early stop."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from research import checkpoint, data, models, train
from research import config as cfg

ROOT = Path(__file__).resolve().parents[1]
SMOKE = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_"))


def smoke_config(overrides: dict | None = None, experiment: str = "digits_cnn:smoke"):
    """A smoke variant with overrides applied and validated."""
    return cfg.build_config(f"experiments/{experiment.replace(':', '.py:', 1)}", overrides or {})


def final_state(workdir: Path, step: int | None = None) -> dict:
    """The saved train state of `workdir` at `step` (default: latest) as numpy arrays."""
    _, state = checkpoint.restore_state(workdir / "checkpoints", step)
    return jax.tree.map(np.asarray, state)


def assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    result = train.run(
        smoke_config(), workdir, argv=["launch.py", "--config=experiments/digits_cnn.py:smoke"]
    )
    return workdir, result


def test_workdir_contract(smoke_run):
    workdir, result = smoke_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert set(on_disk) >= {"experiment", "step", "wall_s", "metrics", "expected", "expected_met"}
    assert on_disk["experiment"] == "digits_cnn:smoke" and on_disk["step"] == 12
    assert on_disk["expected"] is None and on_disk["expected_met"] is None
    assert 0.0 <= on_disk["metrics"]["test/accuracy"] <= 1.0
    assert set(on_disk["metrics"]) >= {
        "test/loss",
        "test/accuracy",
        "test/top5_accuracy",
        "eval/accuracy",
    }
    matrix = np.array(on_disk["details"]["test"]["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 360  # Every test example counted once.

    assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 12
    provenance = json.loads((workdir / "provenance.json").read_text())
    assert provenance["packages"]["jax"] == jax.__version__ and provenance["devices"]
    assert "git_sha" in provenance and "git_dirty" in provenance and provenance["command"]

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [4, 8, 12]
    assert all(
        r["steps_per_s"] > 0 and r["examples_per_s"] > 0 for r in records if r["split"] == "train"
    )
    assert [r["step"] for r in records if r["split"] == "eval"] == [6, 12]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        6,
        12,
    ]


def test_eval_accuracy_matches_an_independent_forward_pass(smoke_run):
    """The padded, masked eval loop counts each test example exactly once."""
    workdir, result = smoke_run
    config = smoke_config()
    state = final_state(workdir)
    model = models.build(config.model)
    batch = next(
        iter(
            data.eval_batches(
                config.data, "test", global_batch_size=512, process_index=0, process_count=1
            )
        )
    )
    logits = model.apply(
        {"params": state["params"], **state["model_state"]}, batch["image"], train=False
    )
    mask = batch["mask"]
    accuracy = float(np.mean(np.asarray(logits).argmax(-1)[mask] == batch["label"][mask]))
    assert mask.sum() == 360
    assert result["metrics"]["test/accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_resume_is_bitwise_equal(tmp_path):
    """N steps in one go == N/2 steps, stop, relaunch, N/2 more (params, optimizer, EMA, step)."""
    overrides = {
        "optimizer.ema_decay": "0.9",
        "train.checkpoint_every_steps": "3",
        "data.augment.flip": "true",
    }
    whole = train.run(smoke_config(overrides), tmp_path / "whole")
    half = train.run(smoke_config(overrides), tmp_path / "split", stop_after_step=5, argv=["a"])
    assert half == {"experiment": "digits_cnn:smoke", "step": 5, "finished": False, "signal": None}
    resumed = train.run(smoke_config(overrides), tmp_path / "split", argv=["b"])
    provenance = json.loads((tmp_path / "split" / "provenance.json").read_text())
    assert provenance["command"][1:] == ["b"]  # The latest launch, and the one before it.
    assert [p["command"][1:] for p in provenance["earlier_launches"]] == [["a"]]
    assert_trees_equal(final_state(tmp_path / "whole"), final_state(tmp_path / "split"))
    assert whole["metrics"] == resumed["metrics"]
    lines = lambda wd: [
        {
            k: v
            for k, v in json.loads(line).items()
            if k not in ("steps_per_s", "examples_per_s", "time", "elapsed_s")  # Timing.
        }
        for line in (wd / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines(tmp_path / "whole") == lines(tmp_path / "split")


def test_each_eval_split_is_built_once(tmp_path, monkeypatch):
    """Evaluations iterate one dataset per split again, rather than reading the split anew."""
    built = []
    eval_batches = data.eval_batches
    monkeypatch.setattr(
        data,
        "eval_batches",
        lambda c, split, **kw: built.append(split) or eval_batches(c, split, **kw),
    )
    config = smoke_config({"train.eval_every_steps": "3"})
    result = train.run(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6, 9, 12]
    assert sorted(built) == sorted({config.data.eval_split, config.data.test_split})
    assert 0.0 <= result["metrics"]["test/accuracy"] <= 1.0


def test_eval_max_batches_caps_intermediate_evaluations_only(tmp_path, monkeypatch):
    """train.eval_max_batches: the step-6 evaluation scores 2 batches; the last one and the test
    evaluation score the whole split, so the reported result is unchanged."""
    taken = []

    class Counted:
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            taken.append(0)
            for batch in self.batches:
                taken[-1] += 1
                yield batch

    eval_batches = data.eval_batches
    monkeypatch.setattr(data, "eval_batches", lambda c, s, **kw: Counted(eval_batches(c, s, **kw)))
    overrides = {"train.eval_every_steps": "6", "train.eval_batch_size": "32"}
    full = train.run(smoke_config(overrides), tmp_path / "full")
    whole = taken[0]
    assert whole == 12 and taken == [whole] * 3  # 360 examples in batches of 32; 3 evaluations.
    taken.clear()
    capped = train.run(smoke_config(overrides | {"train.eval_max_batches": "2"}), tmp_path / "cap")
    assert taken == [2, whole, whole]  # A generator stops pulling when islice is done.
    assert capped["metrics"] == full["metrics"]


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """k micro-batches give the full-batch update (no BatchNorm, no dropout): equal to float error."""
    base = {"train.steps": "4", "train.eval_every_steps": "4", "train.checkpoint_every_steps": "4"}
    train.run(smoke_config(base), tmp_path / "k1")
    train.run(smoke_config(base | {"optimizer.grad_accum_steps": "4"}), tmp_path / "k4")
    a, b = final_state(tmp_path / "k1")["params"], final_state(tmp_path / "k4")["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)


def test_ema_is_evaluated_and_tracks_params(tmp_path):
    overrides = {"optimizer.ema_decay": "0.5", "train.steps": "3", "train.eval_every_steps": "3"}
    train.run(smoke_config(overrides), tmp_path)
    state = final_state(tmp_path)
    assert int(state["step"]) == 3
    leaf = lambda tree: jax.tree.leaves(tree)[0]
    assert not np.array_equal(leaf(state["ema_params"]), leaf(state["params"]))


def test_early_stopping(tmp_path):
    """With a learning rate too small to change predictions, eval accuracy never improves."""
    overrides = {
        "optimizer.learning_rate": "1e-12",
        "train.eval_every_steps": "2",
        "train.early_stopping_patience": "2",
    }
    result = train.run(smoke_config(overrides), tmp_path)
    assert result["stopped_early"] is True and result["step"] == 6 and result["best_step"] == 2


@pytest.mark.parametrize("experiment", SMOKE)
def test_every_experiment_smoke_variant_trains(tmp_path, experiment):
    """No experiment file can rot: each one's `smoke` variant runs through the real trainer."""
    result = train.run(cfg.build_config(f"experiments/{experiment}.py:smoke", {}), tmp_path)
    assert result["step"] == cfg.load_experiment(f"experiments/{experiment}.py:smoke").train.steps
    assert np.isfinite(result["metrics"]["test/loss"])


def test_several_steps_per_call_match_one_step_per_call(tmp_path):
    """A scanned chunk of steps computes the same updates as one step per call (to float error)."""
    base = {"train.steps": "12", "train.log_every_steps": "4"}
    one = train.run(smoke_config(base), tmp_path / "one")
    four = train.run(smoke_config(base | {"train.steps_per_call": "5"}), tmp_path / "four")
    for x, y in zip(
        jax.tree.leaves(final_state(tmp_path / "one")),
        jax.tree.leaves(final_state(tmp_path / "four")),
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert one["metrics"]["test/accuracy"] == pytest.approx(
        four["metrics"]["test/accuracy"], abs=1 / 360
    )
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "four" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [
        4,
        6,
        8,
        12,
        12,
        12,
    ]  # Chunks stop at log (4), eval (6) and checkpoint boundaries.
