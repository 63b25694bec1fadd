"""Model registry, and the small interface between a model and the trainer.

`config.model.name` picks a flax.linen module from MODELS; every other field of the section is one
of its arguments. Loading an experiment fills in the arguments it leaves at their defaults
(`arguments`), so each is one override and config.json records the whole model:

    config.model = dict(name="resnet", depth=20, shortcut="A", num_classes=10)
    model = research.models.build(config.model)   # == CifarResNet(depth=20, shortcut="A", ...)

What the trainer asks of a model, and nothing else:

    model.num_outputs                  the size of the output's last axis: classes or vocabulary
    with_batch_norm_axis(model, axis)  the model averaging BatchNorm statistics over a device axis
                                       (a model with BatchNorm sets the class attribute
                                       `batch_norm = True` and has a `bn_axis_name` field)
    LAYERS[name]                       its numbered blocks and its embeddings, as regexes over
                                       parameter paths (layer-wise learning-rate decay)

`model.dtype="auto"` (the transformers, whose dtype is one of precision.DTYPES) is resolved here, when the
model is built, to the precision measured fastest on this processor (gpt.AUTO_DTYPES): every path
that builds a model (train, eval, sample, average, export) builds the same one. The config keeps
"auto"; `dtype(config.model)` is what it resolved to (the run's first line, provenance.json).

Each model checks its own fields when constructed and raises a one-line ValueError, which the
launcher reports as a config error. SMOKE_SIZES gives each model's size for the `smoke` variant.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from research import hardware
from research.models import bert, cnn, gpt, resnet, stack, transformer, vit

MODELS: dict[str, type[nn.Module]] = {
    "cnn": cnn.SmallCNN,
    "lenet5": cnn.LeNet5,
    "resnet": resnet.CifarResNet,
    "imagenet_resnet": resnet.ImageNetResNet,
    "gpt": gpt.GPT,
    "transformer": transformer.Transformer,
    "vit": vit.ViT,
    "bert": bert.Bert,
}

# Models whose `dtype` is one of precision.DTYPES (bfloat16_matmul included), and so may be "auto" (gpt.AUTO_DTYPES).
AUTO_DTYPE_MODELS = ("gpt", "transformer", "vit", "bert")

# Module fields that are not config fields: flax's own, and those the trainer sets.
_NOT_ARGUMENTS = ("parent", "name", "bn_axis_name")

# The `smoke` variant's model size (research/config.py `smoke`): seconds per run on a CPU.
SMOKE_SIZES: dict[str, dict[str, Any]] = {
    "cnn": {},  # Already small: 8x8 digits train in seconds.
    "lenet5": {},
    "resnet": dict(depth=8),
    "imagenet_resnet": dict(depth=18, width=8),
    "gpt": dict(num_layers=1, num_heads=2, embed_dim=32, block_size=16),
    "transformer": dict(
        encoder_layers=1, decoder_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, vocab_size=512
    ),
    "vit": dict(width=32, depth=1, num_heads=2, mlp_dim=64),  # The recipe's patch size and head.
    "bert": dict(size="tiny", vocab_size=512, max_len=128),
}

# The order of a model's layers, for layer-wise learning-rate decay (research/optim.py): a regex
# whose group 1 is a parameter's block index, and one for the embeddings below the first block.
# Everything else (final norm, pooler, heads) sits above the last block. Encoder-decoders
# (transformer) and convolutional nets declare none.
LAYERS: dict[str, tuple[str, str]] = {
    "gpt": (r"^h_(\d+)/", r"^(wte|wpe)/"),
    "bert": (r"^layer_(\d+)/", r"^(word|segment|position)_embeddings/|^embeddings_norm/"),
    "vit": (r"^encoderblock_(\d+)/", r"^(embedding/|cls$|pos_embedding$)"),
}

# The unrolled block prefixes of each Transformer family, for models.stack.scan_params and
# unscan_params: with `scan_layers`, "h_0".."h_{L-1}" become one stacked entry "h" (stack.py).
SCAN_PREFIXES: dict[str, tuple[str, ...]] = {
    "gpt": ("h_",),
    "bert": ("layer_",),
    "vit": ("encoderblock_",),
    "transformer": ("encoder_", "decoder_"),
}


def stacked_entries(model_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The top-level parameter entries that hold scanned layers ([L, ...] leaves); () unrolled."""
    if not model_config.get("scan_layers"):  # Models without the field have no stacks.
        return ()
    return tuple(stack.scanned_name(p) for p in SCAN_PREFIXES[model_config["name"]])


def arguments(name: str) -> dict[str, Any]:
    """The config fields of model `name` with their defaults (the module's dataclass fields)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(MODELS[name])
        if f.name not in _NOT_ARGUMENTS and f.default is not dataclasses.MISSING
    }


def build(model_config: Mapping[str, Any]) -> nn.Module:
    """Instantiate the module named by `model_config["name"]` with the remaining fields."""
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; choose one of {sorted(MODELS)}")
    if "dtype" in fields:
        fields["dtype"] = dtype(model_config)
    return MODELS[name](**fields)


def dtype(model_config: Mapping[str, Any]) -> str | None:
    """The model's compute dtype as built: "auto" resolved for this processor; None if it has none."""
    name, value = model_config["name"], model_config.get("dtype")
    if value != "auto":
        return value
    if name not in AUTO_DTYPE_MODELS:
        raise ValueError(
            f"model.dtype='auto' is for {', '.join(AUTO_DTYPE_MODELS)}; give {name} its dtype"
        )
    kind = hardware.kind()
    if kind not in gpt.AUTO_DTYPES:
        raise ValueError(
            f"model.dtype='auto' has no choice for processor {kind!r}; set model.dtype to one of "
            f"{sorted(gpt.DTYPES)}"
        )
    return gpt.AUTO_DTYPES[kind]


def with_batch_norm_axis(model: nn.Module, axis: str | None) -> nn.Module:
    """`model` computing BatchNorm statistics over the named device `axis` (None: per device)."""
    return model.clone(bn_axis_name=axis) if getattr(type(model), "batch_norm", False) else model
