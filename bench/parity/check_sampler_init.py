"""Statistics of our training-window sampler (research/data/text.py) and of our GPT's init.

    .venv/bin/python bench/parity/check_sampler_init.py [N_WINDOWS]

Sampler: start positions of N windows (seed 0) vs uniform on [0, len(train) - T): mean, std,
KS statistic, duplicate rate, lag-1 correlation. Init: std of every parameter vs nanoGPT's
(0.02; 0.02/sqrt(2L) for residual projections; 1 for LayerNorm scales).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from experiments.shakespeare_char_gpt import get_config
from research import data, models

n = int(sys.argv[1]) if len(sys.argv) > 1 else 24000
config = get_config("cpu")
config.data.path = "/work/shared/data/tinyshakespeare.txt"
tokens = np.asarray(data.text.split_tokens(config.data, "train"))
print(
    "train tokens",
    len(tokens),
    "val tokens",
    len(data.text.split_tokens(config.data, "validation+test")),
)
it = data.train_iterator(
    config.data, global_batch_size=12, seed=0, process_index=0, process_count=1
)
# Recover start positions: index of each window in the train stream (windows are unique enough).
s = tokens.tobytes()
starts = []
for _ in range(n // 12):
    b = next(it)
    for row in b["inputs"]:
        starts.append(s.find(row.astype(np.int32).tobytes()) // 4)
starts = np.array(starts)
hi = len(tokens) - 64
u = np.sort(starts / hi)
ks = np.max(np.abs(u - np.arange(1, len(u) + 1) / len(u)))
print(
    f"{len(starts)} windows: min {starts.min()} max {starts.max()} (range [0,{hi})), mean/hi {starts.mean() / hi:.4f} "
    f"(0.5), std/hi {starts.std() / hi:.4f} (0.2887), KS {ks:.4f} (5% crit {1.36 / np.sqrt(len(u)):.4f}), "
    f"unique {len(set(starts.tolist()))}, lag1 corr {np.corrcoef(starts[:-1], starts[1:])[0, 1]:+.4f}"
)
model = models.build(config.model)
params = model.init(
    jax.random.split(jax.random.key(0))[0], jnp.zeros((1, 64), jnp.int32), train=False
)["params"]
for k, v in traverse_util.flatten_dict(params).items():
    if "h_1" in k or "h_" not in "/".join(k) or "h_0" in k:
        print(
            f"  {'/'.join(k):28s} {str(v.shape):12s} mean {float(v.mean()):+.5f} std {float(v.std()):.5f}"
        )
print("nanoGPT residual-proj std", 0.02 / np.sqrt(8))
