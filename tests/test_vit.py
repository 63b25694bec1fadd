"""The Vision Transformer: exact parameter counts (eval_shape), the patch embedding against a
reshape reference, class-token and average pooling, the 2-D sin-cos table, config errors."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import vit

KEY = jax.random.key(0)


def param_count(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Number of parameters, from shapes only (jax.eval_shape: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, *image_shape)), train=False))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def vit_formula(width, depth, mlp, patch, tokens, classes, channels=3, learned=True, cls=True):
    """By hand: patch conv + cls + positions + blocks (attention 4D^2 + 4D, MLP 2 D mlp + mlp + D,
    two LayerNorms 4D) + final LayerNorm + head."""
    block = 4 * width * width + 4 * width + 2 * width * mlp + mlp + width + 4 * width
    embedding = patch * patch * channels * width + width
    positions = (tokens + cls) * width if learned else 0
    return (
        embedding + cls * width + positions + depth * block + 2 * width + width * classes + classes
    )


# ImageNet-1k heads at 224 x 224: class token, learned positions, 1,000 classes (timm's counts:
# vit_tiny/small/base/large_patch16_224).
IMAGENET_COUNTS = {"Ti": 5_717_416, "S": 22_050_664, "B": 86_567_656, "L": 304_326_632}


def test_every_size_has_an_exact_count():
    assert set(IMAGENET_COUNTS) == set(vit.SIZES)


@pytest.mark.parametrize("size", sorted(IMAGENET_COUNTS))
def test_imagenet_parameter_counts(size):
    model = vit.ViT(variant=f"{size}/16", num_classes=1000)
    count = param_count(model, (224, 224, 3))
    assert count == IMAGENET_COUNTS[size]
    width, depth, _, mlp = vit.SIZES[size]
    assert count == vit_formula(width, depth, mlp, patch=16, tokens=196, classes=1000)


def test_plain_vit_and_other_patch_sizes_counts():
    # big_vision's vit_s16_i1k model: GAP, sin-cos positions (no parameters), no class token,
    # pre-logits Dense(384) + tanh.
    plain = vit.ViT(
        variant="S/16", num_classes=1000, pool="gap", pos_emb="sincos2d", representation_size=384
    )
    assert param_count(plain, (224, 224, 3)) == 22_122_472
    pre_logits = 384 * 384 + 384
    no_positions = vit_formula(384, 12, 1536, 16, 196, 1000, learned=False, cls=False)
    assert no_positions + pre_logits == 22_122_472
    # Any patch size: B/32 at 224 has 49 patches of 32 x 32 x 3 (timm vit_base_patch32_224).
    assert param_count(vit.ViT(variant="B/32", num_classes=1000), (224, 224, 3)) == 88_224_232
    # Explicit fields override the variant.
    assert vit.ViT(variant="S/16", depth=6).sizes == dict(
        width=384, depth=6, num_heads=6, mlp_dim=1536, patch_size=16
    )


def test_digits_vit_count():
    model = vit.ViT(
        num_classes=10,
        variant="",
        width=64,
        depth=4,
        num_heads=4,
        mlp_dim=128,
        patch_size=2,
        pool="gap",
        pos_emb="sincos2d",
    )
    expected = vit_formula(64, 4, 128, 2, 16, 10, channels=1, learned=False, cls=False)
    assert param_count(model, (8, 8, 1)) == expected == 134_986


# --- the forward pass, on tiny sizes ------------------------------------------------------------


def random_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def random_params(model: nn.Module, images: jax.Array) -> dict:
    """Variables shaped as `model.init`'s, drawn with numpy (the zero-init head would hide what
    the tests look at)."""
    shapes = jax.eval_shape(lambda: model.init(KEY, images, train=False))
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(size=leaf.shape) * 0.3, leaf.dtype), shapes
    )


def test_patch_embedding_equals_reshape_into_patches_times_kernel():
    model = vit.ViTTiny(num_classes=3, patch_size=4, width=8)
    images = random_images((2, 8, 12, 3))  # a 2 x 3 grid of 4 x 4 x 3 patches
    variables = random_params(model, images)
    _, state = model.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    embedded = np.asarray(state["intermediates"]["embedding"]["__call__"][0])
    kernel = np.asarray(variables["params"]["embedding"]["kernel"])  # [P, P, C, D]
    bias = np.asarray(variables["params"]["embedding"]["bias"])
    x = np.asarray(images)
    patches = x.reshape(2, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 3, 48)
    reference = patches @ kernel.reshape(48, 8) + bias  # each patch flattened as (row, col, c)
    np.testing.assert_allclose(embedded, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_the_head_reads_the_class_token_or_the_mean_of_the_patch_tokens(pool):
    model = vit.ViTTiny(num_classes=5, pool=pool)
    images = random_images((3, 8, 8, 1))
    variables = random_params(model, images)
    logits, state = model.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    encoded = np.asarray(state["intermediates"]["encoder_norm"]["__call__"][0])  # [B, N, D]
    assert encoded.shape[1] == 16 + (pool == "token")  # 4 x 4 patches, and the class token
    assert ("cls" in variables["params"]) == (pool == "token")
    pooled = encoded[:, 0] if pool == "token" else encoded.mean(axis=1)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        logits, pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), rtol=1e-5, atol=1e-5
    )


def permute_patches(images: jax.Array, order: np.ndarray, patch: int) -> jax.Array:
    """Images with their patch x patch tiles moved to the grid positions of `order`."""
    b, h, w, c = images.shape
    grid = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    tiles = grid.reshape(b, -1, patch, patch, c)[:, order]
    tiles = tiles.reshape(b, h // patch, w // patch, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(b, h, w, c)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_without_positions_the_output_ignores_where_the_patches_are(pool):
    """Attention and the MLP treat tokens as a set, and both poolings are symmetric in the patch
    tokens: only position embeddings tell a ViT where a patch was."""
    order = np.random.default_rng(0).permutation(16)
    images = random_images((2, 8, 8, 1))
    shuffled = permute_patches(images, order, 2)
    assert not np.allclose(images, shuffled)
    for pos_emb, invariant in (("none", True), ("sincos2d", False), ("learned", False)):
        model = vit.ViTTiny(num_classes=4, pool=pool, pos_emb=pos_emb)
        variables = random_params(model, images)
        same = np.allclose(
            model.apply(variables, images, train=False),
            model.apply(variables, shuffled, train=False),
            atol=1e-5,
        )
        assert same == invariant, pos_emb


def test_sincos2d_table_matches_the_formula():
    height, width, features = 3, 5, 16
    table = vit.posemb_sincos_2d(height, width, features)
    quarter = features // 4
    expected = np.zeros((height * width, features))
    for row in range(height):
        for col in range(width):
            for k in range(quarter):
                omega = 10_000.0 ** (-k / (quarter - 1))
                token = row * width + col  # patches in row-major order
                expected[token, k] = math.sin(col * omega)
                expected[token, quarter + k] = math.cos(col * omega)
                expected[token, 2 * quarter + k] = math.sin(row * omega)
                expected[token, 3 * quarter + k] = math.cos(row * omega)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    # Fixed: no parameter, and the patch tokens receive exactly the table.
    model = vit.ViTTiny(num_classes=2, pool="gap", pos_emb="sincos2d")
    shapes = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 8, 8, 1)), train=False))
    assert "pos_embedding" not in shapes["params"]


def test_dropout_only_in_training():
    model = vit.ViTTiny(num_classes=3, dropout_rate=0.5)
    images = random_images((2, 8, 8, 1))
    variables = random_params(model, images)
    eval_out = model.apply(variables, images, train=False)
    np.testing.assert_array_equal(eval_out, model.apply(variables, images, train=False))
    train_out = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(eval_out, train_out)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(variant="X/16"), "unknown ViT variant 'X/16'"),
        (dict(variant="S/0"), "unknown ViT variant 'S/0'"),
        (dict(variant="", width=8), "ViT depth must be >= 1, got 0 (variant='' needs"),
        (dict(width=-1), "ViT width must be >= 1, got -1"),
        (dict(num_heads=5), "ViT width 768 must be divisible by num_heads 5"),
        (dict(pool="cls"), "unknown ViT pool 'cls'"),
        (dict(pos_emb="rotary"), "unknown ViT pos_emb 'rotary'"),
        (dict(width=6, num_heads=2, pos_emb="sincos2d"), "divisible by 4 and >= 8, got 6"),
        (dict(dropout_rate=1.0), "ViT dropout_rate must be in [0, 1)"),
        (dict(representation_size=-1), "ViT representation_size must be >= 0"),
    ],
)
def test_bad_fields_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        vit.ViT(**fields)
    assert "\n" not in str(e.value)


def test_a_patch_size_that_does_not_divide_the_image_is_an_error():
    with pytest.raises(ValueError, match="patch_size 16 does not divide the 8x8 images"):
        jax.eval_shape(
            lambda: vit.ViT(variant="S/16").init(KEY, jnp.zeros((1, 8, 8, 1)), train=False)
        )
