"""Dump our GPT (cpu recipe) and optimizer for a step-by-step comparison with torch_gpt.py.

    .venv/bin/python bench/parity/dump_jax.py OUT.npz [--steps 101]

Builds the model and optax chain exactly as research/train.py does (models.build,
optim.build_optimizer, tasks lm train_loss), draws the first `steps` training batches from our
data pipeline (seed 0), and runs them. Saves: initial params, every batch, and at steps 0, 1, 100
(0-based update index) the params before, the Adam moments before, the raw gradients, the
clipped gradients, the loss, the logits of the batch, the applied update and the lr; plus the
params after the last step. parity_torch.py (torch venv) replays and compares.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from experiments.shakespeare_char_gpt import get_config
from research import data, models, optim, tasks

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--steps", type=int, default=101)
p.add_argument("--text", default="/work/shared/data/tinyshakespeare.txt")
a = p.parse_args()

config = get_config("cpu")
config.data.path = a.text
tc = config.train
task = tasks.get("lm")
model = models.build(config.model)
tx, schedule = optim.build_optimizer(config.optimizer, config.schedule, tc.steps)
seed_key = jax.random.key(tc.seed)
init_key, _ = jax.random.split(seed_key)
params = model.init(init_key, jnp.zeros((1, 64), jnp.int32), train=False)["params"]
opt_state = tx.init(params)

it = data.train_iterator(
    config.data, global_batch_size=tc.batch_size, seed=tc.seed, process_index=0, process_count=1
)
batches = [next(it) for _ in range(a.steps)]


def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], train=True)
    loss, _ = task.train_loss(logits, batch, config)
    return loss, logits


@jax.jit
def step_fn(params, opt_state, batch):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    clipped, _ = optax.clip_by_global_norm(config.optimizer.clip_norm).update(grads, None)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return new_params, new_opt_state, loss, logits, grads, clipped, updates


def flat(tree, prefix):
    return {
        f"{prefix}/" + "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()
    }


out = flat(params, "init")
out["inputs"] = np.stack([b["inputs"] for b in batches])
out["targets"] = np.stack([b["targets"] for b in batches])
record = {0, 1, 100} & set(range(a.steps))
for s in range(a.steps):
    batch = {k: jnp.asarray(v) for k, v in batches[s].items()}
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    nu = optax.tree_utils.tree_get(opt_state, "nu")
    before = params
    params, opt_state, loss, logits, grads, clipped, updates = step_fn(params, opt_state, batch)
    if s in record:
        out |= flat(before, f"s{s}/params")
        out |= flat(mu, f"s{s}/mu")
        out |= flat(nu, f"s{s}/nu")
        out |= flat(grads, f"s{s}/grads")
        out |= flat(clipped, f"s{s}/clipped")
        out |= flat(updates, f"s{s}/updates")
        out[f"s{s}/loss"] = np.asarray(loss)
        out[f"s{s}/logits"] = np.asarray(logits)
        out[f"s{s}/lr"] = np.asarray(schedule(s))
        out[f"s{s}/grad_norm"] = np.asarray(optax.global_norm(grads))
out |= flat(params, "final")
out["lr_all"] = np.array([float(schedule(s)) for s in range(tc.steps)])
np.savez(a.out, **out)
print("saved", a.out, len(out), "arrays; loss s0", float(out["s0/loss"]))
