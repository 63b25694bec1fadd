"""The learning-rate range test: the cheapest way to pick a learning rate before an ablation.

    python launch.py lr_find --config=experiments/digits_cnn.py --workdir=runs/digits_lr_find

Smith 2017, "Cyclical Learning Rates for Training Neural Networks", Sec. 3.3 ("LR range test"),
as popularised by fastai's `lr_find`: train from the experiment's own initialisation and data
(its train split and seed, its optimizer with betas, weight decay and clipping) while the learning
rate grows exponentially from `min_lr` to `max_lr` over `num_steps` updates (optim.py's
"exponential" schedule replaces the experiment's), and watch the loss. The step is the trainer's
(research/steps.py) on the config's mesh; nothing is checkpointed or evaluated.

The loss is smoothed as fastai does, an exponential moving average with bias correction:
avg = beta * avg + (1 - beta) * loss; smoothed = avg / (1 - beta ** (i + 1)). The test stops
early once the smoothed loss exceeds `diverge_factor` x its best so far, or is not finite.

The rule (fastai's `lr_min`): the suggested learning rate is the one at the smoothed loss's
minimum, divided by 10. Beside it, the steepest descent (fastai's `lr_steep`): the learning rate
where the smoothed loss falls fastest against log(lr), the slope taken with np.gradient over the
points up to the minimum. On the digits CNN, minimum/10 fell inside the range of peak learning
rates that train the recipe to its target in 8 of 8 range tests (4 seeds, 2 ramps), the steepest
descent in 4: it sits at the low edge of that range and moves with the ramp's speed (a slower
ramp trains more per decade). docs/results.md, "Learning-rate range test (digits CNN)".

Writes into the workdir (under its lock): lr_find.csv (step, lr, loss, smoothed_loss),
lr_find.json (the suggestion, its rule, both figures, where the test stopped and why, the
experiment and its overrides, the config as run) and lr_find.png (the smoothed loss against lr).
"""

import csv
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np

from research import data, optim, parallel, steps, train, workdir
from research.errors import ConfigError

RULE = "the smoothed loss's minimum / 10"


def _check_flags(min_lr, max_lr, num_steps, smoothing, diverge_factor) -> None:
    """One-line ConfigErrors for flags that cannot make a range test."""
    for flag, value in {"--min_lr": min_lr, "--max_lr": max_lr}.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}={value}: give a finite number > 0")
    if min_lr >= max_lr:
        raise ConfigError(f"--min_lr={min_lr} must be below --max_lr={max_lr}")
    if num_steps < 10:
        raise ConfigError(f"--num_steps={num_steps}: give at least 10 (100 is typical)")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"smoothing={smoothing}: give a number in [0, 1) (fastai: 0.98)")
    if not (math.isfinite(diverge_factor) and diverge_factor > 1):
        raise ConfigError(f"--diverge_factor={diverge_factor}: give a number > 1 (fastai: 4)")


def range_test_config(
    config: ml_collections.ConfigDict, min_lr: float, max_lr: float, num_steps: int
) -> ml_collections.ConfigDict:
    """The experiment's config with its schedule replaced by the exponential ramp
    min_lr -> max_lr, reached at the last of `num_steps` updates."""
    ramp = ml_collections.ConfigDict(config.to_dict())
    ramp.optimizer.learning_rate = min_lr
    ramp.schedule.update(name="exponential", warmup_steps=0, end_lr=max_lr)
    ramp.schedule.decay_steps = num_steps - 1
    ramp.train.steps = num_steps
    ramp.train.steps_per_call = 1  # The loss of every step decides whether to go on.
    ramp.train.loss_spike_sigmas = 0.0  # A guard that skips rising losses would hide divergence.
    try:
        optim.validate(ramp.optimizer, ramp.schedule, num_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ramp


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict:
    """fastai's minimum / 10 (the suggestion) and the steepest descent, from the smoothed loss."""
    lrs, smoothed = lrs[np.isfinite(smoothed)], smoothed[np.isfinite(smoothed)]
    at_min = int(np.argmin(smoothed)) if smoothed.size else 0
    if at_min < 2:  # The loss never fell: no minimum beyond the start, no descent.
        return {k: None for k in ("suggested_lr", "minimum_lr", "steepest_descent_lr")}
    slope = np.gradient(smoothed[: at_min + 1], np.log(lrs[: at_min + 1]))
    return {
        "suggested_lr": float(lrs[at_min] / 10),
        "minimum_lr": float(lrs[at_min]),
        "steepest_descent_lr": float(lrs[int(np.argmin(slope))]),
    }


def lr_find(
    config: ml_collections.ConfigDict,
    workdir_path: str | Path,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    overrides: dict[str, str] | None = None,
) -> dict:
    """Run the range test of a validated `config` in `workdir_path`; returns lr_find.json's record.

    `overrides` (the command line's `--config.*`) are recorded as given. Raises ConfigError (or
    DatasetUnavailable) before anything is written.
    """
    _check_flags(min_lr, max_lr, num_steps, smoothing, diverge_factor)
    if workdir.is_bucket(workdir.path(workdir_path)):  # (path() refuses unknown schemes.)
        raise ConfigError(
            f"--workdir={workdir_path}: lr_find writes a local directory; give a local path"
        )
    wd = Path(workdir_path)
    ramp = range_test_config(config, min_lr, max_lr, num_steps)
    _, parts, abstract_state = train.prepare_model(ramp)
    workdir.check_path(wd)

    wd.mkdir(parents=True, exist_ok=True)
    with workdir.locked(wd):
        rows, stop = _run(ramp, parts, abstract_state, num_steps, smoothing, diverge_factor)
        lrs, losses, smoothed = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
        record = {
            "experiment": config.experiment,
            "overrides": dict(overrides or {}),
            "rule": RULE,
            **suggest(lrs, smoothed),
            "min_lr": min_lr,
            "max_lr": max_lr,
            "num_steps": num_steps,
            "smoothing": smoothing,
            "diverge_factor": diverge_factor,
            "steps_run": len(rows),
            "stopped_early": stop is not None,
            "stop_reason": stop,
            "config": ramp.to_dict(),
        }
        if jax.process_index() == 0:
            _write(wd, rows, record)
            print(summary_line(record, wd), flush=True)
    return record


def _run(ramp, parts, abstract_state, num_steps, beta, diverge_factor):
    """Train along the ramp; returns rows (step, lr, loss, smoothed) and why it stopped, if early."""
    tc = ramp.train
    mesh = parallel.make_mesh(ramp.parallel)
    state_sharding = parallel.state_sharding(abstract_state, mesh)
    step_fn = steps.compile_train_step(parts, ramp.parallel, mesh, state_sharding)
    state = jax.jit(lambda key: steps.init_state(parts, key), out_shardings=state_sharding)(
        parts.init_key
    )
    batches = data.train_iterator(
        ramp.data,
        global_batch_size=tc.batch_size,
        seed=tc.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    is_main = jax.process_index() == 0
    every = max(1, num_steps // 10)
    if is_main:
        print(
            f"{ramp.experiment}: lr {ramp.optimizer.learning_rate:.1e} -> "
            f"{ramp.schedule.end_lr:.1e} over {num_steps} steps, batch {tc.batch_size}"
        )
        print(f"{'step':>6}  {'lr':>9}  {'loss':>9}  {'smoothed':>9}", flush=True)
    rows, avg, best, stop = [], 0.0, math.inf, None
    for i in range(num_steps):
        state, metrics = step_fn(state, parallel.global_batch(next(batches), mesh))
        metrics = jax.device_get(metrics)
        loss, lr = float(metrics["loss"]), float(metrics["learning_rate"])
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta ** (i + 1))
        rows.append((i, lr, loss, smoothed))
        if not math.isfinite(smoothed):
            stop = f"the loss is not finite at step {i} (lr {lr:.2e})"
        elif smoothed > diverge_factor * best:
            stop = (
                f"the smoothed loss {smoothed:.4g} exceeded {diverge_factor:g} x its best "
                f"{best:.4g} at step {i} (lr {lr:.2e})"
            )
        best = min(best, smoothed) if math.isfinite(smoothed) else best
        if is_main and (i % every == 0 or stop or i == num_steps - 1):
            print(f"{i:>6}  {lr:>9.2e}  {loss:>9.4f}  {smoothed:>9.4f}", flush=True)
        if stop:
            if is_main:
                print(f"stopped at step {i} of {num_steps}: {stop}", flush=True)
            break
    return rows, stop


def summary_line(record: dict, wd: Path) -> str:
    """The one line a user reads: the suggestion, its rule and the steepest descent."""
    if record["suggested_lr"] is None:
        head = "no suggested learning rate (the smoothed loss never fell; lower --min_lr)"
    else:
        head = (
            f"suggested learning rate: {record['suggested_lr']:.1e} ({record['rule']}; "
            f"steepest descent: {record['steepest_descent_lr']:.1e})"
        )
    return f"{head}; lr_find.png, lr_find.csv in {wd}"


def _write(wd: Path, rows: list[tuple], record: dict) -> None:
    with open(wd / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows([i, repr(lr), repr(loss), repr(s)] for i, lr, loss, s in rows)
    workdir.write_json(wd / "lr_find.json", record)
    plot(rows, record, wd / "lr_find.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[tuple], record: dict, path: Path) -> None:
    """The smoothed loss against lr (log x), the raw loss faint, the suggestion marked."""
    plt = _pyplot()
    lrs, losses, smoothed = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(lrs, losses, color="C0", alpha=0.25, lw=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=2, label=f"smoothed (beta {record['smoothing']})")
    if record["suggested_lr"] is not None:
        suggested, steepest = record["suggested_lr"], record["steepest_descent_lr"]
        ax.axvline(suggested, color="C3", lw=1.5, label=f"suggested {suggested:.1e} (minimum/10)")
        ax.axvline(steepest, color="C2", ls="--", lw=1, label=f"steepest descent {steepest:.1e}")
        at_min = int(np.nanargmin(np.where(np.isfinite(smoothed), smoothed, np.nan)))
        ax.plot(lrs[at_min], smoothed[at_min], "o", color="C3", ms=5, label="minimum")
    seen = np.concatenate([losses, smoothed])
    seen = seen[np.isfinite(seen)]
    descent = smoothed[0] - seen.min() if seen.size else 0.0
    if descent > 0:  # Frame the descent; the divergence would flatten it.
        ax.set_ylim(seen.min() - 0.1 * descent, smoothed[0] + 0.5 * descent)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    stopped = f", stopped at step {record['steps_run'] - 1}" if record["stopped_early"] else ""
    ax.set_title(f"{record['experiment']}: learning-rate range test{stopped}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
