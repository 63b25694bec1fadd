"""Devices: the mesh, where the state and the batch live, and multi-host start-up.

The batch is always one global `jax.Array` sharded over the mesh's "data" axis, built from each
process's local rows, so the trainer's code is the same on one CPU, eight GPUs or a pod slice.
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

STRATEGIES = ("gspmd",)


def make_mesh(parallel_config: Mapping[str, Any]) -> Mesh:
    """A 1-D mesh over every device of every process, axis "data"."""
    strategy = parallel_config.get("strategy", "gspmd")
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy={strategy!r}; choose one of {STRATEGIES}")
    return jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the "data" axis."""
    return NamedSharding(mesh, P("data"))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's rows (every process calls this)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def gather(tree: Any) -> Any:
    """Bring a (possibly multi-host) global pytree to every host as numpy arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
