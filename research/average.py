"""Checkpoint averaging: the parameters of a run's last N checkpoints, averaged, then evaluated.

    python launch.py average --workdir=runs/wmt_base --last=5      # -> runs/wmt_base/average_last5

Vaswani et al. 2017, Sec. 6.1: "For the base models, we used a single model obtained by averaging
the last 5 checkpoints, which were written at 10-minute intervals. For the big models, we averaged
the last 20 checkpoints." The average is elementwise over the parameters (and over the EMA
parameters and BatchNorm statistics, when the run has them); the rest of the state (step,
optimizer moments, data position) is the newest checkpoint's, so the result is an ordinary
checkpoint. It goes into its own workdir with the run's config (train.steps = the newest step),
which is then evaluated like a finished run: results.json, and for translation the translations
file, with nothing trained. The run itself is only read. Keep at least N checkpoints
(`train.keep_checkpoints`) to average N.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import checkpoint, train, workdir
from research.errors import ConfigError

AVERAGED = ("params", "ema_params", "model_state")  # Parts of the state that are averaged.


def average(
    run_dir: str | Path, last: int, out: str | Path | None = None, argv: list[str] = ()
) -> dict:
    """Average `run_dir`'s last `last` checkpoints into `out` (default <run>/average_last<N>),
    evaluate it there, and return its results.json record."""
    run_dir = workdir.path(run_dir)  # Local, or a bucket (gs://); so may `out` be.
    if last < 1:
        raise ConfigError(f"--last={last}: average at least one checkpoint")
    stored = workdir.stored_config(run_dir)
    if stored is None:
        raise ConfigError(f"{run_dir} has no config.json; pass the --workdir of a training run")
    steps = checkpoint.all_steps(run_dir / "checkpoints")
    if len(steps) < last:
        raise ConfigError(
            f"{run_dir} has {len(steps)} checkpoint(s) ({steps}), fewer than --last={last}; raise "
            "train.keep_checkpoints to keep as many as you average"
        )
    chosen = steps[-last:]
    out = workdir.path(out) if out is not None else run_dir / f"average_last{last}"
    workdir.check_path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out={out} is not empty; remove it or choose another directory")
    config = ml_collections.ConfigDict(stored)
    with config.unlocked():
        config.train.steps = chosen[-1]
        config.experiment = f"{stored['experiment']}:average_last{last}"
    config.lock()

    _, _, abstract_state = train.prepare_model(config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state
    )
    states = []
    for step in chosen:
        different = checkpoint.mismatches(run_dir / "checkpoints", step, abstract_state)
        if different:
            raise ConfigError(
                f"checkpoint {step} of {run_dir} does not fit its config: {different}"
            )
        states.append(checkpoint.read_step(run_dir / "checkpoints", step, target))
    state, data_state, meta = states[-1]
    state = dict(state)
    for part in AVERAGED:
        state[part] = average_trees([s[part] for s, _, _ in states])

    if not workdir.is_bucket(out):
        out.mkdir(parents=True, exist_ok=True)
    workdir.write_json(out / "config.json", config.to_dict())
    workdir.record_provenance(
        out / "provenance.json",
        list(argv),
        averaged_from={"workdir": str(workdir.absolute(run_dir)), "steps": chosen},
    )
    checkpoint.write_step(out / "checkpoints", chosen[-1], state, data_state, meta)
    print(f"averaged steps {chosen} of {run_dir} into {out}; evaluating", flush=True)
    return train.run(config, out, argv=list(argv))


def average_trees(trees: list) -> object:
    """The elementwise mean of same-shaped pytrees, accumulated in float64 on the host, cast back
    to each leaf's dtype (integer leaves, such as counters, are taken from the last tree)."""

    def mean(*leaves):
        last = np.asarray(leaves[-1])
        if not np.issubdtype(last.dtype, np.floating) and last.dtype != jnp.bfloat16:
            return leaves[-1]
        total = sum(np.asarray(x, np.float64) for x in leaves)
        return jnp.asarray((total / len(leaves)).astype(last.dtype))

    return jax.tree.map(mean, *trees)
