"""Model registry: `config.model.name` picks a flax.linen module; every other field is its argument.

    config.model = dict(name="resnet", depth=20, shortcut="A", num_classes=10)
    model = research.models.build(config.model)   # == CifarResNet(depth=20, shortcut="A", ...)
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from research.models import cnn, gpt, resnet

MODELS: dict[str, type[nn.Module]] = {
    "cnn": cnn.SmallCNN,
    "lenet5": cnn.LeNet5,
    "resnet": resnet.CifarResNet,
    "gpt": gpt.GPT,
}


def build(model_config: Mapping[str, Any]) -> nn.Module:
    """Instantiate the module named by `model_config["name"]` with the remaining fields."""
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**fields)
