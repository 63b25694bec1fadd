"""Optimizer from config: one optax chain, a learning-rate schedule, a weight-decay mask and EMA.

    tx, schedule = build_optimizer(config.optimizer, config.schedule, total_steps)
    # == optax.chain(clip_by_global_norm(c), add_decayed_weights(wd, mask), sgd(schedule, 0.9))

`config.optimizer.name` and `config.schedule.name` resolve through OPTIMIZERS and SCHEDULES
below; `optimizer.decay_mask` through DECAY_MASKS. Field defaults belong to research/config.py;
`validate()` is called by the config loader before anything is compiled.

Weight decay means two different things, as in the papers each optimizer comes from:
  - "sgd", "adam": classic L2 regularisation. `weight_decay * param` is added to the (clipped)
    gradient before the optimizer sees it, so under Adam it is rescaled by the adaptive
    denominator. This is He et al. 2016 (ResNet, wd 1e-4 with SGD) and PyTorch's
    `torch.optim.SGD/Adam(weight_decay=...)`.
  - "adamw": decoupled decay (Loshchilov & Hutter 2019) through `optax.adamw`. The update is
    `-lr_t * (adam_direction + weight_decay * param)`, i.e. the decay is multiplied by the
    scheduled learning rate, exactly like PyTorch's AdamW (`p -= lr * wd * p`) used by nanoGPT.
    So nanoGPT's `weight_decay=0.1` transfers as is (tests/test_optim.py checks this).
Only parameters selected by `optimizer.decay_mask` decay ("matrices", nanoGPT's
`configure_optimizers` rule: kernels and embeddings, not biases or norm scales).

Parameter groups (fine-tuning): which parameters train, and at what rate, by regular expressions
over parameter paths such as "layer_0/attn/qkv/kernel" (`lr_multipliers` below):
  - `optimizer.trainable` names the parameters that train ("" = all); `optimizer.freeze` the ones
    that do not, applied after it. With LoRA on (research/lora.py) the adapters always train and
    the base only where `trainable` names it (e.g. "^classifier/", a new head).
  - `optimizer.lr_multipliers`, ((regex, factor), ...): the first pattern a parameter matches
    multiplies its learning rate.
  - `optimizer.layer_decay` d (0 = off): layer-wise learning-rate decay (Clark et al. 2020,
    ELECTRA; Bao et al. 2022, BEiT): the learning rate times d ** (L + 1 - depth), depth 0 for the
    embeddings, i + 1 for block i of L, L + 1 for everything above (final norm, pooler, heads).
    This is BEiT's numbering; ELECTRA's puts the heads one level higher, so its multipliers are
    these times one more factor d everywhere below the heads. The blocks and the embeddings are
    named by the model registry (research/models LAYERS).
Frozen parameters go through `optax.set_to_zero()` inside `optax.multi_transform`: their update is
zero and the optimizer keeps no state for them (Adam's two moments per trainable parameter
only: the memory PEFT saves). Clipping sees the trainable gradients alone. A multiplier scales
the optimizer's update, which for sgd, adam and adamw (decay included) is the same as scaling
that group's learning rate, as PyTorch's per-group `lr`. Without any of these settings the chain
is the plain one above.

Schedules are indexed by the optimizer's update count: the first update uses `schedule(0)`.
`tx.update` needs `params` (weight decay reads them). Gradient accumulation
(`optimizer.grad_accum_steps`) and EMA (`optimizer.ema_decay`, via `ema_update`) are applied by
the trainer, not by this chain.
"""

import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# ---------------------------------------------------------------- schedules


def _warmup_then(after: optax.Schedule, learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> learning_rate over warmup_steps, then `after` (from warmup end on)."""
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def _constant(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """Constant learning rate, after an optional linear warmup."""
    return _warmup_then(optax.constant_schedule(lr), lr, sc.warmup_steps)


def _warmup_cosine(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """Linear warmup, cosine decay to end_lr at decay_steps, then constant end_lr (nanoGPT)."""
    # nanoGPT's get_lr warms up as lr * (it + 1) / (warmup_iters + 1); optax's as lr * it / warmup,
    # so optax starts at exactly 0 and is lower by at most lr / (warmup + 1) during warmup. From
    # warmup_steps on the two are identical (cosine over decay_steps - warmup_steps steps).
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=sc.warmup_steps,
        decay_steps=decay_steps,
        end_value=sc.end_lr,
    )


def _warmup_linear(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """Linear warmup, linear decay to end_lr at decay_steps, then constant end_lr (BERT)."""
    decay = optax.linear_schedule(lr, sc.end_lr, decay_steps - sc.warmup_steps)
    return _warmup_then(decay, lr, sc.warmup_steps)


def _piecewise(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """lr multiplied by decay_factor at each boundary: He et al. 2016, 0.1 -> /10 at 32k and 48k.

    `scales`, when given, sets one factor per boundary instead, e.g. He et al.'s ResNet-110 warm-up:
    learning_rate=0.01, boundaries=(400, 32000, 48000), scales=(10, 0.1, 0.1).
    """
    # optax applies a factor once step >= boundary, so step 32000 already uses 0.01.
    scales = sc.scales or (sc.decay_factor,) * len(sc.boundaries)
    return optax.piecewise_constant_schedule(
        lr, {int(step): float(scale) for step, scale in zip(sc.boundaries, scales)}
    )


def _rsqrt(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """Vaswani et al. 2017 eq. 3, rescaled so that the peak (at step == warmup_steps) is lr.

    lr(step) = lr * min(1, step / warmup) * sqrt(warmup / max(step, warmup))
             = lr * sqrt(warmup) * min(step^-0.5, step * warmup^-1.5)    (eq. 3, lr for d^-0.5)
    Linear warmup from 0 at step 0, lr at warmup, then lr / 2 at 4 * warmup.
    """
    warmup = float(sc.warmup_steps)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        # The product form never evaluates step^-0.5, so step 0 is a plain 0, not 0 * inf.
        return lr * jnp.minimum(1.0, step / warmup) * jnp.sqrt(warmup / jnp.maximum(step, warmup))

    return schedule


def _exponential(sc: ml_collections.ConfigDict, lr: float, decay_steps: int) -> optax.Schedule:
    """lr * (end_lr / lr) ** (step / decay_steps), then constant end_lr: a decay when end_lr < lr,
    a ramp when end_lr > lr (the learning-rate range test, Smith 2017 Sec. 3.3; lr_find.py).

    After an optional linear warmup, as warmup_linear: the exponential then runs from lr at
    warmup_steps to end_lr at decay_steps.
    """
    span = decay_steps - sc.warmup_steps
    after = optax.exponential_decay(lr, span, sc.end_lr / lr, end_value=sc.end_lr)
    return _warmup_then(after, lr, sc.warmup_steps)


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant,
    "warmup_cosine": _warmup_cosine,
    "warmup_linear": _warmup_linear,
    "piecewise": _piecewise,
    "rsqrt": _rsqrt,
    "exponential": _exponential,
}


def _lookup(table: dict[str, Any], field: str, name: str) -> Any:
    """table[name], or a one-line ValueError naming the field and the valid choices."""
    if name not in table:
        raise ValueError(f"unknown {field} {name!r}; choose one of {sorted(table)}")
    return table[name]


def _decay_steps(schedule_config: ml_collections.ConfigDict, total_steps: int) -> int:
    """The step where decay reaches end_lr: schedule.decay_steps, or total_steps when it is 0."""
    return schedule_config.decay_steps or total_steps


def build_schedule(
    schedule_config: ml_collections.ConfigDict, learning_rate: float, total_steps: int
) -> optax.Schedule:
    """The learning-rate schedule named by `schedule_config.name`, peaking at learning_rate."""
    build = _lookup(SCHEDULES, "schedule.name", schedule_config.name)
    return build(schedule_config, learning_rate, _decay_steps(schedule_config, total_steps))


# ---------------------------------------------------------------- weight-decay mask

# Per-leaf rule: does this parameter decay? "matrices" is nanoGPT's split (ndim >= 2 covers dense
# and conv kernels and embeddings; biases and norm scales/offsets are vectors).
DECAY_MASKS: dict[str, Callable[[Any], bool]] = {
    "matrices": lambda param: param.ndim >= 2,
    "all": lambda param: True,
    "none": lambda param: False,
}


def decay_mask(params: Any, rule: str, stacked: tuple[str, ...] = ()) -> Any:
    """A pytree of bools shaped like params: True where weight decay applies under `rule`.

    `stacked` names top-level entries of scanned layers (model.scan_layers), whose leaves carry a
    leading layer axis: a stacked bias [L, D] is still a vector to "matrices".
    """
    decays = _lookup(DECAY_MASKS, "optimizer.decay_mask", rule)

    def one(path: tuple, param: Any) -> bool:
        if path and getattr(path[0], "key", None) in stacked:
            param = jax.ShapeDtypeStruct(param.shape[1:], param.dtype)
        return decays(param)

    return jax.tree_util.tree_map_with_path(one, params)


# ---------------------------------------------------------------- optimizers


def _sgd(
    oc: ml_collections.ConfigDict, schedule: optax.Schedule, mask: Callable
) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and L2 weight decay, as in He et al. 2016 / torch.optim.SGD."""
    return optax.chain(
        optax.add_decayed_weights(oc.weight_decay, mask),
        optax.sgd(schedule, momentum=oc.momentum, nesterov=oc.nesterov),
    )


def _adam(
    oc: ml_collections.ConfigDict, schedule: optax.Schedule, mask: Callable
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as torch.optim.Adam."""
    return optax.chain(
        optax.add_decayed_weights(oc.weight_decay, mask),
        optax.adam(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps),
    )


def _adamw(
    oc: ml_collections.ConfigDict, schedule: optax.Schedule, mask: Callable
) -> optax.GradientTransformation:
    """AdamW: decay decoupled from the gradient, scaled by the lr schedule (Loshchilov & Hutter)."""
    return optax.adamw(
        schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay, mask=mask
    )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}


# ---------------------------------------------------------------- parameter groups


def _name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def param_names(params: Any) -> list[str]:
    """The parameter paths of a tree (arrays, abstract, or optax-masked), as "h_0/mlp/fc/kernel"."""
    return [_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def grouped(optimizer_config: ml_collections.ConfigDict, adapter: Callable | None) -> bool:
    """Whether any parameter group is set (else the chain is the plain, ungrouped one)."""
    oc = optimizer_config
    return bool(
        oc.trainable or oc.freeze or oc.lr_multipliers or oc.layer_decay or adapter is not None
    )


def _depths(names: list[str], layers: tuple[str, str] | None) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise decay, and L: embeddings 0, block i at i + 1, the
    rest at L + 1 (BEiT's numbering). `layers`: (block regex with the index as group 1,
    embeddings regex)."""
    if layers is None:
        raise ValueError(
            "optimizer.layer_decay needs the model's layer order, which this model does not "
            "declare (research/models LAYERS); set optimizer.layer_decay=0"
        )
    block, embeddings = (re.compile(p) for p in layers)
    index = {n: int(m.group(1)) for n in names if (m := block.search(n))}
    if not index:
        raise ValueError(
            f"optimizer.layer_decay: no parameter is in a numbered block ({layers[0]!r}); set "
            "optimizer.layer_decay=0"
        )
    num_layers = max(index.values()) + 1
    depth = {
        n: index[n] + 1 if n in index else 0 if embeddings.search(n) else num_layers + 1
        for n in names
    }
    return depth, num_layers


def lr_multipliers(
    optimizer_config: ml_collections.ConfigDict,
    names: Iterable[str],
    *,
    layers: tuple[str, str] | None = None,
    adapter: Callable[[str], bool] | None = None,
) -> dict[str, float]:
    """Each parameter's learning-rate multiplier; 0.0 = frozen.

    `names`: every parameter path of the model; `layers`: the model's (block, embeddings)
    regexes for layer decay; `adapter`: with LoRA on, whether a path is an adapter's (research/
    lora.py `is_factor`). Raises a one-line ValueError for a pattern that matches no parameter,
    layer decay on a model without numbered blocks, or a model with nothing left to train.
    """
    oc, names = optimizer_config, list(names)

    def matching(pattern: str, field: str) -> set[str]:
        chosen = {n for n in names if re.search(pattern, n)}
        if not chosen:
            raise ValueError(
                f"{field}={pattern!r} matches none of the model's parameters (e.g. "
                f"{', '.join(names[:3])})"
            )
        return chosen

    if oc.trainable:
        train = matching(oc.trainable, "optimizer.trainable")
    else:
        train = {n for n in names if adapter is None}  # With LoRA: the base is frozen.
    train |= {n for n in names if adapter is not None and adapter(n)}
    if oc.freeze:
        train -= matching(oc.freeze, "optimizer.freeze")
    if not train:
        raise ValueError(
            "no parameter trains: optimizer.trainable / optimizer.freeze (and LoRA) leave none"
        )
    multiplier = dict.fromkeys(names, 1.0)
    if oc.layer_decay:
        depth, num_layers = _depths(names, layers)
        multiplier = {n: oc.layer_decay ** (num_layers + 1 - depth[n]) for n in names}
    groups = [
        (pattern, factor, matching(pattern, "optimizer.lr_multipliers pattern"))
        for pattern, factor in oc.lr_multipliers
    ]
    for n in names:
        factor = next((f for _, f, chosen in groups if n in chosen), 1.0)
        multiplier[n] = multiplier[n] * factor if n in train else 0.0
    return multiplier


def _by_name(tree: Any, table: Callable[[Any], dict[str, float]], fn: Callable) -> Any:
    """tree.map of fn(leaf, table[leaf's path]), the table built from the tree's own paths."""
    values = table(tree)
    return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(leaf, values[_name(path)]), tree)


def _scale_by_multiplier(table: Callable[[Any], dict[str, float]]) -> optax.GradientTransformation:
    """Each update times its parameter's multiplier (left as it is where that is 1)."""

    def update(updates, state, params=None):
        del params
        return _by_name(updates, table, lambda u, m: u if m == 1.0 else u * m), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(
    optimizer_config: ml_collections.ConfigDict,
    schedule_config: ml_collections.ConfigDict,
    total_steps: int,
    *,
    layers: tuple[str, str] | None = None,
    adapter: Callable[[str], bool] | None = None,
    stacked: tuple[str, ...] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain `clip -> optimizer(schedule)` and its schedule (returned for logging).

    `stacked`: the top-level parameter entries of scanned layers (see `decay_mask`).

    With parameter groups (see the module's docstring; `layers` and `adapter` as for
    `lr_multipliers`): multi_transform(train: clip -> optimizer, frozen: set_to_zero), then each
    update times its parameter's learning-rate multiplier.
    """
    oc = optimizer_config
    schedule = build_schedule(schedule_config, oc.learning_rate, total_steps)
    base = _lookup(OPTIMIZERS, "optimizer.name", oc.name)
    _lookup(DECAY_MASKS, "optimizer.decay_mask", oc.decay_mask)  # fail now, not at first update
    clip = optax.clip_by_global_norm(oc.clip_norm) if oc.clip_norm > 0 else optax.identity()
    tx = optax.chain(
        clip, base(oc, schedule, partial(decay_mask, rule=oc.decay_mask, stacked=stacked))
    )
    if not grouped(oc, adapter):
        return tx, schedule
    table = lambda tree: lr_multipliers(oc, param_names(tree), layers=layers, adapter=adapter)
    labels = lambda params: _by_name(params, table, lambda _, m: "train" if m else "frozen")
    tx = optax.chain(
        optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels),
        _scale_by_multiplier(table),
    )
    return tx, schedule


# ---------------------------------------------------------------- EMA


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """Exponential moving average of parameters: decay * ema_params + (1 - decay) * params."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


# ---------------------------------------------------------------- validation


def validate(
    optimizer_config: ml_collections.ConfigDict,
    schedule_config: ml_collections.ConfigDict,
    total_steps: int,
) -> None:
    """Raise a one-line ValueError for the first invalid optimizer or schedule setting."""
    oc, sc = optimizer_config, schedule_config
    _lookup(OPTIMIZERS, "optimizer.name", oc.name)
    _lookup(SCHEDULES, "schedule.name", sc.name)
    _lookup(DECAY_MASKS, "optimizer.decay_mask", oc.decay_mask)
    boundaries = [int(step) for step in sc.boundaries]
    checks = [
        (total_steps >= 1, f"total training steps must be >= 1, got {total_steps}"),
        (oc.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {oc.learning_rate}"),
        (oc.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {oc.weight_decay}"),
        (oc.clip_norm >= 0, f"optimizer.clip_norm must be >= 0 (0 = off), got {oc.clip_norm}"),
        (
            oc.grad_accum_steps >= 1,
            f"optimizer.grad_accum_steps must be >= 1 (1 = off), got {oc.grad_accum_steps}",
        ),
        (
            0 <= oc.ema_decay < 1,
            f"optimizer.ema_decay must be in [0, 1) (0 = off, e.g. 0.9999), got {oc.ema_decay}",
        ),
        (0 <= oc.momentum < 1, f"optimizer.momentum must be in [0, 1), got {oc.momentum}"),
        (
            0 <= oc.b1 < 1 and 0 <= oc.b2 < 1,
            f"optimizer.b1/b2 must be in [0, 1), got {oc.b1}, {oc.b2}",
        ),
        (sc.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {sc.warmup_steps}"),
        (
            sc.decay_steps >= 0,
            f"schedule.decay_steps must be >= 0 (0 = total steps), got {sc.decay_steps}",
        ),
        (
            sc.warmup_steps < _decay_steps(sc, total_steps),
            f"schedule.warmup_steps={sc.warmup_steps} must be < the decay steps "
            f"({_decay_steps(sc, total_steps)}: schedule.decay_steps, or total steps if 0); "
            "lower warmup_steps or raise decay_steps",
        ),
        (sc.end_lr >= 0, f"schedule.end_lr must be >= 0, got {sc.end_lr}"),
        (
            all(a < b for a, b in zip([0, *boundaries], boundaries)),
            f"schedule.boundaries must be positive, strictly increasing; got {tuple(boundaries)}",
        ),
        (sc.decay_factor > 0, f"schedule.decay_factor must be > 0, got {sc.decay_factor}"),
        (
            not sc.scales or len(sc.scales) == len(boundaries),
            f"schedule.scales has {len(sc.scales)} factors for {len(boundaries)} boundaries",
        ),
        (
            all(f > 0 for f in sc.scales),
            f"schedule.scales must all be > 0, got {tuple(sc.scales)}",
        ),
        (
            sc.name != "rsqrt" or sc.warmup_steps >= 1,
            "schedule.name='rsqrt' needs schedule.warmup_steps >= 1 (the peak step; Vaswani: 4000)",
        ),
        (
            sc.name != "exponential" or sc.end_lr > 0,
            "schedule.name='exponential' needs schedule.end_lr > 0 (the value it reaches at "
            "decay_steps)",
        ),
        (
            sc.name != "piecewise" or sc.warmup_steps == 0,
            "schedule.name='piecewise' has no warmup; set schedule.warmup_steps=0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
