#!/usr/bin/env python3
"""PyTorch CPU reference: a character-level GPT trained the way nanoGPT's
shakespeare_char CPU recipe trains it (pre-LN blocks, no biases, tied
embeddings, AdamW with decay on matrices only, warmup + cosine to min_lr,
global-norm clipping at 1.0, random contiguous windows from a 90/10 split).

It exists to be measured beside the JAX implementation on the same machine:
same data, same hyper-parameters, same number of steps.  It prints one JSON
line at the end: median step time (ms), tokens/s and the final losses.

  pip install torch==2.13.0 numpy
  python torch_gpt.py --text ../shared/data/tinyshakespeare.txt --iters 2000
"""

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--text", required=True)
p.add_argument("--iters", type=int, default=2000)
p.add_argument("--batch_size", type=int, default=12)
p.add_argument("--block_size", type=int, default=64)
p.add_argument("--n_layer", type=int, default=4)
p.add_argument("--n_head", type=int, default=4)
p.add_argument("--n_embd", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--min_lr", type=float, default=1e-4)
p.add_argument("--warmup", type=int, default=100)
p.add_argument("--eval_interval", type=int, default=250)
p.add_argument("--eval_iters", type=int, default=20)
p.add_argument("--final_eval_iters", type=int, default=200)
p.add_argument("--seed", type=int, default=1337)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--save", default="")
a = p.parse_args()
torch.manual_seed(a.seed)
if a.threads:
    torch.set_num_threads(a.threads)

text = open(a.text, encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = np.array([stoi[c] for c in text], dtype=np.int64)
cut = int(0.9 * len(ids))
splits = {"train": ids[:cut], "val": ids[cut:]}
V, T, D, H = len(chars), a.block_size, a.n_embd, a.n_head


def batch(split):
    d = splits[split]
    ix = torch.randint(len(d) - T, (a.batch_size,)).numpy()
    x = torch.from_numpy(np.stack([d[i : i + T] for i in ix]))
    y = torch.from_numpy(np.stack([d[i + 1 : i + 1 + T] for i in ix]))
    return x, y


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
        self.blocks = nn.ModuleList(Block() for _ in range(a.n_layer))
        self.ln_f = nn.LayerNorm(D, bias=False)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.tok.weight
        for name, w in self.named_parameters():
            if w.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * a.n_layer)
                    if name.endswith(("proj.weight", "out.weight"))
                    else 0.02
                )
                nn.init.normal_(w, 0.0, std)

    def forward(self, x, y):
        h = self.tok(x) + self.pos(torch.arange(T))
        for b in self.blocks:
            h = b(h)
        logits = self.head(self.ln_f(h))
        return F.cross_entropy(logits.view(-1, V), y.view(-1))


model = GPT()
params = [w for w in model.parameters() if w.requires_grad]
decay = [w for w in params if w.dim() >= 2]
no_decay = [w for w in params if w.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=a.lr,
    betas=(0.9, 0.99),
)


def lr_at(it):
    if it < a.warmup:
        return a.lr * (it + 1) / (a.warmup + 1)
    r = min(1.0, (it - a.warmup) / max(1, a.iters - a.warmup))
    return a.min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (a.lr - a.min_lr)


@torch.no_grad()
def evaluate(n):
    model.eval()
    out = {s: float(np.mean([model(*batch(s)).item() for _ in range(n)])) for s in ("train", "val")}
    model.train()
    return out


step_ms, start = [], time.time()
for it in range(a.iters):
    if it % a.eval_interval == 0 and it:
        print(f"step {it}: {evaluate(a.eval_iters)}", flush=True)
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    t0 = time.perf_counter()
    loss = model(*batch("train"))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_ms.append((time.perf_counter() - t0) * 1e3)
wall = time.time() - start
final = evaluate(a.final_eval_iters)


# Added for parity: score every non-overlapping window of val once (as research/data/text.py).
@torch.no_grad()
def evaluate_full(split="val"):
    model.eval()
    d = splits[split]
    n = (len(d) - 1) // T
    x = torch.from_numpy(d[: n * T].reshape(n, T))
    y = torch.from_numpy(d[1 : n * T + 1].reshape(n, T))
    tot = 0.0
    for i in range(0, n, 256):
        tot += model(x[i : i + 256], y[i : i + 256]).item() * len(x[i : i + 256])
    model.train()
    return tot / n


final["val_full"] = evaluate_full("val")
if a.save:
    torch.save(model.state_dict(), a.save)
med = statistics.median(step_ms[10:])
print(
    json.dumps(
        {
            "impl": "torch-reference",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "iters": a.iters,
            "median_step_ms": round(med, 3),
            "tokens_per_s": round(a.batch_size * T / med * 1e3, 1),
            "train_wall_s": round(wall, 1),
            "train_loss": round(final["train"], 4),
            "val_loss": round(final["val"], 4),
            "val_full": round(final["val_full"], 4),
        }
    )
)
