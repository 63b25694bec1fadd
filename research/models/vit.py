"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), laid out as
big_vision's models/vit.py.

An image [B, H, W, C] is cut into P x P patches by one strided convolution (kernel = stride = P,
the paper's linear projection E of flattened patches, Eq. 1), giving (H/P)(W/P) tokens of width D.
Positions are added, optionally a class token is prepended, then `depth` pre-norm encoder blocks
(self-attention and a GELU MLP, Sec. 3.1), a final LayerNorm, pooling, an optional pre-logits
layer (Dense + tanh) and the linear head.

Two layouts are one override apart (`--config.model.pool=gap`):
  - the paper's: a learned class token whose output is classified (pool="token"), with learned
    positions for the class token and every patch (E_pos is (N + 1) x D, Eq. 1);
  - big_vision's "plain ViT" (Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k"):
    global average pooling over the patch tokens (pool="gap") and fixed 2-D sin-cos positions
    (pos_emb="sincos2d", MoCo v3's), no class token.

Sizes are data: `variant="S/16"` is SIZES["S"] with 16 x 16 patches (big_vision's
decode_variant; Ti/S/B/L from Steiner et al. 2021 and the paper's Table 1), and any explicit field
overrides it (`--config.model.depth=6`). Parameter counts for ImageNet-1k at 224 x 224 (class
token, learned positions, 1,000 classes, no pre-logits), exact in the tests and equal to timm's:
Ti/16 5,717,416; S/16 22,050,664; B/16 86,567,656; L/16 304,326,632.

Initialization as big_vision and vit_jax: Glorot uniform for every projection (q, k and v each its
own D x D matrix, as flax's attention; transformer.xavier_uniform_per_projection) and the MLP,
LeCun normal for the patch embedding, normal(0.02) for learned positions (vit_jax, "from BERT"),
zeros for the class token and the head kernel (head_zero_init). LayerNorm epsilon 1e-6 (flax's
default, which both use; `layer_norm_epsilon`, 1e-12 in Hugging Face's port); GELU is flax's
nn.gelu, the tanh form (layers.ACTIVATIONS "gelu"), as both use; timm's PyTorch port and Hugging
Face's use the erf form (`--config.model.activation=gelu_exact`).
Not reproduced: big_vision's MLP biases start at normal(1e-6), here at zero.
"""

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention, layers, precision, stack
from research.models.transformer import xavier_uniform_per_projection

# Sizes by name: (width D, depth, heads, MLP width). Steiner et al. 2021 ("How to train your
# ViT?") Table 1 for Ti and S; Dosovitskiy et al. 2021 Table 1 for B and L; big_vision's
# decode_variant holds all four.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}

LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's default, used by big_vision and vit_jax.


def decode_variant(variant: str) -> dict[str, int]:
    """ "S/16" -> {width, depth, num_heads, mlp_dim, patch_size}; "S" leaves the patch size out.

    "" decodes to {} (every size field given explicitly). big_vision's decode_variant, for our SIZES.
    """
    if not variant:
        return {}
    size, slash, patch = variant.partition("/")
    if size not in SIZES or (slash and not (patch.isdigit() and int(patch) >= 1)):
        raise ValueError(
            f"unknown ViT variant {variant!r}; give <size>/<patch> with size one of "
            f"{sorted(SIZES)}, e.g. S/16"
        )
    width, depth, num_heads, mlp_dim = SIZES[size]
    decoded = dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
    return decoded | (dict(patch_size=int(patch)) if slash else {})


def posemb_sincos_2d(height: int, width: int, features: int, temperature: float = 10_000.0):
    """Fixed 2-D sin-cos positions [height * width, features] (big_vision posemb_sincos_2d,
    after MoCo v3): a quarter of the features each for sin(x w), cos(x w), sin(y w), cos(y w),
    frequencies w_i = temperature ** (-i / (features / 4 - 1)); patches in row-major order."""
    assert features % 4 == 0 and features >= 8, features
    y, x = np.mgrid[:height, :width]
    omega = np.arange(features // 4) / (features // 4 - 1)
    omega = 1.0 / temperature**omega
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


# pos_emb -> (module, grid (h, w), tokens [B, N, D] incl. a class token if any) -> positions
# broadcastable to the tokens, or None.
def _learned(module: nn.Module, grid: tuple[int, int], tokens: jax.Array) -> jax.Array:
    # Dosovitskiy et al. Eq. 1: one learned vector per token, the class token's included.
    init = nn.initializers.normal(0.02)  # vit_jax AddPositionEmbs ("from BERT")
    return module.param(
        "pos_embedding", init, tokens.shape[1:], precision.PARAM_DTYPES[module.param_dtype]
    )


def _sincos2d(module: nn.Module, grid: tuple[int, int], tokens: jax.Array) -> jax.Array:
    table = jnp.asarray(posemb_sincos_2d(*grid, tokens.shape[-1]))
    if tokens.shape[1] > table.shape[0]:  # The class token has no place on the grid: no position.
        table = jnp.concatenate([jnp.zeros_like(table[:1]), table])
    return table


POSITIONAL: dict[str, Callable[..., jax.Array | None]] = {
    "learned": _learned,
    "sincos2d": _sincos2d,
    "none": lambda module, grid, tokens: None,
}

# pool -> (whether a class token is prepended, encoder output [B, N, D] -> [B, D]).
POOLS: dict[str, tuple[bool, Callable[[jax.Array], jax.Array]]] = {
    "token": (True, lambda x: x[:, 0]),  # Dosovitskiy et al. Sec. 3.1: the class token's output
    "gap": (False, lambda x: x.mean(axis=1)),  # global average pooling (Beyer et al. 2022)
}


class ViT(nn.Module):
    """Vision Transformer: float32 images [B, H, W, C] -> float32 logits [B, num_classes]."""

    num_classes: int = 1000  # 0: no head, the output is the (pre-logits) representation
    variant: str = "B/16"  # <size>/<patch> (SIZES, any patch); "" = the size fields below
    width: int = 0  # 0: the variant's (hidden size D)
    depth: int = 0  # 0: the variant's (encoder blocks)
    num_heads: int = 0  # 0: the variant's
    mlp_dim: int = 0  # 0: the variant's (MLP hidden width)
    patch_size: int = 0  # 0: the variant's (P: P x P pixels per token)
    pool: str = "token"  # POOLS: token (class token) | gap (global average pooling)
    pos_emb: str = "learned"  # POSITIONAL: learned | sincos2d | none
    representation_size: int = 0  # pre-logits Dense + tanh of this width (the paper's, Sec. 3.1)
    head_zero_init: bool = True  # the head's kernel starts at zero (vit_jax, big_vision)
    dropout_rate: float = 0.0  # on the embedded tokens and each residual branch (paper Appendix B)
    attention_dropout_rate: float = 0.0  # on attention probabilities
    activation: str = "gelu"  # layers.ACTIVATIONS; "gelu" is flax's nn.gelu, as big_vision
    layer_norm_epsilon: float = LAYER_NORM_EPSILON  # Hugging Face's ViT uses 1e-12
    dtype: str = "float32"  # compute precision, one of precision.DTYPES
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    remat: str = "none"  # per block: none | full | a jax.checkpoint policy (models/stack.py)
    scan_layers: bool = False  # the blocks as one nn.scan: compile time flat in depth (stack.py)
    attention_impl: str = "einsum"  # attention.ATTENTION_IMPLS: einsum | jax | xla | cudnn | auto

    def __post_init__(self) -> None:
        # Bad config values fail here, at construction, in one line each.
        sizes = self.sizes  # decodes the variant
        layers.lookup(POOLS, self.pool, "ViT pool")
        layers.lookup(POSITIONAL, self.pos_emb, "ViT pos_emb")
        layers.lookup(layers.ACTIVATIONS, self.activation, "ViT activation")
        precision.policy("ViT", self.dtype, self.param_dtype, self.output_dtype)
        layers.require(
            self.num_classes >= 0,
            f"ViT num_classes must be >= 0 (0: no head), got {self.num_classes}",
        )
        layers.require(
            self.layer_norm_epsilon > 0,
            f"ViT layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}",
        )
        for field in sizes:
            value = sizes[field]
            layers.require(
                value >= 1,
                f"ViT {field} must be >= 1, got {value}"
                + ("" if self.variant else " (variant='' needs every size field)"),
            )
        layers.require(
            self.representation_size >= 0,
            f"ViT representation_size must be >= 0 (0: none), got {self.representation_size}",
        )
        for field in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, field)
            layers.require(0 <= value < 1, f"ViT {field} must be in [0, 1), got {value}")
        width, heads = sizes["width"], sizes["num_heads"]
        layers.require(
            width % heads == 0, f"ViT width {width} must be divisible by num_heads {heads}"
        )
        layers.require(
            self.pos_emb != "sincos2d" or (width % 4 == 0 and width >= 8),
            f"ViT pos_emb='sincos2d' needs a width divisible by 4 and >= 8, got {width}",
        )
        stack.check_remat(self.remat, "ViT")
        attention.check_attention_impl(self.attention_impl, "ViT")
        super().__post_init__()

    @property
    def sizes(self) -> dict[str, int]:
        """width, depth, num_heads, mlp_dim, patch_size: the variant's, overridden by set fields."""
        fields = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
        decoded = decode_variant(self.variant)
        return {f: getattr(self, f) or decoded.get(f, 0) for f in fields}

    @property
    def num_outputs(self) -> int:
        return self.num_classes or self.representation_size or self.sizes["width"]

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        """Logits for a batch of images [B, H, W, C] whose sides the patch size divides."""
        s = self.sizes
        patch, width = s["patch_size"], s["width"]
        height, wide = images.shape[1:3]
        if height % patch or wide % patch:
            raise ValueError(
                f"ViT patch_size {patch} does not divide the {height}x{wide} images; choose a "
                "patch size that does (or set data.image_size)"
            )
        dtype, matmul_dtype, param_dtype, output_dtype = precision.policy(
            "ViT", self.dtype, self.param_dtype, self.output_dtype
        )
        x = nn.Conv(
            width,
            (patch, patch),
            strides=(patch, patch),
            padding="VALID",
            dtype=dtype,
            param_dtype=param_dtype,
            name="embedding",
        )(images.astype(dtype))
        batch, grid_h, grid_w, _ = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)

        class_token, pool = POOLS[self.pool]
        if class_token:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width), param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(dtype), (batch, 1, 1)), x], axis=1)
        positions = POSITIONAL[self.pos_emb](self, (grid_h, grid_w), x)
        if positions is not None:
            x = x + positions.astype(dtype)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)

        block = partial(
            layers.TransformerBlock,
            num_heads=s["num_heads"],
            mlp_dim=s["mlp_dim"],
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation=self.activation,
            norm="layer",
            norm_position="pre",
            norm_epsilon=self.layer_norm_epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            matmul_dtype=matmul_dtype,
            kernel_init=xavier_uniform_per_projection(width),
            out_kernel_init=nn.initializers.xavier_uniform(),
            mlp_kernel_init=nn.initializers.xavier_uniform(),
            attention_impl=self.attention_impl,
        )
        # encoderblock_0.. unrolled (big_vision's names), "encoderblock" scanned (stack.py).
        blocks = stack.blocks(block, "encoderblock_", s["depth"], self.scan_layers)
        x = stack.run(blocks, x, remat=self.remat, num_layers=s["depth"], train=train)
        x = nn.LayerNorm(
            epsilon=self.layer_norm_epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            name="encoder_norm",
        )(x)
        x = pool(x)

        dense = dict(dtype=dtype, param_dtype=param_dtype)
        if self.representation_size:
            x = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits", **dense)(x))
        if not self.num_classes:  # Features only (big_vision's num_classes=None).
            return x.astype(output_dtype)
        head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
        logits = nn.Dense(self.num_classes, kernel_init=head_init, name="head", **dense)(x)
        return logits.astype(output_dtype)


# For tests: every code path at a size that compiles in about a second.
ViTTiny = partial(ViT, variant="", width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=2)
