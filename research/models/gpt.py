"""GPT: a decoder-only transformer language model (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners"), laid out as Karpathy's nanoGPT model.py.

GPT-2 layout: token + learned position embeddings, pre-LN blocks (causal self-attention, a 4x
wide GELU MLP), a final LayerNorm, logits from the tied token embedding (h @ wte.T). Init is
normal(0.02) everywhere, with residual output projections at normal(0.02 / sqrt(2 * layers))
(GPT-2 Section 2.3; nanoGPT). GPT-2 124M has 124,439,808 parameters (tied, with biases).

Every layout choice is a field (norm, norm_epsilon, norm_position, pos_emb, activation, use_bias,
tie_embeddings), so `--config.model.pos_emb=rotary` is the whole ablation.
"""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention, layers, precision, stack

# Compute precisions a config may name (research/models/precision.py, one table for every
# transformer): float32 | bfloat16 | float16 | bfloat16_matmul, and "auto" (AUTO_DTYPES).
DTYPES = precision.DTYPES

# `dtype="auto"`: the precision measured fastest on each kind of processor (research/hardware.py
# kind()), resolved by models.build before the model is made. GPT `cpu` recipe, ms per step:
AUTO_DTYPES = {
    # AVX512-BF16 or AMX-BF16: native bf16 dot products. bfloat16_matmul vs float32: 24-29 vs
    # 40 ms on an AMD EPYC with AVX512-BF16, 15.7 vs 26.6 ms on an Intel Xeon with AMX
    # (bench/NOTES.md, "CPU kinds").
    "cpu_bf16": "bfloat16_matmul",
    # AVX2 only (AMD EPYC under KVM): the bf16 operands are converted, 66 vs 52 ms.
    "cpu": "float32",
    # Native bf16 matmuls, and elementwise work fused in bf16 (half the memory traffic): the usual
    # mixed precision of the flax and big_vision examples. Not measured here (no accelerator).
    "gpu": "bfloat16",
    "tpu": "bfloat16",
}


class GPT(nn.Module):
    """Decoder-only transformer LM: int32 tokens [B, T] -> float32 logits [B, T, vocab_size]."""

    vocab_size: int = 50257
    block_size: int = 1024  # context length: the number of positions
    num_layers: int = 12
    num_heads: int = 12
    embed_dim: int = 768
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0  # embedding, residual and attention-probability dropout
    use_bias: bool = True
    norm: str = "layer"  # layers.NORMS
    norm_epsilon: float = layers.NORM_EPSILON  # 1e-5, GPT-2's layer_norm_epsilon
    norm_position: str = "pre"  # layers.RESIDUALS
    pos_emb: str = "learned"  # layers.POSITIONAL
    activation: str = "gelu"  # layers.ACTIVATIONS
    dtype: str = "float32"  # compute precision, one of DTYPES
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    remat: str = "none"  # per block: none | full | a jax.checkpoint policy (models/stack.py)
    scan_layers: bool = False  # the blocks as one nn.scan: compile time flat in depth (stack.py)
    attention_impl: str = "einsum"  # attention.ATTENTION_IMPLS: einsum | jax | xla | cudnn | auto
    tie_embeddings: bool = True  # logits = h @ wte.T (Press & Wolf 2017; GPT-2)

    def __post_init__(self) -> None:
        # Bad config strings fail here, at construction, in one line each.
        layers.lookup(layers.NORMS, self.norm, "GPT norm")
        layers.lookup(layers.RESIDUALS, self.norm_position, "GPT norm_position")
        layers.lookup(layers.POSITIONAL, self.pos_emb, "GPT pos_emb")
        layers.lookup(layers.ACTIVATIONS, self.activation, "GPT activation")
        precision.policy("GPT", self.dtype, self.param_dtype, self.output_dtype)
        for field in ("vocab_size", "block_size", "num_layers", "num_heads", "embed_dim"):
            value = getattr(self, field)
            layers.require(value >= 1, f"GPT {field} must be >= 1, got {value}")
        layers.require(self.mlp_ratio > 0, f"GPT mlp_ratio must be > 0, got {self.mlp_ratio}")
        layers.require(
            self.norm_epsilon > 0, f"GPT norm_epsilon must be > 0, got {self.norm_epsilon}"
        )
        layers.require(
            0 <= self.dropout_rate < 1,
            f"GPT dropout_rate must be in [0, 1), got {self.dropout_rate}",
        )
        layers.require(
            self.embed_dim % self.num_heads == 0,
            f"GPT embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}",
        )
        stack.check_remat(self.remat, "GPT")
        attention.check_attention_impl(self.attention_impl, "GPT")
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool, decode: bool = False) -> jax.Array:
        """Next-token logits for every position; `decode` appends `tokens` to the KV cache.

        With `decode=True` positions continue from the cache index; initialize the cache by
        calling `init` with decode=True on [B, max_len] tokens (see research/tasks/decoding.py init_cache).
        """
        length = tokens.shape[1]
        if length > self.block_size:  # Learned positions stop at block_size; so does training.
            raise ValueError(
                f"GPT input of {length} tokens exceeds block_size {self.block_size}; set "
                "data.seq_len <= model.block_size"
            )
        dtype, matmul_dtype, param_dtype, output_dtype = precision.policy(
            "GPT", self.dtype, self.param_dtype, self.output_dtype
        )
        normal = nn.initializers.normal
        # GPT-2 Section 2.3: scale residual-path weights by 1/sqrt(N), N = 2 residual adds/layer.
        out_init = normal(0.02 / math.sqrt(2 * self.num_layers))

        positions = jnp.arange(length)
        if decode:
            is_initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if is_initialized:
                positions = index.value + positions
                index.value = index.value + length

        wte = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=normal(0.02),  # GPT-2
            dtype=dtype,
            param_dtype=param_dtype,
            name="wte",
        )
        x = wte(tokens)
        pos_module, rotary = layers.POSITIONAL[self.pos_emb]
        if pos_module is not None:
            wpe = pos_module(
                num_positions=self.block_size,
                features=self.embed_dim,
                dtype=dtype,
                param_dtype=param_dtype,
                name="wpe",
            )
            x = x + wpe(positions)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)

        block = partial(
            layers.TransformerBlock,
            num_heads=self.num_heads,
            mlp_dim=int(self.mlp_ratio * self.embed_dim),
            causal=True,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.dropout_rate,
            activation=self.activation,
            norm=self.norm,
            norm_epsilon=self.norm_epsilon,
            norm_position=self.norm_position,
            rotary=rotary,
            use_bias=self.use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            matmul_dtype=matmul_dtype,
            kernel_init=normal(0.02),
            out_kernel_init=out_init,
            attention_impl=self.attention_impl,
        )
        # Named h_0..h_{L-1} unrolled (GPT-2's h.0..), or "h" stacked when scanned (stack.py).
        blocks = stack.blocks(block, "h_", self.num_layers, self.scan_layers)
        x = stack.run(
            blocks, x, remat=self.remat, num_layers=self.num_layers, train=train, decode=decode
        )
        if self.norm_position == "pre":  # see layers.RESIDUALS: pre-norm needs a final norm
            final_norm = layers.NORMS[self.norm]
            x = final_norm(
                use_bias=self.use_bias,
                epsilon=self.norm_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                name="ln_f",
            )(x)

        if self.tie_embeddings:
            logits = wte.attend(x)
        else:
            logits = nn.Dense(
                self.vocab_size,
                use_bias=False,
                kernel_init=normal(0.02),
                dtype=dtype,
                param_dtype=param_dtype,
                name="lm_head",
            )(x)
        return logits.astype(output_dtype)


# Sizes as data: GPT-2 paper Table 2 (it lists 117M/345M/762M/1542M; exact counts with tied
# embeddings are 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200, see the tests).
GPT2 = partial(
    GPT,
    vocab_size=50257,
    block_size=1024,
    num_layers=12,
    num_heads=12,
    embed_dim=768,
    use_bias=True,
)
GPT2Medium = partial(GPT2, num_layers=24, num_heads=16, embed_dim=1024)
GPT2Large = partial(GPT2, num_layers=36, num_heads=20, embed_dim=1280)
GPT2XL = partial(GPT2, num_layers=48, num_heads=25, embed_dim=1600)
# nanoGPT's CPU recipe for shakespeare_char (README, "I only have a macbook"), vocab of 65 chars.
GPTShakespeareCPU = partial(
    GPT, vocab_size=65, block_size=64, num_layers=4, num_heads=4, embed_dim=128, use_bias=False
)
# For tests: every code path at a size that compiles in about a second.
GPTTiny = partial(GPT, vocab_size=32, block_size=16, num_layers=2, num_heads=2, embed_dim=16)
