"""The train state and the update and evaluation steps, built from a config: what the trainer, the
benchmarks and the parity test all run.

    parts = steps.build(config, input_shape)          # model, task, optimizer, schedule, keys
    state = steps.init_state(parts, parts.init_key)   # or abstract_state(parts): shapes alone
    new_state, metrics = steps.train_step(parts, state, batch)  # one update, on one device
    compiled = steps.compile_train_step(parts, config.parallel, mesh, shardings, steps_per_call)

The state is a plain dict:

    {"step": int32, "params": ..., "model_state": {"batch_stats": ...} or {},
     "opt_state": ..., "ema_params": ... or {}, "guard": {skipped updates, loss EMAs, ...},
     "loss_scale": {"scale", "good_steps"} under train.loss_scale=dynamic (research/loss_scale.py)}

With parameter groups (optimizer.trainable/freeze/lr_multipliers/layer_decay, or LoRA) frozen
parameters get no gradient (stop_gradient: their weight-gradient matmuls are not computed) and no
update; `trainable(parts, params)` says which train.

Per-step randomness is `fold_in(dropout_key, step)`, so it is a function of the step alone and a
resumed run draws exactly the numbers an uninterrupted one would.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from research import guard, lora, loss_scale, models, optim, parallel, tasks
from research.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Parts:
    """Everything the step needs, built once from the config (`build`)."""

    model: nn.Module  # For initialisation and evaluation.
    train_model: nn.Module  # The same, with BatchNorm statistics over `bn_axis`.
    bn_axis: str | None  # Device axis of synced BatchNorm (mapped strategies); None: per device.
    task: Task
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    input_shape: tuple[int, ...]  # One example, e.g. (8, 8, 1) or (seq_len,).
    init_key: jax.Array
    dropout_key: jax.Array
    ema_decay: float  # optimizer.ema_decay; 0 = no EMA.
    accum_steps: int  # optimizer.grad_accum_steps: micro-batches per update.
    spike_sigmas: float  # train.loss_spike_sigmas; 0 = no loss-spike guard.
    loss_scale: str = "none"  # train.loss_scale: none | fixed | dynamic (research/loss_scale.py)
    loss_scale_init: float = 2.0**15  # train.loss_scale_init: S (fixed) or its start (dynamic)
    loss_scale_interval: int = 2000  # train.loss_scale_interval: finite steps before S doubles
    # Parameter names -> learning-rate multiplier, 0 = frozen (optim.lr_multipliers); None: no
    # groups, everything trains at the scheduled rate.
    groups: Callable[[list[str]], dict[str, float]] | None = None


def build(config: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> Parts:
    """The step's parts from a validated config and the data's example shape."""
    model = models.build(config.model)
    adapter = lora.is_factor if config.lora.rank else None
    layers = models.LAYERS.get(config.model.name)
    tx, schedule = optim.build_optimizer(
        config.optimizer,
        config.schedule,
        config.train.steps,
        layers=layers,
        adapter=adapter,
        stacked=models.stacked_entries(config.model),
    )
    groups = None
    if optim.grouped(config.optimizer, adapter):
        groups = functools.partial(
            optim.lr_multipliers, config.optimizer, layers=layers, adapter=adapter
        )
    init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
    bn_axis = parallel.batch_norm_axis(config.parallel)
    return Parts(
        model=lora.adapt(model, config.lora),
        train_model=lora.adapt(models.with_batch_norm_axis(model, bn_axis), config.lora),
        bn_axis=bn_axis,
        task=tasks.build(
            config.task, label_smoothing=config.train.label_smoothing, decode=config.decode
        ),
        tx=tx,
        schedule=schedule,
        input_shape=tuple(input_shape),
        init_key=init_key,
        dropout_key=dropout_key,
        ema_decay=config.optimizer.ema_decay,
        accum_steps=config.optimizer.grad_accum_steps,
        spike_sigmas=config.train.loss_spike_sigmas,
        loss_scale=config.train.loss_scale,
        loss_scale_init=config.train.loss_scale_init,
        loss_scale_interval=config.train.loss_scale_interval,
        groups=groups,
    )


def init_variables(parts: Parts, key: jax.Array) -> dict:
    """The model's fresh variables from `key`: {"params": ..., and state such as "batch_stats"}."""
    args, kwargs = parts.task.example_inputs(parts.input_shape)
    return parts.model.init(key, *args, **kwargs, train=False)


def init_state(parts: Parts, key: jax.Array) -> dict:
    """A fresh train state: parameters from `key`, zero step, empty optimizer statistics."""
    variables = dict(init_variables(parts, key))
    params = variables.pop("params")
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "model_state": dict(variables),
        "opt_state": parts.tx.init(params),
        "ema_params": jax.tree.map(jnp.copy, params) if parts.ema_decay else {},
        "guard": guard.init(),
    }
    if parts.loss_scale == "dynamic":  # Only then: other runs' states (and checkpoints) unchanged.
        state["loss_scale"] = loss_scale.init(parts.loss_scale, parts.loss_scale_init)
    return state


def abstract_state(parts: Parts) -> dict:
    """The state's shapes and dtypes, nothing computed (also how a bad model shows itself)."""
    return jax.eval_shape(functools.partial(init_state, parts), parts.init_key)


def trainable(parts: Parts, params: dict) -> dict:
    """A tree of bools shaped like `params` (arrays or abstract): which parameters train. Raises
    a one-line ValueError for groups that do not fit the model (optim.lr_multipliers)."""
    if parts.groups is None:
        return jax.tree.map(lambda _: True, params)
    names = optim.param_names(params)
    multipliers = parts.groups(names)
    return jax.tree.unflatten(jax.tree.structure(params), [multipliers[n] > 0 for n in names])


def loss_fn(
    parts: Parts, params: dict, model_state: dict, batch: dict, rng: jax.Array
) -> tuple[jax.Array, tuple[dict, dict]]:
    """The task's training loss of one (micro-)batch, and the model's updated state."""
    if parts.groups is not None:  # No gradient, hence no weight-gradient matmul, for the frozen.
        params = jax.tree.map(
            lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable(parts, params)
        )
    args, kwargs = parts.task.inputs(batch)
    logits, new_model_state = parts.train_model.apply(
        {"params": params, **model_state},
        *args,
        **kwargs,
        train=True,
        rngs={"dropout": rng},
        mutable=list(model_state),
    )
    loss, metrics = parts.task.train_loss(logits, batch)
    return loss, (metrics, dict(new_model_state))


def train_step(
    parts: Parts, state: dict, batch: dict, data_axis: str | None = None
) -> tuple[dict, dict]:
    """One update. Mapped per device (pmap, shard_map), `batch` is this device's rows and
    `data_axis` names the device axis to average over; under gspmd it is None, the batch global."""
    rng = jax.random.fold_in(parts.dropout_key, state["step"])
    if data_axis:  # Each device draws its own dropout masks.
        rng = jax.random.fold_in(rng, jax.lax.axis_index(data_axis))
    scale = loss_scale.current(parts.loss_scale, parts.loss_scale_init, state.get("loss_scale"))

    def objective(*args):
        # Differentiate S * loss (research/loss_scale.py); report the loss itself.
        loss, aux = loss_fn(parts, *args)
        return (loss if scale is None else loss * scale), (loss, aux)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    model_state = state["model_state"]
    local_params = parallel.per_device(data_axis, state["params"])
    k = parts.accum_steps
    grads, losses, step_metrics = None, [], []
    # Gradient accumulation: micro-batch i takes rows i, i+k, i+2k, ... so that each device
    # contributes equally to every micro-batch. Unrolled rather than scanned: convolutions
    # inside lax.scan are ~25x slower on XLA:CPU (JAX issue #12868).
    for i in range(k):
        micro = jax.tree.map(lambda x, i=i: x[i::k], batch)
        (_, (loss, (metrics, model_state))), g = grad_fn(
            local_params, model_state, micro, jax.random.fold_in(rng, i)
        )
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        losses.append(loss)
        step_metrics.append(metrics)
    grads = jax.tree.map(lambda g: g / k, grads)
    grads = parallel.mean_over(data_axis, grads)
    scale_state, overflow = state.get("loss_scale"), False
    if scale is not None:  # Unscale before clipping and the optimizer see the gradients.
        grads = jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)
        grads_finite = jnp.isfinite(optax.global_norm(grads))
        scale_state, overflow = loss_scale.update(
            parts.loss_scale, scale_state, grads_finite, parts.loss_scale_interval
        )
    if parts.bn_axis is None:  # Per-device BatchNorm statistics: keep the replicas' averages equal.
        model_state = parallel.mean_over(data_axis, model_state)
    updates, opt_state = parts.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema_params = (
        optim.ema_update(state["ema_params"], params, parts.ema_decay) if parts.ema_decay else {}
    )
    metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *step_metrics)
    metrics |= {"loss": jnp.mean(jnp.stack(losses))}
    metrics = parallel.mean_over(data_axis, metrics)
    # Apply the update only if it is finite (and not a loss spike): research/guard.py.
    updated = {
        "params": params,
        "model_state": model_state,
        "opt_state": opt_state,
        "ema_params": ema_params,
    }
    kept, new_guard, guard_metrics = guard.apply(
        state["guard"],
        state["step"],
        metrics["loss"],
        updates,
        updated,
        {k: state[k] for k in updated},
        parts.spike_sigmas,
        overflow,
    )
    new_state = {"step": state["step"] + 1, **kept, "guard": new_guard}
    if "loss_scale" in state:
        new_state["loss_scale"] = scale_state
        metrics |= {"loss_scale": state["loss_scale"]["scale"]}
    metrics |= guard_metrics | {
        "grad_norm": optax.global_norm(grads),
        "learning_rate": parts.schedule(state["step"]),
    }
    return new_state, metrics


def train_steps(
    parts: Parts, state: dict, batches: dict, data_axis: str | None = None
) -> tuple[dict, dict]:
    """Several steps in one compiled call (`train.steps_per_call`): fewer dispatches and host
    round trips for small models. Off by default: XLA:CPU runs convolutions inside a scan
    ~25x slower (JAX issue #12868), so conv nets should keep 1. Returns the last metrics."""
    state, metrics = jax.lax.scan(lambda s, b: train_step(parts, s, b, data_axis), state, batches)
    return state, jax.tree.map(lambda m: m[-1], metrics)


def compile_train_step(
    parts: Parts,
    parallel_config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_sharding: dict,
    steps_per_call: int = 1,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """(state, global batch) -> (state, metrics), mapped by `parallel.strategy`, state donated.

    With steps_per_call > 1 the batch has a leading axis of steps (`train_steps`).
    """
    stacked = steps_per_call > 1
    fn = functools.partial(train_steps if stacked else train_step, parts)
    return parallel.compile_step(parallel_config, fn, mesh, state_sharding, stacked)


def eval_step(parts: Parts, params: dict, model_state: dict, batch: dict) -> dict:
    """The task's per-example outputs of one evaluation batch (no dropout, running statistics)."""
    args, kwargs = parts.task.inputs(batch)
    logits = parts.model.apply({"params": params, **model_state}, *args, **kwargs, train=False)
    return parts.task.eval_outputs(logits, batch)


def compile_eval_step(parts: Parts, mesh: Mesh) -> Callable[[dict, dict, dict], dict]:
    """`eval_step` jitted, its outputs replicated so every host can read them."""
    return jax.jit(functools.partial(eval_step, parts), out_shardings=parallel.replicated(mesh))


def generate_step(parts: Parts, params: dict, model_state: dict, batch: dict) -> dict:
    """The task's generated outputs for one evaluation batch (e.g. translations by beam search)."""
    return parts.task.generate(parts.model, {"params": params, **model_state}, batch)


def compile_generate_step(parts: Parts, mesh: Mesh) -> Callable[[dict, dict, dict], dict]:
    """`generate_step` jitted, its outputs replicated so every host can read them."""
    return jax.jit(functools.partial(generate_step, parts), out_shardings=parallel.replicated(mesh))
