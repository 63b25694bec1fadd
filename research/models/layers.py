"""Transformer building blocks (used by GPT; written for any Transformer).

Every ablatable choice is a short string resolved through a table below (STYLE principle 2):
NORMS (layer | rms), ACTIVATIONS (gelu | gelu_exact | relu | swiglu), RESIDUALS (pre | post norm) and
POSITIONAL (learned | sinusoidal | rotary | none). Attention itself lives in attention.py.
Modules take `dtype` (compute) and `param_dtype` as jnp dtypes (research/models/precision.py);
norms reduce in float32 whatever `dtype` (flax's default), so bfloat16 statistics never round.
"""

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import precision
from research.models.attention import Initializer, MultiHeadAttention


def require(ok: bool, message: str) -> None:
    """A model's check of its own fields: a one-line ValueError (reported as a config error)."""
    if not ok:
        raise ValueError(message)


def lookup(table: Mapping[str, Any], key: str, field: str) -> Any:
    """`table[key]`, or a one-line ValueError naming `field` and the valid choices."""
    if key not in table:
        raise ValueError(f"unknown {field} {key!r}; choose one of {sorted(table)}")
    return table[key]


# --- normalization --------------------------------------------------------------------------

# name -> constructor(use_bias, dtype, name, epsilon). Epsilon 1e-5 by default, as GPT-2
# (torch.nn.LayerNorm's default); BERT uses 1e-12, ViT 1e-6.
NORM_EPSILON = 1e-5
NORMS: dict[str, Callable[..., nn.Module]] = {
    # Ba et al. 2016. use_bias=False drops the shift, as nanoGPT's bias=False.
    "layer": lambda use_bias, epsilon=NORM_EPSILON, **kw: nn.LayerNorm(
        epsilon=epsilon, use_bias=use_bias, **kw
    ),
    # Zhang & Sennrich 2019: rescale by the root mean square; no centering, no shift at all.
    "rms": lambda use_bias, epsilon=NORM_EPSILON, **kw: nn.RMSNorm(epsilon=epsilon, **kw),
}


# --- MLP ------------------------------------------------------------------------------------


# name -> (nonlinearity, gated). A gated unit computes act(x W) * (x V) (Shazeer 2020, "GLU
# Variants Improve Transformer"); it has three matrices, so a parameter-matched swiglu
# ablation of a 4x gelu MLP uses mlp_ratio = 8/3 (as LLaMA).
def gelu_exact(x: jax.Array) -> jax.Array:
    """x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016), as torch's nn.GELU().

    jax.nn.gelu(approximate=False) computes the same function through erfc, which XLA:CPU
    evaluates about 2.6x slower than erf (forward; bench/NOTES.md).
    """
    return 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


ACTIVATIONS: dict[str, tuple[Callable[[jax.Array], jax.Array], bool]] = {
    "gelu": (partial(nn.gelu, approximate=True), False),  # tanh approximation, as GPT-2
    "gelu_exact": (gelu_exact, False),  # erf form, as BERT and ViT
    "relu": (nn.relu, False),  # Vaswani et al. 2017
    "swiglu": (nn.silu, True),
}


class MLP(nn.Module):
    """Position-wise feed-forward block: D -> hidden_dim -> D (Vaswani et al. 2017, Section 3.3)."""

    hidden_dim: int
    activation: str = "gelu"
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # operands of both matmuls (float32 accumulation); None = dtype
    kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT-2
    out_kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT sets 0.02/sqrt(2L)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D] -> [..., D]."""
        act, gated = lookup(ACTIVATIONS, self.activation, "activation")
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.matmul_dtype:
            dense["dot_general"] = precision.dense_dot_general(self.matmul_dtype)
        # Plain 2-D matmuls: on XLA:CPU a [B, T, D] dot's weight gradient goes through a slow
        # transposing copy; flattening made this block's forward+backward ~1.7x faster.
        h = x.reshape(-1, x.shape[-1])
        # A gated unit's two input projections are one [D, 2 * hidden] matmul, split after.
        width = 2 * self.hidden_dim if gated else self.hidden_dim
        h = nn.Dense(width, kernel_init=self.kernel_init, name="fc", **dense)(h)
        if gated:
            gate, up = jnp.split(h, 2, axis=-1)
            h = act(gate) * up
        else:
            h = act(h)
        h = nn.Dense(x.shape[-1], kernel_init=self.out_kernel_init, name="proj", **dense)(h)
        return h.reshape(x.shape)


# --- positional encodings -------------------------------------------------------------------


def sinusoidal_table(num_positions: int, features: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al., 3.5)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    inv_freq = 10000.0 ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    table = np.zeros((num_positions, features), dtype=np.float64)
    table[:, 0::2] = np.sin(positions * inv_freq)
    table[:, 1::2] = np.cos(positions * inv_freq[: features // 2])
    return table.astype(np.float32)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, added to token embeddings (GPT-2's wpe)."""

    num_positions: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(0.02)  # GPT-2 / nanoGPT

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        """Embeddings [..., T, features] for integer `positions` [..., T]."""
        table = self.param(
            "embedding", self.embedding_init, (self.num_positions, self.features), self.param_dtype
        )
        return jnp.take(table, positions, axis=0).astype(self.dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoids added to token embeddings (Vaswani et al. 2017, Section 3.5); no params."""

    num_positions: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32  # unused (no parameters): interchangeable with the learned one

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        """Embeddings [..., T, features] for integer `positions` [..., T]."""
        table = jnp.asarray(sinusoidal_table(self.num_positions, self.features))
        return jnp.take(table, positions, axis=0).astype(self.dtype)


# name -> (module added to the token embeddings or None, whether attention rotates q and k).
# Rotary (Su et al. 2021) encodes position inside attention, so adds nothing to embeddings.
POSITIONAL: dict[str, tuple[type[nn.Module] | None, bool]] = {
    "learned": (LearnedPositionalEmbedding, False),
    "sinusoidal": (SinusoidalPositionalEmbedding, False),
    "rotary": (None, True),
    "none": (None, False),
}


# --- residual blocks ------------------------------------------------------------------------


def pre_norm_residual(x: jax.Array, branch: Callable, norm: nn.Module) -> jax.Array:
    """x + f(norm(x)): GPT-2 (Radford et al. 2019), analysed by Xiong et al. 2020."""
    return x + branch(norm(x))


def post_norm_residual(x: jax.Array, branch: Callable, norm: nn.Module) -> jax.Array:
    """norm(x + f(x)): the original Transformer (Vaswani et al. 2017) and BERT."""
    return norm(x + branch(x))


# norm_position -> residual wiring. Pre-norm leaves the residual stream unnormalized, so models
# using it end with one more norm (GPT-2's ln_f); post-norm outputs are normalized already.
RESIDUALS: dict[str, Callable[..., jax.Array]] = {
    "pre": pre_norm_residual,
    "post": post_norm_residual,
}


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, then an MLP; each a normed residual branch."""

    num_heads: int
    mlp_dim: int
    causal: bool = False
    cross_attention: bool = False  # attend to `context` after self-attention (decoder)
    dropout_rate: float = 0.0  # residual dropout on each branch output
    attention_dropout_rate: float = 0.0  # on attention probabilities
    activation: str = "gelu"
    norm: str = "layer"
    norm_epsilon: float = NORM_EPSILON
    norm_position: str = "pre"
    rotary: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None  # operands of the attention and MLP matmuls; None = dtype
    kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT-2
    out_kernel_init: Initializer = nn.initializers.normal(0.02)  # GPT sets 0.02/sqrt(2L)
    # The MLP's first matmul; None: kernel_init. The Transformer initializes attention's fused
    # q|k|v kernel per projection, which an MLP's single [D, hidden] kernel must not be.
    mlp_kernel_init: Initializer | None = None
    attention_impl: str = "einsum"  # attention.ATTENTION_IMPLS

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        train: bool,
        decode: bool = False,
    ) -> jax.Array:
        """[B, T, D] -> [B, T, D]; `mask` is for self-attention, `context_mask` for cross."""
        residual = lookup(RESIDUALS, self.norm_position, "norm_position")
        make_norm = partial(
            lookup(NORMS, self.norm, "norm"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            epsilon=self.norm_epsilon,
        )
        attention = partial(
            MultiHeadAttention,
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
            kernel_init=self.kernel_init,
            out_kernel_init=self.out_kernel_init,
            attention_impl=self.attention_impl,
        )
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)

        self_attn = attention(causal=self.causal, rotary=self.rotary, name="attn")
        x = residual(
            x,
            lambda h: dropout(self_attn(h, mask=mask, train=train, decode=decode)),
            make_norm(name="ln_1"),
        )
        if self.cross_attention:
            assert context is not None, "cross_attention=True needs a context"
            cross_attn = attention(name="cross_attn")
            x = residual(
                x,
                lambda h: dropout(cross_attn(h, context, mask=context_mask, train=train)),
                make_norm(name="ln_cross"),
            )
        mlp = MLP(
            self.mlp_dim,
            activation=self.activation,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
            kernel_init=self.mlp_kernel_init or self.kernel_init,
            out_kernel_init=self.out_kernel_init,
            name="mlp",
        )
        return residual(x, lambda h: dropout(mlp(h)), make_norm(name="ln_2"))
