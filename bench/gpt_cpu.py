"""Speed of the `cpu` GPT recipe (nanoGPT shakespeare_char on CPU) against the PyTorch reference.

    python bench/gpt_cpu.py --text=../shared/data/tinyshakespeare.txt \\
        --torch_python=/tmp/torch-ref/bin/python
    # Other settings side by side (each variant is its own process: XLA_FLAGS are per process):
    python bench/gpt_cpu.py --text=... --variant="bf16=--config.model.dtype=bfloat16" \\
        --variant="eigen=--xla_cpu_experimental_ynn_fusion_type=-individual_dot"

What is timed is the project's own training step. Each variant runs the real trainer
(`research.train.run` on experiments/shakespeare_char_gpt.py:cpu plus the variant's overrides)
for `--trainer_steps` steps and reads its steps/s from metrics.jsonl (median of the 50-step log
windows after the first): input pipeline, host stacking and logging included. Then the step is
built as run() builds it (`steps.build`, `steps.compile_train_step`), from the trainer's final
state (`checkpoint.restore_state`, placed with the state sharding), and timed alone on pre-built
batches of real data, in rounds that alternate with the PyTorch reference
(../shared/bench/torch_gpt.py, same recipe) and with a matmul peak measurement: the machines are
shared, so only numbers measured side by side are compared, and each ratio is the median of
per-round ratios. The reference also runs just before and after each trainer run.

Default variants, each adding one change: `plain` (float32, one step per call: the plain jitted
step), `scan10` (10 steps per compiled call), `bf16` (matmul operands in bfloat16 with float32
accumulation) and `cpu` (the experiment as written: also the batch as 2 micro-batches, and
model.dtype "auto": bfloat16_matmul or float32 by the CPU).

Reported per variant: ms/step, steps/s, tokens/s, the trainer's ms/step, the first call's time
(trace + compile + one call of that step, seconds, in a process the trainer has warmed up), the
input pipeline's host CPU time per step as a share of the step, GFLOP/s and MFU, and the ratio
torch ms / our ms (> 1: we are faster). FLOPs are nanoGPT's `estimate_mfu` count, 6N + 12 L D T
per token (N: parameters without the position table); the peak is the best 1024^3 matmul
(float32 and bfloat16) measured in the same rounds. The footer and the JSON line name the CPU
and which of the features that set its matmul speed it has (avx2, avx512f, avx512_bf16,
amx_bf16: research/hardware.py), as the table's first line does. Variants with
`--config.model.dtype=auto` report the dtype it resolved to.

A variant is NAME=ARGS, ARGS space-separated: `--config.a.b=v` overrides (any config field,
e.g. `--config.model.dtype=bfloat16`), `--xla_...` XLA flags (set as that variant's
XLA_FLAGS), `--repo=DIR` another checkout of this project. `--xla_cpu_max_isa=AVX2` alone does
not make an AVX-512 CPU behave as an AVX2-only one (YNNPACK's matmuls pick their kernels at run
time); with `--xla_cpu_experimental_ynn_fusion_type=-individual_dot` bf16 dots run at the float32
rate, which shows the sign of an AVX2-only CPU's bfloat16 penalty, not its size (bench/NOTES.md,
"CPU kinds"). Prints a table, then one JSON line.
bench/NOTES.md records what was tried and what it gave.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "experiments/shakespeare_char_gpt.py:cpu"
TORCH_SCRIPT = REPO.parent / "shared" / "bench" / "torch_gpt.py"
# The experiment as written (`cpu`) and the float32 steps it was sped up from (bench/NOTES.md).
DTYPES = ("float32", "bfloat16")  # Matmul peaks measured for MFU.
DEFAULT_VARIANTS = (
    "plain=--config.model.dtype=float32 --config.train.steps_per_call=1 "
    "--config.optimizer.grad_accum_steps=1",
    "scan10=--config.model.dtype=float32 --config.optimizer.grad_accum_steps=1",
    "bf16=--config.model.dtype=bfloat16_matmul --config.optimizer.grad_accum_steps=1",
    "cpu=",
)


# -------------------------------------------------------------------------------------------------
# Worker: one process per variant. Runs the trainer, builds the same step from its final state,
# then answers timing requests (JSON lines on stdin/stdout) so the coordinator can interleave
# measurements.
# -------------------------------------------------------------------------------------------------


def run_trainer(config) -> tuple:
    """Train `config` with the real trainer in a temporary workdir; return (parts, mesh, state
    shardings, the state after the last step placed as the step wants it, metrics.jsonl lines)."""
    import jax

    from research import checkpoint, data, parallel, steps, train

    parts = steps.build(config, data.info(config.data).input_shape)
    abstract_state = steps.abstract_state(parts)
    mesh = parallel.make_mesh(config.parallel)
    state_sharding = parallel.state_sharding(abstract_state, mesh)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_sharding,
    )
    with tempfile.TemporaryDirectory() as workdir:
        train.run(config, workdir)
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
        saved_step, state = checkpoint.restore_state(Path(workdir) / "checkpoints", target=target)
    assert saved_step == config.train.steps, (saved_step, config.train.steps)
    return parts, mesh, state_sharding, state, lines


def worker(spec: dict) -> None:
    """Run one variant; spec = {"overrides": {...}, "trainer_steps": int, "text": path}."""
    import absl.logging
    import jax
    import jax.numpy as jnp
    import numpy as np

    from research import config as config_lib
    from research import data, models, parallel, steps

    absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS's "custom data configuration" notes.
    # Replies go to the original stdout; the trainer's own prints go to /dev/null.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    reply = lambda **kw: print(json.dumps(kw), file=replies, flush=True)
    overrides = {
        "data.path": spec["text"],
        "train.steps": spec["trainer_steps"],
        "train.log_every_steps": 50,
        "train.eval_every_steps": spec["trainer_steps"],
        "train.checkpoint_every_steps": spec["trainer_steps"],
        **spec["overrides"],
    }
    config = config_lib.build_config(EXPERIMENT, overrides)
    tc = config.train
    steps_per_call = tc.steps_per_call

    # The real trainer: its steps/s from metrics.jsonl, and its state after the last step, placed
    # as the step wants it (the same mesh and shardings as the trainer's).
    parts, mesh, state_sharding, state, lines = run_trainer(config)
    records = [json.loads(line) for line in lines]
    windows = [r["steps_per_s"] for r in records if r["split"] == "train"]
    trainer_steps_per_s = statistics.median(windows[1:])  # The first window holds the compile.
    val_loss = [r["loss"] for r in records if r["split"] == "eval"][-1]

    # The step alone: built as the trainer builds it, from the trained state, on the same mesh.
    step_fn = steps.compile_train_step(parts, config.parallel, mesh, state_sharding, steps_per_call)

    # Batches of real data, built (and placed) before timing: the step alone.
    iterator_args = dict(
        global_batch_size=tc.batch_size, seed=tc.seed + 1, process_index=0, process_count=1
    )
    train_iter = data.train_iterator(config.data, **iterator_args)
    stacked = steps_per_call > 1

    def host_batch():
        if not stacked:
            return next(train_iter)
        return jax.tree.map(
            lambda *xs: np.stack(xs), *[next(train_iter) for _ in range(steps_per_call)]
        )

    batches = [parallel.global_batch(host_batch(), mesh, stacked) for _ in range(8)]
    start = time.perf_counter()  # The first call: trace, compile and one run.
    state, metrics = step_fn(state, batches[0])
    jax.block_until_ready(metrics)
    first_call_s = time.perf_counter() - start

    # Input pipeline: host CPU time (all threads) and wall time per step to make batches.
    next(data.train_iterator(config.data, **iterator_args))  # Warm: tokens cached, threads up.
    train_iter = data.train_iterator(config.data, **iterator_args)
    calls = max(1, 200 // steps_per_call)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(parallel.global_batch(host_batch(), mesh, stacked))
    input_cpu_ms = (time.process_time() - cpu0) / (calls * steps_per_call) * 1e3
    input_wall_ms = (time.perf_counter() - wall0) / (calls * steps_per_call) * 1e3

    params = state["params"]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    position_params = sum(x.size for x in jax.tree.leaves(params.get("wpe", {})))
    reply(
        ready=True,
        steps_per_call=steps_per_call,
        dtype=models.dtype(config.model),  # "auto" resolved (research/models/gpt.py AUTO_DTYPES)
        num_params=int(num_params),
        tokens_per_step=tc.batch_size * config.data.seq_len,
        # nanoGPT estimate_mfu's attention term per token: 12 * layers * width * context.
        attention_flops_per_token=12
        * config.model.num_layers
        * config.model.embed_dim
        * config.data.seq_len,
        non_position_params=int(num_params - position_params),
        first_call_s=first_call_s,
        trainer_steps_per_s=trainer_steps_per_s,
        trainer_val_loss=val_loss,
        input_cpu_ms=input_cpu_ms,
        input_wall_ms=input_wall_ms,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )

    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "time":
            calls = max(1, request["steps"] // steps_per_call)
            state, metrics = step_fn(state, batches[0])  # Settle after idling.
            jax.block_until_ready(metrics)
            start = time.perf_counter()
            for i in range(calls):
                state, metrics = step_fn(state, batches[i % len(batches)])
            jax.block_until_ready(metrics)
            reply(ms=(time.perf_counter() - start) / (calls * steps_per_call) * 1e3)
        elif request["cmd"] == "peak":
            # Best of a few: the dense-matmul FLOP/s this machine gives XLA right now.
            n = request["size"]
            peaks = {dtype: _matmul_gflops(matmul, jnp.ones((n, n), dtype)) for dtype in DTYPES}
            reply(gflops=peaks)


def _matmul_gflops(matmul, a) -> float:
    """GFLOP/s of the fastest of five a @ a (after a warm-up call)."""
    import jax

    jax.block_until_ready(matmul(a, a))
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        seconds.append(time.perf_counter() - start)
    return 2 * a.shape[0] ** 3 / min(seconds) / 1e9


# -------------------------------------------------------------------------------------------------
# Coordinator.
# -------------------------------------------------------------------------------------------------


class Variant:
    """A worker process for one named setting."""

    def __init__(self, text: str, args: argparse.Namespace):
        self.name, _, rest = text.partition("=")
        overrides, xla_flags, repo = {}, [], REPO
        for arg in rest.split():
            if arg.startswith("--config."):
                key, _, value = arg[len("--config.") :].partition("=")
                overrides[key] = value
            elif arg.startswith("--xla_"):
                xla_flags.append(arg)
            elif arg.startswith("--repo="):
                repo = Path(arg.partition("=")[2]).resolve()
            else:
                sys.exit(f"error: variant {self.name!r}: unknown argument {arg!r}")
        self.spec = dict(
            overrides=overrides,
            trainer_steps=args.trainer_steps,
            text=str(Path(args.text).resolve()),
        )
        env = dict(os.environ, XLA_FLAGS=" ".join(xla_flags), PYTHONPATH=str(repo))
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--text", args.text, "--worker", json.dumps(self.spec)],
            cwd=repo,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = None
        self.ms, self.peaks = [], []

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"error: variant {self.name!r} stopped (exit {self.process.wait()})")
        return json.loads(line)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.receive()


def torch_reference(args: argparse.Namespace, iters: int) -> float:
    """Median ms/step of the PyTorch reference over `iters` steps (its first 10 not counted)."""
    out = subprocess.run(
        [args.torch_python, str(TORCH_SCRIPT), "--text", args.text, "--iters", str(iters)]
        + ["--eval_interval", str(10**9), "--final_eval_iters", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["median_step_ms"]


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", required=True, help="tinyshakespeare.txt")
    parser.add_argument("--torch_python", default="", help="python with torch; '' = no reference")
    parser.add_argument("--variant", action="append", help="NAME=ARGS (repeatable)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200, help="steps timed per variant per round")
    parser.add_argument("--torch_iters", type=int, default=110, help="per run (first 10 dropped)")
    parser.add_argument("--trainer_steps", type=int, default=500, help="log windows of 50 steps")
    parser.add_argument("--peak_size", type=int, default=1024)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    loads = [load_average()]
    reference = lambda: torch_reference(args, args.torch_iters) if args.torch_python else None
    # Trainer runs, one variant at a time, each between two runs of the reference.
    variants, torch_before = [], reference()
    for text in args.variant or DEFAULT_VARIANTS:
        variant = Variant(text, args)
        variant.info = variant.receive()
        torch_after = reference()
        variant.trainer_torch_ms = (torch_before, torch_after)
        torch_before = torch_after
        variants.append(variant)
        print(
            f"{variant.name}: trainer {1e3 / variant.info['trainer_steps_per_s']:.1f} ms/step, "
            f"first call {variant.info['first_call_s']:.1f} s; torch around it "
            f"{variant.trainer_torch_ms}",
            file=sys.stderr,
            flush=True,
        )
    # The compiled steps alone, in rounds alternating with the reference.
    torch_ms = []
    for round_index in range(args.rounds):
        loads.append(load_average())
        if args.torch_python:
            torch_ms.append(reference())
        for variant in variants:
            variant.ms.append(variant.ask(cmd="time", steps=args.steps)["ms"])
            variant.peaks.append(variant.ask(cmd="peak", size=args.peak_size)["gflops"])
        line = "  ".join(f"{v.name} {v.ms[-1]:.1f}" for v in variants)
        ref = f"torch {torch_ms[-1]:.1f}  " if torch_ms else ""
        print(
            f"round {round_index + 1}: {ref}{line} ms/step  load {loads[-1]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    for variant in variants:
        variant.process.stdin.close()  # The worker's request loop ends.
        variant.process.wait()
    loads.append(load_average())
    report(args, variants, torch_ms, loads)


def report(args, variants, torch_ms, loads) -> None:
    """The table, then one JSON line."""
    median = statistics.median
    torch_median = median(torch_ms) if torch_ms else None
    results = {}
    for v in variants:
        info = v.info
        ms = median(v.ms)
        tokens_per_step = info["tokens_per_step"]
        # nanoGPT estimate_mfu: 6N + 12 * layers * width * context FLOPs per token.
        flops_per_token = 6 * info["non_position_params"] + info["attention_flops_per_token"]
        achieved = flops_per_token * tokens_per_step / (ms / 1e3) / 1e9
        peak32 = median(p["float32"] for p in v.peaks)
        peak16 = median(p["bfloat16"] for p in v.peaks)
        trainer_ms = 1e3 / info["trainer_steps_per_s"]
        r = {
            "ms_per_step": round(ms, 2),
            "ms_per_step_rounds": [round(x, 2) for x in v.ms],
            "steps_per_s": round(1e3 / ms, 2),
            "tokens_per_s": round(tokens_per_step * 1e3 / ms),
            "trainer_ms_per_step": round(trainer_ms, 2),
            "trainer_steps_per_s": round(info["trainer_steps_per_s"], 2),
            "first_call_s": round(info["first_call_s"], 2),
            "input_cpu_ms_per_step": round(info["input_cpu_ms"], 3),
            "input_wall_ms_per_step": round(info["input_wall_ms"], 3),
            "input_share": round(info["input_cpu_ms"] / ms, 4),
            "flops_per_token": flops_per_token,
            "gflops": round(achieved, 1),
            "peak_gflops_f32": round(peak32, 1),
            "peak_gflops_bf16": round(peak16, 1),
            "mfu_f32_peak": round(achieved / peak32, 4),
            "mfu_bf16_peak": round(achieved / peak16, 4),
            "steps_per_call": info["steps_per_call"],
            "dtype": info["dtype"],
            "xla_flags": info["xla_flags"],
            "overrides": v.spec["overrides"],
        }
        if torch_median:
            # Paired: each round's reference time over this round's step time, then the median.
            r["speedup_vs_torch"] = round(median(t / m for t, m in zip(torch_ms, v.ms)), 3)
            r["trainer_speedup_vs_torch"] = round(median(v.trainer_torch_ms) / trainer_ms, 3)
            r["trainer_torch_ms"] = v.trainer_torch_ms
        results[v.name] = r

    columns = (
        ("variant", 12, "s"),
        ("ms/step", 8, ".2f"),
        ("steps/s", 8, ".1f"),
        ("tokens/s", 8, ".0f"),
        ("trainer ms", 10, ".2f"),
        ("1st call s", 10, ".1f"),
        ("input", 6, ".1%"),
        ("GFLOP/s", 8, ".1f"),
        ("MFU f32", 8, ".1%"),
        ("MFU bf16", 8, ".1%"),
        ("x torch", 8, ".2f"),
        ("trainer x", 9, ".2f"),
    )
    sys.path.insert(0, str(REPO))  # Here, not at the top: a worker imports from its --repo.
    from research import hardware

    cpu = hardware.cpu()
    print(f"CPU: {hardware.summary()}, {os.cpu_count()} CPUs")
    print("  ".join(f"{name:>{width}s}" for name, width, _ in columns))
    rows = []
    if torch_median:
        tokens = variants[0].info["tokens_per_step"] * 1e3 / torch_median
        rows.append(("torch", torch_median, 1e3 / torch_median, tokens) + (None,) * 8)
    for name, r in results.items():
        rows.append(
            (
                name,
                r["ms_per_step"],
                r["steps_per_s"],
                r["tokens_per_s"],
                r["trainer_ms_per_step"],
                r["first_call_s"],
                r["input_share"],
                r["gflops"],
                r["mfu_f32_peak"],
                r["mfu_bf16_peak"],
                r.get("speedup_vs_torch"),
                r.get("trainer_speedup_vs_torch"),
            )
        )
    for row in rows:
        cells = [
            f"{'':>{width}s}" if value is None else f"{value:>{width}{fmt}}"
            for value, (_, width, fmt) in zip(row, columns)
        ]
        print("  ".join(cells))
    peaks = [results[v.name]["peak_gflops_f32"] for v in variants]
    peaks16 = [results[v.name]["peak_gflops_bf16"] for v in variants]
    print(
        f"step alone: median of {args.rounds} rounds alternating with the reference (x torch: "
        f"median of per-round ratios); trainer: {args.trainer_steps} steps of the real trainer, "
        f"reference run just before and after. Input: host CPU time to make a step's batch / "
        f"step time. MFU: nanoGPT's 6N + 12*L*D*T FLOPs/token against the matmul peak measured "
        f"here ({median(peaks):.0f} GFLOP/s f32, {median(peaks16):.0f} bf16). Load average "
        f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs: {hardware.summary()}."
    )
    summary = {
        "benchmark": "gpt_cpu",
        "experiment": EXPERIMENT,
        "torch_ms_per_step": torch_median,
        "torch_ms_rounds": torch_ms,
        "load_average": [round(x, 2) for x in loads],
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "cpu_kind": hardware.kind(),  # What model.dtype="auto" resolves by.
        "variants": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
