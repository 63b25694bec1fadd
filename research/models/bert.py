"""BERT: a bidirectional Transformer encoder pre-trained by masked language modelling (Devlin et
al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"),
laid out as Google's original modeling.py.

Section 3 layout: token + learned position + segment ("token type") embeddings, summed, then
LayerNorm and dropout; L post-norm encoder layers (self-attention over every non-pad token, a 4H
wide GELU MLP, each sub-layer LayerNorm(x + Dropout(f(x)))); the pooler, tanh(W h_[CLS] + b).
Heads (`head`), chosen per task:

    "mlm"         masked-LM logits [B, T, vocab] (or [B, P, vocab] at given positions): dense
                  H->H, GELU, LayerNorm, then the token embedding matrix transposed (tied) plus an
                  output bias of its own
    "mlm_nsp"     the same and next-sentence logits [B, 2] from the pooled output (Section 3.1,
                  Task #2), returned as (mlm_logits, nsp_logits)
    "classifier"  sequence-classification logits [B, num_classes]: dropout, then a dense layer on
                  the pooled output (Section 4.1, fine-tuning)
    "none"        no head: the encoder's output [B, T, H], and with the pooler also the pooled
                  output [B, H], as (sequence, pooled) (Hugging Face's BertModel)

Initialization as the original: truncated normal(0.02) for every weight matrix and embedding
(`initializer_range`), zero biases, LayerNorm (1, 0) with epsilon 1e-12.

Sizes as data (`size`): the 24 sizes of Turc et al. 2019 ("Well-Read Students Learn Better"),
"L{2,4,6,8,10,12}_H{128,256,512,768}", with their names tiny (L2/H128), mini (L4/H256),
small (L4/H512), medium (L8/H512), base (L12/H768), and large (L24/H1024, Devlin et al.); heads
are H/64 and the MLP 4H throughout. Exact counts (tests): BERT-base's encoder with the pooler and
the 30,522-token vocabulary has 109,482,240 parameters, BERT-large 335,141,888. Any other shape
(an imported checkpoint's, research/pretrained.py) is the size fields, which override the size's:
`size=""` with num_layers, hidden_size, num_heads and mlp_dim all given. So are the choices such a
checkpoint may make differently: `activation` (the encoder MLP's and the MLM transform's),
`layer_norm_epsilon`, and `pooler` (Hugging Face's BertForMaskedLM has none).
"""

import itertools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import attention, layers, precision, stack

# Turc et al. 2019's grid of (layers, hidden width), and the names they give six of them.
SIZES: dict[str, tuple[int, int]] = {
    f"L{depth}_H{width}": (depth, width)
    for depth, width in itertools.product((2, 4, 6, 8, 10, 12), (128, 256, 512, 768))
}
SIZES |= {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}
HEAD_DIM = 64  # Every BERT size uses 64-wide attention heads (Turc et al. 2019: H / 64 heads).

HEADS = ("mlm", "mlm_nsp", "classifier", "none")

# BERT's LayerNorm epsilon (modeling.py `layer_norm`; Hugging Face layer_norm_eps=1e-12).
LAYER_NORM_EPSILON = 1e-12


class Bert(nn.Module):
    """Encoder: int32 tokens [B, T] (0 = pad) and segment ids [B, T] -> the `head`'s logits."""

    # A key of SIZES: tiny, mini, small, medium, base, large or L{l}_H{h}; "" = the fields below.
    size: str = "base"
    num_layers: int = 0  # 0: the size's (L)
    hidden_size: int = 0  # 0: the size's (H)
    num_heads: int = 0  # 0: the size's (H / 64)
    mlp_dim: int = 0  # 0: the size's (4H)
    vocab_size: int = 30522  # the uncased English WordPiece vocabulary of the paper
    max_len: int = 512  # learned positions
    type_vocab_size: int = 2  # segments: sentence A and sentence B
    dropout_rate: float = 0.1  # embeddings and every sub-layer output (hidden_dropout_prob)
    attention_dropout_rate: float = 0.1  # attention probabilities
    head: str = "mlm"  # one of HEADS
    num_classes: int = 2  # the classifier head's outputs
    pad_id: int = 0  # [PAD]: never attended to
    activation: str = "gelu_exact"  # layers.ACTIVATIONS; modeling.py's gelu is the erf form
    layer_norm_epsilon: float = LAYER_NORM_EPSILON
    pooler: bool = True  # tanh(W h_[CLS] + b); the heads "mlm" and "none" can do without
    dtype: str = "float32"  # compute precision, one of precision.DTYPES
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    remat: str = "none"  # per block: none | full | a jax.checkpoint policy (models/stack.py)
    scan_layers: bool = False  # the blocks as one nn.scan: compile time flat in depth (stack.py)
    attention_impl: str = "einsum"  # attention.ATTENTION_IMPLS: einsum | jax | xla | cudnn | auto

    def __post_init__(self) -> None:
        # Bad config values fail here, at construction, in one line each.
        sizes = self.sizes  # decodes the size
        precision.policy("Bert", self.dtype, self.param_dtype, self.output_dtype)
        layers.require(
            self.head in HEADS, f"unknown Bert head {self.head!r}; choose one of {HEADS}"
        )
        _, gated = layers.lookup(layers.ACTIVATIONS, self.activation, "Bert activation")
        layers.require(
            not gated, f"Bert activation {self.activation!r}: gated units are not BERT's"
        )
        for field, value in sizes.items():
            layers.require(
                value >= 1,
                f"Bert {field} must be >= 1, got {value}"
                + ("" if self.size else " (size='' needs every size field)"),
            )
        layers.require(
            sizes["hidden_size"] % sizes["num_heads"] == 0,
            f"Bert hidden_size {sizes['hidden_size']} must be divisible by num_heads "
            f"{sizes['num_heads']}",
        )
        layers.require(
            self.layer_norm_epsilon > 0,
            f"Bert layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}",
        )
        layers.require(
            self.pooler or self.head in ("mlm", "none"),
            f"Bert head {self.head!r} reads the pooled output; it needs pooler=True",
        )
        for field in ("vocab_size", "max_len", "type_vocab_size", "num_classes"):
            value = getattr(self, field)
            layers.require(value >= 1, f"Bert {field} must be >= 1, got {value}")
        for field in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, field)
            layers.require(0 <= value < 1, f"Bert {field} must be in [0, 1), got {value}")
        layers.require(
            0 <= self.pad_id < self.vocab_size,
            f"Bert pad_id must be a token id in [0, {self.vocab_size}), got {self.pad_id}",
        )
        stack.check_remat(self.remat, "Bert")
        attention.check_attention_impl(self.attention_impl, "Bert")
        super().__post_init__()

    @property
    def sizes(self) -> dict[str, int]:
        """num_layers, hidden_size, num_heads, mlp_dim: the size's, overridden by set fields."""
        if self.size:
            depth, width = layers.lookup(SIZES, self.size, "Bert size")
            decoded = dict(num_layers=depth, hidden_size=width, num_heads=width // HEAD_DIM)
            decoded["mlp_dim"] = 4 * width
        else:
            decoded = {}
        fields = ("num_layers", "hidden_size", "num_heads", "mlp_dim")
        return {f: getattr(self, f) or decoded.get(f, 0) for f in fields}

    @property
    def num_outputs(self) -> int:
        if self.head == "none":
            return self.sizes["hidden_size"]
        return self.num_classes if self.head == "classifier" else self.vocab_size

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segments: jax.Array | None = None,
        *,
        train: bool,
        positions: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The head's logits (float32) for `tokens` [B, T]; `segments` defaults to all zeros.

        `positions` [B, P] (masked-LM heads): predict only there, logits [B, P, vocab], as the
        original's `gather_indexes` (about 15% of T); the vocabulary projection, the largest
        matmul of a small BERT, then costs 15% of predicting every position.
        """
        dtype, matmul_dtype, param_dtype, output_dtype = precision.policy(
            "Bert", self.dtype, self.param_dtype, self.output_dtype
        )
        sizes = self.sizes
        width, length = sizes["hidden_size"], tokens.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"Bert input of {length} tokens exceeds max_len {self.max_len}; set "
                "data.seq_len <= model.max_len"
            )
        init = nn.initializers.truncated_normal(0.02)  # modeling.py initializer_range
        norm = partial(
            nn.LayerNorm, epsilon=self.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )
        dense = partial(nn.Dense, kernel_init=init, dtype=dtype, param_dtype=param_dtype)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)

        # --- embeddings (Figure 2): token + segment + position, then LayerNorm and dropout ---
        word = nn.Embed(
            self.vocab_size,
            width,
            embedding_init=init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="word_embeddings",
        )
        segments = jnp.zeros_like(tokens) if segments is None else segments
        segment = nn.Embed(
            self.type_vocab_size,
            width,
            embedding_init=init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="segment_embeddings",
        )
        position = layers.LearnedPositionalEmbedding(
            self.max_len,
            width,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=init,
            name="position_embeddings",
        )
        x = word(tokens) + segment(segments) + position(jnp.arange(length))
        x = dropout(norm(name="embeddings_norm")(x))

        # --- encoder: post-norm blocks, attending to every non-pad token ---
        mask = attention.padding_mask(tokens != self.pad_id)
        block = partial(
            layers.TransformerBlock,
            num_heads=sizes["num_heads"],
            mlp_dim=sizes["mlp_dim"],
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation=self.activation,
            norm="layer",
            norm_epsilon=self.layer_norm_epsilon,
            norm_position="post",
            dtype=dtype,
            param_dtype=param_dtype,
            matmul_dtype=matmul_dtype,
            kernel_init=init,
            out_kernel_init=init,
            attention_impl=self.attention_impl,
        )
        num_layers = sizes["num_layers"]
        # Named layer_0..layer_{L-1} unrolled, or "layer" stacked when scanned (stack.py).
        blocks = stack.blocks(block, "layer_", num_layers, self.scan_layers)
        x = stack.run(blocks, x, remat=self.remat, num_layers=num_layers, mask=mask, train=train)

        # --- heads ---
        pooled = jnp.tanh(dense(width, name="pooler")(x[:, 0])) if self.pooler else None  # [CLS]
        if self.head == "none":
            x = x.astype(output_dtype)
            return x if pooled is None else (x, pooled.astype(output_dtype))
        if self.head == "classifier":
            logits = dense(self.num_classes, name="classifier")(dropout(pooled))
            return logits.astype(output_dtype)
        if positions is not None:
            x = jnp.take_along_axis(x, positions[..., None], axis=1)  # [B, P, H]
        h = dense(width, name="mlm_transform")(x)
        h = norm(name="mlm_norm")(layers.ACTIVATIONS[self.activation][0](h))
        bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,), param_dtype)
        mlm_logits = (word.attend(h) + bias).astype(output_dtype)
        if self.head == "mlm":
            return mlm_logits
        nsp_logits = dense(2, name="nsp")(pooled).astype(output_dtype)
        return mlm_logits, nsp_logits


# Sizes as data, for tests and imports: the paper's two, and Turc et al.'s smallest.
BertBase = partial(Bert, size="base")
BertLarge = partial(Bert, size="large")
BertTiny = partial(Bert, size="tiny")
