"""Replay dump_jax.py's steps in the PyTorch model of /work/shared/bench/torch_gpt.py and compare.

    /tmp/torch-ref/bin/python bench/parity/parity_torch.py /tmp/parity/jax_dump.npz

Model and optimizer code are copied verbatim from torch_gpt.py (that file trains on import).
Flax kernels are [in, out]; torch Linear weights [out, in], so every kernel is transposed; the
qkv kernel's columns are [q | k | v], each head-major, as torch's split(D) then view(B,T,H,Dh).
"""

import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
d = np.load(sys.argv[1])
text = open("/work/shared/data/tinyshakespeare.txt", encoding="utf-8").read()
V, T, D, H, L = 65, 64, 128, 4, 4


# ---- verbatim from torch_gpt.py (globals T, D, H, a.n_layer) ----
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D, bias=False)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.ln2 = nn.LayerNorm(D, bias=False)
        self.fc = nn.Linear(D, 4 * D, bias=False)
        self.out = nn.Linear(4 * D, D, bias=False)

    def forward(self, x):
        B = x.shape[0]
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(D, bias=False)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.tok.weight

    def logits(self, x):
        h = self.tok(x) + self.pos(torch.arange(T))
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h))

    def forward(self, x, y):
        return F.cross_entropy(self.logits(x).view(-1, V), y.view(-1))


def nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, iters=2000):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    r = min(1.0, (it - warmup) / max(1, iters - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)


# ---- name mapping: torch name -> (flax path, transpose) ----
MAP = {
    "tok.weight": ("wte/embedding", False),
    "pos.weight": ("wpe/embedding", False),
    "ln_f.weight": ("ln_f/scale", False),
}
for i in range(L):
    MAP |= {
        f"blocks.{i}.ln1.weight": (f"h_{i}/ln_1/scale", False),
        f"blocks.{i}.qkv.weight": (f"h_{i}/attn/qkv/kernel", True),
        f"blocks.{i}.proj.weight": (f"h_{i}/attn/out/kernel", True),
        f"blocks.{i}.ln2.weight": (f"h_{i}/ln_2/scale", False),
        f"blocks.{i}.fc.weight": (f"h_{i}/mlp/fc/kernel", True),
        f"blocks.{i}.out.weight": (f"h_{i}/mlp/proj/kernel", True),
    }


def get(prefix, name):
    path, tr = MAP[name]
    x = torch.from_numpy(np.array(d[f"{prefix}/{path}"]))
    return x.T.contiguous() if tr else x


def load(model, prefix):
    with torch.no_grad():
        for n, w in model.named_parameters():
            w.copy_(get(prefix, n))


def make_opt(model):
    params = [w for w in model.parameters() if w.requires_grad]
    decay = [w for w in params if w.dim() >= 2]
    no_decay = [w for w in params if w.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )
    return params, opt


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()), float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


def report(title, rows):
    worst = max(rows, key=lambda r: r[2])
    print(f"  {title}: worst max|diff| {worst[1]:.3e} (rel {worst[2]:.2e}) at {worst[0]}")


# ---- 0. data: vocabulary, windows ----
chars = sorted(set(text))
assert len(chars) == 65
ids = np.array([chars.index(c) for c in chars])  # noqa: sanity
cut = int(0.9 * len(text))
train_text = text[:cut]
inp, tgt = d["inputs"], d["targets"]
found, starts = 0, []
for b in range(inp.shape[0]):
    for r in range(inp.shape[1]):
        s = "".join(chars[i] for i in inp[b, r])
        pos = train_text.find(s)
        found += pos >= 0
        starts.append(pos)
        assert (inp[b, r, 1:] == tgt[b, r, :-1]).all()
print(
    f"data: {found}/{inp.shape[0] * inp.shape[1]} of our training windows (decoded with torch_gpt's "
    f"vocabulary) are substrings of torch_gpt's train split; targets are inputs shifted by 1"
)

model = GPT()
params, opt = make_opt(model)

# ---- 1. one step from identical state, at update 0, 1 and 100 ----
for s in (0, 1, 100):
    if f"s{s}/loss" not in d:
        continue
    print(f"update {s} (lr ours {float(d[f's{s}/lr']):.6e}, nanoGPT {nanogpt_lr(s):.6e}):")
    load(model, f"s{s}/params")
    x = torch.from_numpy(inp[s].astype(np.int64))
    y = torch.from_numpy(tgt[s].astype(np.int64))
    logits = model.logits(x)
    loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
    print(
        f"  loss torch {loss.item():.7f} jax {float(d[f's{s}/loss']):.7f}; logits max|diff| "
        f"{rel(logits.detach().numpy(), d[f's{s}/logits'])[0]:.3e}"
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    rows = [
        (n, *rel(w.grad.T if MAP[n][1] else w.grad, d[f"s{s}/grads/{MAP[n][0]}"]))
        for n, w in model.named_parameters()
    ]
    report("raw grads", rows)
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    print(f"  grad norm torch {gn.item():.6f} jax {float(d[f's{s}/grad_norm']):.6f}")
    rows = [
        (n, *rel(w.grad.T if MAP[n][1] else w.grad, d[f"s{s}/clipped/{MAP[n][0]}"]))
        for n, w in model.named_parameters()
    ]
    report("clipped grads", rows)
    # Adam state as ours before this update; lr = ours, to isolate the update rule.
    for w in params:
        n = next(k for k, v in model.named_parameters() if v is w)
        opt.state[w] = {
            "step": torch.tensor(float(s)),
            "exp_avg": get(f"s{s}/mu", n),
            "exp_avg_sq": get(f"s{s}/nu", n),
        }
    for g in opt.param_groups:
        g["lr"] = float(d[f"s{s}/lr"])
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    opt.step()
    rows = []
    for n, w in model.named_parameters():
        upd = w.detach() - before[n]
        rows.append((n, *rel(upd.T if MAP[n][1] else upd, d[f"s{s}/updates/{MAP[n][0]}"])))
    report("AdamW update (same lr)", rows)
    opt.state.clear()

# ---- 2. trajectory: all dumped steps from the same init and batches ----
n_steps = inp.shape[0]
for sched in ("ours", "nanoGPT"):
    model = GPT()
    load(model, "init")
    params, opt = make_opt(model)
    for s in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = float(d["lr_all"][s]) if sched == "ours" else nanogpt_lr(s)
        loss = model(
            torch.from_numpy(inp[s].astype(np.int64)), torch.from_numpy(tgt[s].astype(np.int64))
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    rows = [
        (n, *rel(w.detach().T if MAP[n][1] else w.detach(), d[f"final/{MAP[n][0]}"]))
        for n, w in model.named_parameters()
    ]
    print(
        f"after {n_steps} steps, torch with {sched} lr schedule vs jax: last loss {loss.item():.5f}"
    )
    report("params", rows)
