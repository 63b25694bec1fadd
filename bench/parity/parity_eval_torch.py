"""Score params (ours exported by export_ckpt.py, or a torch state_dict .pt) in torch_gpt.py's model,
both ways: every non-overlapping val window once (ours), and nanoGPT's estimate_loss (mean over
eval_iters random batches of 12 windows), repeated to get its mean and spread.

    /tmp/torch-ref/bin/python bench/parity/parity_eval_torch.py PARAMS.npz|.pt [REPEATS]
"""

import os
import sys

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.argv, args = sys.argv[:1] + ["/tmp/parity/jax_dump.npz"], sys.argv[1:]
# Reuse parity_torch's model and name map without running it: exec only the definitions.
src = open(os.path.join(here, "parity_torch.py")).read().split("# ---- 0. data")[0]
g = {"__name__": "defs"}
exec(compile(src, "parity_torch_defs", "exec"), g)
GPT, MAP, V, T = g["GPT"], g["MAP"], g["V"], g["T"]
torch.set_num_threads(1)
model = GPT()
if args[0].endswith(".pt"):
    sd = torch.load(args[0])
    sd = {k.replace("ln1", "ln1"): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=False)
else:
    g["d"] = np.load(args[0])
    g["load"](model, "init")
model.eval()
reps = int(args[1]) if len(args) > 1 else 50
text = open("/work/shared/data/tinyshakespeare.txt", encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = np.array([stoi[c] for c in text], dtype=np.int64)
val = ids[int(0.9 * len(ids)) :]
with torch.no_grad():
    n = (len(val) - 1) // T
    x = torch.from_numpy(val[: n * T].reshape(n, T))
    y = torch.from_numpy(val[1 : n * T + 1].reshape(n, T))
    full = (
        sum(
            model(x[i : i + 256], y[i : i + 256]).item() * len(x[i : i + 256])
            for i in range(0, n, 256)
        )
        / n
    )
    print(f"full non-overlapping ({n} windows): {full:.4f}")
    gen = torch.Generator().manual_seed(0)

    def est(k):
        out = []
        for _ in range(k):
            ix = torch.randint(len(val) - T, (12,), generator=gen).numpy()
            xb = torch.from_numpy(np.stack([val[i : i + T] for i in ix]))
            yb = torch.from_numpy(np.stack([val[i + 1 : i + 1 + T] for i in ix]))
            out.append(model(xb, yb).item())
        return float(np.mean(out))

    e20 = [est(20) for _ in range(reps)]
    print(
        f"nanoGPT estimate_loss eval_iters=20 x{reps}: mean {np.mean(e20):.4f} std {np.std(e20):.4f} min {np.min(e20):.4f}"
    )
    e200 = [est(200) for _ in range(max(2, reps // 10))]
    print(f"eval_iters=200 x{len(e200)}: mean {np.mean(e200):.4f} std {np.std(e200):.4f}")
