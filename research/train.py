"""The trainer: config in, trained model, metrics, checkpoints and results.json out.

Read it top to bottom: workdir, mesh, input, model and optimizer, state and shardings, the update
step, evaluation, checkpoint/resume, the loop, final evaluation. The train state is a plain dict:

    {"step": int32, "params": ..., "model_state": {"batch_stats": ...} or {},
     "opt_state": ..., "ema_params": ... or {}, "guard": {skipped updates, loss EMAs, ...}}

Per-step randomness is `fold_in(seed_key, step)`, so it is a function of the step alone and a
resumed run draws exactly the numbers an uninterrupted one would.
"""

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from research import checkpoint, data, guard, models, optim, parallel, tasks, workdir
from research.errors import ConfigError
from research.expected import Expected
from research.preemption import Preemption
from research.writer import MetricWriter, read_metrics

log = logging.getLogger(__name__)


def run(
    config: ml_collections.ConfigDict,
    workdir_path: str | Path,
    *,
    argv: list[str] = (),
    force: bool = False,
    stop_after_step: int | None = None,
) -> dict:
    """Train and evaluate `config` in `workdir_path`, resuming if it holds a checkpoint.

    `stop_after_step` ends this process after that step, checkpointed (for jobs with a time limit:
    the next launch resumes); the final test evaluation then waits for the run's last step.

    Raises ConfigError / data.DatasetUnavailable before writing anything when the workdir holds
    another experiment's run or the data cannot be read.
    """
    started = time.time()
    wd = Path(workdir_path)
    workdir.check_compatible(wd, config, force)
    info = data.info(config.data)
    outputs = config.model.get("num_classes", config.model.get("vocab_size"))
    if outputs is not None and outputs < info.num_classes:
        raise ConfigError(
            f"the model has {outputs} outputs but the data has {info.num_classes} classes (or "
            "tokens); set model.num_classes / model.vocab_size to at least that"
        )
    task = tasks.get(config.get("task", "classification"))
    wd.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.write_json(wd / "config.json", config.to_dict())
        workdir.record_provenance(wd / "provenance.json", list(argv))
        for name, text in info.workdir_files.items():
            (wd / name).write_text(text)
    tc = config.train

    # ---------------------------------------------------------------------------------------------
    # Mesh.
    # ---------------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.parallel)

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
    # Model and optimizer.
    # ---------------------------------------------------------------------------------------------
    model = models.build(config.model)
    tx, schedule = optim.build_optimizer(config.optimizer, config.schedule, tc.steps)
    ema_decay = config.optimizer.get("ema_decay", 0.0)
    accum_steps = config.optimizer.get("grad_accum_steps", 1)
    seed_key = jax.random.key(tc.seed)
    init_key, dropout_key = jax.random.split(seed_key)
    dummy_input = jnp.zeros((1, *info.input_shape), task.input_dtype)

    def init_state(key: jax.Array) -> dict:
        variables = model.init(key, dummy_input, train=False)
        params = variables.pop("params")
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "model_state": dict(variables),
            "opt_state": tx.init(params),
            "ema_params": jax.tree.map(jnp.copy, params) if ema_decay else {},
            "guard": guard.init(),
        }

    # ---------------------------------------------------------------------------------------------
    # State and shardings: shapes from eval_shape, nothing allocated until jit places it.
    # ---------------------------------------------------------------------------------------------
    abstract_state = jax.eval_shape(init_state, init_key)
    state_sharding = parallel.state_sharding(abstract_state, mesh)  # Replicated, or FSDP.
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))

    # ---------------------------------------------------------------------------------------------
    # The update step: written once, per device; parallel.compile_step maps it by strategy.
    # ---------------------------------------------------------------------------------------------
    # Synchronised BatchNorm in the mapped strategies (pmap, shard_map): statistics over "data".
    bn_axis = parallel.batch_norm_axis(config.parallel)
    train_model = model.clone(bn_axis_name=bn_axis) if hasattr(model, "bn_axis_name") else model

    def loss_fn(params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        logits, new_model_state = train_model.apply(
            variables,
            batch[task.input_key],
            train=True,
            rngs={"dropout": rng},
            mutable=list(model_state),
        )
        loss, metrics = task.train_loss(logits, batch, config)
        return loss, (metrics, dict(new_model_state))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: dict, batch: dict, data_axis: str | None) -> tuple[dict, dict]:
        """One update. Mapped per device (pmap, shard_map), `batch` is this device's rows and
        `data_axis` names the device axis to average over; under gspmd it is None, the batch
        global."""
        rng = jax.random.fold_in(dropout_key, state["step"])
        if data_axis:  # Each device draws its own dropout masks.
            rng = jax.random.fold_in(rng, jax.lax.axis_index(data_axis))
        model_state = state["model_state"]
        local_params = parallel.per_device(data_axis, state["params"])
        grads, losses, step_metrics = None, [], []
        # Gradient accumulation: micro-batch i takes rows i, i+k, i+2k, ... so that each device
        # contributes equally to every micro-batch. Unrolled rather than scanned: convolutions
        # inside lax.scan are ~25x slower on XLA:CPU (JAX issue #12868).
        for i in range(accum_steps):
            micro = jax.tree.map(lambda x, i=i: x[i::accum_steps], batch)
            (loss, (metrics, model_state)), g = grad_fn(
                local_params, model_state, micro, jax.random.fold_in(rng, i)
            )
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            losses.append(loss)
            step_metrics.append(metrics)
        grads = jax.tree.map(lambda g: g / accum_steps, grads)
        grads = parallel.mean_over(data_axis, grads)
        if bn_axis is None:  # Per-device BatchNorm statistics: keep the replicas' averages equal.
            model_state = parallel.mean_over(data_axis, model_state)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema_params = optim.ema_update(state["ema_params"], params, ema_decay) if ema_decay else {}
        metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *step_metrics)
        metrics |= {"loss": jnp.mean(jnp.stack(losses))}
        metrics = parallel.mean_over(data_axis, metrics)
        # Apply the update only if it is finite (and not a loss spike): research/guard.py.
        updated = {
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "ema_params": ema_params,
        }
        kept, new_guard, guard_metrics = guard.apply(
            state["guard"],
            state["step"],
            metrics["loss"],
            updates,
            updated,
            {k: state[k] for k in updated},
            tc.get("loss_spike_sigmas", 0.0),
        )
        new_state = {"step": state["step"] + 1, **kept, "guard": new_guard}
        metrics |= guard_metrics | {
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state["step"]),
        }
        return new_state, metrics

    def train_steps(state: dict, batches: dict, data_axis: str | None) -> tuple[dict, dict]:
        """Several steps in one compiled call (`train.steps_per_call`): fewer dispatches and host
        round trips for small models. Off by default: XLA:CPU runs convolutions inside a scan
        ~25x slower (JAX issue #12868), so conv nets should keep 1. Returns the last metrics."""
        state, metrics = jax.lax.scan(lambda s, b: train_step(s, b, data_axis), state, batches)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    steps_per_call = tc.get("steps_per_call", 1)
    stacked = steps_per_call > 1
    compiled_step = parallel.compile_step(
        config.parallel, train_steps if stacked else train_step, mesh, state_sharding, stacked
    )

    # ---------------------------------------------------------------------------------------------
    # Evaluation: every example exactly once (padding masked out), on the EMA weights if enabled.
    # ---------------------------------------------------------------------------------------------
    @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
    def eval_step(params, model_state, batch):
        logits = model.apply({"params": params, **model_state}, batch[task.input_key], train=False)
        return task.eval_outputs(logits, batch)

    @functools.cache  # Built once per split (decoding it, for images); each iteration is a pass.
    def eval_dataset(split: str):
        return data.eval_batches(
            config.data,
            split,
            global_batch_size=tc.get("eval_batch_size", tc.batch_size),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def evaluate(state: dict, split: str) -> tuple[dict[str, float], dict]:
        """Metrics of the current (or EMA) parameters on a TFDS split."""
        params = state["ema_params"] if ema_decay else state["params"]
        collected = []
        for local in eval_dataset(split):
            batch = parallel.global_batch(local, mesh)
            outputs, mask = parallel.gather(
                (eval_step(params, state["model_state"], batch), batch["mask"])
            )
            collected.append(jax.tree.map(lambda x, m=mask: x[m], outputs))
        outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *collected)
        return task.summarize(outputs, info)

    # ---------------------------------------------------------------------------------------------
    # Checkpoint: resume from the newest readable step, or initialise.
    # ---------------------------------------------------------------------------------------------
    best_metric = tc.get("best_metric", "")
    best_mode = tc.get("best_mode", "max")
    ckpt = checkpoint.Checkpointer(
        wd / "checkpoints",
        keep=tc.get("keep_checkpoints", 3),
        best_metric=best_metric,
        best_mode=best_mode,
    )
    abstract_with_sharding = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_sharding,
    )
    restored = ckpt.restore(abstract_with_sharding)
    if restored is None:
        state = jax.jit(init_state, out_shardings=state_sharding)(init_key)
        meta = {
            "best_value": None,
            "best_step": None,
            "evals_since_best": 0,
            "wall_s": 0.0,
            "stopped_early": False,
        }
        step = 0
    else:
        step, state, data_state, meta = restored
        train_iter.set_state(data_state)
        log.info("resumed from step %d", step)
    writer = MetricWriter(wd, enabled=is_main, resume_step=step)

    def last_good_checkpoint() -> str:
        ckpt.wait()
        latest = ckpt.latest_step()
        return f"step {latest} in {ckpt.directory}" if latest is not None else "none (start over)"

    def check_guard() -> None:
        guard.check(
            jax.device_get(state["guard"]),
            tc.get("nonfinite", "halt"),
            tc.get("max_consecutive_skips", 0),
            last_good_checkpoint(),
        )

    saved_steps = set(ckpt.all_steps())

    def save(step: int, eval_metrics: dict | None = None) -> None:
        """Checkpoint `step`, after checking the guard: nothing non-finite is ever saved."""
        if step in saved_steps:  # E.g. a preemption signal right after a regular save.
            return
        saved_steps.add(step)
        check_guard()
        meta["wall_s"] = elapsed()
        try:
            ckpt.save(step, state, train_iter.get_state(), meta, eval_metrics)
        except Exception as e:  # Disk full, permissions, a dead filesystem: report, keep the rest.
            raise ckpt.save_failed(step, e) from e

    wall_before = meta["wall_s"]
    elapsed = lambda: wall_before + time.time() - started

    # ---------------------------------------------------------------------------------------------
    # The loop.
    # ---------------------------------------------------------------------------------------------
    if is_main:
        print(
            f"{config.experiment}: {num_params:,} parameters, {jax.device_count()} device(s), "
            f"steps {step}->{tc.steps}, batch {tc.batch_size}",
            flush=True,
        )
    bar = tqdm.tqdm(
        total=tc.steps,
        initial=step,
        disable=not (is_main and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    window_start, window_steps = time.time(), 0
    last_step = min(tc.steps, stop_after_step or tc.steps)
    boundaries = (tc.log_every_steps, tc.eval_every_steps, tc.checkpoint_every_steps)
    with Preemption() as preemption:
        try:
            while step < last_step and not meta["stopped_early"]:
                if preemption.requested():
                    save(step)
                    break
                # Run up to the next log/eval/checkpoint boundary, at most steps_per_call at once.
                count = min([steps_per_call, last_step - step] + [b - step % b for b in boundaries])
                if stacked:
                    batch = jax.tree.map(
                        lambda *xs: np.stack(xs), *[next(train_iter) for _ in range(count)]
                    )
                else:
                    batch = next(train_iter)
                state, metrics = compiled_step(state, parallel.global_batch(batch, mesh, stacked))
                step += count
                window_steps += count
                bar.update(count)

                if step % tc.log_every_steps == 0 or step == tc.steps:
                    # The logged step's own metrics (not a window mean): a resumed run logs the same.
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    seconds = time.time() - window_start
                    values["steps_per_s"] = window_steps / seconds
                    values["examples_per_s"] = window_steps * tc.batch_size / seconds
                    check_guard()
                    writer.write(step, "train", values)
                    bar.set_postfix(
                        loss=f"{values['loss']:.4f}", steps_s=f"{values['steps_per_s']:.1f}"
                    )
                    if is_main and bar.disable:  # No terminal (CI, logs): a plain line instead.
                        print(
                            f"step {step}/{tc.steps}  loss {values['loss']:.4f}  "
                            f"{values['steps_per_s']:.1f} steps/s",
                            flush=True,
                        )
                    window_start, window_steps = time.time(), 0

                eval_metrics = None
                if step % tc.eval_every_steps == 0 or step == tc.steps:
                    values, _ = evaluate(state, config.data.eval_split)
                    writer.write(step, "eval", values)
                    eval_metrics = {f"eval/{k}": v for k, v in values.items()}
                    if best_metric:
                        patience = tc.get("early_stopping_patience", 0)
                        update_best(meta, step, eval_metrics[best_metric], best_mode, patience)
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
    test_metrics, details = evaluate(state, config.data.test_split)
    writer.write(step, "test", test_metrics)
    writer.close()
    ckpt.close()
    metrics = {f"test/{k}": v for k, v in test_metrics.items()}
    last_eval = [r for r in read_metrics(wd) if r["split"] == "eval" and r["step"] == step]
    if last_eval:
        metrics |= {f"eval/{k}": v for k, v in last_eval[-1].items() if k not in ("step", "split")}
    result = workdir.results(
        config,
        step,
        elapsed(),
        metrics,
        num_params=num_params,
        best_step=meta["best_step"],
        stopped_early=meta["stopped_early"],
        details={"test": {k: v for k, v in details.items() if k != "text_report"}},
    )
    if is_main:
        workdir.write_json(wd / "results.json", result)
        print(task.report(details), flush=True)
        print(summary_line(result), flush=True)
    return result


def _close_quietly(ckpt: checkpoint.Checkpointer) -> None:
    """Close the checkpointer while another error is on its way out (that error is the news)."""
    try:
        ckpt.close()
    except Exception as e:  # noqa: BLE001
        log.warning("while stopping, a pending checkpoint save failed too: %s", e)


def update_best(meta: dict, step: int, value: float, mode: str, patience: int) -> None:
    """Track the best eval metric; set meta["stopped_early"] after `patience` evals without gain."""
    better = meta["best_value"] is None or (
        value > meta["best_value"] if mode == "max" else value < meta["best_value"]
    )
    if better:
        meta.update(best_value=value, best_step=step, evals_since_best=0)
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
