"""Multi-head dot-product attention (Vaswani et al. 2017, "Attention Is All You Need", Section 3.2).

One module covers the attention of the Transformer family: bidirectional self-attention with a
padding mask (an encoder), causal self-attention with a KV cache for incremental decoding (GPT,
a decoder), and cross-attention from queries `x` to keys/values computed from `context` (a
decoder attending to an encoder). GPT uses the causal form; the others are tested here.

Parameters are GPT-2's layout: self-attention "qkv" kernel [D, 3D] (q, k, v, each split into
heads) and "out" [D, D]; cross-attention "query" [D, D] and "key_value" [D_ctx, 2D].
Masks are boolean, True = may attend, broadcastable to [batch, heads, q_len, kv_len].
The cache follows flax's `decode=True` convention: variables "cached_key", "cached_value"
[B, max_len, H, Dh] and "cache_index" in the "cache" collection. Initialize it by calling
`model.init(..., decode=True)` on an input of the full length (or zeros of that shape);
each later `apply(..., decode=True, mutable=["cache"])` appends its T tokens at the index.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import precision

Initializer = Callable[..., jax.Array]

# Masked scores are replaced (jnp.where, not added) by float32's lowest value, so
# exp(masked - max) underflows to exactly 0 and a fully masked row stays finite.
MASK_VALUE = float(np.finfo(np.float32).min)

# model.attention_impl: how softmax(q k^T / sqrt(Dh)) v is computed; the projections are the same.
#   einsum  two einsums and a float32 softmax, written out below (the reference; has dropout)
#   jax     jax.nn.dot_product_attention, jax choosing its implementation (implementation=None)
#   xla     jax.nn.dot_product_attention(implementation="xla")
#   cudnn   jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused flash attention;
#           NVIDIA GPUs only, bfloat16/float16 activations
#   auto    cudnn on a GPU when the activations are bfloat16/float16 and cuDNN takes the shapes,
#           else einsum (measured no slower than xla on CPU at our sizes)
ATTENTION_IMPLS = ("einsum", "jax", "xla", "cudnn", "auto")
_DPA_IMPLEMENTATION = {"jax": None, "xla": "xla", "cudnn": "cudnn"}


def check_attention_impl(impl: str, model: str) -> None:
    """One-line ValueErrors: an unknown `attention_impl`, or "cudnn" without a GPU."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"unknown {model} attention_impl {impl!r}; choose one of {list(ATTENTION_IMPLS)}"
        )
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"{model} attention_impl='cudnn' needs an NVIDIA GPU (this backend is "
            f"{jax.default_backend()}); use 'auto', 'xla' or 'einsum'"
        )


def _einsum_attention(query, key, value, mask, dropout: nn.Module, dtype) -> jax.Array:
    """The reference: scores and softmax in float32 whatever the compute dtype (bf16 overflows)."""
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    scores = jnp.einsum(
        "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
    )  # [B, H, T, T_kv]
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), value)


def _dpa(query, key, value, mask, is_causal: bool, implementation: str | None) -> jax.Array:
    """jax.nn.dot_product_attention; a causal mask is passed as is_causal (cuDNN skips it)."""
    if mask is not None:  # [B or 1, H or 1, T or 1, T_kv], as the function asks
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], query.shape[1], key.shape[1]))
    out = jax.nn.dot_product_attention(
        query, key, value, mask=mask, is_causal=is_causal, implementation=implementation
    )
    return out.astype(value.dtype)


def causal_mask(length: int) -> jax.Array:
    """Boolean [1, 1, T, T] mask letting position i attend to positions j <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, None]


def padding_mask(key_valid: jax.Array) -> jax.Array:
    """Boolean [B, 1, 1, T_kv] mask hiding padded keys, from `key_valid` [B, T_kv] (True = token)."""
    return key_valid.astype(jnp.bool_)[:, None, None, :]


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotate feature pairs of `x` [..., T, H, Dh] by angles positions * base^(-2i/Dh) (RoFormer).

    Su et al. 2021, "RoFormer", Section 3.4: after rotation q_m . k_n depends on m - n only.
    Pairs are (i, i + Dh/2) rather than the paper's (2i, 2i+1), as in GPT-NeoX and LLaMA; the
    two differ by a fixed permutation of the head features, so the property is the same.
    `positions` is [T] or [B, T]. Angles and the rotation are computed in float32.
    """
    half = x.shape[-1] // 2
    assert 2 * half == x.shape[-1], f"rotary needs an even head dim, got {x.shape[-1]}"
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # theta_i, i < Dh/2
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., T, Dh/2]
    sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]  # broadcast over H
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `num_heads` heads; self or cross, optional KV cache."""

    num_heads: int
    causal: bool = False
    dropout_rate: float = 0.0  # on the attention probabilities
    use_bias: bool = True
    rotary: bool = False  # rotate q and k by position (RoFormer) before the dot product
    rotary_base: float = 10000.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # projection operands (float32 accumulation); None = dtype
    kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT-2
    out_kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT sets 0.02/sqrt(2L)
    attention_impl: str = "einsum"  # ATTENTION_IMPLS

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        train: bool,
        decode: bool = False,
    ) -> jax.Array:
        """Attend from `x` [B, T, D] to itself, or to `context` [B, S, D_ctx]; returns [B, T, D].

        `mask` (True = attend) is combined with the causal mask when `causal`. With `decode`,
        keys/values are appended to the cache and queries attend to everything cached so far.
        """
        batch, length, features = x.shape
        head_dim = features // self.num_heads
        assert head_dim * self.num_heads == features, (features, self.num_heads)
        heads = (self.num_heads, head_dim)
        matmul = precision.dense_dot_general(self.matmul_dtype) if self.matmul_dtype else None
        dense = partial(
            nn.Dense,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=matmul,
        )
        # Projections are plain 2-D matmuls on [B * T, D]: XLA:CPU runs their gradients
        # markedly faster than those of the equivalent [B, T, D] dot_generals.
        flat = x.reshape(batch * length, features)
        if context is None:
            # One fused [D, 3D] projection for q, k, v, as GPT-2's c_attn.
            qkv = dense(3 * features, name="qkv")(flat).reshape(batch, length, 3, *heads)
            query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh]
        else:
            assert not decode, "the KV cache is for self-attention; cross-attention keys are fixed"
            context_len = context.shape[1]
            query = dense(features, name="query")(flat).reshape(batch, length, *heads)
            kv = dense(2 * features, name="key_value")(context.reshape(-1, context.shape[-1]))
            kv = kv.reshape(batch, context_len, 2, *heads)
            key, value = kv[:, :, 0], kv[:, :, 1]

        # Absolute positions of this call's queries; with a cache they start at its index.
        positions = jnp.arange(length)
        use_cache = decode and self.has_variable("cache", "cached_key")  # False at init
        if decode:
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, value.shape, value.dtype
            )
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if use_cache:
            positions = cache_index.value + positions
        if self.rotary and context is None:  # positions are only shared with keys in self-attention
            query = apply_rotary(query, positions, self.rotary_base)
            key = apply_rotary(key, positions, self.rotary_base)

        key_positions = positions
        if use_cache:
            start = (0, cache_index.value, 0, 0)
            key = jax.lax.dynamic_update_slice(cached_key.value, key, start)
            value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
            cached_key.value, cached_value.value = key, value
            cache_index.value = cache_index.value + length
            key_positions = jnp.arange(key.shape[1])
            # Slots past the last written position still hold zeros: never attend to them.
            written = key_positions < cache_index.value
            mask = written[None, None, None, :] if mask is None else mask & written
        # Without a cache, causal attention is the fixed lower triangle: the fused kernels take it
        # as a flag (is_causal) and skip the masked blocks instead of reading a mask.
        causal_flag = self.causal and not use_cache
        if self.causal:
            causal = positions[:, None] >= key_positions[None, :]  # [T, T_kv]
            full_mask = causal[None, None] if mask is None else mask & causal
        else:
            full_mask = mask
        dpa_mask = mask if causal_flag else full_mask  # the causal part goes as is_causal

        impl = self.attention_impl
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        if train and self.dropout_rate > 0 and impl != "einsum":
            if impl != "auto":
                raise ValueError(
                    f"attention_impl={impl!r} has no attention dropout; set the attention "
                    "dropout rate to 0 or attention_impl='einsum'"
                )
            impl = "einsum"
        out = None
        if impl == "auto":
            if jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16):
                try:  # cuDNN refuses some shapes (head dims, lengths) while tracing: fall back
                    out = _dpa(query, key, value, dpa_mask, causal_flag, "cudnn")
                except (ValueError, NotImplementedError, RuntimeError):
                    out = None
            impl = "einsum"
        if out is None and impl == "einsum":
            out = _einsum_attention(query, key, value, full_mask, dropout, self.dtype)
        elif out is None:
            check_attention_impl(impl, "MultiHeadAttention")
            out = _dpa(query, key, value, dpa_mask, causal_flag, _DPA_IMPLEMENTATION[impl])
        out = dense(features, kernel_init=self.out_kernel_init, name="out")(
            out.reshape(batch * length, features)
        )
        return out.reshape(batch, length, features)
