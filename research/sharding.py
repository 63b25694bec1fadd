"""Where each parameter lives on a (data, fsdp, tensor) mesh: the mesh string and the logical rules.

`parallel.mesh` names the sizes of the three mesh axes, e.g. "data=-1,fsdp=2,tensor=2" (-1: the
devices left over; an axis left out has size 1). The batch is split over "data" and "fsdp"; the
devices along "tensor" hold the same rows and split the Transformer's layers between them.

Parameters get their layout from two small tables, so the model files need no sharding code:

    PARAM_RULES  a regex over a parameter's path ("h_0/attn/qkv/kernel") -> its logical axes,
                 one name (or None) per array dimension: ("embed", "heads").
    AXIS_RULES   a logical axis -> the mesh axis it is split over: "heads" -> "tensor".

The rules give Megatron-LM's layout (Shoeybi et al. 2019, section 3): the first matrix of each
pair is split by columns (its outputs), the second by rows (its inputs), so the activations
between them are split over "tensor" and only the second matrix's output needs a sum (XLA
inserts one all-reduce per pair in the forward pass and one in the backward pass):

    parameter                      logical axes      spec on "tensor"
    attn/qkv, query, key_value     (embed, heads)    P(None, "tensor")  column-parallel
    attn/out                       (heads, embed)    P("tensor", None)  row-parallel
    mlp/fc                         (embed, mlp)      P(None, "tensor")  column-parallel
    mlp/proj                       (mlp, embed)      P("tensor", None)  row-parallel
    token embedding, lm_head       (vocab, embed)    P("tensor", None)  vocabulary-parallel
    biases of column layers        (heads,) (mlp,)   P("tensor")

Paths are matched with `re.search`, so the same rule finds a kernel in the parameters, in the
EMA copy and in the optimizer's moments (opt_state/.../mu/h_0/attn/qkv/kernel): each moment lives
where its parameter lives. A dimension that "tensor" does not divide stays whole (say a 65-token
vocabulary). FSDP then splits each array over "fsdp" along its largest remaining dimension that
"fsdp" divides (research/parallel.py `state_sharding`).

`parallel.fsdp = N` (the older field) is sugar for mesh "data=-1,fsdp=N"; setting both is an error.
"""

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn

from research.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
TENSOR_AXIS = "tensor"

# (regex over the path, logical axes per dimension). First match wins.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(attn|cross_attn)/(qkv|query|key_value)/kernel$", ("embed", "heads")),
    (r"(attn|cross_attn)/(qkv|query|key_value)/bias$", ("heads",)),
    (r"(attn|cross_attn)/out/kernel$", ("heads", "embed")),
    (r"mlp/fc/kernel$", ("embed", "mlp")),
    (r"mlp/fc/bias$", ("mlp",)),
    (r"mlp/proj/kernel$", ("mlp", "embed")),
    # Token embeddings: GPT's wte, the Transformer's shared embed, BERT's word_embeddings.
    (r"(^|/)(wte|embed|word_embeddings)/embedding$", ("vocab", "embed")),
    (r"(^|/)lm_head/kernel$", ("embed", "vocab")),
)

# Logical axis -> mesh axis (None: not split by tensor parallelism; FSDP may still split it).
AXIS_RULES: dict[str, str | None] = {
    "heads": TENSOR_AXIS,
    "mlp": TENSOR_AXIS,
    "vocab": TENSOR_AXIS,
    "embed": None,
}


def _read(text: str) -> dict[str, int]:
    """{axis: size} as written (-1 kept); one-line errors for anything else."""
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or name not in MESH_AXES:
            raise ConfigError(
                f"parallel.mesh={text!r}: {item!r} is not AXIS=SIZE with AXIS one of "
                f"{', '.join(MESH_AXES)}"
            )
        if name in sizes:
            raise ConfigError(f"parallel.mesh={text!r} names {name} twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(
                f"parallel.mesh={text!r}: {name}={value!r} is not an integer"
            ) from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ConfigError(f"parallel.mesh={text!r}: {name} must be a positive size or -1")
    if sum(size == -1 for size in sizes.values()) > 1:
        raise ConfigError(f"parallel.mesh={text!r}: only one axis may be -1")
    return sizes


def well_formed(text: Any) -> bool:
    """Whether `text` is a mesh string at all (the device count is checked before a run)."""
    try:
        return isinstance(text, str) and _read(text) is not None
    except ConfigError:
        return False


def parse_mesh(text: str, device_count: int) -> dict[str, int]:
    """{axis: size} for every axis of MESH_AXES from "data=-1,fsdp=2,tensor=2" over
    `device_count` devices (an axis left out: 1, or data=-1 when no axis is -1); one-line errors."""
    sizes = _read(text)
    rest = [name for name, size in sizes.items() if size == -1]
    if not rest and "data" not in sizes:
        sizes["data"], rest = -1, ["data"]  # Data parallelism over what the other axes leave.
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if device_count % fixed or (not rest and fixed != device_count):
        raise ConfigError(
            f"parallel.mesh={text!r} needs {'a multiple of ' if rest else 'exactly '}{fixed} "
            f"devices; this run has {device_count}"
        )
    if rest:
        sizes[rest[0]] = device_count // fixed
    return {name: sizes.get(name, 1) for name in MESH_AXES}


def mesh_text(parallel_config: Mapping[str, Any]) -> str:
    """The run's mesh string: parallel.mesh, or "data=-1,fsdp=N" from parallel.fsdp."""
    mesh, fsdp = parallel_config["mesh"], parallel_config["fsdp"]
    if mesh and fsdp != 1:
        raise ConfigError(
            f"parallel.fsdp={fsdp} and parallel.mesh={mesh!r} both set the layout; put fsdp "
            "in the mesh (fsdp=N) and leave parallel.fsdp=1"
        )
    if fsdp < 1:
        raise ConfigError(f"parallel.fsdp={fsdp} must divide the device count")
    return mesh or f"data=-1,fsdp={fsdp}"


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical axes of the array at `path` (all None when no rule names it)."""
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, path) and len(axes) == ndim:
            return axes
    return (None,) * ndim


def tensor_spec(path: str, shape: tuple[int, ...], tensor: int) -> list[str | None]:
    """One mesh axis (or None) per dimension from the rules; dims "tensor" does not divide stay
    whole."""
    spec: list[str | None] = []
    for axis, size in zip(logical_axes(path, len(shape)), shape):
        mesh_axis = AXIS_RULES.get(axis) if axis else None
        ok = mesh_axis is not None and tensor > 1 and size % tensor == 0
        spec.append(mesh_axis if ok else None)
    return spec


def path_name(path: tuple) -> str:
    """ "params/h_0/attn/qkv/kernel" from a jax key path."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


@contextlib.contextmanager
def recording_heads() -> Iterator[set[int]]:
    """The numbers of heads of every attention layer the model runs while this is open (traced
    by `steps.abstract_state`); the model files need not say them."""
    from research.models.attention import MultiHeadAttention  # Deferred: models are heavy.

    heads: set[int] = set()

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, MultiHeadAttention):
            heads.add(context.module.num_heads)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        yield heads


def check_model(mesh: Mapping[str, int], model_name: str, params: Any, heads: set[int]) -> None:
    """ConfigError, before anything compiles, when tensor > 1 and the model cannot use it: no
    parameter that the rules split (a CNN), or heads that "tensor" does not divide."""
    tensor = mesh[TENSOR_AXIS]
    if tensor == 1:
        return
    import jax  # Deferred: keeps parse_mesh importable without a backend.

    split = [
        path_name(p)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if TENSOR_AXIS in tensor_spec(path_name(p), x.shape, tensor)
    ]
    if not split:
        raise ConfigError(
            f"parallel.mesh tensor={tensor}: model {model_name} has no layers tensor parallelism "
            "splits (attention, MLP, embeddings); use tensor=1"
        )
    uneven = sorted(h for h in heads if h % tensor)
    if uneven:
        raise ConfigError(
            f"parallel.mesh tensor={tensor} does not divide the {uneven[0]} attention heads of "
            f"model {model_name}; use a tensor size that divides {uneven[0]}"
        )
