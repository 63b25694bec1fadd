"""The Transformer: an encoder-decoder for translation (Vaswani et al. 2017, "Attention Is All You
Need", Section 3), laid out as Karpathy's nanoGPT model.py.

Section 3 layout: token embeddings times sqrt(d_model) plus sinusoidal positions (3.4, 3.5), then
N encoder layers (self-attention, a ReLU MLP) and N decoder layers (causal self-attention,
attention to the encoder output, the MLP), each sub-layer LayerNorm(x + Dropout(f(x))) (3.1, 5.4).
One embedding matrix serves source, target and the pre-softmax projection (3.4): the vocabulary is
a shared BPE one. Pad id 0 is masked out of every attention; packed rows (several pairs per row,
as flax's WMT example) attend within their segment only.

Initialization as tensor2tensor: Glorot uniform for every projection (q, k and v each its own
[D, D] matrix, though this code fuses them), embeddings normal(d_model ** -0.5), so that the
sqrt(d_model) scaling gives them unit variance. Biases start at zero, LayerNorm at (1, 0).

Parameter counts (tied embeddings, with biases), computed exactly in the tests:
  base (6+6 layers, d 512, d_ff 2048):   63,082,496 with the 37,000 vocabulary, 60,522,496 with 32,000
  big  (6+6 layers, d 1024, d_ff 4096): 214,245,376 with 37,000,                 209,125,376 with 32,000
Table 3 lists 65M and 213M: with 37,000 base comes out 1.9M (3%) under and big 1.2M (0.6%) over.
No one vocabulary fits both (65M needs about 40,700 tokens, 213M about 35,800): the paper gives no
breakdown. The layers alone are 44,138,496 (base) and 176,357,376 (big); the shared embedding adds
vocab_size * d_model.
"""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention, layers, precision, stack


def xavier_uniform_per_projection(width: int) -> attention.Initializer:
    """Glorot & Bengio 2010 uniform for each `width`-wide column block of a [D_in, n * width] kernel.

    Attention fuses q|k|v into one [D, 3D] kernel and k|v into [D, 2D]; tensor2tensor and flax's
    WMT example initialize separate [D, D] projections. Glorot over the fused shape would shrink
    their standard deviation by sqrt(2) and sqrt(3/2).
    """
    glorot = nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=0, out_axis=2, batch_axis=1
    )

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        fan_in, fan_out = shape
        assert fan_out % width == 0, (shape, width)
        return glorot(key, (fan_in, fan_out // width, width), dtype).reshape(shape)

    return init


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """Boolean [B, 1, Tq, Tk]: the key is in the query's segment and is not padding (segment 0).

    Segments number the pairs packed into a row (1, 2, ...), as in flax's WMT example.
    """
    same = query_segments[:, :, None] == key_segments[:, None, :]
    return (same & (key_segments > 0)[:, None, :])[:, None]


class DecodePositions(nn.Module):
    """Positions 0..T-1 of the decoder's input; with decode=True they continue from the cache."""

    @nn.compact
    def __call__(self, length: int, decode: bool) -> jax.Array:
        positions = jnp.arange(length)
        if decode:  # As GPT: the index is created (at 0) when the cache is initialized.
            is_initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if is_initialized:
                positions = positions + index.value
                index.value = index.value + length
        return positions


class Transformer(nn.Module):
    """Encoder-decoder: source [B, S] and target [B, T] int32 ids (0 = pad) -> logits [B, T, V]."""

    vocab_size: int = 37000  # shared source/target BPE vocabulary: the paper's en-de (5.1)
    max_len: int = 256  # positions: the longest source or target
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    embed_dim: int = 512  # d_model
    mlp_dim: int = 2048  # d_ff
    dropout_rate: float = 0.1  # P_drop: on embeddings + positions, and on each sub-layer output
    attention_dropout_rate: float = 0.0  # on attention probabilities (tensor2tensor's; not in 5.4)
    activation: str = "relu"  # layers.ACTIVATIONS
    norm: str = "layer"  # layers.NORMS
    norm_position: str = "post"  # layers.RESIDUALS; "pre" adds a final norm to each stack
    use_bias: bool = True
    dtype: str = "float32"  # compute precision, one of precision.DTYPES
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    remat: str = "none"  # per block: none | full | a jax.checkpoint policy (models/stack.py)
    scan_layers: bool = False  # the blocks as one nn.scan: compile time flat in depth (stack.py)
    attention_impl: str = "einsum"  # attention.ATTENTION_IMPLS: einsum | jax | xla | cudnn | auto

    def __post_init__(self) -> None:
        # Bad config values fail here, at construction, in one line each.
        layers.lookup(layers.NORMS, self.norm, "Transformer norm")
        layers.lookup(layers.RESIDUALS, self.norm_position, "Transformer norm_position")
        layers.lookup(layers.ACTIVATIONS, self.activation, "Transformer activation")
        precision.policy("Transformer", self.dtype, self.param_dtype, self.output_dtype)
        for field in (
            "vocab_size",
            "max_len",
            "encoder_layers",
            "decoder_layers",
            "num_heads",
            "embed_dim",
            "mlp_dim",
        ):
            value = getattr(self, field)
            layers.require(value >= 1, f"Transformer {field} must be >= 1, got {value}")
        for field in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, field)
            layers.require(0 <= value < 1, f"Transformer {field} must be in [0, 1), got {value}")
        layers.require(
            self.embed_dim % self.num_heads == 0,
            f"Transformer embed_dim {self.embed_dim} must be divisible by num_heads "
            f"{self.num_heads}",
        )
        stack.check_remat(self.remat, "Transformer")
        attention.check_attention_impl(self.attention_impl, "Transformer")
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    def setup(self) -> None:
        dtype, matmul_dtype, param_dtype, self.logits_dtype = precision.policy(
            "Transformer", self.dtype, self.param_dtype, self.output_dtype
        )
        d = self.embed_dim
        self.embed = nn.Embed(
            self.vocab_size,
            d,
            embedding_init=nn.initializers.normal(d**-0.5),  # tensor2tensor
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.positional = layers.SinusoidalPositionalEmbedding(self.max_len, d, dtype=dtype)
        self.decode_positions = DecodePositions()
        self.dropout = nn.Dropout(self.dropout_rate)
        block = partial(
            layers.TransformerBlock,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation=self.activation,
            norm=self.norm,
            norm_position=self.norm_position,
            use_bias=self.use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            matmul_dtype=matmul_dtype,
            # Glorot uniform, as tensor2tensor ("uniform_unit_scaling", gain 1) and flax's WMT.
            kernel_init=xavier_uniform_per_projection(d),
            out_kernel_init=nn.initializers.xavier_uniform(),
            mlp_kernel_init=nn.initializers.xavier_uniform(),
            attention_impl=self.attention_impl,
        )
        # encoder_0.., decoder_0.. unrolled; "encoder", "decoder" stacked when scanned (stack.py).
        if self.scan_layers:
            self.encoder = block()
            self.decoder = block(causal=True, cross_attention=True)
        else:
            self.encoder = [block() for _ in range(self.encoder_layers)]
            self.decoder = [
                block(causal=True, cross_attention=True) for _ in range(self.decoder_layers)
            ]
        if self.norm_position == "pre":  # see layers.RESIDUALS: pre-norm needs a final norm
            norm = partial(
                layers.NORMS[self.norm],
                use_bias=self.use_bias,
                dtype=dtype,
                param_dtype=param_dtype,
            )
            self.encoder_norm, self.decoder_norm = norm(), norm()

    def __call__(
        self,
        source: jax.Array,
        target_in: jax.Array,
        *,
        train: bool,
        source_segments: jax.Array | None = None,
        target_segments: jax.Array | None = None,
        source_positions: jax.Array | None = None,
        target_positions: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, T, V] (float32) for the decoder input `target_in` (BOS, y_1, ...).

        Packed rows give segment ids (1, 2, ... per pair, 0 = padding) and positions restarting
        at 0 for each pair; without them a row is one pair, positions 0..L-1, and id 0 is padding.
        """
        encoded = self.encode(
            source, train=train, source_segments=source_segments, source_positions=source_positions
        )
        return self.decode(
            encoded,
            source,
            target_in,
            train=train,
            source_segments=source_segments,
            target_segments=target_segments,
            target_positions=target_positions,
        )

    def encode(
        self,
        source: jax.Array,
        *,
        train: bool,
        source_segments: jax.Array | None = None,
        source_positions: jax.Array | None = None,
    ) -> jax.Array:
        """The encoder's output [B, S, D] for `source` [B, S]."""
        length = self._checked_length(source, "source")
        if source_positions is None:
            source_positions = jnp.arange(length)
        if source_segments is None:
            mask = attention.padding_mask(source != 0)
        else:
            mask = segment_mask(source_segments, source_segments)
        x = self._embed(source, source_positions, train)
        x = stack.run(
            self.encoder,
            x,
            remat=self.remat,
            num_layers=self.encoder_layers,
            mask=mask,
            train=train,
        )
        return self.encoder_norm(x) if self.norm_position == "pre" else x

    def decode(
        self,
        encoded: jax.Array,
        source: jax.Array,
        target: jax.Array,
        *,
        train: bool,
        decode: bool = False,
        source_segments: jax.Array | None = None,
        target_segments: jax.Array | None = None,
        target_positions: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, T, V] for `target` [B, T], attending to `encoded` [B, S, D] of `source`.

        With `decode`, self-attention appends `target` to the KV cache and its positions continue
        from the cache index; initialize the cache by calling `init(..., method="decode",
        decode=True)` on a target of the full length (research/tasks/decoding.py).
        """
        if (source_segments is None) != (target_segments is None):
            raise ValueError("packed rows need both source_segments and target_segments")
        positions = self.decode_positions(self._checked_length(target, "target"), decode)
        if target_positions is not None:
            positions = target_positions
        if source_segments is None:
            # Target padding follows the tokens, so the causal mask already hides it.
            self_mask, cross_mask = None, attention.padding_mask(source != 0)
        else:
            # Decoding holds one pair per row: the cache's causal mask is all it needs.
            self_mask = None if decode else segment_mask(target_segments, target_segments)
            cross_mask = segment_mask(target_segments, source_segments)
        y = self._embed(target, positions, train)
        if decode and self.scan_layers:
            # Beam search reorders the cache along its batch axis, which scanning moves to 1.
            raise ValueError(
                "Transformer decoding (translate) needs unrolled layers: set "
                "model.scan_layers=False and convert the params with stack.unscan_params"
            )
        y = stack.run(
            self.decoder,
            y,
            encoded,
            remat=self.remat,
            num_layers=self.decoder_layers,
            mask=self_mask,
            context_mask=cross_mask,
            train=train,
            decode=decode,
        )
        if self.norm_position == "pre":
            y = self.decoder_norm(y)
        return self.embed.attend(y).astype(self.logits_dtype)  # the shared matrix again (3.4)

    def _embed(self, tokens: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        x = self.embed(tokens) * math.sqrt(self.embed_dim) + self.positional(positions)
        return self.dropout(x, deterministic=not train)

    def _checked_length(self, tokens: jax.Array, what: str) -> int:
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"Transformer {what} of {length} tokens exceeds max_len {self.max_len}; raise "
                "model.max_len or shorten the data's sequences"
            )
        return length


# Sizes as data: Table 3 of the paper (base and big; P_drop 0.3 for big en-de).
TransformerBase = partial(
    Transformer,
    vocab_size=37000,
    encoder_layers=6,
    decoder_layers=6,
    num_heads=8,
    embed_dim=512,
    mlp_dim=2048,
    dropout_rate=0.1,
)
TransformerBig = partial(
    TransformerBase, num_heads=16, embed_dim=1024, mlp_dim=4096, dropout_rate=0.3
)
# For tests: every code path at a size that compiles in about a second.
TransformerTiny = partial(
    Transformer,
    vocab_size=32,
    max_len=32,
    encoder_layers=2,
    decoder_layers=2,
    num_heads=2,
    embed_dim=16,
    mlp_dim=32,
)
