"""Evaluation-only runs: weights from a run's checkpoint (or another source), scored on an
experiment's data with its metrics, written like a training run's final evaluation.

    # A finished (or running) run, its own config and data: the latest checkpoint, or --best/--step.
    python launch.py eval --workdir=runs/digits_cnn
    python launch.py eval --workdir=runs/digits_cnn --best --out=runs/digits_cnn/eval_best
    # The same weights on other data or with other metrics: any experiment, any overrides.
    python launch.py eval --workdir=runs/shakespeare_cpu --config=experiments/shakespeare_char_gpt.py:cpu \\
        --config.data.path=other.txt --out=runs/shakespeare_cpu/eval_other

`--workdir` names where the weights come from: a run's workdir, or any source `init.source`
accepts (research/initialize.py). The config is the run's config.json unless `--config` names an
experiment; its model must have the weights' shapes (checked first, one line naming the first
parameter that differs). A run trained with EMA is evaluated on its EMA parameters, as its own
evaluations were; BatchNorm statistics come from the checkpoint.

The results go to `--out` (default <workdir>/eval_step<N>): config.json, provenance.json (where the
weights came from), results.json with eval/ and test/ metrics (the expected-result check included)
and whatever files the task writes (translations). Nothing of the source is written.
"""

import time
from pathlib import Path

import jax
import ml_collections

from research import checkpoint, initialize, models, parallel, train, workdir
from research.errors import ConfigError


def evaluate(
    config: ml_collections.ConfigDict | None,
    source: str | Path,
    out: str | Path | None = None,
    *,
    step: int = 0,
    best: bool = False,
    argv: list[str] = (),
) -> dict:
    """Evaluate the weights at `source` (step: 0 = latest; `best`: the run's best step) with
    `config` (None: the run's own config.json); write and return results.json's record."""
    started = time.time()
    source = workdir.path(source)  # Local, or a bucket (gs://); so may `out` be.
    is_run = (source / "checkpoints").is_dir()
    if config is None:
        stored = workdir.stored_config(source) if is_run else None
        if stored is None:
            raise ConfigError(
                f"{source} holds no run (config.json and checkpoints/); pass --config=experiments/"
                "<x>.py to say which model, data and metrics to evaluate with"
            )
        config = ml_collections.ConfigDict(stored)
        config.lock()
    if is_run:
        step = _chosen_step(source, step, best)
    elif best:
        raise ConfigError(f"--best needs a run's workdir; {source} is not one")
    info, parts, abstract_state = train.prepare_model(config)
    init = ml_collections.ConfigDict(dict(source=str(source), step=step, include="", exclude=""))
    plan = initialize.plan(init, abstract_state["params"])  # every parameter, shapes checked
    out = workdir.path(out) if out is not None else source / f"eval_step{plan.step}"
    workdir.check_path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out={out} is not empty; remove it or choose another directory")
    eval_data = train.eval_batches(config)
    model_state = {}
    if is_run:
        _, saved = checkpoint.restore_state(source / "checkpoints", plan.step)
        use_ema = bool(jax.tree.leaves(saved.get("ema_params", {})))
        params = saved["ema_params"] if use_ema else saved["params"]
        model_state = saved.get("model_state", {})
    else:
        params = initialize.apply(plan, abstract_state["params"])
        if jax.tree.leaves(abstract_state["model_state"]):
            raise ConfigError(
                f"the model keeps running statistics (BatchNorm), which {source} does not have"
            )
    want = initialize.paths(abstract_state["model_state"])
    if initialize.paths(model_state) != want:
        raise ConfigError(f"the model's running statistics do not fit those saved in {source}")

    is_main = jax.process_index() == 0
    if is_main:
        if not workdir.is_bucket(out):
            out.mkdir(parents=True, exist_ok=True)
        workdir.write_json(out / "config.json", config.to_dict())
        workdir.record_provenance(
            out / "provenance.json",
            list(argv),
            evaluated={"weights": str(workdir.absolute(source)), "step": plan.step},
            model_dtype=models.dtype(config.model),  # "auto" as resolved on this processor
        )
    mesh = parallel.make_mesh(config.parallel)
    replicated = parallel.replicated(mesh)
    params, model_state = jax.device_put((params, model_state), replicated)
    evaluator = train.Evaluator.build(parts, info, eval_data, mesh, out if is_main else None)
    metrics = {}
    details = {}
    for split, prefix in ((config.data.eval_split, "eval"), (config.data.test_split, "test")):
        values, details = evaluator(params, model_state, split, generate=prefix == "test")
        metrics |= {f"{prefix}/{k}": v for k, v in values.items()}
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
    result = workdir.results(
        config,
        plan.step,
        time.time() - started,
        metrics,
        num_params=num_params,
        evaluated={"weights": str(workdir.absolute(source)), "step": plan.step},
        details={"test": {k: v for k, v in details.items() if not k.startswith("_")}},
    )
    if is_main:
        workdir.write_json(out / "results.json", result)
        print(parts.task.report(details), flush=True)
        print(train.summary_line(result), flush=True)
    return result


def _chosen_step(run: Path, step: int, best: bool) -> int:
    """--step N, --best (the run's best by train.best_metric) or the latest checkpoint."""
    steps = checkpoint.all_steps(run / "checkpoints")
    if not steps:
        raise ConfigError(f"{run} has no checkpoint yet")
    if best and step:
        raise ConfigError("give --step or --best, not both")
    if best:
        meta = checkpoint.read_meta(run / "checkpoints", steps[-1])
        chosen = meta.get("best_step")
        if chosen is None:
            raise ConfigError(f"{run} records no best step (train.best_metric was empty)")
        if chosen not in steps:
            raise ConfigError(f"{run}'s best step {chosen} is no longer kept (it has {steps})")
        return chosen
    if step and step not in steps:
        raise ConfigError(f"--step={step} is not a checkpoint of {run}; it has {steps}")
    return step or steps[-1]
