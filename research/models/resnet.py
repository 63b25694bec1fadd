"""ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition"): CIFAR and ImageNet.

CifarResNet (Section 4.2): depth = 6n + 2: a 3x3 conv, three stages of n basic blocks at widths
16/32/64 on 32x32/16x16/8x8 maps, global average pooling, a dense head. ResNet-20 with option A
shortcuts has 269,722 parameters (Table 6: 0.27M).

ImageNetResNet (Section 3.4, Table 1): a 7x7/2 conv and a 3x3/2 max pool, four stages at widths
64/128/256/512 (x4 outputs for bottleneck blocks) on 56/28/14/7 maps at 224x224, global average
pooling, a dense head. Depths 18 and 34 use basic blocks, 50/101/152 bottlenecks. This is "v1.5",
as torchvision and flax's examples/imagenet/models.py: a bottleneck downsamples in its 3x3 conv,
not its first 1x1 (the paper's v1), which costs a little speed for ~0.5% top-1. Projection
shortcuts (option B) where the shape changes. With 1000 classes: 11,689,512 / 21,797,672 /
25,557,032 / 44,549,160 / 60,192,808 parameters, torchvision's counts.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import conv as conv_lib
from research.models import precision
from research.models.cnn import COMPUTE_DTYPES
from research.models.layers import require

# He et al. 2015 ("Delving Deep into Rectifiers") normal init, fan-out mode as in torchvision.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# LeCun normal for the head: flax's Dense default, written out.
lecun_normal = nn.initializers.lecun_normal()

# ImageNetResNet's conv kernel initializers, by name: torchvision's, or flax's nn.Conv default
# (what flax's examples/imagenet/models.py uses).
CONV_INITS = {"he_normal_fan_out": he_normal_fan_out, "lecun_normal": lecun_normal}

# He et al. 2016, Sections 3.3, 4.1: (A) zero-padded identity, parameter-free;
# (B) 1x1 projection where the shape changes, identity elsewhere.
SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, added to a shortcut, then ReLU (He et al. 2016, Fig. 2)."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    shortcut: str = "A"
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Block output for NHWC input `x`."""
        y = self.conv(self.features, (3, 3), strides=self.strides)(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.features, (3, 3))(y)
        # Goyal et al. 2017 ("Accurate, Large Minibatch SGD", Section 5.1): gamma = 0 in the
        # last BN makes each block start as the identity.
        zero_init = self.zero_init_residual
        y = self.norm(scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)(y)

        if x.shape != y.shape:
            if self.shortcut == "A":
                # Subsample spatially, then pad the new channels with zeros.
                x = x[:, :: self.strides, :: self.strides, :]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
            else:
                x = self.conv(self.features, (1, 1), strides=self.strides, name="proj_conv")(x)
                x = self.norm(name="proj_norm")(x)
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images (He et al. 2016, Section 4.2)."""

    num_classes: int = 10
    depth: int = 20
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "A"
    zero_init_residual: bool = False
    dtype: str = "float32"  # compute: float32 | bfloat16 | float16 (precision.CONV_DTYPES)
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    # How convolutions are computed (research/models/conv.py IMPLS, or "auto": by processor).
    conv_impl: str = "auto"
    # Named mesh/pmap axis over which BatchNorm averages its batch statistics (sync BN).
    bn_axis_name: str | None = None

    batch_norm: ClassVar[bool] = True  # research/models/__init__.py: the trainer sets bn_axis_name.

    def __post_init__(self) -> None:
        require(
            self.conv_impl in (*conv_lib.IMPLS, "auto"),
            f"CifarResNet conv_impl must be one of {(*conv_lib.IMPLS, 'auto')}, got {self.conv_impl!r}",
        )
        require(
            (self.depth - 2) % 6 == 0 and self.depth >= 8,
            f"CifarResNet depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110, ...), "
            f"got {self.depth}",
        )
        require(
            self.shortcut in SHORTCUTS,
            f"unknown CifarResNet shortcut {self.shortcut!r}; choose one of {SHORTCUTS}",
        )
        require(
            self.num_classes >= 1, f"CifarResNet num_classes must be >= 1, got {self.num_classes}"
        )
        require(
            len(self.widths) >= 1 and all(w >= 1 for w in self.widths),
            f"CifarResNet widths must be positive, got {tuple(self.widths)}",
        )
        precision.policy(
            "CifarResNet", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, C]; BN statistics in "batch_stats"."""
        dtype, _, param_dtype, output_dtype = precision.policy(
            "", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        conv = partial(
            conv_lib.Conv,
            impl=conv_lib.resolve(self.conv_impl),
            padding="SAME",
            use_bias=False,  # BN right after makes a conv bias redundant
            kernel_init=he_normal_fan_out,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        # PyTorch's BN momentum 0.1 is flax's 0.9 (weight on the old running average).
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name=self.bn_axis_name,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        blocks_per_stage = (self.depth - 2) // 6

        x = conv(self.widths[0], (3, 3), name="stem_conv")(x)
        x = nn.relu(norm(name="stem_norm")(x))
        for stage, width in enumerate(self.widths):
            for block in range(blocks_per_stage):
                x = BasicBlock(
                    features=width,
                    strides=2 if stage > 0 and block == 0 else 1,
                    conv=conv,
                    norm=norm,
                    shortcut=self.shortcut,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes, kernel_init=lecun_normal, dtype=dtype, param_dtype=param_dtype
        )(x)
        return x.astype(output_dtype)


# Sizes as data (He et al. 2016, Table 6).
ResNetTiny = partial(CifarResNet, depth=8, widths=(4, 8, 16))  # for tests
ResNet20 = partial(CifarResNet, depth=20)
ResNet32 = partial(CifarResNet, depth=32)
ResNet44 = partial(CifarResNet, depth=44)
ResNet56 = partial(CifarResNet, depth=56)
ResNet110 = partial(CifarResNet, depth=110)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand x4, each with BN (He et al. 2016, Fig. 5)."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Block output (4 * features channels) for NHWC input `x`."""
        y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.features, (3, 3), strides=self.strides)(y)))
        y = self.conv(4 * self.features, (1, 1))(y)
        zero_init = self.zero_init_residual  # Goyal et al. 2017, Section 5.1, as BasicBlock.
        y = self.norm(scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)(y)
        if x.shape != y.shape:
            x = self.conv(4 * self.features, (1, 1), strides=self.strides, name="proj_conv")(x)
            x = self.norm(name="proj_norm")(x)
        return nn.relu(y + x)


# depth -> (blocks per stage, bottleneck?): He et al. 2016, Table 1.
IMAGENET_DEPTHS: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50/101/152 v1.5 for ImageNet-sized images (He et al. 2016, Table 1)."""

    num_classes: int = 1000
    depth: int = 50
    width: int = 64  # The first stage's width; stage i has width * 2**i (bottlenecks: x4 out).
    zero_init_residual: bool = False
    conv_init: str = "he_normal_fan_out"  # CONV_INITS
    dtype: str = "float32"  # compute: float32 | bfloat16 | float16 (precision.CONV_DTYPES)
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)
    # How convolutions are computed (research/models/conv.py IMPLS, or "auto": by processor).
    conv_impl: str = "auto"
    # Named mesh/pmap axis over which BatchNorm averages its batch statistics (sync BN).
    bn_axis_name: str | None = None

    batch_norm: ClassVar[bool] = True  # research/models/__init__.py: the trainer sets bn_axis_name.

    def __post_init__(self) -> None:
        require(
            self.conv_impl in (*conv_lib.IMPLS, "auto"),
            f"ImageNetResNet conv_impl must be one of {(*conv_lib.IMPLS, 'auto')}, "
            f"got {self.conv_impl!r}",
        )
        require(
            self.conv_init in CONV_INITS,
            f"unknown ImageNetResNet conv_init {self.conv_init!r}; choose one of {sorted(CONV_INITS)}",
        )
        require(
            self.depth in IMAGENET_DEPTHS,
            f"ImageNetResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {self.depth}",
        )
        require(
            self.num_classes >= 1,
            f"ImageNetResNet num_classes must be >= 1, got {self.num_classes}",
        )
        require(self.width >= 1, f"ImageNetResNet width must be >= 1, got {self.width}")
        precision.policy(
            "ImageNetResNet", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, C]; BN statistics in "batch_stats"."""
        dtype, _, param_dtype, output_dtype = precision.policy(
            "", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        conv = partial(
            conv_lib.Conv,
            impl=conv_lib.resolve(self.conv_impl),
            padding="SAME",
            use_bias=False,
            kernel_init=CONV_INITS[self.conv_init],
            dtype=dtype,
            param_dtype=param_dtype,
        )
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,  # PyTorch's 0.1, as CifarResNet
            epsilon=1e-5,
            axis_name=self.bn_axis_name,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        stage_sizes, bottleneck = IMAGENET_DEPTHS[self.depth]

        # Explicit (3, 3) padding as torchvision and flax's example: "SAME" would pad (2, 3).
        x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="stem_conv")(x)
        x = nn.relu(norm(name="stem_norm")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(stage_sizes):
            for block in range(blocks):
                args = dict(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    conv=conv,
                    norm=norm,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{stage + 1}_block{block + 1}",
                )
                x = Bottleneck(**args)(x) if bottleneck else BasicBlock(shortcut="B", **args)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes, kernel_init=lecun_normal, dtype=dtype, param_dtype=param_dtype
        )(x)
        return x.astype(output_dtype)


# Sizes as data (He et al. 2016, Table 1).
ImageNetResNetTiny = partial(ImageNetResNet, depth=18, width=8)  # for tests and smoke runs
ResNet18 = partial(ImageNetResNet, depth=18)
ResNet34 = partial(ImageNetResNet, depth=34)
ResNet50 = partial(ImageNetResNet, depth=50)
ResNet101 = partial(ImageNetResNet, depth=101)
ResNet152 = partial(ImageNetResNet, depth=152)
