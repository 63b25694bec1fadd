"""bfloat16 matmul operands with float32 accumulation (research/models/precision.py), forward and
backward, and GPT's dtype="bfloat16_matmul" that uses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
