"""research/models/conv.py: every conv_impl is nn.Conv (parameters, outputs, gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import conv, resnet

# impl -> (atol, rtol) against nn.Conv in float32: im2col sums the same products in another
# order; bfloat16 operands (8 bits of mantissa) are ~0.4% off per product.
TOLERANCES = {
    "xla": (0.0, 0.0),
    "xla_bf16": (0.05, 0.02),
    "im2col": (1e-5, 1e-5),
    "im2col_bf16": (0.05, 0.02),
}


def _loss(module):
    # A nonlinear scalar, so the output gradient differs from pixel to pixel.
    return lambda variables, x: jnp.sum(jnp.sin(module.apply(variables, x)))


@pytest.mark.parametrize("impl", conv.IMPLS)
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("kernel_size", [(3, 3), (1, 1)])
@pytest.mark.parametrize("height", [6, 7])  # even and odd: SAME pads differ at stride 2
@pytest.mark.parametrize("padding", ["SAME", ((2, 1), (0, 2))])
def test_matches_nn_conv_outputs_and_gradients(impl, strides, kernel_size, height, padding):
    x = jax.random.normal(jax.random.key(0), (2, height, 5, 3))
    reference = nn.Conv(4, kernel_size, strides=strides, padding=padding)
    variables = reference.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a nonzero bias
    ours = conv.Conv(4, kernel_size, strides=strides, padding=padding, impl=impl)
    ours_variables = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)

    want = reference.apply(variables, x)
    got = ours.apply(variables, x)
    if padding == "SAME":
        assert got.shape == want.shape == (2, -(-height // strides), -(-5 // strides), 4)
    assert got.shape == want.shape
    assert got.dtype == jnp.float32
    atol, rtol = TOLERANCES[impl]
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)

    want_grads = jax.grad(_loss(reference), argnums=(0, 1))(variables, x)
    got_grads = jax.grad(_loss(ours), argnums=(0, 1))(variables, x)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert g.dtype == w.dtype == jnp.float32
        np.testing.assert_allclose(g, w, atol=atol * 4, rtol=rtol * 4)


def test_patches_order_is_the_kernels_reshape():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    cols = conv.patches(x, (3, 3), (1, 1))
    assert cols.shape == (2, 4, 4, 27)
    # Output pixel (1, 1)'s window is input rows 0-2, columns 0-2 (SAME pads one on each side).
    np.testing.assert_array_equal(cols[0, 1, 1], x[0, 0:3, 0:3, :].reshape(-1))
    # Pixel (0, 0): the first row and column of the window are padding.
    np.testing.assert_array_equal(cols[1, 0, 0, :12], np.zeros(12))


@pytest.mark.parametrize("impl", ["xla_bf16", "im2col", "im2col_bf16"])
@pytest.mark.parametrize(
    "size, shape",
    [(resnet.ResNetTiny, (2, 8, 8, 3)), (resnet.ImageNetResNetTiny, (1, 32, 32, 3))],
)
def test_resnet_conv_impl_keeps_params_and_logits(impl, size, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    reference = size(conv_impl="xla")
    variables = reference.init(jax.random.key(1), x, train=False)
    model = size(conv_impl=impl)
    assert jax.tree.map(jnp.shape, model.init(jax.random.key(1), x, train=False)) == jax.tree.map(
        jnp.shape, variables
    )
    want = reference.apply(variables, x, train=False)
    got = model.apply(variables, x, train=False)
    atol = 1e-4 if impl == "im2col" else 0.1
    np.testing.assert_allclose(got, want, atol=atol, rtol=atol)


def test_auto_resolves_by_processor_kind_and_bad_impl_is_one_line():
    assert conv.resolve("im2col") == "im2col"
    assert conv.resolve("auto") in conv.IMPLS
    assert set(conv.AUTO_IMPLS.values()) <= set(conv.IMPLS)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        resnet.CifarResNet(conv_impl="winograd")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        resnet.ImageNetResNet(conv_impl="winograd")
