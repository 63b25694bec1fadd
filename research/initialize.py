"""Initialising a model from weights trained elsewhere: fine-tuning a pre-trained run.

The `init` section of a config (all empty: train from scratch):

    init.source   a run's workdir: its checkpoint's parameters ("" = none); or a Hugging Face
                  directory: config.json + model.safetensors of GPT-2, BERT or ViT
                  (research/pretrained.py)
    init.step     which checkpoint of a run (0 = the latest; a Hugging Face directory has one)
    init.include  a regular expression over parameter paths such as "layer_0/attn/qkv/kernel":
                  the parameters to copy ("" = every parameter)
    init.exclude  parameters to leave at their fresh initialisation, e.g. "^classifier/" (a new
                  head); applied after `include`

    python launch.py --config=experiments/shakespeare_bert.py:finetune \\
        --config.init.source=runs/bert_mlm --config.init.exclude='^classifier/' ...
    python launch.py --config=EXPERIMENT --config.init.source=hf/bert-base-uncased \\
        --config.init.exclude='^classifier/' ...

Every parameter chosen (included, not excluded) must exist in the source with the same shape,
or the run stops before it starts with one line naming it; parameters the source has and the
model lacks (a pre-training head) are left behind, and listed. Only parameters are copied: the
optimizer starts fresh, at step 0, and the EMA (if on) starts from the initialised parameters.
A run that resumes from its own checkpoint ignores `init` (its weights are further along).

A Hugging Face directory is imported into our names first (research/pretrained.py), then chosen,
checked and copied exactly like a run's checkpoint. The model still comes from the experiment:
`check_model` (run by config validation) stops a run whose model fields differ from what the
directory's config.json describes (sizes, activation, LayerNorm epsilon, ...), naming the field.
Biases the source has and a bias-free model lacks (GPT's use_bias=False) must be zero, as an
export of such a model writes them: then the copy is exact.
"""

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from research import checkpoint, pretrained, workdir
from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Plan:
    """What initialisation will do, checked before the run starts."""

    source: Path
    step: int
    copied: tuple[str, ...]  # parameter paths taken from the source
    fresh: tuple[str, ...]  # the model's parameters left at their initialisation
    unused: tuple[str, ...]  # the source's parameters the model does not take
    architecture: str = ""  # a Hugging Face source's class; "" for a run's checkpoint

    def describe(self) -> str:
        """One line for the console and provenance."""
        fresh = f"; fresh: {', '.join(self.fresh)}" if self.fresh else ""
        unused = f"; not used: {', '.join(self.unused)}" if self.unused else ""
        origin = f"Hugging Face {self.architecture}" if self.architecture else f"step {self.step}"
        return (
            f"initialized {len(self.copied)} of {len(self.copied) + len(self.fresh)} parameter "
            f"arrays from {self.source} ({origin}){fresh}{unused}"
        )


def paths(params: dict) -> dict[str, tuple[int, ...]]:
    """{"layer_0/attn/qkv/kernel": shape} of a parameter tree (arrays or abstract)."""
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


def _regex(pattern: str, field: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{field}={pattern!r} is not a regular expression ({e})") from None


def plan(init: ml_collections.ConfigDict, abstract_params: dict) -> Plan | None:
    """Check `init` against the model's parameters; None when there is nothing to initialise."""
    if not init.source:
        return None
    source = workdir.path(init.source)  # A run's workdir may be in a bucket (gs://).
    architecture, step = "", 0
    if pretrained.is_directory(source):
        if init.step:
            raise ConfigError(
                f"init.step={init.step}: {source} is a Hugging Face directory, one set of "
                "weights; leave init.step at 0"
            )
        imported = pretrained.read(source)
        architecture, values = imported.architecture, pretrained.flat_params(imported)
        have = {p: v.shape for p, v in values.items()}
    else:
        directory = source / "checkpoints"
        steps = checkpoint.all_steps(directory)
        if not steps:
            raise ConfigError(
                f"init.source={init.source!r} holds no checkpoint (looked in {directory}) and is "
                "no Hugging Face directory; give the workdir of a run that saved one, or a "
                "directory with config.json and model.safetensors"
            )
        step = init.step or steps[-1]
        if step not in steps:
            raise ConfigError(f"init.step={step} is not a checkpoint of {source}; it has {steps}")
        have, values = checkpoint.param_shapes(directory, step), None
    want = paths(abstract_params)
    include = _regex(init.include, "init.include")
    exclude = _regex(init.exclude, "init.exclude")
    chosen = [
        p
        for p in want
        if (include is None or include.search(p)) and not (exclude and exclude.search(p))
    ]
    if not chosen:
        raise ConfigError(
            f"init.include={init.include!r} / init.exclude={init.exclude!r} choose none of the "
            f"model's parameters (e.g. {next(iter(want))})"
        )
    for p in chosen:
        if p not in have:
            raise ConfigError(
                f"init: the model's parameter {p} is not in {source} (step {step}); exclude it "
                "with init.exclude, or initialise from a run of the same model"
            )
        if have[p] != want[p]:
            raise ConfigError(
                f"init: {p} is {have[p]} in {source} but {want[p]} in this model; make the "
                "sizes agree, or exclude it with init.exclude"
            )
    fresh = tuple(p for p in want if p not in chosen)
    unused = tuple(p for p in have if p not in want)
    if values is not None:
        _check_dropped_biases(source, unused, want, values)
    return Plan(source, step, tuple(chosen), fresh, unused, architecture)


def _check_dropped_biases(source: Path, unused: tuple, want: dict, values: dict) -> None:
    """A bias the source has where the model has none (use_bias=False) must be zero."""
    for p in unused:
        module = p.rpartition("/")[0]
        has_weight = any(f"{module}/{w}" in want for w in ("kernel", "scale"))
        if p.endswith("/bias") and has_weight and np.any(values[p]):
            raise ConfigError(
                f"init: {source} has a nonzero bias {p} where this model has none: its "
                "function needs it; set model.use_bias=True"
            )


def check_model(init: ml_collections.ConfigDict, model_config: Any) -> None:
    """A Hugging Face init.source must describe the experiment's model: a one-line error naming
    the first model field its config.json sets differently (run sources: shapes, in `plan`)."""
    if not init.source or not pretrained.is_directory(init.source):
        return
    if model_config.get("scan_layers"):
        raise ConfigError(
            f"init.source={init.source} is a Hugging Face directory, whose layers are named one "
            "by one: set model.scan_layers=False (research/models/stack.py converts the params)"
        )
    different = pretrained.disagreement(init.source, model_config)
    if different:
        raise ConfigError(f"init.source={init.source}: {different}")


def apply(the_plan: Plan, params: dict) -> dict:
    """`params` with the planned parameters replaced by the source's values (same dtypes)."""
    if the_plan.architecture:
        loaded = pretrained.flat_params(pretrained.read(the_plan.source))
    else:
        loaded = checkpoint.read_params(the_plan.source / "checkpoints", the_plan.step)
    chosen = set(the_plan.copied)

    def take(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name not in chosen:
            return leaf
        return np.asarray(loaded[name], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(take, params)
