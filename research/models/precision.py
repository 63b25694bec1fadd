"""Matmuls with low-precision operands and float32 accumulation, forward and backward.

`dense_dot_general(jnp.bfloat16)` is a drop-in `dot_general` for `nn.Dense`: activations and
kernels stay float32 (so do norms, softmax, residuals and the optimizer); only the matmul
operands are rounded to bfloat16, and every product is accumulated in float32. The same holds
for the two backward matmuls (the input and the kernel gradients), through a custom VJP: plain
autodiff would pair the float32 output gradient with a bfloat16 operand, a float32 matmul.
This is the mixed precision of `torch.autocast` for linear layers, without bfloat16 activations.

The precision policy every model family shares is here too, as three string fields of each
model (research/models/*.py), validated by `policy`:

    dtype         compute: activations and matmul operands (DTYPES; "auto": models.dtype)
    param_dtype   parameters, hence gradients and optimizer state (PARAM_DTYPES); float32 by
                  default, so small updates are not rounded away (bfloat16 has 8 mantissa bits)
    output_dtype  the logits the task's loss sees (OUTPUT_DTYPES); float32 by default, because
                  log-softmax over a large vocabulary in bfloat16/float16 loses the loss' digits

Whatever the compute dtype, normalisation statistics (flax's LayerNorm, RMSNorm and BatchNorm
reduce in float32) and the attention softmax (research/models/attention.py) stay float32: a
mean of squares or an exp-sum in bfloat16 rounds or, in float16, overflows. float16 compute
needs dynamic loss scaling in training (train.loss_scale, research/loss_scale.py): its 5-bit
exponent flushes small gradients to zero.

Why: on CPUs with AVX-512 BF16 (and on accelerators) bfloat16 matmuls run at about twice the
float32 rate, while bfloat16 elementwise work, which XLA:CPU computes by converting to float32
and back, is slower than float32 (bench/NOTES.md).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint

# Compute precisions a config may name, as (activation dtype, matmul operand dtype or None = the
# same). "bfloat16_matmul" rounds only the Dense matmul operands to bfloat16, accumulating in
# float32 (`dense_dot_general`): on CPU it is the fast one, as XLA:CPU's bfloat16 elementwise
# work is slower than float32 (bench/NOTES.md). The conv nets have no Dense-only variant.
DTYPES = {
    "float32": (jnp.float32, None),
    "bfloat16": (jnp.bfloat16, None),
    "float16": (jnp.float16, None),
    "bfloat16_matmul": (jnp.float32, jnp.bfloat16),
}
CONV_DTYPES = ("float32", "bfloat16", "float16")  # cnn, lenet5, resnet, imagenet_resnet
PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def policy(
    model: str, dtype: str, param_dtype: str, output_dtype: str, allowed=tuple(DTYPES)
) -> tuple[Any, Any, Any, Any]:
    """(compute, matmul operand or None, parameter, output) jnp dtypes of a model's three
    precision fields; a one-line ValueError names a bad one."""
    for field, value, table in (
        ("dtype", dtype, allowed),
        ("param_dtype", param_dtype, PARAM_DTYPES),
        ("output_dtype", output_dtype, OUTPUT_DTYPES),
    ):
        if value not in table:
            raise ValueError(f"unknown {model} {field} {value!r}; choose one of {sorted(table)}")
    compute, matmul = DTYPES[dtype]
    return compute, matmul, PARAM_DTYPES[param_dtype], OUTPUT_DTYPES[output_dtype]


def dense_dot_general(dtype: Any):
    """A `dot_general` for nn.Dense (x [..., K] @ kernel [K, N]) with `dtype` operands."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
        del precision, kwargs  # The operand dtype is the precision.
        (lhs_contracting, rhs_contracting), batch = dimension_numbers
        assert (
            lhs_contracting == (lhs.ndim - 1,)
            and rhs_contracting == (0,)
            and batch
            == (
                (),
                (),
            )
        ), f"dense_dot_general is for x[..., K] @ kernel[K, N], got {dimension_numbers}"
        return _matmul(lhs, rhs, dtype)

    return dot_general


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    return _matmul_forward(x, kernel, dtype)[0]


def _matmul_forward(x, kernel, dtype):
    assert x.dtype == kernel.dtype, (x.dtype, kernel.dtype)  # nn.Dense promotes both to its dtype
    x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
    kernel_low = kernel.astype(dtype)
    y = jnp.dot(x2, kernel_low, preferred_element_type=jnp.float32).astype(x.dtype)
    # The kernel gradient is x^T @ dy. XLA:CPU's fast (YNNPACK) matmuls need a row-major x^T:
    # a plain transpose is folded into the dot as a contraction over x's first dimension (or
    # kept as a column-major view), and such dots run in float32 (Eigen, or YNNPACK after an
    # upcast), 2x slower. The layout constraint makes XLA write x^T out once (~90 us).
    x_t = with_layout_constraint(x2.T, Layout(major_to_minor=(0, 1)))
    return y.reshape(*x.shape[:-1], kernel.shape[-1]), (x_t, kernel_low)


def _matmul_backward(dtype, residuals, dy):
    x_t, kernel_low = residuals
    dy2 = dy.reshape(-1, dy.shape[-1]).astype(dtype)
    dx = jax.lax.dot_general(  # dy @ kernel^T: both operands contract their last dimension.
        dy2, kernel_low, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    dkernel = jnp.dot(x_t, dy2, preferred_element_type=jnp.float32)
    return dx.reshape(*dy.shape[:-1], -1).astype(dy.dtype), dkernel.astype(dy.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


def matmul(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """x [..., K] @ kernel [K, N] with `dtype` operands and float32 accumulation, as dense_dot_general."""
    return _matmul(x, kernel, dtype)
