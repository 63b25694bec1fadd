"""How the ResNets' convolutions are computed: a drop-in for `nn.Conv` with a choice of arithmetic.

Why: XLA:CPU's float32 convolutions run ResNet-20's step at ~18% of the float32 matmul peak
(bench/NOTES.md, "Convolutions"), ~3x slower than PyTorch's. Two ideas were measured
(bench/NOTES.md, "ResNet-20 conv_impl"):

- bfloat16 operands with float32 accumulation (`xla_bf16`), as research/models/precision.py does
  for the GPT's matmuls: on CPUs with AVX512-BF16 the step is 1.05-1.6x faster. "auto" picks it.
- im2col: each output pixel's window gathered by kh * kw shifted (strided) slices of the padded
  input, concatenated on the channel axis ([B, H', W', kh * kw * Cin]), times the kernel reshaped
  to [kh * kw * Cin, Cout] (precision.py's matmul, forward and backward). Slower: XLA:CPU's
  concatenate of 16-channel slices alone costs ~10x the convolution it replaces. Kept, tested,
  for other processors and for the record.

`Conv(impl=...)` keeps nn.Conv's parameter ("kernel" [kh, kw, Cin, Cout], "bias") so a checkpoint
does not depend on the implementation:

    "xla"          nn.Conv: XLA's convolution
    "xla_bf16"     XLA's convolutions of bfloat16 operands, float32 accumulation, forward and both
                   gradients (a custom VJP, as precision.py's matmul); the gradients are rounded
                   to bfloat16 (~0.4%), the parameters and activations stay float32
    "im2col"       patches @ kernel, float32 operands
    "im2col_bf16"  patches @ kernel, bfloat16 operands, float32 accumulation (forward and backward)

"auto" resolves by processor kind (research/hardware.py) through AUTO_IMPLS, measured in
bench/NOTES.md ("ResNet-20 conv_impl").
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import hardware
from research.models import precision

IMPLS = ("xla", "xla_bf16", "im2col", "im2col_bf16")
# Processor kind -> the implementation measured fastest for ResNet-20's training step.
AUTO_IMPLS = {
    # ResNet-20's step 1.05-1.6x faster with bf16 operands than float32 (same rounds); im2col
    # 1.5-2.7x slower than XLA's convolutions (bench/NOTES.md).
    "cpu_bf16": "xla_bf16",
    # AVX2 only: bf16 operands are converted to float32 (as for the GPT); not measured.
    "cpu": "xla",
    # Accelerators: cuDNN / TPU convolutions; not measured here (no accelerator).
    "gpu": "xla",
    "tpu": "xla",
}
# The operands' dtype of each matmul implementation.
_OPERAND_DTYPES = {"im2col": jnp.float32, "im2col_bf16": jnp.bfloat16}


def resolve(impl: str) -> str:
    """`impl` with "auto" replaced by this processor's choice (AUTO_IMPLS)."""
    if impl != "auto":
        return impl
    return AUTO_IMPLS.get(hardware.kind(), "xla")


def patches(
    x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int], padding: Any = "SAME"
) -> jax.Array:
    """[B, H', W', kh * kw * C]: each output pixel's padded window, (kh, kw, C) flattened.

    `padding` is "SAME" or ((top, bottom), (left, right)), as nn.Conv's. The flattening order is
    that of a kernel [kh, kw, C, Cout] reshaped to [kh * kw * C, Cout].
    """
    _, height, width, _ = x.shape
    if isinstance(padding, str):
        assert padding == "SAME", f"padding {padding!r}: SAME or explicit pairs"
        padding = jax.lax.padtype_to_pads((height, width), kernel_size, strides, "SAME")
    (top, bottom), (left, right) = padding
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (kh, kw), (sh, sw) = kernel_size, strides
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    if (kh, kw) == (1, 1):
        return x[:, : (out_h - 1) * sh + 1 : sh, : (out_w - 1) * sw + 1 : sw, :]
    windows = [
        x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(windows, axis=-1)


class Conv(nn.Module):
    """nn.Conv (NHWC, no dilation or groups) computed by `impl` (IMPLS)."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"  # or ((top, bottom), (left, right))
    use_bias: bool = True
    impl: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolution of NHWC `x`."""
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.impl == "xla":  # nn.Conv's arithmetic.
            y = _xla_conv(x, kernel, strides, self.padding)
        elif self.impl == "xla_bf16":
            y = _conv_bf16(x, kernel, strides, self.padding)
        else:
            cols = patches(x, (kh, kw), strides, self.padding)
            kernel2 = kernel.reshape(-1, self.features)
            y = precision.matmul(cols, kernel2, _OPERAND_DTYPES[self.impl])
        return y if bias is None else y + bias


def _xla_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_bf16(x, kernel, strides, padding):
    """XLA's convolution of bfloat16 operands, float32 accumulation; its VJP's too."""
    return _conv_bf16_forward(x, kernel, strides, padding)[0]


def _conv_bf16_forward(x, kernel, strides, padding):
    x_low, kernel_low = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    y = jax.lax.conv_general_dilated(
        x_low,
        kernel_low,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )
    return y.astype(x.dtype), (x_low, kernel_low)


def _conv_bf16_backward(strides, padding, residuals, dy):
    # Both gradients are XLA convolutions of bfloat16 operands (rounded to bfloat16), the
    # convolution's transposes in each operand (no forward recomputed).
    x_low, kernel_low = residuals
    dy_low = dy.astype(jnp.bfloat16)
    (dx,) = jax.linear_transpose(lambda a: _xla_conv(a, kernel_low, strides, padding), x_low)(
        dy_low
    )
    (dkernel,) = jax.linear_transpose(lambda b: _xla_conv(x_low, b, strides, padding), kernel_low)(
        dy_low
    )
    return dx.astype(dy.dtype), dkernel.astype(dy.dtype)


_conv_bf16.defvjp(_conv_bf16_forward, _conv_bf16_backward)
