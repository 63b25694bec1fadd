"""research/optim.py: schedule values, decay masks, and optimizer steps against numpy references."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import optim
from research.config import defaults


def make_configs(
    optimizer: dict | None = None, schedule: dict | None = None
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """config.optimizer and config.schedule with the declared defaults, then overrides."""
    declared = defaults()
    optimizer_config, schedule_config = declared.optimizer, declared.schedule
    optimizer_config.update(optimizer or {})
    schedule_config.update(schedule or {})
    return optimizer_config, schedule_config


def schedule_at(schedule_overrides: dict, steps: list[int], lr: float = 1.0, total: int = 1000):
    """Values of the built schedule at the given steps, as a float64 numpy array."""
    _, schedule_config = make_configs(schedule=schedule_overrides)
    schedule = optim.build_schedule(schedule_config, lr, total)
    return np.array([float(schedule(jnp.asarray(step))) for step in steps])


def nanogpt_get_lr(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int):
    """nanoGPT train.py get_lr, verbatim."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


# ---------------------------------------------------------------- schedules


def test_constant_with_and_without_warmup():
    np.testing.assert_allclose(schedule_at({}, [0, 1, 999, 5000], lr=0.3), 0.3, rtol=1e-6)
    values = schedule_at({"warmup_steps": 10}, [0, 5, 10, 500], lr=0.3)
    np.testing.assert_allclose(values, [0.0, 0.15, 0.3, 0.3], rtol=1e-6)


def test_warmup_cosine_values():
    overrides = {"name": "warmup_cosine", "warmup_steps": 100, "end_lr": 0.1, "decay_steps": 1100}
    values = schedule_at(overrides, [0, 50, 100, 600, 1100, 2000], lr=1.0)
    # midpoint of the cosine (step 600) is halfway between peak and end_lr
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6, atol=1e-7)


def test_warmup_cosine_decay_steps_default_to_total_steps():
    overrides = {"name": "warmup_cosine", "warmup_steps": 0, "end_lr": 0.0}
    values = schedule_at(overrides, [0, 500, 1000], lr=2.0, total=1000)
    np.testing.assert_allclose(values, [2.0, 1.0, 0.0], rtol=1e-6, atol=1e-6)


def test_warmup_cosine_matches_nanogpt_after_warmup_and_within_one_step_during():
    lr, min_lr, warmup, decay = 6e-4, 6e-5, 200, 5000  # nanoGPT's GPT-2 recipe, scaled down
    overrides = {"name": "warmup_cosine", "warmup_steps": warmup, "end_lr": min_lr}
    overrides["decay_steps"] = decay
    steps = list(range(0, 6000, 37)) + [warmup, decay]
    ours = schedule_at(overrides, steps, lr=lr)
    theirs = np.array([nanogpt_get_lr(s, lr, min_lr, warmup, decay) for s in steps])
    after = np.array(steps) >= warmup
    np.testing.assert_allclose(ours[after], theirs[after], rtol=1e-5)
    # the documented off-by-one: optax warms up as s / W, nanoGPT as (s + 1) / (W + 1)
    assert np.all(np.abs(ours[~after] - theirs[~after]) <= lr / (warmup + 1) + 1e-9)


def test_warmup_linear_values():
    overrides = {"name": "warmup_linear", "warmup_steps": 10, "end_lr": 0.1, "decay_steps": 100}
    values = schedule_at(overrides, [0, 5, 10, 55, 100, 150], lr=1.0)
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_piecewise_he_et_al_cifar():
    overrides = {"name": "piecewise", "boundaries": (32000, 48000), "decay_factor": 0.1}
    values = schedule_at(overrides, [0, 31999, 32000, 47999, 48000, 64000], lr=0.1, total=64000)
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_rsqrt_peak_and_decay():
    warmup = 4000
    values = schedule_at({"name": "rsqrt", "warmup_steps": warmup}, [0, 2000, 4000, 16000], lr=1e-3)
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4], rtol=1e-6)
    # identical, up to the constant, to Vaswani et al. eq. 3 (d_model = 512) for step >= 1
    d_model, steps = 512, np.array([1, 100, 3999, 4000, 4001, 100_000])
    eq3 = d_model**-0.5 * np.minimum(steps**-0.5, steps * warmup**-1.5)
    ours = schedule_at({"name": "rsqrt", "warmup_steps": warmup}, list(steps), lr=1.0)
    np.testing.assert_allclose(ours / ours[3], eq3 / eq3[3], rtol=1e-5)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match=r"schedule.name 'cosine'.*warmup_cosine"):
        schedule_at({"name": "cosine"}, [0])


# ---------------------------------------------------------------- decay mask

PARAMS = {
    "embed": {"embedding": jnp.ones((10, 4))},
    "conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones((4,))},
    "norm": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
}


def test_decay_mask_rules():
    assert optim.decay_mask(PARAMS, "matrices") == {
        "embed": {"embedding": True},
        "conv": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
    }
    assert all(jax.tree.leaves(optim.decay_mask(PARAMS, "all")))
    assert not any(jax.tree.leaves(optim.decay_mask(PARAMS, "none")))
    with pytest.raises(ValueError, match=r"optimizer.decay_mask 'kernels'.*matrices"):
        optim.decay_mask(PARAMS, "kernels")


def test_decay_mask_works_on_abstract_shapes():
    shapes = jax.eval_shape(lambda: PARAMS)
    assert optim.decay_mask(shapes, "matrices")["conv"] == {"kernel": True, "bias": False}


# ---------------------------------------------------------------- optimizer steps vs numpy


def run_steps(optimizer: dict, schedule: dict, params: dict, grads: list[dict], total: int = 100):
    """Apply our chain for len(grads) steps; returns the final params as float64 numpy."""
    optimizer_config, schedule_config = make_configs(optimizer, schedule)
    optim.validate(optimizer_config, schedule_config, total)
    tx, _ = optim.build_optimizer(optimizer_config, schedule_config, total)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(lambda p: np.asarray(p, np.float64), params)


def random_problem(steps: int, seed: int = 0):
    """A kernel + bias param tree and `steps` fixed gradient trees."""
    rng = np.random.default_rng(seed)
    params = {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(steps)]
    return params, grads


PIECEWISE = {"name": "piecewise", "boundaries": (1, 2), "decay_factor": 0.5}
LRS = [0.1, 0.05, 0.025]  # PIECEWISE at steps 0, 1, 2 with learning_rate 0.1


def numpy_sgd(params, grads, lrs, momentum, nesterov, wd, decays):
    """torch.optim.SGD(momentum, nesterov, weight_decay) update rule, dampening 0."""
    params = {k: v.copy() for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in params.items()}
    for g, lr in zip(grads, lrs):
        for k in params:
            d = g[k] + (wd * params[k] if decays[k] else 0.0)
            buf[k] = momentum * buf[k] + d
            step = d + momentum * buf[k] if nesterov else buf[k]
            params[k] = params[k] - lr * step
    return params


def numpy_adam(params, grads, lrs, b1, b2, eps, wd, decays, decoupled):
    """torch.optim.Adam (L2 added to the gradient) or torch.optim.AdamW (p -= lr * wd * p)."""
    params = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        for k in params:
            wd_k = wd if decays[k] else 0.0
            grad = g[k] if decoupled else g[k] + wd_k * params[k]
            if decoupled:
                params[k] = params[k] - lr * wd_k * params[k]
            m[k] = b1 * m[k] + (1 - b1) * grad
            v[k] = b2 * v[k] + (1 - b2) * grad**2
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_momentum_with_l2(nesterov):
    params, grads = random_problem(3)
    optimizer = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": nesterov}
    optimizer["weight_decay"] = 0.01
    ours = run_steps(optimizer, PIECEWISE, params, grads)
    decays = {"kernel": True, "bias": False}
    reference = numpy_sgd(params, grads, LRS, 0.9, nesterov, 0.01, decays)
    for k in params:
        np.testing.assert_allclose(ours[k], reference[k], rtol=1e-5, atol=1e-6)
    without_decay = numpy_sgd(params, grads, LRS, 0.9, nesterov, 0.0, decays)
    assert not np.allclose(ours["kernel"], without_decay["kernel"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_match_torch(name):
    params, grads = random_problem(2, seed=1)
    optimizer = {"name": name, "learning_rate": 0.1, "weight_decay": 0.1, "b2": 0.99}
    ours = run_steps(optimizer, PIECEWISE, params, grads)
    decays = {"kernel": True, "bias": False}
    reference = numpy_adam(
        params, grads, LRS, 0.9, 0.99, 1e-8, 0.1, decays, decoupled=(name == "adamw")
    )
    for k in params:
        np.testing.assert_allclose(ours[k], reference[k], rtol=1e-5, atol=1e-6)


def test_adamw_decay_is_scaled_by_the_schedule_and_skips_biases():
    # With zero gradients Adam's direction is 0, so each step is pure decay: p *= 1 - lr_t * wd.
    params = {"kernel": np.full((2, 2), 2.0), "bias": np.full((2,), 2.0)}
    zeros = [{k: np.zeros_like(v) for k, v in params.items()}] * 2
    optimizer = {"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5}
    ours = run_steps(optimizer, PIECEWISE, params, zeros)
    np.testing.assert_allclose(ours["kernel"], 2.0 * (1 - 0.1 * 0.5) * (1 - 0.05 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(ours["bias"], 2.0)


def test_clipping_bounds_the_global_norm():
    big = {"kernel": np.full((3, 2), 10.0), "bias": np.full((2,), -10.0)}
    small = {"kernel": np.full((3, 2), 0.01), "bias": np.full((2,), 0.01)}
    zeros = {k: np.zeros_like(v) for k, v in big.items()}
    optimizer = {"name": "sgd", "learning_rate": 1.0, "momentum": 0.0, "clip_norm": 1.0}
    clipped = run_steps(optimizer, {}, zeros, [big])  # params - lr * clip(g), from zero
    norm = np.sqrt(sum(np.sum(v**2) for v in clipped.values()))
    np.testing.assert_allclose(norm, 1.0, rtol=1e-6)
    np.testing.assert_allclose(clipped["kernel"], -big["kernel"] / np.sqrt(8 * 100), rtol=1e-6)
    unclipped = run_steps(optimizer, {}, zeros, [small])
    np.testing.assert_allclose(unclipped["bias"], -0.01, rtol=1e-6)


def test_build_optimizer_returns_its_schedule():
    optimizer_config, schedule_config = make_configs({"learning_rate": 0.1}, PIECEWISE)
    _, schedule = optim.build_optimizer(optimizer_config, schedule_config, total_steps=10)
    np.testing.assert_allclose([schedule(s) for s in range(3)], LRS, rtol=1e-6)


def test_unknown_optimizer_name():
    optimizer_config, schedule_config = make_configs({"name": "lamb"})
    with pytest.raises(ValueError, match=r"optimizer.name 'lamb'.*adamw"):
        optim.build_optimizer(optimizer_config, schedule_config, 10)


# ---------------------------------------------------------------- EMA


def test_ema_update():
    ema = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.0)}
    params = {"w": jnp.array([0.0, 0.0]), "b": jnp.array(10.0)}
    once = optim.ema_update(ema, params, decay=0.9)
    np.testing.assert_allclose(once["w"], [0.9, 1.8], rtol=1e-6)
    np.testing.assert_allclose(once["b"], 1.0, rtol=1e-6)
    twice = optim.ema_update(once, params, decay=0.9)
    np.testing.assert_allclose(twice["w"], [0.81, 1.62], rtol=1e-6)
    np.testing.assert_allclose(twice["b"], 1.9, rtol=1e-6)


# ---------------------------------------------------------------- validate


def test_validate_accepts_defaults_and_every_named_component():
    for optimizer_name in optim.OPTIMIZERS:
        for rule in optim.DECAY_MASKS:
            optim.validate(*make_configs({"name": optimizer_name, "decay_mask": rule}), 100)
    for schedule_name in optim.SCHEDULES:
        warmup = 0 if schedule_name == "piecewise" else 10
        overrides = {"name": schedule_name, "warmup_steps": warmup, "boundaries": (50, 80)}
        overrides["end_lr"] = 1e-3  # "exponential" needs one > 0; the others accept it.
        optim.validate(*make_configs(schedule=overrides), 100)


@pytest.mark.parametrize(
    "optimizer, schedule, match",
    [
        ({"name": "rmsprop"}, {}, r"optimizer.name 'rmsprop'; choose one of"),
        ({}, {"name": "cosine"}, r"schedule.name 'cosine'; choose one of"),
        ({"decay_mask": "kernels"}, {}, r"optimizer.decay_mask 'kernels'; choose one of"),
        ({"learning_rate": 0.0}, {}, r"learning_rate must be > 0"),
        ({"learning_rate": -1e-3}, {}, r"learning_rate must be > 0"),
        ({"weight_decay": -1e-4}, {}, r"weight_decay must be >= 0"),
        ({"clip_norm": -1.0}, {}, r"clip_norm must be >= 0"),
        ({"grad_accum_steps": 0}, {}, r"grad_accum_steps must be >= 1"),
        ({"ema_decay": 1.0}, {}, r"ema_decay must be in \[0, 1\)"),
        ({"ema_decay": -0.1}, {}, r"ema_decay must be in \[0, 1\)"),
        ({"momentum": 1.0}, {}, r"momentum must be in \[0, 1\)"),
        ({"b2": 1.0}, {}, r"b1/b2 must be in \[0, 1\)"),
        ({}, {"name": "warmup_cosine", "warmup_steps": 200}, r"warmup_steps=200 must be <"),
        ({}, {"warmup_steps": 50, "decay_steps": 40}, r"warmup_steps=50 must be < the decay"),
        ({}, {"warmup_steps": -1}, r"warmup_steps must be >= 0"),
        ({}, {"decay_steps": -1}, r"decay_steps must be >= 0"),
        ({}, {"end_lr": -1e-4}, r"end_lr must be >= 0"),
        ({}, {"name": "piecewise", "boundaries": (48, 32)}, r"strictly increasing"),
        ({}, {"name": "piecewise", "boundaries": (32, 32)}, r"strictly increasing"),
        ({}, {"name": "piecewise", "boundaries": (0, 32)}, r"positive"),
        ({}, {"name": "piecewise", "decay_factor": 0.0}, r"decay_factor must be > 0"),
        ({}, {"name": "piecewise", "warmup_steps": 5}, r"piecewise' has no warmup"),
        ({}, {"name": "rsqrt"}, r"rsqrt' needs schedule.warmup_steps >= 1"),
    ],
)
def test_validate_rejects(optimizer, schedule, match):
    with pytest.raises(ValueError, match=match) as error:
        optim.validate(*make_configs(optimizer, schedule), total_steps=100)
    assert "\n" not in str(error.value)


def test_validate_rejects_zero_total_steps():
    with pytest.raises(ValueError, match=r"total training steps must be >= 1"):
        optim.validate(*make_configs(), total_steps=0)


def test_full_chain_under_jit_matches_eager():
    optimizer = {"name": "adamw", "weight_decay": 0.1, "clip_norm": 1.0, "learning_rate": 1e-3}
    schedule = {"name": "rsqrt", "warmup_steps": 2}
    optimizer_config, schedule_config = make_configs(optimizer, schedule)
    tx, _ = optim.build_optimizer(optimizer_config, schedule_config, total_steps=10)
    params, grads = random_problem(3, seed=2)
    params = jax.tree.map(jnp.asarray, params)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    eager, jitted = (params, tx.init(params)), (params, tx.init(params))
    for g in grads:
        g = jax.tree.map(jnp.asarray, g)
        eager, jitted = step(*eager, g), jax.jit(step)(*jitted, g)
    for k in params:
        np.testing.assert_allclose(jitted[0][k], eager[0][k], rtol=1e-6)
    assert not np.allclose(eager[0]["kernel"], params["kernel"])


# ---------------------------------------------------------------- exponential schedule


def test_exponential_ramp_and_decay_match_numpy():
    steps = np.arange(0, 130)  # Past decay_steps: held at end_lr.
    for lr, end_lr in ((1e-7, 10.0), (0.1, 1e-3)):  # A range-test ramp, and a decay.
        overrides = {"name": "exponential", "end_lr": end_lr, "decay_steps": 99}
        ours = schedule_at(overrides, list(steps), lr=lr)
        theirs = lr * (end_lr / lr) ** (np.minimum(steps, 99) / 99)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert ours[0] == pytest.approx(0.1) and ours[99] == pytest.approx(1e-3)


def test_exponential_after_warmup_follows_warmup_linear():
    overrides = {"name": "exponential", "warmup_steps": 10, "end_lr": 0.01, "decay_steps": 110}
    steps = np.array([0, 5, 10, 60, 110, 200])
    theirs = np.where(steps < 10, steps / 10, 0.01 ** (np.clip(steps - 10, 0, 100) / 100))
    np.testing.assert_allclose(schedule_at(overrides, list(steps), lr=1.0), theirs, rtol=1e-5)


def test_exponential_needs_a_positive_end_lr():
    with pytest.raises(ValueError, match=r"exponential' needs schedule.end_lr > 0") as error:
        optim.validate(*make_configs(schedule={"name": "exponential"}), total_steps=100)
    assert "\n" not in str(error.value)


def test_rsqrt_is_vaswani_et_al_equation_3():
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (Sec. 5.3), with learning_rate
    set to its peak d_model^-0.5 * warmup^-0.5; step is the update count optax passes (the first
    update gets step 0, so lrate 0, where the paper's step_num would be 1)."""
    d_model, warmup = 512, 4000
    steps = [0, 1, 100, 3999, 4000, 4001, 16000, 100000]
    ours = schedule_at(
        {"name": "rsqrt", "warmup_steps": warmup},
        steps,
        lr=d_model**-0.5 * warmup**-0.5,
        total=100000,
    )
    paper = [0.0] + [d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) for s in steps[1:]]
    np.testing.assert_allclose(ours, paper, rtol=2e-6)
    assert ours[4] == pytest.approx(6.988e-4, rel=1e-3)  # The peak, at step 4000.
