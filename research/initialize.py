"""Initialising a model from weights trained elsewhere: fine-tuning a pre-trained run.

The `init` section of a config (all empty: train from scratch):

    init.source   a run's workdir: its checkpoint's parameters ("" = none)
    init.step     which checkpoint of it (0 = the latest)
    init.include  a regular expression over parameter paths such as "layer_0/attn/qkv/kernel":
                  the parameters to copy ("" = every parameter)
    init.exclude  parameters to leave at their fresh initialisation, e.g. "^classifier/" (a new
                  head); applied after `include`

    python launch.py --config=experiments/shakespeare_bert.py:finetune \\
        --config.init.source=runs/bert_mlm --config.init.exclude='^classifier/' ...

Every parameter chosen (included, not excluded) must exist in the source with the same shape,
or the run stops before it starts with one line naming it; parameters the source has and the
model lacks (a pre-training head) are left behind, and listed. Only parameters are copied: the
optimizer starts fresh, at step 0, and the EMA (if on) starts from the initialised parameters.
A run that resumes from its own checkpoint ignores `init` (its weights are further along).

Sources are named by a string so that other kinds can join: a Hugging Face checkpoint is the next
(`research/` issue 15), mapping its names onto ours.
"""

import dataclasses
import re
from pathlib import Path

import jax
import ml_collections
import numpy as np

from research import checkpoint
from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Plan:
    """What initialisation will do, checked before the run starts."""

    source: Path
    step: int
    copied: tuple[str, ...]  # parameter paths taken from the source
    fresh: tuple[str, ...]  # the model's parameters left at their initialisation
    unused: tuple[str, ...]  # the source's parameters the model does not take

    def describe(self) -> str:
        """One line for the console and provenance."""
        fresh = f"; fresh: {', '.join(self.fresh)}" if self.fresh else ""
        unused = f"; not used: {', '.join(self.unused)}" if self.unused else ""
        return (
            f"initialized {len(self.copied)} of {len(self.copied) + len(self.fresh)} parameter "
            f"arrays from {self.source} (step {self.step}){fresh}{unused}"
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
    source = Path(init.source)
    directory = source / "checkpoints"
    steps = checkpoint.all_steps(directory)
    if not steps:
        raise ConfigError(
            f"init.source={init.source!r} holds no checkpoint (looked in {directory}); give the "
            "workdir of a run that saved one"
        )
    step = init.step or steps[-1]
    if step not in steps:
        raise ConfigError(f"init.step={step} is not a checkpoint of {source}; it has {steps}")
    have = checkpoint.param_shapes(directory, step)
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
    return Plan(source, step, tuple(chosen), fresh, unused)


def apply(the_plan: Plan, params: dict) -> dict:
    """`params` with the planned parameters replaced by the source's values (same dtypes)."""
    loaded = checkpoint.read_params(the_plan.source / "checkpoints", the_plan.step)
    chosen = set(the_plan.copied)

    def take(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name not in chosen:
            return leaf
        return np.asarray(loaded[name], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(take, params)
