"""Convolutional models: exact parameter counts, shapes, batch statistics, dtypes, config errors."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import MODELS, build, cnn, resnet

KEY = jax.random.key(0)

# Registry names this file is responsible for; each must have an exact count below.
CNN_MODELS = {"cnn", "lenet5", "resnet", "imagenet_resnet"}

# name -> (extra config, input shape, exact number of parameters).
PARAM_COUNTS = {
    "cnn": ({}, (1, 8, 8, 1), 151_306),  # sklearn digits
    "lenet5": ({}, (1, 28, 28, 1), 61_706),  # MNIST, padded to the paper's 32x32
    "resnet": ({"depth": 20}, (1, 32, 32, 3), 269_722),  # He et al. 2016, Table 6: 0.27M
    "imagenet_resnet": ({}, (1, 224, 224, 3), 25_557_032),  # ResNet-50, torchvision's count
}


def count_params(model, input_shape: tuple[int, ...]) -> int:
    """Number of entries in the "params" collection, from shapes only (no allocation)."""
    variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros(input_shape), train=False))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def fake_variables(model, x: jax.Array):
    """Variables shaped as `model.init` makes them, drawn with numpy (fan-in scaled normals).

    Threefry-based `init` takes seconds to compile on CPU; the forward tests need any sensible
    values, not the initializers' (those are covered by eval_shape and the zero-init test).
    """
    shapes = jax.eval_shape(lambda: model.init(KEY, x, train=False))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if path[-1].key in ("mean", "var"):  # running BN statistics, as BatchNorm starts them
            return jnp.full(leaf.shape, float(path[-1].key == "var"), leaf.dtype)
        fan_in = math.prod(leaf.shape[:-1])
        return jnp.asarray(rng.normal(size=leaf.shape) / math.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def images(shape: tuple[int, ...]) -> jax.Array:
    """Uniform [0, 1) float32 images of `shape`."""
    return jnp.asarray(np.random.default_rng(1).uniform(size=shape), jnp.float32)


def cifar_resnet_formula(depth: int, shortcut: str, widths=(16, 32, 64), classes=10) -> int:
    """Parameter count of a CIFAR ResNet by hand: 3x3 convs without bias, BN (scale, bias)."""
    n = (depth - 2) // 6
    total = 3 * 3 * 3 * widths[0] + 2 * widths[0]  # stem conv + BN
    in_width = widths[0]
    for width in widths:
        first = 9 * in_width * width + 9 * width * width + 2 * 2 * width
        rest = (n - 1) * (2 * 9 * width * width + 2 * 2 * width)
        projection = in_width * width + 2 * width if shortcut == "B" and in_width != width else 0
        total += first + rest + projection
        in_width = width
    return total + widths[-1] * classes + classes  # dense head


def test_every_cnn_model_has_a_param_count():
    assert set(PARAM_COUNTS) == CNN_MODELS
    assert CNN_MODELS.issubset(MODELS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count(name):
    overrides, input_shape, expected = PARAM_COUNTS[name]
    assert count_params(build({"name": name, **overrides}), input_shape) == expected


@pytest.mark.parametrize(
    "size, shortcut, expected, table6",
    [
        (resnet.ResNet20, "A", 269_722, "0.27M"),
        (resnet.ResNet20, "B", 272_474, "0.27M"),
        (resnet.ResNet56, "A", 853_018, "0.85M"),
        (resnet.ResNet110, "A", 1_727_962, "1.7M"),
    ],
)
def test_cifar_resnet_param_count(size, shortcut, expected, table6):
    model = size(shortcut=shortcut)
    assert count_params(model, (1, 32, 32, 3)) == expected
    assert cifar_resnet_formula(model.depth, shortcut) == expected
    assert f"{expected / 1e6:.2g}M" == table6  # He et al. 2016, Table 6, two significant digits


def test_lenet5_count_by_layer():
    # C1, C3, C5 are 5x5 convs (fully connected C3), then F6 and the output layer.
    by_layer = [25 * 1 * 6 + 6, 25 * 6 * 16 + 16, 25 * 16 * 120 + 120, 120 * 84 + 84, 84 * 10 + 10]
    assert sum(by_layer) == 61_706
    assert count_params(cnn.LeNet5(), (1, 32, 32, 1)) == 61_706


@pytest.mark.parametrize(
    "config, input_shape",
    [
        ({"name": "cnn", "dropout_rate": 0.5}, (2, 8, 8, 1)),
        ({"name": "cnn", "num_classes": 7}, (2, 28, 28, 1)),
        ({"name": "lenet5"}, (2, 28, 28, 1)),
        ({"name": "lenet5", "activation": "relu", "num_classes": 4}, (2, 32, 32, 1)),
        ({"name": "resnet", "depth": 8, "widths": (4, 8, 16)}, (2, 8, 8, 3)),
        ({"name": "resnet", "depth": 8, "widths": (4, 8, 16), "shortcut": "B"}, (2, 8, 8, 3)),
    ],
)
def test_forward(config, input_shape):
    model = build(config)
    x = images(input_shape)
    apply = jax.jit(partial(model.apply, mutable=["batch_stats"]), static_argnames="train")
    for train in (True, False):
        logits, _ = apply(fake_variables(model, x), x, train=train, rngs={"dropout": KEY})
        assert logits.shape == (input_shape[0], config.get("num_classes", 10))
        assert logits.dtype == jnp.float32
        assert np.isfinite(logits).all()


def test_dropout_only_in_training():
    model = cnn.SmallCNN(dropout_rate=0.5)
    x = images((4, 8, 8, 1))
    variables = fake_variables(model, x)
    apply = jax.jit(model.apply, static_argnames="train")
    run = lambda seed, train: apply(
        variables, x, train=train, rngs={"dropout": jax.random.key(seed)}
    )
    assert not np.allclose(run(0, True), run(1, True))
    np.testing.assert_array_equal(run(0, False), run(1, False))


def test_batch_stats_update_only_in_training():
    model = resnet.ResNetTiny()
    x = images((4, 8, 8, 3))
    variables = fake_variables(model, x)
    apply = jax.jit(partial(model.apply, mutable=["batch_stats"]), static_argnames="train")

    _, trained = apply(variables, x, train=True)
    _, evaluated = apply(variables, x, train=False)

    before = jax.tree.leaves(variables["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(trained)))
    assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(evaluated)))


def test_bn_axis_name_syncs_statistics_across_shards():
    # Two "devices" (a vmapped named axis) with half the batch each must get full-batch statistics.
    x = images((8, 8, 8, 3))
    variables = fake_variables(resnet.ResNetTiny(), x)
    stats = lambda model, batch: model.apply(variables, batch, train=True, mutable=["batch_stats"])[
        1
    ]

    whole = jax.jit(partial(stats, resnet.ResNetTiny()))(x)
    synced = partial(stats, resnet.ResNetTiny(bn_axis_name="data"))
    shards = jax.jit(jax.vmap(synced, axis_name="data"))(x.reshape(2, 4, 8, 8, 3))

    for full, per_shard in zip(jax.tree.leaves(whole), jax.tree.leaves(shards)):
        np.testing.assert_allclose(per_shard, np.stack([full, full]), rtol=1e-5, atol=1e-6)


def test_shortcut_a_is_parameter_free_and_b_projects_only_where_shapes_change():
    x = jnp.zeros((1, 8, 8, 3))
    params = {}
    for shortcut in ("A", "B"):
        model = resnet.ResNetTiny(shortcut=shortcut)
        variables = jax.eval_shape(partial(model.init, KEY, x, train=False))
        out = jax.eval_shape(partial(model.apply, x=x, train=False), variables)
        assert out.shape == (1, 10)
        params[shortcut] = variables["params"]
    assert not any("proj_conv" in block for block in params["A"].values())
    projected = {name for name, block in params["B"].items() if "proj_conv" in block}
    assert projected == {"stage2_block1", "stage3_block1"}
    assert params["B"]["stage2_block1"]["proj_conv"]["kernel"].shape == (1, 1, 4, 8)


@pytest.mark.parametrize(
    "size, expected",
    [
        # torchvision.models.resnet{18,34,50,101,152}(): sum(p.numel() for p in parameters()).
        (resnet.ResNet18, 11_689_512),
        (resnet.ResNet34, 21_797_672),
        (resnet.ResNet50, 25_557_032),
        (resnet.ResNet101, 44_549_160),
        (resnet.ResNet152, 60_192_808),
    ],
)
def test_imagenet_resnet_param_count(size, expected):
    assert count_params(size(), (1, 224, 224, 3)) == expected


def test_imagenet_resnet_strides_on_the_3x3_and_ends_at_7x7():
    """v1.5: the strided conv of a downsampling bottleneck is its 3x3, not its first 1x1."""
    model = resnet.ResNet50(num_classes=10, width=4)
    apply = partial(model.apply, train=False, capture_intermediates=True)
    x = jnp.zeros((1, 224, 224, 3))
    _, state = jax.eval_shape(apply, jax.eval_shape(partial(model.init, KEY, x, train=False)), x)
    block = state["intermediates"]["stage2_block1"]
    assert [block[f"Conv_{i}"]["__call__"][0].shape[1:3] for i in range(3)] == [
        (56, 56),
        (28, 28),
        (28, 28),
    ]
    assert state["intermediates"]["stage4_block3"]["__call__"][0].shape == (1, 7, 7, 128)


def test_imagenet_resnet_zero_init_residual_zeroes_last_bn_scale():
    model = resnet.ImageNetResNet(depth=50, width=2, num_classes=4, zero_init_residual=True)
    key = jax.random.key(0, impl="rbg")
    params = jax.jit(partial(model.init, train=False))(key, jnp.ones((1, 32, 32, 3)))["params"]
    blocks = [block for name, block in params.items() if name.startswith("stage")]
    assert len(blocks) == 16
    for block in blocks:
        assert not block["BatchNorm_2"]["scale"].any()
        assert block["BatchNorm_0"]["scale"].all() and block["BatchNorm_1"]["scale"].all()
    assert params["stage1_block1"]["proj_norm"]["scale"].all()


def test_zero_init_residual_zeroes_last_bn_scale_of_each_block():
    model = resnet.ResNetTiny(zero_init_residual=True)
    # The "rbg" generator compiles much faster than threefry on CPU; values are irrelevant here.
    key = jax.random.key(0, impl="rbg")
    params = jax.jit(partial(model.init, train=False))(key, jnp.ones((1, 8, 8, 3)))["params"]
    blocks = [block for name, block in params.items() if name.startswith("stage")]
    assert len(blocks) == 3
    for block in blocks:
        assert not block["BatchNorm_1"]["scale"].any()
        assert block["BatchNorm_0"]["scale"].all()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"name": "resnet", "depth": 21}, "depth must be 6n\\+2"),
        ({"name": "resnet", "depth": 2}, "depth must be 6n\\+2"),
        ({"name": "resnet", "shortcut": "C"}, "shortcut 'C'"),
        ({"name": "lenet5", "activation": "sigmoid"}, "activation 'sigmoid'"),
        ({"name": "imagenet_resnet", "depth": 20}, "depth must be one of \\[18, 34, 50"),
        ({"name": "imagenet_resnet", "width": 0}, "width must be >= 1"),
        ({"name": "imagenet_resnet", "conv_init": "he"}, "conv_init 'he'"),
    ],
)
def test_bad_config_raises(config, message):
    with pytest.raises(ValueError, match=message):
        build(config)


def test_lenet5_rejects_inputs_larger_than_its_field():
    with pytest.raises(ValueError, match="input_size"):
        count_params(cnn.LeNet5(), (1, 64, 64, 1))


@pytest.mark.parametrize(
    "config, input_shape",
    [
        ({"name": "cnn"}, (2, 8, 8, 1)),
        ({"name": "lenet5"}, (2, 28, 28, 1)),
        ({"name": "resnet", "depth": 8, "widths": (4, 8, 16), "shortcut": "B"}, (2, 8, 8, 3)),
        ({"name": "imagenet_resnet", "depth": 50, "width": 2}, (2, 32, 32, 3)),
    ],
)
def test_bfloat16_compute_keeps_float32_params_and_logits(config, input_shape):
    model = build({**config, "dtype": "bfloat16"})
    x = jnp.zeros(input_shape)
    variables = jax.eval_shape(partial(model.init, KEY, x, train=False))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

    apply = partial(
        model.apply,
        x=x,
        train=True,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )
    logits, state = jax.eval_shape(apply, variables)
    assert logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.get("batch_stats", {})))
    # The layers really compute in bfloat16: the first conv's output is bfloat16.
    first_conv = next(v for k, v in state["intermediates"].items() if "conv" in k.lower())
    assert jax.tree.leaves(first_conv)[0].dtype == jnp.bfloat16
