"""Update guards: never let a non-finite value (or, optionally, a loss spike) into the train state.

Inside the jitted step, an update is applied only if the loss and the update are finite and, with
`train.loss_spike_sigmas` > 0, the loss is below a rolling mean + k standard deviations (an EMA of
the loss and its square over accepted steps, active after `SPIKE_WARMUP_STEPS` of them). A
rejected update leaves params, optimizer state, EMA and model state as they were; the step
counter still advances, so data order and RNG stay those of an uninterrupted run.

What happens next is the host's decision, made when metrics are fetched anyway (log steps and
before every checkpoint), so the guard costs no extra device-to-host synchronisation:

    train.nonfinite = "halt"   (default) stop at the first non-finite step, naming it and the last
                               good checkpoint; nothing after it is saved.
    train.nonfinite = "skip"   count skipped updates in the logs; stop after
                               `train.max_consecutive_skips` in a row.
Loss spikes are always skipped (when the guard is on) and count towards consecutive skips.
A float16 overflow under dynamic loss scaling (research/loss_scale.py) is skipped as well, and
counted in `skipped`, but is expected: it neither halts nor counts towards consecutive skips.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from research.errors import TrainingHalted

POLICIES = ("halt", "skip")
SPIKE_EMA_DECAY = 0.99
SPIKE_WARMUP_STEPS = 20


def init() -> dict[str, jax.Array]:
    """The guard's part of the train state."""
    return {
        "skipped": jnp.zeros((), jnp.int32),  # Updates rejected so far.
        "consecutive": jnp.zeros((), jnp.int32),  # Rejected in a row, up to now.
        "first_nonfinite_step": jnp.full((), -1, jnp.int32),  # 1-based step; -1 = none yet.
        "accepted": jnp.zeros((), jnp.int32),
        "loss_ema": jnp.zeros((), jnp.float32),  # Biased EMAs of accepted losses and squares.
        "loss_sq_ema": jnp.zeros((), jnp.float32),
    }


def apply(
    guard: dict,
    step: jax.Array,
    loss: jax.Array,
    updates: Any,
    new: dict,
    old: dict,
    spike_sigmas: float,
    overflow: jax.Array | bool = False,
) -> tuple[dict, dict, dict]:
    """Choose between the updated (`new`) and previous (`old`) state pieces; update the guard.

    `overflow`: this step's gradients overflowed under dynamic loss scaling (loss_scale.update);
    its update is skipped without counting as non-finite. Returns (chosen state pieces, new
    guard, metrics to log).
    """
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(updates))
    overflow = jnp.asarray(overflow) & jnp.isfinite(loss)  # A non-finite loss is never expected.
    spike = jnp.zeros((), bool)
    if spike_sigmas:
        # Debiased EMAs (as Adam's moments), so the first accepted steps are not pulled to 0.
        correction = jnp.maximum(
            1.0 - SPIKE_EMA_DECAY ** guard["accepted"].astype(jnp.float32), 1e-12
        )
        mean, sq_mean = guard["loss_ema"] / correction, guard["loss_sq_ema"] / correction
        std = jnp.sqrt(jnp.maximum(sq_mean - mean**2, 0.0))
        warm = guard["accepted"] >= SPIKE_WARMUP_STEPS
        spike = warm & (loss > mean + spike_sigmas * std)
    ok = finite & ~spike & ~overflow
    unexpected = ~ok & ~overflow  # Skips that count towards max_consecutive_skips.
    chosen = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    loss32 = jnp.where(ok, loss, 0.0).astype(jnp.float32)
    ema = lambda old_value, x: jnp.where(
        ok, SPIKE_EMA_DECAY * old_value + (1 - SPIKE_EMA_DECAY) * x, old_value
    )
    new_guard = {
        "skipped": guard["skipped"] + (~ok).astype(jnp.int32),
        "consecutive": jnp.where(ok, 0, guard["consecutive"] + unexpected.astype(jnp.int32)),
        "first_nonfinite_step": jnp.where(
            (guard["first_nonfinite_step"] < 0) & ~finite & ~overflow,
            step + 1,
            guard["first_nonfinite_step"],
        ),
        "accepted": guard["accepted"] + ok.astype(jnp.int32),
        "loss_ema": ema(guard["loss_ema"], loss32),
        "loss_sq_ema": ema(guard["loss_sq_ema"], loss32**2),
    }
    metrics = {"skipped_updates": new_guard["skipped"], "update_applied": ok.astype(jnp.float32)}
    return chosen, new_guard, metrics


def check(guard: dict, policy: str, max_consecutive: int, last_good_checkpoint: str) -> None:
    """On the host: raise TrainingHalted if the policy says the run must stop."""
    first_bad = int(guard["first_nonfinite_step"])
    if policy == "halt" and first_bad >= 0:
        raise TrainingHalted(
            f"non-finite loss or update at step {first_bad}; stopped without saving it. "
            f"Last good checkpoint: {last_good_checkpoint}. Lower the learning rate or add "
            "clipping, or pass --config.train.nonfinite=skip to skip such updates"
        )
    if max_consecutive and int(guard["consecutive"]) >= max_consecutive:
        raise TrainingHalted(
            f"{int(guard['consecutive'])} consecutive updates skipped (non-finite or loss spikes) "
            f"up to step {first_bad if first_bad >= 0 else 'now'}; stopped. Last good checkpoint: "
            f"{last_good_checkpoint}"
        )
