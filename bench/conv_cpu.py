"""Speed of the project's convolutional training steps on CPU, against the PyTorch reference.

    python bench/conv_cpu.py --torch_python=/tmp/torch-ref/bin/python
    python bench/conv_cpu.py --model=resnet20 --rounds=3 --seconds=3   # one model, short rounds
    python bench/conv_cpu.py --model=resnet20 --conv_impl=xla --conv_impl=xla_bf16  # side by side

Models (MODELS below), each the experiment's own config and step:
  resnet20  experiments/cifar10_resnet20.py, batch 128 of 32x32x3 (tfds mock data of CIFAR-10's
            shapes: the step's cost does not depend on the pixels)
  digits    experiments/digits_cnn.py, batch 128 of 8x8x1 (scikit-learn's digits, no download)
  resnet50  experiments/imagenet_resnet.py (model "imagenet_resnet", depth 50), 224x224x3 at a
            small batch (`--resnet50_batch`, default 8; mock data of imagenet2012's shapes)

What is timed is the project's own step, as bench/gpt_cpu.py times it (and with its matmul-peak
code). Each model runs in its own process: first the real trainer (`research.train.run`) for a few
steps, whose steps/s comes from metrics.jsonl (median of the log windows after the first, which
holds the compile); then the step is built as run() builds it (`steps.build`,
`steps.compile_train_step`) from the trainer's final state, lowered and compiled explicitly
(trace and compile seconds reported apart), and timed alone on pre-built batches, in rounds that
alternate with ../shared/bench/torch_resnet.py (ResNet-20, batch 128, `--channels_last`, its
faster layout on CPU) and with a 1024^3 matmul peak (float32 and bfloat16). The machines are
shared, so only numbers measured side by side are compared; the ratio to the reference is the
median of per-round ratios. The reference covers ResNet-20 only (no PyTorch digits CNN or
ResNet-50 here).

FLOPs: the convolutions and dense layers (dot_general) of the whole step, counted from its jaxpr
(forward and backward, 2 FLOPs per multiply-add: what the step actually asks for), and XLA's own
cost analysis of the compiled step (all ops, elementwise included) beside it. Achieved GFLOP/s is
the former over the step time, also as a share of the float32 matmul peak measured in the same
rounds. Input: the host CPU time to make one step's batch, as a share of the step.

The table's footer and the JSON line name the CPU and its matmul-relevant features
(research/hardware.py). Prints a table, then one JSON line. bench/NOTES.md records the runs.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The GPT benchmark's timing pieces: the matmul peak and the load average (same directory).
from gpt_cpu import DTYPES, _matmul_gflops, load_average, run_trainer

REPO = Path(__file__).resolve().parent.parent
TORCH_SCRIPT = REPO.parent / "shared" / "bench" / "torch_resnet.py"
TORCH_ARGS = ("--depth", "20", "--batch_size", "128", "--channels_last")
# name -> experiment, config overrides, trainer steps (log windows of a quarter of them).
MODELS = {
    "resnet20": ("experiments/cifar10_resnet20.py", {"data.mock": True}, 40),
    "digits": ("experiments/digits_cnn.py", {}, 200),
    "resnet50": ("experiments/imagenet_resnet.py", {"data.mock": True}, 12),
}


# -------------------------------------------------------------------------------------------------
# Worker: one process per model. Runs the trainer, builds the same step from its final state,
# then answers timing requests (JSON lines on stdin/stdout).
# -------------------------------------------------------------------------------------------------


def worker(spec: dict) -> None:
    """Run one model; spec = {"experiment": ..., "overrides": {...}, "trainer_steps": int}."""
    import absl.logging
    import jax
    import jax.numpy as jnp

    from research import config as config_lib
    from research import data, parallel, steps

    absl.logging.set_verbosity(absl.logging.ERROR)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    reply = lambda **kw: print(json.dumps(kw), file=replies, flush=True)
    n = spec["trainer_steps"]
    overrides = {
        "train.steps": n,
        "train.log_every_steps": max(1, n // 4),
        "train.eval_every_steps": n,
        "train.checkpoint_every_steps": n,
        # The recipe's schedule as over its full length (warmups are longer than a short run).
        "schedule.decay_steps": 10**7,
        **spec["overrides"],
    }
    config = config_lib.build_config(spec["experiment"], overrides)
    tc = config.train
    assert tc.steps_per_call == 1, "conv nets keep one step per call (JAX issue #12868)"

    parts, mesh, state_sharding, state, lines = run_trainer(config)
    windows = [r["steps_per_s"] for r in map(json.loads, lines) if r["split"] == "train"]
    trainer_steps_per_s = statistics.median(windows[1:] or windows)

    # Batches of the configured data, built and placed before timing: the step alone.
    iterator_args = dict(
        global_batch_size=tc.batch_size, seed=tc.seed + 1, process_index=0, process_count=1
    )
    train_iter = data.train_iterator(config.data, **iterator_args)
    batches = [parallel.global_batch(next(train_iter), mesh) for _ in range(4)]

    # Convolution and dense FLOPs of one whole step (forward and backward), from its jaxpr.
    step = lambda s, b: steps.train_step(parts, s, b)
    flops = _conv_dot_flops(jax.make_jaxpr(step)(state, batches[0]).jaxpr)

    step_fn = steps.compile_train_step(parts, config.parallel, mesh, state_sharding)
    start = time.perf_counter()
    lowered = step_fn.lower(state, batches[0])
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    start = time.perf_counter()
    state, metrics = compiled(state, batches[0])
    jax.block_until_ready(metrics)
    first_run_s = time.perf_counter() - start

    # Input pipeline: host CPU time (all threads) per step to make a batch, after a warm-up.
    calls = 3 if tc.batch_size * math.prod(parts.input_shape) > 1e6 else 20
    cpu0 = time.process_time()
    for _ in range(calls):
        jax.block_until_ready(parallel.global_batch(next(train_iter), mesh))
    input_cpu_ms = (time.process_time() - cpu0) / calls * 1e3

    reply(
        ready=True,
        batch_size=tc.batch_size,
        input_shape=list(parts.input_shape),
        num_params=int(sum(x.size for x in jax.tree.leaves(state["params"]))),
        conv_dot_flops=flops,
        xla_flops=float(cost.get("flops", 0.0)) if cost else None,
        trace_s=trace_s,
        compile_s=compile_s,
        first_run_s=first_run_s,
        trainer_steps_per_s=trainer_steps_per_s,
        input_cpu_ms=input_cpu_ms,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )

    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "time":
            state, metrics = compiled(state, batches[0])  # Settle after idling.
            jax.block_until_ready(metrics)
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < request["seconds"]:
                state, metrics = compiled(state, batches[calls % len(batches)])
                jax.block_until_ready(metrics)
                calls += 1
            reply(ms=(time.perf_counter() - start) / calls * 1e3, calls=calls)
        elif request["cmd"] == "peak":
            size = request["size"]
            peaks = {d: _matmul_gflops(matmul, jnp.ones((size, size), d)) for d in DTYPES}
            reply(gflops=peaks)


def _conv_dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every conv_general_dilated and dot_general in `jaxpr`, sub-jaxprs
    included (jit, custom_vjp, remat; a scan's body counted once per iteration)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, spatial...)
            # Per output element: in-features (already divided by feature groups) x window; an
            # input gradient of a strided conv dilates its input with zeros (lhs_dilation), which
            # are not counted.
            macs = math.prod(out) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
            total += 2 * macs // math.prod(eqn.params["lhs_dilation"])
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += repeat * _conv_dot_flops(inner)
    return total


# -------------------------------------------------------------------------------------------------
# Coordinator.
# -------------------------------------------------------------------------------------------------


class Model:
    """A worker process for one model."""

    def __init__(self, name: str, args: argparse.Namespace, conv_impl: str | None = None):
        self.name = name if conv_impl is None else f"{name}[{conv_impl}]"
        experiment, overrides, trainer_steps = MODELS[name]
        overrides = dict(overrides)
        if conv_impl is not None:
            overrides["model.conv_impl"] = conv_impl
        if name == "resnet50":
            overrides |= {"train.batch_size": args.resnet50_batch, "train.eval_batch_size": 32}
        self.spec = dict(
            experiment=experiment,
            overrides=overrides,
            trainer_steps=args.trainer_steps or trainer_steps,
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(self.spec)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = None
        self.ms = []

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"error: model {self.name!r} stopped (exit {self.process.wait()})")
        return json.loads(line)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.receive()


def torch_reference(args: argparse.Namespace) -> dict:
    """torch_resnet.py's JSON line: median ms/step of `--torch_steps` (after 3 warm-up steps)."""
    out = subprocess.run(
        [args.torch_python, args.torch_script, *TORCH_ARGS, "--steps", str(args.torch_steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch_python", default="", help="python with torch; '' = no reference")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per model per round")
    parser.add_argument(
        "--torch_script", default=str(TORCH_SCRIPT), help="torch_resnet.py (from a worktree too)"
    )
    parser.add_argument("--torch_steps", type=int, default=10, help="per reference run")
    parser.add_argument("--trainer_steps", type=int, default=0, help="0 = each model's default")
    parser.add_argument("--resnet50_batch", type=int, default=8)
    parser.add_argument(
        "--conv_impl",
        action="append",
        help="model.conv_impl of the ResNets (research/models/conv.py); repeatable: one worker "
        "each, timed in the same rounds. Default: the recipe's",
    )
    parser.add_argument("--peak_size", type=int, default=1024)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    loads = [load_average()]
    models = []
    # One at a time: each trainer run has the CPU to itself.
    workers = [
        (name, impl)
        for name in args.model or MODELS
        for impl in (args.conv_impl if args.conv_impl and name != "digits" else [None])
    ]
    for name, impl in workers:
        model = Model(name, args, impl)
        model.info = model.receive()
        models.append(model)
        info = model.info
        print(
            f"{model.name}: trainer {1e3 / info['trainer_steps_per_s']:.1f} ms/step, trace "
            f"{info['trace_s']:.1f} s, compile {info['compile_s']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    torch_runs, peaks = [], []
    for round_index in range(args.rounds):
        loads.append(load_average())
        if args.torch_python:
            torch_runs.append(torch_reference(args))
        for model in models:
            model.ms.append(model.ask(cmd="time", seconds=args.seconds)["ms"])
        peaks.append(models[0].ask(cmd="peak", size=args.peak_size)["gflops"])
        line = "  ".join(f"{m.name} {m.ms[-1]:.1f}" for m in models)
        ref = f"torch {torch_runs[-1]['median_step_ms']:.1f}  " if torch_runs else ""
        print(
            f"round {round_index + 1}: {ref}{line} ms/step  peak f32 {peaks[-1]['float32']:.0f} "
            f"GFLOP/s  load {loads[-1]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    for model in models:
        model.process.stdin.close()
        model.process.wait()
    loads.append(load_average())
    report(args, models, torch_runs, peaks, loads)


def report(args, models, torch_runs, peaks, loads) -> None:
    """The table, then one JSON line."""
    sys.path.insert(0, str(REPO))  # The coordinator runs from bench/.
    from research import hardware

    median = statistics.median
    torch_ms = [r["median_step_ms"] for r in torch_runs]
    peak32 = median(p["float32"] for p in peaks)
    peak16 = median(p["bfloat16"] for p in peaks)
    results = {}
    for m in models:
        info = m.info
        ms = median(m.ms)
        gflops = info["conv_dot_flops"] / (ms / 1e3) / 1e9
        r = {
            "experiment": m.spec["experiment"],
            "batch_size": info["batch_size"],
            "input_shape": info["input_shape"],
            "num_params": info["num_params"],
            "ms_per_step": round(ms, 2),
            "ms_per_step_rounds": [round(x, 2) for x in m.ms],
            "images_per_s": round(info["batch_size"] * 1e3 / ms, 1),
            "trainer_ms_per_step": round(1e3 / info["trainer_steps_per_s"], 2),
            "trainer_images_per_s": round(info["batch_size"] * info["trainer_steps_per_s"], 1),
            "trace_s": round(info["trace_s"], 2),
            "compile_s": round(info["compile_s"], 2),
            "first_run_s": round(info["first_run_s"], 3),
            "input_cpu_ms_per_step": round(info["input_cpu_ms"], 2),
            "input_share": round(info["input_cpu_ms"] / ms, 4),
            "conv_dot_gflop_per_step": round(info["conv_dot_flops"] / 1e9, 3),
            "xla_gflop_per_step": info["xla_flops"] and round(info["xla_flops"] / 1e9, 3),
            "gflops": round(gflops, 1),
            "share_of_f32_peak": round(gflops / peak32, 4),
            "overrides": m.spec["overrides"],
            "trainer_steps": m.spec["trainer_steps"],
        }
        if torch_ms and m.name.startswith("resnet20"):
            r["torch_over_ours"] = round(median(t / o for t, o in zip(torch_ms, m.ms)), 3)
        results[m.name] = r

    columns = (
        ("model", 19, "s"),
        ("batch", 5, "d"),
        ("ms/step", 8, ".1f"),
        ("images/s", 8, ".1f"),
        ("trainer ms", 10, ".1f"),
        ("compile s", 9, ".1f"),
        ("input", 6, ".1%"),
        ("GFLOP/step", 10, ".2f"),
        ("GFLOP/s", 7, ".1f"),
        ("of peak", 7, ".1%"),
        ("torch/ours", 10, ".2f"),
    )
    print(f"CPU: {hardware.summary()}, {os.cpu_count()} CPUs")
    print("  ".join(f"{name:>{width}s}" for name, width, _ in columns))
    rows = []
    if torch_ms:
        t = median(torch_ms)
        rows.append(("torch r20", 128, t, 128e3 / t) + (None,) * 7)
    for name, r in results.items():
        rows.append(
            (
                name,
                r["batch_size"],
                r["ms_per_step"],
                r["images_per_s"],
                r["trainer_ms_per_step"],
                r["compile_s"],
                r["input_share"],
                r["conv_dot_gflop_per_step"],
                r["gflops"],
                r["share_of_f32_peak"],
                r.get("torch_over_ours"),
            )
        )
    for row in rows:
        print(
            "  ".join(
                f"{'':>{width}s}" if value is None else f"{value:>{width}{fmt}}"
                for value, (_, width, fmt) in zip(row, columns)
            )
        )
    reference = (
        f"torch r20: ../shared/bench/torch_resnet.py {' '.join(TORCH_ARGS)} "
        f"(torch {torch_runs[0]['torch']}, {torch_runs[0]['threads']} threads, "
        f"{args.torch_python}); torch/ours: median of per-round ratios. "
        if torch_runs
        else ""
    )
    print(
        f"ms/step: the step alone, median of {args.rounds} rounds of ~{args.seconds:g} s each; "
        f"trainer: the real trainer's log windows; compile: XLA compile of the step (trace apart, "
        f"in the JSON). {reference}GFLOP: the step's convolutions and dense layers (forward + "
        f"backward), of the float32 1024^3 matmul peak measured here ({peak32:.0f} GFLOP/s f32, "
        f"{peak16:.0f} bf16). Load average {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} CPUs: {hardware.summary()}."
    )
    summary = {
        "benchmark": "conv_cpu",
        "torch_python": args.torch_python,
        "torch_args": list(TORCH_ARGS),
        "torch_ms_per_step": median(torch_ms) if torch_ms else None,
        "torch_ms_rounds": torch_ms,
        "peak_gflops_f32": round(peak32, 1),
        "peak_gflops_bf16": round(peak16, 1),
        "load_average": [round(x, 2) for x in loads],
        "cpus": os.cpu_count(),
        "cpu": hardware.cpu(),
        "models": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
