"""Export a run's checkpointed params to npz (keys "init/<flax path>") for parity_eval_torch.py.

.venv/bin/python bench/parity/export_ckpt.py /tmp/runs/shakespeare_cpu/checkpoints/2000 OUT.npz
"""

import sys

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

state = ocp.PyTreeCheckpointer().restore(sys.argv[1] + "/state")
params = state["params"]
out = {"init/" + "/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
np.savez(sys.argv[2], **out)
print(len(out), "arrays ->", sys.argv[2])
