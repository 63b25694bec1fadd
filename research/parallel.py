"""Devices: the mesh, where the state and the batch live, how the step is mapped, multi-host start.

The batch is always one global `jax.Array` split over every device of every process, built from
each process's local rows, and the train state is one global pytree; so the trainer's code is the
same on one CPU, eight GPUs or a pod slice. `train.batch_size` is the global batch: each device
gets batch_size / (data x fsdp) rows (`validate` checks that it divides).

The mesh has three axes, ("data", "fsdp", "tensor"), their sizes from `parallel.mesh` (e.g.
"data=-1,fsdp=2,tensor=2"; research/sharding.py) or, when it is empty, (devices / parallel.fsdp,
parallel.fsdp, 1). The batch is split over "data" and "fsdp"; the parameters are replicated over
"data", split over "tensor" by Megatron's rules (research/sharding.py) and, under FSDP, over
"fsdp". Each device gets batch_size / (data x fsdp) rows; the devices along "tensor" share them.

`parallel.strategy` picks how the trainer's step function runs, from one table, STRATEGIES:

    gspmd      `jax.jit` on global arrays with NamedShardings: the step is written for one device
               and XLA partitions it. parallel.fsdp = 1 is data parallelism (replicated state);
               parallel.fsdp > 1 is FSDP (ZeRO-3): parameters, optimizer state and EMA sharded
               over "fsdp", gathered by XLA where a layer needs them. BatchNorm already sees the
               global batch here (its mean is a mean over a sharded axis), so statistics are
               always global-batch statistics. tensor > 1 (gspmd only) splits the Transformer's
               attention and MLP matrices Megatron-style; XLA adds the all-reduces.
    shard_map  the per-device step under `jax.shard_map`: each device runs the step on its rows
               and the step averages gradients with `lax.pmean` over "data".
    pmap       the same per-device step under `jax.pmap` (since JAX 0.8 itself `jit` +
               `shard_map`): the classic data-parallel recipe with a replicated state.

The per-device step is one function for both mapped strategies: `train_step(state, batch,
data_axis)` in research/train.py, called with data_axis=None under gspmd. With
`parallel.sync_batch_stats` (default) BatchNorm averages its batch statistics over "data" in the
mapped strategies, so all three compute the same function as one device; without it each device
normalises with its own rows' statistics (as in Goyal et al. 2017) and the running averages are
averaged over devices after every step.

Multi-host: `initialize_distributed` (called by launch.py) joins the processes; everything else is
the same code in every process.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import sharding
from research.errors import ConfigError

MESH_AXES = sharding.MESH_AXES  # ("data", "fsdp", "tensor")
DATA_AXIS = "data"  # The axis the mapped strategies average over.
FSDP_AXIS = "fsdp"
TENSOR_AXIS = sharding.TENSOR_AXIS
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # The batch is split over these; "tensor" devices share rows.

# train_step(state, batch, data_axis) -> (state, metrics); see research/train.py.
StepFn = Callable[[dict, dict, str | None], tuple[dict, dict]]


# -------------------------------------------------------------------------------------------------
# Multi-host start-up.
# -------------------------------------------------------------------------------------------------


def initialize_distributed(
    *,
    auto: bool = False,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Join a multi-process run if asked to (before anything touches a device).

    If a process dies, JAX's coordination service notices its missing heartbeats within
    `heartbeat_timeout_s` and terminates the others (SIGABRT, non-zero exit), so a run fails
    as a whole instead of hanging in a collective.

    `auto`: JAX detects the cluster itself (SLURM, Open MPI, Cloud TPU; elsewhere, such as
    Kubernetes, from JAX_COORDINATOR_ADDRESS and friends). Otherwise give all three of
    coordinator ("HOST:PORT" of process 0), num_processes and process_id; none = one process.
    On CPU, processes talk through gloo, this JAX version's default
    `jax_cpu_collectives_implementation`.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not auto and not any(given):
        return
    if any(given) and not all(given) and not auto:
        raise ConfigError(
            "give all of --coordinator=HOST:PORT --num_processes=N --process_id=I, "
            "or --distributed to let JAX detect the cluster"
        )
    jax.distributed.initialize(
        coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s
    )


# -------------------------------------------------------------------------------------------------
# The mesh and shardings.
# -------------------------------------------------------------------------------------------------


def validate(config: Mapping[str, Any], device_count: int) -> None:
    """Raise ConfigError if the run's layout and batches cannot run on `device_count` devices."""
    sizes = _validate_layout(config["parallel"], device_count)
    shards = sizes[DATA_AXIS] * sizes[FSDP_AXIS]  # The batch's splits ("tensor" shares rows).
    batch, accum = config["train"]["batch_size"], config["optimizer"]["grad_accum_steps"]
    if batch % (shards * accum):
        raise ConfigError(
            f"train.batch_size={batch} does not split over {shards} batch shards x "
            f"{accum} accumulation steps; use a multiple of {shards * accum}"
        )
    eval_batch = config["train"]["eval_batch_size"]
    if eval_batch % shards:
        raise ConfigError(
            f"train.eval_batch_size={eval_batch} does not split over {shards} batch shards; "
            f"use a multiple of {shards}"
        )


def mesh_shape(parallel_config: Mapping[str, Any], device_count: int) -> dict[str, int]:
    """{axis: size} of the run's mesh over `device_count` devices (ConfigError if it cannot be)."""
    return sharding.parse_mesh(sharding.mesh_text(parallel_config), device_count)


def _validate_layout(parallel_config: Mapping[str, Any], device_count: int) -> dict[str, int]:
    strategy, fsdp = parallel_config["strategy"], parallel_config["fsdp"]
    if strategy not in STRATEGIES:
        raise ConfigError(f"parallel.strategy={strategy!r}; choose one of {sorted(STRATEGIES)}")
    if fsdp > 1 and strategy != "gspmd":
        raise ConfigError(
            f"parallel.fsdp={fsdp} needs parallel.strategy=gspmd; {strategy} keeps a whole "
            "replica of the state on every device"
        )
    if fsdp < 1 or device_count % fsdp:
        raise ConfigError(f"parallel.fsdp={fsdp} must divide the {device_count} devices")
    sizes = mesh_shape(parallel_config, device_count)
    split = {k: v for k, v in sizes.items() if k != DATA_AXIS and v > 1}
    if split and strategy != "gspmd":
        name, size = next(iter(split.items()))
        raise ConfigError(
            f"parallel.mesh {name}={size} needs parallel.strategy=gspmd; {strategy} keeps a "
            "whole replica of the state on every device"
        )
    if strategy == "gspmd" and not parallel_config["sync_batch_stats"]:
        raise ConfigError(
            "parallel.sync_batch_stats=false needs strategy pmap or shard_map; under gspmd "
            "BatchNorm statistics are always those of the global batch"
        )
    return sizes


def make_mesh(parallel_config: Mapping[str, Any]) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over every device of every process."""
    sizes = _validate_layout(parallel_config, jax.device_count())
    # Auto axes: the compiler propagates shardings through the step (GSPMD), which FSDP and
    # tensor parallelism rely on. "tensor" is the last, fastest-varying axis: neighbouring
    # devices (one host's, linked by NVLink) hold one layer's shards.
    return jax.make_mesh(
        tuple(sizes[axis] for axis in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=jax.devices(),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Batch dimension split over every device; `stacked` batches have a leading steps axis."""
    return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def state_sharding(abstract_state: Any, mesh: Any) -> Any:
    """Where each leaf of the train state lives: replicated, split over "tensor" by the rules of
    research/sharding.py (found by path, so the Adam moments and EMA follow their parameters),
    and FSDP-sharded over "fsdp".

    FSDP shards each array along its largest dimension, not already split over "tensor", that the
    "fsdp" axis divides (kernels, embeddings, their Adam moments); arrays with no such dimension
    (scalars, odd-sized biases) stay replicated over it.
    """
    size, tensor = mesh.shape[FSDP_AXIS], mesh.shape[TENSOR_AXIS]

    def spec(path: tuple, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        axes = sharding.tensor_spec(sharding.path_name(path), leaf.shape, tensor)
        dims = [
            i for i, d in enumerate(leaf.shape) if size > 1 and d % size == 0 and axes[i] is None
        ]
        if dims:
            axes[max(dims, key=lambda i: leaf.shape[i])] = FSDP_AXIS
        while axes and axes[-1] is None:
            axes.pop()
        return NamedSharding(mesh, P(*axes))

    return jax.tree_util.tree_map_with_path(spec, abstract_state)


def batch_norm_axis(parallel_config: Mapping[str, Any]) -> str | None:
    """The axis BatchNorm averages its statistics over in the step: "data" for mapped strategies
    with sync_batch_stats, else None (gspmd needs none: its statistics are already global)."""
    if parallel_config["strategy"] != "gspmd" and parallel_config["sync_batch_stats"]:
        return DATA_AXIS
    return None


# -------------------------------------------------------------------------------------------------
# Batches in and results out.
# -------------------------------------------------------------------------------------------------


def global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, stacked: bool = False
) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's rows (every process calls this)."""
    sharding = batch_sharding(mesh, stacked)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def gather(tree: Any) -> Any:
    """Bring a (possibly multi-host) global pytree to every host as numpy arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# -------------------------------------------------------------------------------------------------
# Strategies: each turns train_step(state, batch, data_axis) into a compiled
# step(state, batch) -> (state, metrics) on global arrays, the state donated.
# -------------------------------------------------------------------------------------------------


def _gspmd(step: StepFn, mesh: Mesh, state_shardings: Any, stacked: bool) -> Callable:
    return jax.jit(
        functools.partial(step, data_axis=None),
        in_shardings=(state_shardings, batch_sharding(mesh, stacked)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )


def _shard_map(step: StepFn, mesh: Mesh, state_shardings: Any, stacked: bool) -> Callable:
    # out_specs P(): shard_map checks (check_vma) that the new state and the metrics are the same
    # on every device, so a missing pmean is a trace-time error rather than drifting replicas.
    per_device = jax.shard_map(
        functools.partial(step, data_axis=DATA_AXIS),
        mesh=mesh,
        in_specs=(P(), P(None, DATA_AXIS) if stacked else P(DATA_AXIS)),
        out_specs=P(),
    )
    return jax.jit(
        per_device,
        in_shardings=(state_shardings, batch_sharding(mesh, stacked)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )


def _pmap(step: StepFn, mesh: Mesh, state_shardings: Any, stacked: bool) -> Callable:
    del state_shardings  # Replicated: pmap's in_axes=None / out_axes=None.
    devices = mesh.devices.size
    # The state goes in whole (in_axes=None) and comes out whole (out_axes=None), rather than
    # stacked along a device axis as in pre-0.8 recipes, so checkpoints hold one copy of it and
    # restore onto any device count. Our mesh's device order, so no array is moved on the way in.
    mapped = jax.pmap(
        functools.partial(step, data_axis=DATA_AXIS),
        axis_name=DATA_AXIS,
        in_axes=(None, 1 if stacked else 0),
        out_axes=None,
        donate_argnums=0,
        devices=list(mesh.devices.flat),
    )
    # [global_batch, ...] -> [devices, per_device, ...]: each device's rows stay where they are
    # (stacked: [steps, global_batch, ...] -> [steps, devices, per_device, ...]).
    lead = 1 if stacked else 0
    split = jax.jit(
        lambda batch: jax.tree.map(
            lambda x: x.reshape(*x.shape[:lead], devices, -1, *x.shape[lead + 1 :]), batch
        ),
        out_shardings=NamedSharding(mesh, P(*[None] * lead, DATA_AXIS)),
    )

    def run(state: dict, batch: dict) -> tuple[dict, dict]:
        out = mapped(state, split(batch))
        if jax.process_count() > 1:
            # Multi-process pmap returns each process's local view; the trainer (and orbax)
            # keep global arrays.
            from jax.experimental import multihost_utils

            out = multihost_utils.host_local_array_to_global_array(out, mesh, P())
        return out

    return run


STRATEGIES: dict[str, Callable[[StepFn, Mesh, Any, bool], Callable]] = {
    "gspmd": _gspmd,
    "shard_map": _shard_map,
    "pmap": _pmap,
}


def compile_step(
    parallel_config: Mapping[str, Any],
    step: StepFn,
    mesh: Mesh,
    state_shardings: Any,
    stacked: bool = False,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """`step` mapped over the mesh by `parallel.strategy`: (state, global batch) -> (state, metrics).

    `stacked`: the batch has a leading axis of steps (several steps per compiled call).
    """
    strategy = STRATEGIES[parallel_config["strategy"]]
    return strategy(step, mesh, state_shardings, stacked)


def mean_over(axis: str | None, tree: Any) -> Any:
    """Average `tree` over the named device axis (inside a mapped step); identity for None."""
    return jax.lax.pmean(tree, axis) if axis else tree


def per_device(axis: str | None, tree: Any) -> Any:
    """Mark replicated values as this device's own copy, so that their gradient is this device's
    gradient (to be averaged with `mean_over`), not already summed by shard_map's autodiff."""
    return jax.lax.pcast(tree, axis, to="varying") if axis else tree
