"""The trainer: config in, trained model, metrics, checkpoints and results.json out.

Read it top to bottom: preparation (every check, before the workdir is touched), the workdir (lock,
relaunch rules, records), mesh and shardings, the compiled steps, evaluation, checkpoint/resume,
the loop, final evaluation. The state and the steps are research/steps.py's; this file runs them.
"""

import dataclasses
import functools
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from research import (
    checkpoint,
    data,
    guard,
    hardware,
    initialize,
    lora,
    models,
    optim,
    parallel,
    sharding,
    steps,
    workdir,
)
from research.data import DatasetInfo
from research.errors import ConfigError, ConfigMismatch, TrainingHalted
from research.expected import Curve, Expected
from research.models import conv
from research.preemption import Preemption
from research.writer import NOT_METRICS, MetricWriter, read_metrics

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------
# Preparation: everything a run needs is checked here, and nothing is written.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run that has passed every check, and what the checks built."""

    info: DatasetInfo
    parts: steps.Parts
    abstract_state: dict
    num_params: int
    eval_data: dict[str, Any]  # split -> this process's evaluation batches (iterable again)
    relaunch: workdir.Relaunch
    init: initialize.Plan | None  # Weights from another run (config.init), for a fresh start.
    num_trainable: int  # Parameters that train (optimizer.trainable/freeze, LoRA).


def prepare(
    config: ml_collections.ConfigDict,
    workdir_path: Path,
    *,
    fork_from: Path | None = None,
    stop_after_step: int | None = None,
) -> Prepared:
    """Check the whole run without writing anything; raise one error naming the first problem.

    The config's fields were checked when it was built (research/config.py); here: the layout on
    this machine's devices, the data (readable, its splits, long enough for a window), the model
    on the data's shapes (traced with eval_shape, nothing allocated), the metrics named by
    train.best_metric and expected.metric, and the workdir (a directory we may write; the relaunch
    rules of research/workdir.py; a checkpoint that fits the model).
    """
    if stop_after_step is not None and stop_after_step < 1:
        raise ConfigError(f"--stop_after_step={stop_after_step}: give a step >= 1")
    info, parts, abstract_state = prepare_model(config)
    _check_metric_names(config, parts.task, info)
    eval_data = eval_batches(config)
    if parts.task.generate is not None:  # Trace generation once: a bad setting shows up now.
        example = next(iter(eval_data[config.data.test_split]))
        try:
            jax.eval_shape(
                functools.partial(steps.generate_step, parts),
                abstract_state["params"],
                abstract_state["model_state"],
                example,
            )
        except (ValueError, TypeError) as e:
            raise ConfigError(f"decoding: {_first_line(e)}") from None
    relaunch = workdir.inspect(workdir_path, config, fork_from)
    if relaunch.latest_step is not None and not relaunch.finished:
        source = relaunch.fork_from or workdir_path
        different = checkpoint.mismatches(
            source / "checkpoints", relaunch.latest_step, abstract_state
        )
        if different:
            raise ConfigMismatch(
                f"the checkpoint at step {relaunch.latest_step} in {source} does not fit this "
                f"model ({different}); use a fresh --workdir"
            )
    fresh = relaunch.latest_step is None  # A run resuming its own checkpoint ignores config.init.
    # LoRA's adapters are new: only the base model's parameters come from config.init.
    init = initialize.plan(config.init, lora.base(abstract_state["params"])) if fresh else None
    params = abstract_state["params"]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    trains = jax.tree.leaves(steps.trainable(parts, params))
    num_trainable = sum(x.size for x, t in zip(jax.tree.leaves(params), trains) if t)
    return Prepared(
        info, parts, abstract_state, num_params, eval_data, relaunch, init, num_trainable
    )


def prepare_model(config: ml_collections.ConfigDict) -> tuple[DatasetInfo, steps.Parts, dict]:
    """The data's description, the step's parts and the state's shapes, checked: the layout
    fits the devices, the data is readable, the model has enough outputs and runs on the data's
    shapes (traced with eval_shape: nothing allocated). Raises ConfigError/DatasetUnavailable."""
    parallel.validate(config, jax.device_count())
    info = data.info(config.data)
    parts = steps.build(config, info.input_shape)
    if parts.model.num_outputs < info.num_classes:
        raise ConfigError(
            f"the model has {parts.model.num_outputs} outputs but the data has "
            f"{info.num_classes} classes (or tokens); raise the model's num_classes / vocab_size"
        )
    try:
        if parts.groups is not None:  # Checked first: the optimizer's state depends on them.
            _check_groups(config, parts)
        with sharding.recording_heads() as heads:
            abstract_state = steps.abstract_state(parts)
        mesh = parallel.mesh_shape(config.parallel, jax.device_count())
        sharding.check_model(mesh, config.model.name, abstract_state["params"], heads)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # The model cannot run on these shapes.
        raise ConfigError(f"model: {_first_line(e)}") from None
    return info, parts, abstract_state


def _check_groups(config: ml_collections.ConfigDict, parts: steps.Parts) -> None:
    """LoRA's targets and the parameter groups' patterns must fit the model's parameters."""
    variables = jax.eval_shape(functools.partial(steps.init_variables, parts), parts.init_key)
    try:
        lora.check(config.lora, optim.param_names(variables["params"]))
        steps.trainable(parts, variables["params"])
    except ValueError as e:
        raise ConfigError(_first_line(e)) from None


def eval_batches(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """split -> this process's evaluation batches, for the eval and test splits."""
    return {
        split: data.eval_batches(
            config.data,
            split,
            global_batch_size=config.train.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        for split in dict.fromkeys((config.data.eval_split, config.data.test_split))
    }


def _check_metric_names(config: ml_collections.ConfigDict, task: Any, info: DatasetInfo) -> None:
    """train.best_metric, expected.metric and expected.curve.metric must name metrics the run
    reports where they are read; metrics of generated outputs (BLEU, ...) exist at evaluations
    only with decode.on_eval."""
    names = task.metric_names(info)
    at_eval = [n for n in names if n not in task.generated_metrics or config.decode.on_eval]
    wanted = [("train.best_metric", config.train.best_metric, ("eval",))]
    target = Expected.from_fields(config.expected)
    if target:
        wanted.append(("expected.metric", target.metric, ("eval", "test")))
    curve = Curve.from_fields(config.expected.curve)
    if curve:
        wanted.append(("expected.curve.metric", curve.metric, ("eval",)))
    for field, metric, splits in wanted:
        if not metric:
            continue
        split, _, name = metric.partition("/")
        available = names if split == "test" else at_eval
        if split not in splits or name not in available:
            known = ", ".join(
                f"{s}/{n}" for s in splits for n in (names if s == "test" else at_eval)
            )
            hint = (
                f"; {name} is computed at evaluations only with --config.decode.on_eval=true"
                if name in names and name not in available
                else ""
            )
            raise ConfigError(
                f"{field}={metric!r} is not a metric of this run; use one of {known}{hint}"
            )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -------------------------------------------------------------------------------------------------
# The run.
# -------------------------------------------------------------------------------------------------


def run(
    config: ml_collections.ConfigDict,
    workdir_path: str | Path,
    *,
    argv: list[str] = (),
    stop_after_step: int | None = None,
    fork_from: str | Path | None = None,
) -> dict:
    """Train and evaluate `config` in `workdir_path`, resuming the run it holds.

    `stop_after_step` ends this process after that step, checkpointed (for jobs with a time limit:
    the next launch resumes); the final test evaluation then waits for the run's last step.
    `fork_from` starts this (fresh) workdir from the latest checkpoint of another run's workdir.

    Raises ConfigError (and its kinds: ConfigMismatch, WorkdirBusy) or DatasetUnavailable before
    writing anything; TrainingHalted or SaveFailed if training stops.
    """
    started = time.time()
    wd = workdir.path(workdir_path)  # A local path or a bucket (gs://); refuses other schemes.
    fork_from = workdir.path(fork_from) if fork_from is not None else None
    prep = prepare(config, wd, fork_from=fork_from, stop_after_step=stop_after_step)
    relaunch = prep.relaunch
    is_main = jax.process_index() == 0
    if relaunch.finished:  # Nothing to train or evaluate: say what it achieved.
        if is_main:
            print(f"{wd} has finished; its results:\n{summary_line(relaunch.results)}", flush=True)
        return relaunch.results
    if stop_after_step and relaunch.latest_step and relaunch.latest_step >= stop_after_step:
        if is_main:
            print(f"{wd} is at step {relaunch.latest_step} already: nothing to run", flush=True)
        return {"experiment": config.experiment, "step": relaunch.latest_step, "finished": False}

    # ---------------------------------------------------------------------------------------------
    # Workdir: created only now, locked for this run, its records written.
    # ---------------------------------------------------------------------------------------------
    if not workdir.is_bucket(wd):  # A bucket has no directories (and its existence was checked).
        wd.mkdir(parents=True, exist_ok=True)
    with workdir.locked(wd) as stale_note:
        if is_main:
            if stale_note:
                print(f"{wd}: {stale_note}", flush=True)
            # The config may say dtype "auto": what it resolved to on this processor.
            extra = {"model_dtype": models.dtype(config.model)}
            if "conv_impl" in config.model:  # The ResNets' "auto" likewise.
                extra["model_conv_impl"] = conv.resolve(config.model.conv_impl)
            if relaunch.fork_from is not None:
                checkpoint.copy_step(
                    relaunch.fork_from / "checkpoints", relaunch.latest_step, wd / "checkpoints"
                )
                extra["forked_from"] = {
                    "workdir": str(workdir.absolute(relaunch.fork_from)),
                    "step": relaunch.latest_step,
                    "changed": relaunch.changes,
                }
                print(
                    f"forked from {relaunch.fork_from} at step {relaunch.latest_step}; changed: "
                    f"{workdir.describe_changes(relaunch.changes) or 'nothing'}",
                    flush=True,
                )
            elif prep.init is not None:
                extra["initialized_from"] = {
                    "workdir": str(workdir.absolute(prep.init.source)),
                    "step": prep.init.step,
                    "copied": list(prep.init.copied),
                    "fresh": list(prep.init.fresh),
                }
                print(prep.init.describe(), flush=True)
            elif relaunch.changes:
                extra["changed"] = relaunch.changes
                print(
                    f"resuming with changes: {workdir.describe_changes(relaunch.changes)}",
                    flush=True,
                )
            if relaunch.results is not None:  # Extended past its end: those results are old.
                workdir.supersede_results(wd, relaunch.results["step"])
            workdir.write_json(wd / "config.json", config.to_dict())
            workdir.record_provenance(wd / "provenance.json", list(argv), **extra)
            for name, content in prep.info.workdir_files.items():
                path = wd / name
                path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
                    content
                )
        return _train(config, wd, prep, started, stop_after_step)


def _train(
    config: ml_collections.ConfigDict,
    wd: Path,
    prep: Prepared,
    started: float,
    stop_after_step: int | None,
) -> dict:
    """Set up devices, state and data; run the loop; evaluate on the test split."""
    parts, tc = prep.parts, config.train
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------------------------------------
    # Mesh, shardings and the compiled steps.
    # ---------------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.parallel)
    state_sharding = parallel.state_sharding(prep.abstract_state, mesh)  # Replicated, or FSDP.
    stacked = tc.steps_per_call > 1
    compiled_step = steps.compile_train_step(
        parts, config.parallel, mesh, state_sharding, tc.steps_per_call
    )

    # ---------------------------------------------------------------------------------------------
    # Input.
    # ---------------------------------------------------------------------------------------------
    train_iter = data.train_iterator(
        config.data,
        global_batch_size=tc.batch_size,
        seed=tc.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    # ---------------------------------------------------------------------------------------------
    # Evaluation: every example exactly once (padding masked out), on the EMA weights if enabled.
    # ---------------------------------------------------------------------------------------------
    evaluator = Evaluator.build(parts, prep.info, prep.eval_data, mesh, wd if is_main else None)

    def evaluate(
        state: dict, split: str, generate: bool, max_batches: int = 0
    ) -> tuple[dict[str, float], dict]:
        """Metrics of the current (or EMA) parameters on a split (see `Evaluator`)."""
        params = state["ema_params"] if parts.ema_decay else state["params"]
        return evaluator(params, state["model_state"], split, generate, max_batches)

    # ---------------------------------------------------------------------------------------------
    # Checkpoint: resume from the newest readable step, or initialise.
    # ---------------------------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        wd / "checkpoints",
        keep=tc.keep_checkpoints,
        best_metric=tc.best_metric,
        best_mode=tc.best_mode,
    )
    abstract_with_sharding = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        prep.abstract_state,
        state_sharding,
    )
    restored = ckpt.restore(abstract_with_sharding)
    if restored is None:
        state = jax.jit(lambda key: steps.init_state(parts, key), out_shardings=state_sharding)(
            parts.init_key
        )
        if prep.init is not None:  # Fine-tuning: the chosen parameters from another run.
            params = initialize.apply(prep.init, jax.device_get(state["params"]))
            state["params"] = jax.device_put(params, state_sharding["params"])
            if parts.ema_decay:
                state["ema_params"] = jax.device_put(params, state_sharding["ema_params"])
        meta = {
            "best_value": None,
            "best_step": None,
            "evals_since_best": 0,
            "wall_s": 0.0,
            "stopped_early": False,
            "off_curve_warned": False,
        }
        step = 0
    else:
        step, state, data_state, meta = restored
        meta.setdefault("off_curve_warned", False)  # Checkpoints from before reference curves.
        train_iter.set_state(data_state)
        log.info("resumed from step %d", step)
    wall_before = meta["wall_s"]
    elapsed = lambda: wall_before + time.time() - started
    writer = MetricWriter(wd, enabled=is_main, resume_step=step, clock=elapsed)

    def last_good_checkpoint() -> str:
        ckpt.wait()
        latest = ckpt.latest_step()
        return f"step {latest} in {ckpt.directory}" if latest is not None else "none (start over)"

    def check_guard() -> None:
        guard.check(
            jax.device_get(state["guard"]),
            tc.nonfinite,
            tc.max_consecutive_skips,
            last_good_checkpoint(),
        )

    saved_steps = set(ckpt.all_steps())

    def save(at_step: int, eval_metrics: dict | None = None) -> None:
        """Checkpoint `at_step`, after checking the guard: nothing non-finite is ever saved."""
        if at_step in saved_steps:  # E.g. a preemption signal right after a regular save.
            return
        saved_steps.add(at_step)
        check_guard()
        meta["wall_s"] = elapsed()
        writer.flush()  # In a bucket, metrics.jsonl goes up with each checkpoint.
        try:
            ckpt.save(at_step, state, train_iter.get_state(), meta, eval_metrics)
        except Exception as e:  # Disk full, permissions, a dead filesystem: report, keep the rest.
            raise ckpt.save_failed(at_step, e) from e

    # ---------------------------------------------------------------------------------------------
    # The loop.
    # ---------------------------------------------------------------------------------------------
    if is_main:
        print(
            f"{config.experiment}: {prep.num_params:,} parameters{_trainable(prep)}, "
            f"{jax.device_count()} device(s), "
            f"steps {step}->{tc.steps}, batch {tc.batch_size}{_precision(config)}",
            flush=True,
        )
    bar = tqdm.tqdm(
        total=tc.steps,
        initial=step,
        disable=not (is_main and sys.stderr.isatty()),
        dynamic_ncols=True,
    )

    def say(text: str) -> None:
        """A console line from process 0, above the progress bar when there is one."""
        if is_main:
            tqdm.tqdm.write(text) if not bar.disable else print(text, flush=True)

    curve = Curve.from_fields(config.expected.curve)
    headline = curve.metric if curve else (tc.best_metric or "eval/loss")  # Shown on the bar.
    window_start, window_steps, compiled = time.time(), 0, False
    last_step = min(tc.steps, stop_after_step or tc.steps)
    boundaries = (tc.log_every_steps, tc.eval_every_steps, tc.checkpoint_every_steps)
    with Preemption() as preemption:
        try:
            while step < last_step and not meta["stopped_early"]:
                if preemption.requested():
                    save(step)
                    break
                # Run up to the next log/eval/checkpoint boundary, at most steps_per_call at once.
                count = min(
                    [tc.steps_per_call, last_step - step] + [b - step % b for b in boundaries]
                )
                if stacked:
                    batch = jax.tree.map(
                        lambda *xs: np.stack(xs), *[next(train_iter) for _ in range(count)]
                    )
                else:
                    batch = next(train_iter)
                state, metrics = compiled_step(state, parallel.global_batch(batch, mesh, stacked))
                step += count
                bar.update(count)
                if not compiled:  # The first call traces and compiles: kept out of throughput.
                    jax.block_until_ready(metrics)
                    say(
                        f"compiled the train step in {time.time() - window_start:.1f} s "
                        "(steps/s below exclude it)"
                    )
                    window_start, compiled = time.time(), True
                else:
                    window_steps += count

                if step % tc.log_every_steps == 0 or step == tc.steps:
                    # The logged step's own metrics (not a window mean): a resumed run logs the same.
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    seconds = time.time() - window_start
                    if window_steps:
                        values["steps_per_s"] = window_steps / seconds
                        values["examples_per_s"] = window_steps * tc.batch_size / seconds
                    check_guard()
                    writer.write(step, "train", values)
                    bar.set_postfix(
                        loss=f"{values['loss']:.4f}",
                        steps_s=f"{values.get('steps_per_s', 0):.1f}",
                        **({headline: f"{meta['last_eval']:.4f}"} if "last_eval" in meta else {}),
                    )
                    if bar.disable:  # No terminal (CI, logs): a plain line instead.
                        speed = f"  {values['steps_per_s']:.1f} steps/s" if window_steps else ""
                        say(f"step {step}/{tc.steps}  loss {values['loss']:.4f}{speed}")
                    window_start, window_steps = time.time(), 0

                eval_metrics = None
                if step % tc.eval_every_steps == 0 or step == tc.steps:
                    # train.eval_max_batches: intermediate evaluations may score a fixed prefix of
                    # the split (a cheaper, still deterministic estimate); the last one scores all.
                    cap = tc.eval_max_batches if step < tc.steps else 0
                    values, _ = evaluate(
                        state, config.data.eval_split, config.decode.on_eval, max_batches=cap
                    )
                    writer.write(step, "eval", values)
                    eval_metrics = {f"eval/{k}": v for k, v in values.items()}
                    if headline in eval_metrics:
                        meta["last_eval"] = eval_metrics[headline]
                    if tc.best_metric:
                        update_best(
                            meta,
                            step,
                            eval_metrics[tc.best_metric],
                            tc.best_mode,
                            tc.early_stopping_patience,
                        )
                    standing = curve.standing(step, eval_metrics) if curve else None
                    shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
                    say(
                        f"eval at step {step}: {shown}"
                        + (f"  | {standing.short()}" if standing else "")
                    )
                    if standing:
                        writer.write(step, "reference", standing.record())
                    if standing and not standing.inside and not meta["off_curve_warned"]:
                        meta["off_curve_warned"] = True  # Once per run, kept in checkpoints.
                        say(f"warning: {standing.warning()}")
                        if tc.off_curve == "stop":
                            save(step, eval_metrics)
                            raise TrainingHalted(
                                f"{standing.warning()}; stopped (train.off_curve=stop) with a "
                                f"checkpoint at step {step}. Relaunch with "
                                "--config.train.off_curve=warn to go on, or change the recipe"
                            )
                    window_start = time.time()  # Keep evaluation out of the throughput numbers.

                if (
                    step % tc.checkpoint_every_steps == 0
                    or step == last_step
                    or meta["stopped_early"]
                    or eval_metrics
                ):
                    save(step, eval_metrics)
            ckpt.wait()
        except BaseException:
            writer.close()  # Flush what was logged; pending saves finish in ckpt.close().
            _close_quietly(ckpt)
            raise
        finally:
            bar.close()
            train_iter.close()  # Stops data.workers' processes now, not at interpreter exit.
    if step < tc.steps and not meta["stopped_early"]:
        writer.close()
        ckpt.close()
        reason = f"received {preemption.name}" if step < last_step else "stopped"
        if is_main:
            print(
                f"{reason} at step {step} of {tc.steps}: checkpoint saved; launch again to resume",
                flush=True,
            )
        return {
            "experiment": config.experiment,
            "step": step,
            "finished": False,
            "signal": preemption.received,
        }

    # ---------------------------------------------------------------------------------------------
    # Final evaluation on the test split.
    # ---------------------------------------------------------------------------------------------
    test_metrics, details = evaluate(state, config.data.test_split, generate=True)
    writer.write(step, "test", test_metrics)
    writer.close()
    ckpt.close()
    metrics = {f"test/{k}": v for k, v in test_metrics.items()}
    last_eval = [r for r in read_metrics(wd) if r["split"] == "eval" and r["step"] == step]
    if last_eval:
        metrics |= {f"eval/{k}": v for k, v in last_eval[-1].items() if k not in NOT_METRICS}
    result = workdir.results(
        config,
        step,
        elapsed(),
        metrics,
        num_params=prep.num_params,
        num_trainable_params=prep.num_trainable,
        best_step=meta["best_step"],
        stopped_early=meta["stopped_early"],
        details={"test": {k: v for k, v in details.items() if not k.startswith("_")}},
    )
    if is_main:
        workdir.write_json(wd / "results.json", result)
        print(parts.task.report(details), flush=True)
        print(summary_line(result), flush=True)
    return result


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Evaluation: every example of a split exactly once (padding masked out), the task's metrics
    of the model's outputs and, with `generate`, of its generated outputs (translations), whose
    files the task writes into `write_to`. Used by training and by `launch.py eval`."""

    parts: steps.Parts
    info: DatasetInfo
    eval_data: dict[str, Any]  # split -> this process's evaluation batches (iterable again)
    mesh: Any
    eval_step: Any
    generate_step: Any  # None when the task generates nothing
    write_to: Path | None  # the workdir (process 0 only)

    @classmethod
    def build(
        cls,
        parts: steps.Parts,
        info: DatasetInfo,
        eval_data: dict[str, Any],
        mesh: Any,
        write_to: Path | None,
    ) -> "Evaluator":
        generate_step = steps.compile_generate_step(parts, mesh) if parts.task.generate else None
        eval_step = steps.compile_eval_step(parts, mesh)
        return cls(parts, info, eval_data, mesh, eval_step, generate_step, write_to)

    def __call__(
        self, params: dict, model_state: dict, split: str, generate: bool, max_batches: int = 0
    ) -> tuple[dict[str, float], dict]:
        """(metrics, details) of `params` on TFDS split `split`: its first `max_batches` batches
        (every process has the same number of batches), or all of it when 0."""
        collected = []
        for local in itertools.islice(self.eval_data[split], max_batches or None):
            batch = parallel.global_batch(local, self.mesh)
            outputs = self.eval_step(params, model_state, batch)
            if generate and self.generate_step is not None:
                outputs |= self.generate_step(params, model_state, batch)
            outputs, mask = parallel.gather((outputs, batch["mask"]))
            collected.append(jax.tree.map(lambda x, m=mask: x[m], outputs))
        outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *collected)
        task = self.parts.task
        metrics, details = task.summarize(outputs, self.info, split=split)
        if self.write_to is not None:
            for name, text in task.files(details, split).items():
                (self.write_to / name).write_text(text)
        return metrics, details


def _trainable(prep: Prepared) -> str:
    """The trainable count and share when some parameters are frozen (fine-tuning, LoRA)."""
    if prep.num_trainable == prep.num_params:
        return ""
    return f" ({prep.num_trainable:,} trainable, {100 * prep.num_trainable / prep.num_params:.2f}%)"


def _precision(config: ml_collections.ConfigDict) -> str:
    """', dtype bfloat16_matmul (auto, cpu_bf16)': the model's precision as built, and why."""
    dtype = models.dtype(config.model)
    if dtype is None:
        return ""
    auto = f" (auto, {hardware.kind()})" if config.model.get("dtype") == "auto" else ""
    impl = config.model.get("conv_impl")
    if impl is not None:
        why = f" (auto, {hardware.kind()})" if impl == "auto" else ""
        auto += f", conv_impl {conv.resolve(impl)}{why}"
    return f", dtype {dtype}{auto}"


def _close_quietly(ckpt: checkpoint.Checkpointer) -> None:
    """Close the checkpointer while another error is on its way out (that error is the news)."""
    try:
        ckpt.close()
    except Exception as e:  # noqa: BLE001
        log.warning("while stopping, a pending checkpoint save failed too: %s", e)


def update_best(meta: dict, at_step: int, value: float, mode: str, patience: int) -> None:
    """Track the best eval metric; set meta["stopped_early"] after `patience` evals without gain."""
    better = meta["best_value"] is None or (
        value > meta["best_value"] if mode == "max" else value < meta["best_value"]
    )
    if better:
        meta.update(best_value=value, best_step=at_step, evals_since_best=0)
    else:
        meta["evals_since_best"] += 1
        if patience and meta["evals_since_best"] >= patience:
            meta["stopped_early"] = True


def summary_line(result: dict[str, Any]) -> str:
    """One line: the headline metrics and whether the expected result was met."""
    shown = {k: v for k, v in result["metrics"].items() if k.startswith("test/")}
    text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
    target = Expected.from_fields(result["expected"])
    if target:
        verdict = {True: "MET", False: "NOT MET"}[result["expected_met"]]
        text += f"\nexpected {target.describe()}: {verdict}"
    return f"step {result['step']}  {result['wall_s']:.1f}s  {text}"
