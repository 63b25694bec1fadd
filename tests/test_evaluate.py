"""`launch.py eval`: a run's weights evaluated again give its own final metrics, bit for bit;
--best and --step choose checkpoints; mistakes are one line and write nothing."""

import json

import pytest

import launch
from research import config as cfg
from research import evaluate, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = train.run(cfg.build_config("experiments/digits_cnn.py:smoke", {}), workdir)
    return workdir, result


def test_eval_reproduces_the_runs_final_metrics(finished_run):
    workdir, trained = finished_run
    result = evaluate.evaluate(None, workdir)
    assert result["step"] == 12
    assert result["metrics"] == trained["metrics"]  # bitwise: same weights, same evaluation
    on_disk = json.loads((workdir / "eval_step12" / "results.json").read_text())
    assert on_disk["metrics"] == trained["metrics"] and on_disk["evaluated"]["step"] == 12


def test_best_and_step_choose_checkpoints(finished_run, tmp_path):
    workdir, _ = finished_run
    earlier = evaluate.evaluate(None, workdir, tmp_path / "at6", step=6)
    assert earlier["step"] == 6
    best = evaluate.evaluate(None, workdir, tmp_path / "best", best=True)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = {m["step"]: m["accuracy"] for m in metrics if m["split"] == "eval"}
    assert best["step"] == max(evals, key=lambda s: (evals[s], -s))  # first step of the best


def test_other_data_through_an_experiment(finished_run, tmp_path):
    workdir, _ = finished_run
    config = cfg.build_config("experiments/digits_cnn.py:smoke", {"data.test_split": "train"})
    result = evaluate.evaluate(config, workdir, tmp_path / "on_train")
    assert set(result["metrics"]) >= {"eval/accuracy", "test/accuracy"}
    assert result["metrics"]["test/accuracy"] != result["metrics"]["eval/accuracy"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir={tmp}/nothing"], "holds no run"),
        (["--workdir={run}", "--step=5"], "not a checkpoint"),
        (["--workdir={run}", "--step=6", "--best"], "not both"),
        (["--workdir={run}", "--config.train.seed=1"], "need --config"),
        (
            [
                "--workdir={run}",
                "--config=experiments/digits_cnn.py:smoke",
                "--config.model.hidden=64",
            ],
            "dense",
        ),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(finished_run, tmp_path, capsys, args, message):
    workdir, _ = finished_run
    before = sorted(p.name for p in workdir.iterdir())
    argv = ["eval", *(a.format(tmp=tmp_path, run=workdir) for a in args)]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0].lower()
    assert sorted(p.name for p in workdir.iterdir()) == before
