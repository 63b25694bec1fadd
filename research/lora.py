"""LoRA: low-rank adapters on a model's Dense layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models"), for every model here without changing any of them.

A targeted Dense layer y = x W (+ b), W [d_in, d_out], gains a trainable low-rank branch:

    y = x W (+ b) + (alpha / r) * dropout(x) A B        A [d_in, r], B [r, d_out]   (Sec. 4.1)

while W itself is frozen (research/optim.py: the base trains only where optimizer.trainable names
it, e.g. a new classifier head, as PEFT's `modules_to_save`). A starts small and random, B at
zero, so the first forward pass is exactly the base model's (the paper: "random Gaussian
initialization for A and zero for B"; A here is Kaiming-uniform with a = sqrt(5), i.e.
uniform(+-1 / sqrt(d_in)), as the authors' loralib and Hugging Face PEFT). The scale alpha / r
lets the rank change without retuning the learning rate (Sec. 4.1: alpha is set to the first r
tried and left there); PEFT's default alpha is 8. Dropout acts on the branch's input only,
in training (PEFT's lora_dropout; the paper's GPT-2 runs use 0.1).

The `lora` section of a config (rank 0: off):

    lora.rank     r, the adapters' rank; 0 = no LoRA
    lora.alpha    the branch is scaled by alpha / rank
    lora.dropout  dropout on the branch's input, in training
    lora.targets  a regular expression over the Dense kernels' parameter paths, such as
                  "h_0/attn/qkv/kernel": the layers to adapt (default: attention's q|k|v)
    lora.qkv      "fused": one A/B pair on attention's fused q|k|v projection [D, 3D]
                  (research/models/attention.py), as PEFT on GPT-2's c_attn; or the letters of
                  the slices to adapt with a pair each, e.g. "qv": the paper's W_q and W_v
                  (PEFT's BERT targets query and value), key left as it is

How: `adapt(model, config.lora)` runs the model's `init` and `apply` under flax's
`nn.intercept_methods`, which adds the branch to every targeted nn.Dense call. The factors are
parameters of the Dense layer they adapt ("h_0/attn/qkv/lora_a", ".../lora_b"; per slice
"lora_a_q", ...), so checkpoints, sharding and resume treat them as any other parameter.
Only nn.Dense layers can be targeted (not convolutions or embeddings).

`merge(params, alpha)` folds the adapters into the base weights, W + (alpha / r) A B, and returns
the base model's own parameter tree: what an exporter writes, and what `sample` runs.
"""

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Kaiming-uniform with a = sqrt(5) (torch's nn.Linear default, loralib's and PEFT's init of A):
# gain^2 = 2 / (1 + 5) = 1/3, bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
A_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

FUSED = "fused"
QKV = "qkv"  # attention.py's fused projection: q, k, v in this order, each D wide
QKV_CHOICES = (FUSED, "q", "k", "v", "qk", "qv", "kv", "qkv")  # lora.qkv

FACTOR = re.compile(r"(^|/)lora_[ab](_[qkv])?$")  # The parameters LoRA adds.


def is_factor(name: str) -> bool:
    """Whether the parameter path `name` ("h_0/attn/qkv/lora_a") is a LoRA factor."""
    return FACTOR.search(name) is not None


def _name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def names(params: Any) -> list[str]:
    """The parameter paths of a tree, as "h_0/attn/qkv/kernel"."""
    return [_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


# ---------------------------------------------------------------- the adapted model


@dataclasses.dataclass(frozen=True)
class Adapted:
    """`model` with a LoRA branch on its targeted Dense layers, in every `init` and `apply`.

    Anything else (num_outputs, block_size, ...) is the model's own. `clone` keeps the adapters.
    """

    model: nn.Module
    rank: int
    alpha: float
    dropout: float
    targets: str
    qkv: str

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any:
        with nn.intercept_methods(functools.partial(self._intercept, train=False)):
            return self.model.init(rngs, *args, **kwargs)

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        # Our models all take `train`; dropout on the branch follows it.
        train = bool(kwargs["train"])
        with nn.intercept_methods(functools.partial(self._intercept, train=train)):
            return self.model.apply(variables, *args, **kwargs)

    def clone(self, **updates: Any) -> "Adapted":
        return dataclasses.replace(self, model=self.model.clone(**updates))

    def __getattr__(self, name: str) -> Any:
        # The model's fields and properties; not `model` itself before it is set (copying), nor
        # Python's protocols (a copy of this object must stay one).
        if name == "model" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _intercept(self, next_fun, args, kwargs, context, *, train: bool):
        module = context.module
        if not (isinstance(module, nn.Dense) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        path = "/".join(module.path)
        if not re.search(self.targets, f"{path}/kernel"):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        (x,) = args
        if train and self.dropout > 0:
            keep = jax.random.bernoulli(module.make_rng("dropout"), 1 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1 - self.dropout), 0).astype(x.dtype)
        scale = self.alpha / self.rank
        d_in, d_out = x.shape[-1], module.features

        def branch(suffix: str, width: int) -> jax.Array:
            a = module.param(f"lora_a{suffix}", A_INIT, (d_in, self.rank), jnp.float32)
            b = module.param(f"lora_b{suffix}", nn.initializers.zeros, (self.rank, width))
            return (x @ a.astype(x.dtype)) @ b.astype(x.dtype)

        if module.name == QKV and self.qkv != FUSED:
            width = d_out // 3
            pieces = [
                branch(f"_{s}", width) if s in self.qkv else jnp.zeros((*x.shape[:-1], width))
                for s in QKV
            ]
            delta = jnp.concatenate([p.astype(x.dtype) for p in pieces], axis=-1)
        else:
            delta = branch("", d_out)
        return y + (scale * delta).astype(y.dtype)


def adapt(model: nn.Module, lora_config: ml_collections.ConfigDict) -> nn.Module | Adapted:
    """`model` with LoRA on the Dense layers `lora_config.targets` names; itself when rank is 0."""
    c = lora_config
    if not c.rank:
        return model
    return Adapted(model, c.rank, c.alpha, c.dropout, c.targets, c.qkv)


# ---------------------------------------------------------------- merging


def merge(params: dict, alpha: float) -> dict:
    """The base model's parameters with every adapter folded in: W + (alpha / r) A B.

    `params`: a LoRA run's parameters (numpy or jax arrays), `alpha`: its `lora.alpha` (r is read
    from the factors' shapes). Returns the tree without the LoRA factors, as numpy arrays, so the
    plain (un-adapted) model runs it: the same outputs as the adapted model, to float32 rounding
    (each product is computed in float64 and rounded once). A tree without factors comes back
    unchanged (as numpy).
    """

    def fold(node: Any) -> Any:
        if not isinstance(node, dict):
            return np.asarray(node)
        out = {k: fold(v) for k, v in node.items() if not is_factor(k)}
        for key in [k for k in node if k.startswith("lora_a")]:
            suffix = key[len("lora_a") :]
            a = np.asarray(node[key], np.float64)
            b = np.asarray(node[f"lora_b{suffix}"], np.float64)
            kernel = out["kernel"]
            delta = (alpha / a.shape[-1]) * (a @ b)
            columns = slice(None)
            if suffix:  # One slice of a fused q|k|v kernel.
                width = kernel.shape[-1] // 3
                start = QKV.index(suffix[1:]) * width
                columns = slice(start, start + width)
            merged = kernel.astype(np.float64)
            merged[:, columns] += delta
            out["kernel"] = merged.astype(kernel.dtype)
        return out

    return fold(dict(params))


def base(params: dict) -> dict:
    """`params` without the LoRA factors: the frozen base model's own parameters."""
    if not isinstance(params, dict):
        return params
    return {k: base(v) for k, v in params.items() if not is_factor(k)}


# ---------------------------------------------------------------- validation


def validate(lora_config: ml_collections.ConfigDict, declared: ml_collections.ConfigDict) -> None:
    """Raise a one-line ValueError for settings that contradict each other.

    `declared` is the section's defaults: with rank 0 (off) any other field changed from its
    default would be ignored in silence, so it is an error.
    """
    c = lora_config
    if not c.rank:
        changed = [k for k in c if k != "rank" and c[k] != declared[k]]
        if changed:
            raise ValueError(
                f"lora.{changed[0]} applies to LoRA, which is off (lora.rank=0); set lora.rank "
                "(e.g. 8) or leave it at its default"
            )
        return
    if not c.targets:
        raise ValueError(
            "lora.targets is empty; name the Dense kernels to adapt, e.g. 'attn/qkv/kernel'"
        )


def check(lora_config: ml_collections.ConfigDict, param_names: list[str]) -> None:
    """Raise a one-line ValueError if LoRA is on and adapts none of the model's parameters
    (`param_names`: the adapted model's, as `names` gives them)."""
    c = lora_config
    if not c.rank:
        return
    kernels = [n for n in param_names if n.endswith("/kernel")]
    factors = [n for n in param_names if is_factor(n)]
    if not factors:
        raise ValueError(
            f"lora.targets={c.targets!r} matches none of the model's Dense kernels; e.g. "
            f"{', '.join(kernels[:3]) or 'none (this model has no Dense layers)'}"
        )
    if c.qkv != FUSED and not any(f"/{QKV}/lora_a_" in n for n in factors):
        raise ValueError(
            f"lora.qkv={c.qkv!r} splits attention's fused {QKV} projection, but lora.targets="
            f"{c.targets!r} adapts no {QKV} kernel"
        )
