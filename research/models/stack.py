"""A stack of Transformer blocks: rematerialisation per block, and the layers scanned or unrolled.

Two config fields of every Transformer family (GPT, the encoder-decoder, BERT, ViT):

- `remat` trades compute for memory. Backpropagation keeps every block's intermediate
  activations; under `jax.checkpoint` a block keeps only what its policy saves and recomputes the
  rest on the backward pass (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
  "none" keeps everything; "full" saves only each block's input; the other names are
  `jax.checkpoint_policies`, e.g. "dots_with_no_batch_dims_saveable" keeps the matmul outputs
  (the Dense layers here are 2-D matmuls) and recomputes the cheap elementwise work.
- `scan_layers` runs the L identical blocks as one `nn.scan` over parameters stacked on a leading
  axis [L, ...]: XLA compiles one block instead of L, so compile time stays flat with depth
  (bench/transformer_stack.py). The outputs are the same; only the parameter layout differs.

Parameter layouts. Unrolled, block i is the top-level entry `{prefix}{i}` (GPT's "h_3"); scanned,
the blocks are one entry named `prefix` without its trailing underscore ("h"), each leaf with a
leading layer axis. `scan_params` and `unscan_params` convert one into the other, so a checkpoint
or a Hugging Face import made unrolled can start a scanned run and back; models.SCAN_PREFIXES
names each model's prefixes.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# model.remat -> the jax.checkpoint policy of each block (None: jax's default, save nothing but
# the block's inputs). "none" is not here: no checkpoint at all.
_POLICIES = jax.checkpoint_policies
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,
    "nothing_saveable": _POLICIES.nothing_saveable,
    "dots_saveable": _POLICIES.dots_saveable,
    "dots_with_no_batch_dims_saveable": _POLICIES.dots_with_no_batch_dims_saveable,
    "everything_saveable": _POLICIES.everything_saveable,
}
REMAT_CHOICES = ("none", *REMAT_POLICIES)


def check_remat(remat: str, model: str) -> None:
    """A one-line ValueError for an unknown `remat` name."""
    if remat not in REMAT_CHOICES:
        raise ValueError(f"unknown {model} remat {remat!r}; choose one of {list(REMAT_CHOICES)}")


def _call(block, x, context, mask, context_mask, train, decode):
    # Positional, so `train` and `decode` can be static arguments of the checkpoint.
    return block(x, context, mask=mask, context_mask=context_mask, train=train, decode=decode)


def _step(block, x, context, mask, context_mask, train, decode):
    """One scan step: the carry is the residual stream; blocks emit nothing per layer."""
    return _call(block, x, context, mask, context_mask, train, decode), None


def blocks(
    make_block: Callable[..., nn.Module], prefix: str, num_layers: int, scanned: bool
) -> nn.Module | list[nn.Module]:
    """`run`'s blocks named as the parameter layout (module docstring): `make_block(name=...)`
    once as `scanned_name(prefix)` when scanned, else `num_layers` times as `{prefix}{i}`."""
    if scanned:
        return make_block(name=scanned_name(prefix))
    return [make_block(name=f"{prefix}{i}") for i in range(num_layers)]


def run(
    blocks: nn.Module | Sequence[nn.Module],
    x: jax.Array,
    context: jax.Array | None = None,
    *,
    remat: str,
    num_layers: int,
    mask: jax.Array | None = None,
    context_mask: jax.Array | None = None,
    train: bool,
    decode: bool = False,
) -> jax.Array:
    """Apply `blocks` (a list: unrolled; one block module: scanned `num_layers` times) to `x`.

    The block modules are made, and so named, by the caller: their names are the parameter
    layout (module docstring). With `decode`, a scanned stack's KV cache is stacked like its
    parameters: [L, B, max_len, H, Dh] per variable.
    """
    static = (5, 6)  # train, decode (argument 0 is the block)
    if isinstance(blocks, nn.Module):
        step = _step
        if remat != "none":
            step = nn.remat(_step, static_argnums=static, policy=REMAT_POLICIES[remat])
        scanned = nn.scan(
            step,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * 5,
            length=num_layers,
        )
        x, _ = scanned(blocks, x, context, mask, context_mask, train, decode)
        return x
    call = _call
    if remat != "none":
        call = nn.remat(_call, static_argnums=static, policy=REMAT_POLICIES[remat])
    for block in blocks:
        x = call(block, x, context, mask, context_mask, train, decode)
    return x


# --- parameter layouts ----------------------------------------------------------------------


def _numbered(params: Mapping[str, Any], prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    names = [k for k in params if pattern.fullmatch(k)]
    return sorted(names, key=lambda k: int(k[len(prefix) :]))


def _stack(*layers: Any) -> Any:
    first = layers[0]
    if isinstance(first, jax.ShapeDtypeStruct):  # shapes only (jax.eval_shape, planning)
        return jax.ShapeDtypeStruct((len(layers), *first.shape), first.dtype)
    return jnp.stack(layers)


def _layer(stacked: Any, i: int) -> Any:
    if isinstance(stacked, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(stacked.shape[1:], stacked.dtype)
    return stacked[i]


def scanned_name(prefix: str) -> str:
    """The scanned stack's entry for unrolled entries `{prefix}{i}`: "h_" -> "h"."""
    return prefix.rstrip("_")


def scan_params(params: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """Unrolled layout -> scanned: entries `{prefix}0..{L-1}` stacked into one, per prefix.

    Works on any tree keyed like the params (optimizer moments, a Hugging Face import), of arrays
    or of jax.ShapeDtypeStruct.
    """
    out = dict(params)
    for prefix in prefixes:
        names = _numbered(params, prefix)
        if not names:
            raise ValueError(f"no unrolled layers {prefix}0, {prefix}1, ... to scan")
        expected = [f"{prefix}{i}" for i in range(len(names))]
        if names != expected:
            raise ValueError(f"unrolled layers {names} are not numbered 0..{len(names) - 1}")
        layers = [out.pop(name) for name in names]
        out[scanned_name(prefix)] = jax.tree.map(_stack, *layers)
    return out


def unscan_params(params: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """Scanned layout -> unrolled: the stacked entry split into `{prefix}0..{L-1}`, per prefix."""
    out = dict(params)
    for prefix in prefixes:
        name = scanned_name(prefix)
        if name not in out:
            raise ValueError(f"no scanned layers {name!r} to unroll")
        stacked = out.pop(name)
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        for i in range(num_layers):
            out[f"{prefix}{i}"] = jax.tree.map(lambda leaf, i=i: _layer(leaf, i), stacked)
    return out
