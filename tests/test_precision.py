"""The precision policy (research/models/precision.py): bfloat16 matmul operands with float32
accumulation, forward and backward; model.dtype / param_dtype / output_dtype on every family;
low-precision losses and gradients against float32; dynamic loss scaling for float16
(research/loss_scale.py) in the step and through a resumed run."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as cfg
from research import loss_scale, models, steps
from research.models import gpt, precision


def _bf16(x) -> np.ndarray:
    """x rounded to bfloat16, back in float64 for exact reference products."""
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)


@pytest.mark.parametrize("shape", [(6, 8), (2, 3, 8)])
def test_dense_dot_general_rounds_operands_and_gradients_to_bfloat16(shape):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (8, 5))
    dy = jax.random.normal(keys[2], (*shape[:-1], 5))
    dot_general = precision.dense_dot_general(jnp.bfloat16)
    dense = lambda x, k: dot_general(x, k, (((x.ndim - 1,), (0,)), ((), ())))

    y, vjp = jax.vjp(dense, x, kernel)
    dx, dkernel = vjp(dy)
    assert y.dtype == dx.dtype == dkernel.dtype == jnp.float32
    x2, dy2 = _bf16(x).reshape(-1, 8), _bf16(dy).reshape(-1, 5)
    # Operands rounded to bfloat16, products summed in float32: equal to float64 to ~1e-6.
    np.testing.assert_allclose(y, (x2 @ _bf16(kernel)).reshape(y.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, (dy2 @ _bf16(kernel).T).reshape(x.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, x2.T @ dy2, rtol=1e-5, atol=1e-5)
    # ... and within bfloat16 rounding (8 bits of mantissa) of the float32 products.
    np.testing.assert_allclose(y, x @ kernel, rtol=0.05, atol=0.05)


def test_gpt_bfloat16_matmul_keeps_float32_params_logits_and_gradients():
    model32, model_mixed = gpt.GPTTiny(), gpt.GPTTiny(dtype="bfloat16_matmul")
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 32, dtype=jnp.int32)
    params = model32.init(jax.random.key(0), tokens, train=False)["params"]
    shapes = jax.eval_shape(lambda: model_mixed.init(jax.random.key(0), tokens, train=False))
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes["params"]) == jax.tree.map(
        lambda p: (p.shape, p.dtype), params
    )

    def loss_and_grads(model):
        def loss(params):
            logits = model.apply({"params": params}, tokens, train=False)
            return jax.nn.log_softmax(logits)[..., 0].mean(), logits

        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss32, logits32), grads32 = loss_and_grads(model32)
    (loss16, logits16), grads16 = loss_and_grads(model_mixed)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05)
    assert not np.array_equal(logits16, logits32)  # the matmuls really were bfloat16
    np.testing.assert_allclose(loss16, loss32, rtol=0.01)
    for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert g16.dtype == jnp.float32
        scale = float(jnp.abs(g32).max()) + 1e-12
        np.testing.assert_allclose(g16 / scale, g32 / scale, atol=0.05)


# --- the precision policy on every model family -------------------------------------------------

# Each family at a tiny size, with example inputs.
_TOKENS = jnp.zeros((2, 8), jnp.int32)
FAMILIES = {
    "cnn": ({"features": (4,), "hidden": 8}, (jnp.zeros((2, 8, 8, 1)),)),
    "lenet5": ({}, (jnp.zeros((2, 28, 28, 1)),)),
    "resnet": ({"depth": 8, "widths": (4, 8, 8)}, (jnp.zeros((2, 8, 8, 3)),)),
    "imagenet_resnet": ({"depth": 18, "width": 4}, (jnp.zeros((2, 32, 32, 3)),)),
    "gpt": (models.SMOKE_SIZES["gpt"], (_TOKENS,)),
    "transformer": (models.SMOKE_SIZES["transformer"], (_TOKENS, _TOKENS)),
    "vit": ({"variant": "", "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32,
             "patch_size": 4}, (jnp.zeros((2, 8, 8, 3)),)),
    "bert": (models.SMOKE_SIZES["bert"], (_TOKENS,)),
}  # fmt: skip
CONV = ("cnn", "lenet5", "resnet", "imagenet_resnet")
POLICIES = [  # (dtype, param_dtype): each compute dtype, and bfloat16 parameters.
    ("float32", "float32"),
    ("bfloat16", "float32"),
    ("float16", "float32"),
    ("bfloat16_matmul", "float32"),
    ("bfloat16", "bfloat16"),
]


def _floating_dtypes(tree) -> set:
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("dtype", "param_dtype"), POLICIES)
def test_every_family_keeps_params_activations_and_outputs_in_the_policy_dtypes(
    family, dtype, param_dtype
):
    if family in CONV and dtype == "bfloat16_matmul":
        with pytest.raises(ValueError, match="dtype 'bfloat16_matmul'; choose one of"):
            models.build({"name": family, "dtype": dtype})
        return
    sizes, inputs = FAMILIES[family]
    model = models.build({"name": family, **sizes, "dtype": dtype, "param_dtype": param_dtype})
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False))
    assert _floating_dtypes(variables["params"]) == {jnp.dtype(param_dtype)}
    # BatchNorm's running statistics stay float32 whatever the policy (flax).
    assert _floating_dtypes(variables.get("batch_stats", {})) <= {jnp.dtype(jnp.float32)}
    out, captured = jax.eval_shape(
        lambda v: model.apply(v, *inputs, train=False, capture_intermediates=True), variables
    )
    assert _floating_dtypes(out) == {jnp.dtype(jnp.float32)}  # output_dtype's default
    # Every submodule's output is in the compute dtype (bfloat16_matmul: float32 activations),
    # but for the attention probabilities: softmax and its dropout stay float32 (attention.py).
    flat = [(jax.tree_util.keystr(p), x) for p, x in jax.tree.leaves_with_path(captured)]
    is_probs = lambda key: "attn']['Dropout_0" in key
    probs = {x.dtype for key, x in flat if is_probs(key)}
    inner = [
        x for key, x in flat if not is_probs(key) and key != "['intermediates']['__call__'][0]"
    ]
    compute = {"bfloat16_matmul": jnp.float32}.get(dtype, dtype)
    assert _floating_dtypes(inner) == {jnp.dtype(compute)}
    assert probs <= {jnp.dtype(jnp.float32)} and (family in CONV) == (not probs)
    low = models.build({"name": family, **sizes, "dtype": dtype, "output_dtype": "bfloat16"})
    out = jax.eval_shape(lambda v: low.apply(v, *inputs, train=False), variables)
    assert _floating_dtypes(out) == {jnp.dtype(jnp.bfloat16)}


def test_bad_precision_fields_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown GPT param_dtype 'float16'; choose one of"):
        models.build({"name": "gpt", "param_dtype": "float16"})
    with pytest.raises(ValueError, match="unknown SmallCNN output_dtype 'int8'; choose one of"):
        models.build({"name": "cnn", "output_dtype": "int8"})
    with pytest.raises(cfg.ConfigError, match="model.dtype=float16 trains without loss scaling"):
        cfg.build_config("experiments/digits_cnn.py:smoke", {"model.dtype": "float16"})


def _loss_and_grads(model, params, inputs, labels):
    def loss(params):
        logits = model.apply({"params": params}, *inputs, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", ["gpt", "cnn"])
def test_low_precision_loss_and_gradients_are_within_tolerance_of_float32(family, dtype):
    keys = jax.random.split(jax.random.key(3), 3)
    if family == "gpt":
        sizes = dict(vocab_size=32, block_size=16, num_layers=2, num_heads=2, embed_dim=32)
        inputs = (jax.random.randint(keys[0], (4, 16), 0, 32, dtype=jnp.int32),)
        labels = jax.random.randint(keys[1], (4, 16), 0, 32)
    else:
        sizes = dict(features=(8, 16), hidden=32)
        inputs = (jax.random.uniform(keys[0], (8, 8, 8, 1)),)
        labels = jax.random.randint(keys[1], (8,), 0, 10)
    model32 = models.build({"name": family, **sizes})
    low = models.build({"name": family, **sizes, "dtype": dtype})
    params = model32.init(keys[2], *inputs, train=False)["params"]
    loss32, grads32 = _loss_and_grads(model32, params, inputs, labels)
    loss16, grads16 = _loss_and_grads(low, params, inputs, labels)
    assert loss16.dtype == jnp.float32 and loss16 != loss32  # computed in low precision ...
    np.testing.assert_allclose(loss16, loss32, rtol=0.01)  # ... within 1% of float32
    # Gradients keep the parameters' dtype and, as a whole, stay within 5% (bfloat16: 8 mantissa
    # bits; XLA:CPU's bfloat16 convolutions also accumulate in bfloat16) or 1% (float16: 11) of
    # float32's, and point the same way.
    assert _floating_dtypes(grads16) == {jnp.dtype(jnp.float32)}
    g16, g32 = (
        jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads16, grads32)
    )
    error = float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32))
    assert 0 < error < {"bfloat16": 0.05, "float16": 0.01}[dtype], error
    assert float(jnp.vdot(g16, g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32))) > 0.99


# --- dynamic loss scaling ---------------------------------------------------------------------


def _float16_parts(**train):
    overrides = {
        "model.dtype": "float16",
        "train.loss_scale": "dynamic",
        "train.batch_size": 16,
        "model.features": (4,),
        "model.hidden": 8,
    }
    config = cfg.build_config(
        "experiments/digits_cnn.py:smoke",
        overrides | {f"train.{k}": v for k, v in train.items()},
    )
    parts = steps.build(config, (8, 8, 1))
    keys = jax.random.split(jax.random.key(0))
    batch = {
        "image": jax.random.uniform(keys[0], (16, 8, 8, 1)),
        "label": jax.random.randint(keys[1], (16,), 0, 10),
    }
    return parts, jax.jit(functools.partial(steps.train_step, parts)), batch


def test_dynamic_loss_scale_skips_an_overflow_halves_and_grows_after_good_steps():
    # S = 2^40 makes the float16 backward pass overflow (inf gradients) at once.
    parts, step, batch = _float16_parts(loss_scale_init=2.0**40, loss_scale_interval=3)
    state = steps.init_state(parts, parts.init_key)
    assert state["loss_scale"]["scale"] == 2.0**40 and state["loss_scale"]["good_steps"] == 0
    new, metrics = step(state, batch)
    assert float(new["loss_scale"]["scale"]) == 2.0**39  # halved
    assert metrics["update_applied"] == 0.0 and not np.isfinite(metrics["grad_norm"])
    assert np.isfinite(metrics["loss"])
    for part in ("params", "opt_state"):  # the update skipped: bitwise the old state
        for a, b in zip(jax.tree.leaves(new[part]), jax.tree.leaves(state[part])):
            np.testing.assert_array_equal(a, b)
    # A normal skip for the NaN guard: counted, but no non-finite step, no consecutive skip.
    assert int(new["guard"]["skipped"]) == 1
    assert int(new["guard"]["first_nonfinite_step"]) == -1
    assert int(new["guard"]["consecutive"]) == 0
    # Halving until the gradients fit, then growth every 3 finite steps.
    scales, applied = [], []
    for _ in range(40):
        new, metrics = step(new, batch)
        scales.append(float(new["loss_scale"]["scale"]))
        applied.append(float(metrics["update_applied"]))
    first = applied.index(1.0)
    assert first > 0 and all(a == 0.0 for a in applied[:first])
    assert scales[first - 1] == scales[first] < 2.0**39
    grown = scales[first + 2]  # the third finite step in a row doubles S
    assert grown == 2 * scales[first] or 0.0 in applied[first : first + 3]
    assert int(new["guard"]["first_nonfinite_step"]) == -1


def test_loss_scale_update_rules():
    state = loss_scale.init("dynamic", 8.0)
    finite, inf = jnp.bool_(True), jnp.bool_(False)
    state, overflow = loss_scale.update("dynamic", state, inf, 2)
    assert float(state["scale"]) == 4.0 and bool(overflow)
    state, _ = loss_scale.update("dynamic", state, finite, 2)
    assert float(state["scale"]) == 4.0 and int(state["good_steps"]) == 1
    state, overflow = loss_scale.update("dynamic", state, finite, 2)
    assert float(state["scale"]) == 8.0 and int(state["good_steps"]) == 0 and not bool(overflow)
    # At S = 1 nothing is left to unscale: a non-finite gradient is real (the guard's policy).
    state, overflow = loss_scale.update("dynamic", loss_scale.init("dynamic", 1.0), inf, 2)
    assert float(state["scale"]) == 1.0 and not bool(overflow)
    assert loss_scale.init("none", 8.0) == {} and loss_scale.current("none", 8.0, {}) is None
    assert float(loss_scale.current("fixed", 8.0, {})) == 8.0


def test_a_float16_run_learns_skips_overflows_without_halting_and_resumes_bitwise(tmp_path):
    # The digits smoke run in float16 with S = 2^20: the first step overflows, and S climbing
    # back every 2 steps overflows again; under train.nonfinite=halt (the default) neither halts.
    from test_train import assert_trees_equal, final_state

    driver = Path(__file__).parent / "drivers" / "die_at.py"
    flags = [
        "--config.train.steps=12",
        "--config.train.checkpoint_every_steps=6",
        "--config.train.eval_every_steps=12",
        "--config.train.log_every_steps=1",
        "--config.model.dtype=float16",
        "--config.train.loss_scale=dynamic",
        f"--config.train.loss_scale_init={2.0**20}",
        "--config.train.loss_scale_interval=2",
    ]

    def drive(workdir, *extra):
        out = subprocess.run(
            [sys.executable, str(driver), str(workdir), *extra, *flags],
            cwd=driver.parents[2],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]

    drive(tmp_path / "whole", "never", "0")
    records = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    logs = [r for r in map(json.loads, records) if r["split"] == "train"]
    scales = [r["loss_scale"] for r in logs]
    assert scales[:2] == [2.0**20, 2.0**19] and logs[0]["update_applied"] == 0.0
    assert 1 <= logs[-1]["skipped_updates"] <= 6
    assert min(r["loss"] for r in logs[-3:]) < logs[0]["loss"] - 0.1  # it learns
    whole = final_state(tmp_path / "whole")
    assert int(whole["guard"]["first_nonfinite_step"]) == -1

    drive(tmp_path / "resumed", "stop", "6")  # stopped after step 6, checkpointed ...
    drive(tmp_path / "resumed", "never", "0")  # ... and resumed from there
    assert_trees_equal(final_state(tmp_path / "resumed"), whole)  # loss_scale included
    final = float(whole["loss_scale"]["scale"])  # the last logged S, halved after an overflow
    if logs[-1]["update_applied"] == 0.0:
        assert final == scales[-1] / 2
    assert final < 2.0**20
