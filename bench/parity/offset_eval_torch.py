"""How much the non-overlapping-window evaluation depends on where the windows start.

    /tmp/torch-ref/bin/python bench/parity/offset_eval_torch.py PARAMS.npz|.pt [OFFSETS...]

Scores every non-overlapping val window starting at offset o (o = 0 is research/data/text.py's
eval). The mean over all offsets 0..T-1 is what nanoGPT's random windows estimate.
"""

import os
import sys

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "parity_torch.py")).read().split("# ---- 0. data")[0]
path, offs = sys.argv[1], [int(o) for o in sys.argv[2:]] or list(range(0, 64, 8))
sys.argv = sys.argv[:1] + ["/tmp/parity/jax_dump.npz"]
g = {"__name__": "defs"}
exec(compile(src, "parity_torch_defs", "exec"), g)
T = g["T"]
model = g["GPT"]()
if path.endswith(".pt"):
    model.load_state_dict(torch.load(path), strict=False)
else:
    g["d"] = np.load(path)
    g["load"](model, "init")
model.eval()
text = open("/work/shared/data/tinyshakespeare.txt", encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = np.array([stoi[c] for c in text], dtype=np.int64)
val = ids[int(0.9 * len(ids)) :]
res = []
with torch.no_grad():
    for o in offs:
        v = val[o:]
        n = (len(v) - 1) // T
        x = torch.from_numpy(v[: n * T].reshape(n, T))
        y = torch.from_numpy(v[1 : n * T + 1].reshape(n, T))
        res.append(
            sum(
                model(x[i : i + 512], y[i : i + 512]).item() * len(x[i : i + 512])
                for i in range(0, n, 512)
            )
            / n
        )
        print(f"offset {o:2d}: {res[-1]:.4f}", flush=True)
print(
    f"{os.path.basename(path)}: offset 0 {res[0]:.4f}; mean over {len(offs)} offsets {np.mean(res):.4f} (std {np.std(res):.4f})"
)
