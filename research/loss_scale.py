"""Loss scaling for float16 training (Micikevicius et al. 2018, "Mixed Precision Training").

float16 has a 5-bit exponent: gradients below ~6e-8 flush to zero and activations' gradients
of a small loss do. Multiplying the loss by S shifts every gradient up by S (backpropagation is
linear), into float16's range; the gradients are divided by S again, in the parameters' dtype
(float32 by default), before clipping and the optimizer. bfloat16 has float32's exponent and
needs none of this.

    train.loss_scale = "none"      (default) no scaling
    train.loss_scale = "fixed"     S = train.loss_scale_init, always
    train.loss_scale = "dynamic"   S starts at train.loss_scale_init (2^15); a step whose
                                   gradients are not finite is an overflow: its update is skipped
                                   and S halves; after train.loss_scale_interval finite steps in a
                                   row S doubles (up to MAX_SCALE)

Under "dynamic" S and the count of finite steps live in the train state ("loss_scale"), so they
are checkpointed and a resumed run continues bitwise. An overflow is a normal skip for the NaN
guard (research/guard.py): it counts as a skipped update, but neither halts a
train.nonfinite=halt run nor counts towards train.max_consecutive_skips. Only once S has fallen
to MIN_SCALE (1: no scaling left to undo) is a non-finite gradient the real thing, and the
guard's policy applies. A non-finite loss is always real: the loss is float32 (model.output_dtype)
and the scaling comes after it.
"""

import jax
import jax.numpy as jnp

POLICIES = ("none", "fixed", "dynamic")
MIN_SCALE = 1.0
MAX_SCALE = 2.0**24  # float32 gradients of a float16 model never need more.


def init(policy: str, initial: float) -> dict[str, jax.Array]:
    """The loss scale's part of the train state: empty unless `policy` is "dynamic"."""
    if policy != "dynamic":
        return {}
    return {
        "scale": jnp.asarray(initial, jnp.float32),
        "good_steps": jnp.zeros((), jnp.int32),  # Finite steps in a row since S last changed.
    }


def current(policy: str, initial: float, state: dict) -> jax.Array | None:
    """S for this step; None when the loss is not scaled (the step then multiplies nothing)."""
    if policy == "none":
        return None
    if policy == "fixed":
        return jnp.asarray(initial, jnp.float32)
    return state["scale"]


def update(
    policy: str, state: dict, grads_finite: jax.Array, interval: int
) -> tuple[dict, jax.Array]:
    """(new loss-scale state, whether this step was an overflow to skip quietly).

    An overflow is a dynamic step with non-finite gradients while S can still halve.
    """
    if policy != "dynamic":
        return state, jnp.zeros((), bool)
    scale, good = state["scale"], state["good_steps"] + 1
    grow = grads_finite & (good >= interval)
    overflow = ~grads_finite & (scale > MIN_SCALE)
    new_scale = jnp.where(
        grads_finite,
        jnp.where(grow, jnp.minimum(scale * 2, MAX_SCALE), scale),
        jnp.maximum(scale / 2, MIN_SCALE),
    )
    new_good = jnp.where(grads_finite & ~grow, good, 0)
    return {"scale": new_scale, "good_steps": new_good}, overflow
