"""Small convolutional classifiers: a digits-sized CNN and LeNet-5 (LeCun et al. 1998).

Both take float32 NHWC images and return logits [B, num_classes]; `dtype` is the compute dtype,
`param_dtype` the parameters' and `output_dtype` the logits' (float32 by default; precision.py).
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import precision
from research.models.layers import require

# Short names a config can use for `LeNet5.activation` (STYLE principle 2).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,  # the paper scales it, 1.7159 tanh(2x/3) (Section II.B, Appendix A)
    "relu": nn.relu,
}

COMPUTE_DTYPES = precision.CONV_DTYPES  # `dtype`: no Dense-only bfloat16_matmul for convs.

# LeCun normal (LeCun et al. 1998, "Efficient BackProp"): flax's default, written out.
lecun_normal = nn.initializers.lecun_normal()


class SmallCNN(nn.Module):
    """Two 3x3 convs, one 2x2 max-pool, two dense layers: enough for 8x8 digits, 28x28, 32x32."""

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    hidden: int = 128
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute: float32 | bfloat16 | float16 (precision.CONV_DTYPES)
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)

    def __post_init__(self) -> None:
        require(self.num_classes >= 1, f"SmallCNN num_classes must be >= 1, got {self.num_classes}")
        require(
            len(self.features) >= 1 and all(f >= 1 for f in self.features),
            f"SmallCNN features must be positive widths, got {tuple(self.features)}",
        )
        require(self.hidden >= 1, f"SmallCNN hidden must be >= 1, got {self.hidden}")
        require(
            0 <= self.dropout_rate < 1,
            f"SmallCNN dropout_rate must be in [0, 1), got {self.dropout_rate}",
        )
        precision.policy(
            "SmallCNN", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, C]."""
        dtype, _, param_dtype, output_dtype = precision.policy(
            "", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        layer = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=lecun_normal)
        # SAME padding keeps all 8x8 pixels of sklearn digits before the single pool.
        for width in self.features:
            x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", **layer)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, **layer)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, **layer)(x)
        return x.astype(output_dtype)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998, Fig. 2): C1-S2-C3-S4-C5-F6-output on a 32x32 field."""

    num_classes: int = 10
    activation: str = "tanh"
    # The paper feeds a 32x32 field around 28x28 MNIST digits (Section II.B) so that
    # stroke end-points can reach the centre of the top feature detectors' receptive
    # fields; smaller inputs are zero-padded symmetrically up to this size (pad 2 for MNIST).
    input_size: int = 32
    dtype: str = "float32"  # compute: float32 | bfloat16 | float16 (precision.CONV_DTYPES)
    param_dtype: str = "float32"  # parameters, gradients, optimizer state (precision.py)
    output_dtype: str = "float32"  # the logits the loss sees (precision.py)

    def __post_init__(self) -> None:
        require(
            self.activation in ACTIVATIONS,
            f"unknown LeNet5 activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}",
        )
        require(self.num_classes >= 1, f"LeNet5 num_classes must be >= 1, got {self.num_classes}")
        # C1-S2-C3-S4-C5 take a 32x32 field down to 1x1; a smaller field leaves nothing for C5.
        require(self.input_size >= 32, f"LeNet5 input_size must be >= 32, got {self.input_size}")
        precision.policy("LeNet5", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES)
        super().__post_init__()

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits [B, num_classes] for images [B, H, W, C], H and W at most `input_size`."""
        del train  # no dropout or batch norm in LeNet-5
        dtype, _, param_dtype, output_dtype = precision.policy(
            "", self.dtype, self.param_dtype, self.output_dtype, COMPUTE_DTYPES
        )
        act = ACTIVATIONS[self.activation]
        layer = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=lecun_normal)

        pad_h, pad_w = self.input_size - x.shape[1], self.input_size - x.shape[2]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(
                f"LeNet5 input {x.shape[1]}x{x.shape[2]} exceeds input_size={self.input_size}; "
                "raise model.input_size or resize the images"
            )
        x = jnp.pad(
            x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        )

        # S2/S4 are plain 2x2 average pools: the paper's trainable per-map coefficient
        # and bias on the sub-sampling layers (Section II.B) are dropped.
        x = act(nn.Conv(6, (5, 5), padding="VALID", **layer)(x))  # C1: 28x28x6
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # S2: 14x14x6
        # C3 connects every S2 map to every C3 map, not the paper's sparse Table I.
        x = act(nn.Conv(16, (5, 5), padding="VALID", **layer)(x))  # C3: 10x10x16
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # S4: 5x5x16
        x = act(nn.Conv(120, (5, 5), padding="VALID", **layer)(x))  # C5: 1x1x120
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(84, **layer)(x))  # F6
        # A dense output layer stands in for the paper's Euclidean RBF units.
        x = nn.Dense(self.num_classes, **layer)(x)
        return x.astype(output_dtype)
