"""Model FLOPs utilisation of GPT-2 124M and images/s of ResNet-50 on an accelerator, each with and
without rematerialisation, against the device's peak; the plan's memory beside the measured peak.

    python bench/accelerator.py [--out=results.json]   # on a GPU or TPU; elsewhere says so, exit 0
    python bench/accelerator.py --allow_cpu --tiny     # the same code on tiny models, any machine:
                                                       # a check that it runs, not a measurement

What is timed is the project's own train step (research/steps.py), built and compiled as the
trainer builds it, through research/plan.py (`setup`, `compile_step`, `run_steps`): the state
allocated as the trainer allocates it, a batch of zeros (the step's cost does not depend on the
values), one warm-up call, then `--steps` timed calls, each waited for; the median is reported.

  gpt2      experiments/openwebtext_gpt2.py: GPT-2 124M, sequence 1024, model.dtype bfloat16
            (float32 parameters and AdamW state, bfloat16 compute), `--gpt2_batch` rows (16) per
            device in one micro-batch; model.attention_impl=`--gpt2_attention` where the checkout
            has that field
  resnet50  experiments/imagenet_resnet.py: ResNet-50 v1.5 at 224 x 224, model.dtype bfloat16,
            SGD with Nesterov momentum, `--resnet50_batch` images (128) per device

Each runs with model.remat "none" and "full" where the model has that field (issue 17, item 2);
where it has not, the row says so and only the plain step is timed. Every variant runs in its own
process, so each memory peak is that step's alone.

Reported per variant: compile seconds, ms per step, tokens/s or images/s, model TFLOP/s and MFU,
XLA's FLOPs per step, and memory: the peak the allocator reports in use (`memory_stats`) beside
research/plan.py's figure for the same compiled step (XLA's buffer assignment: arguments,
temporaries and new outputs). MFU = model FLOPs / time / (devices x dense bf16 peak,
research/plan.py DEVICES). Model FLOPs are GPT-2's 6N + 12 L D T per token (nanoGPT's
estimate_mfu) and, for ResNet-50, XLA's count of the step without remat: recomputation under
remat costs time but is not model work. Prints a table, then one JSON line.

On a GPU machine reached through the device tool (`run`: it copies this working tree; the
machine has Python 3.12, jax 0.11 with CUDA 13, flax, optax and most of requirements.txt, and no
network), the packages it lacks travel as wheels in `.whl/`, git-ignored through
.git/info/exclude and never committed. Fetch them here once, from the repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 grain==0.2.18 \
        array_record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10 \
        tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1 \
        toml==0.10.2 num2words==0.5.14 portpicker==1.6.0
    python3 -m pip wheel --no-deps -w .whl promise==2.3   # pure Python, published as source only

Twelve wheels, 10.6 MB (bench/NOTES.md lists each with its size): what this checkout imports on
the benchmark's path and the machine's package list (the device tool's KINDS.md) lacks. Then the
one command, with carry [".whl"] and timeout_s=560, itself well under the 10 minutes a command
may take:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit; \
    PYTHONUNBUFFERED=1 timeout 540 python3 bench/accelerator.py --out=$OUT/accelerator.json \
      2>&1 | tee $OUT/accelerator.log

and the figures go into README.md ("Speed") and bench/NOTES.md, with the date and the device.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    # name -> (experiment, overrides for every variant)
    "gpt2": (
        "experiments/openwebtext_gpt2.py",
        {"data.mock": "true", "model.dtype": "bfloat16", "optimizer.grad_accum_steps": "1"},
    ),
    "resnet50": (
        "experiments/imagenet_resnet.py",
        {"data.mock": "true", "model.dtype": "bfloat16"},
    ),
}
# The same code on models small enough for a CPU (--tiny).
TINY = {
    "gpt2": {"model.num_layers": "2", "model.embed_dim": "64", "model.num_heads": "2",
             "model.block_size": "64", "data.seq_len": "64"},
    "resnet50": {"model.depth": "18", "model.width": "8"},
}  # fmt: skip
REMAT = ("none", "full")


def accelerator() -> str | None:
    """The JAX backend when it is an accelerator ("gpu", "tpu"), else None."""
    import jax

    backend = jax.default_backend()
    return None if backend == "cpu" else backend


# -------------------------------------------------------------------------------------------------
# Worker: one variant in its own process; one JSON line on stdout.
# -------------------------------------------------------------------------------------------------


def worker(spec: dict) -> dict:
    import jax

    from research import config as config_lib
    from research import plan

    config = config_lib.build_config(spec["experiment"], spec["overrides"])
    s = plan.setup(config)
    compiled = plan.compile_step(s, config.train.batch_size)
    ran = plan.run_steps(s, compiled, spec["steps"])
    m = compiled.memory
    params = s.abstract_state["params"]
    tokens = s.parts.input_shape[0] if len(s.parts.input_shape) == 1 else 0
    return {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "batch_size": config.train.batch_size,
        "tokens_per_example": tokens,
        "num_params": sum(x.size for x in jax.tree.leaves(params)),
        "compile_s": compiled.seconds,
        "ms_per_step": statistics.median(ran["seconds"]) * 1e3,
        "ms_rounds": [round(x * 1e3, 3) for x in ran["seconds"]],
        "xla_flops": compiled.flops,
        "gpt_flops": plan.gpt_flops_per_token(config, params, tokens)
        * config.train.batch_size
        * tokens,
        "planned_bytes": m["argument"] + m["temp"] + m["output"] - m["alias"],
        "planned_temp_bytes": m["temp"],
        "allocated_bytes": ran["allocated_bytes"],
        "peak_bytes": ran["peak_bytes"],
        "loss": ran["loss"],
    }


# -------------------------------------------------------------------------------------------------
# Coordinator.
# -------------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[dict]:
    """(model, remat) specs, with the overrides this checkout's fields allow."""
    from research import config as config_lib

    out = []
    for name in args.model or sorted(MODELS):
        experiment, overrides = MODELS[name]
        overrides = dict(overrides)
        fields = config_lib.load_experiment(experiment).model
        per_device = args.gpt2_batch if name == "gpt2" else args.resnet50_batch
        overrides["train.batch_size"] = str(per_device * args.devices)
        if name == "gpt2" and "attention_impl" in fields:
            overrides["model.attention_impl"] = args.gpt2_attention
        if args.tiny:
            overrides |= TINY[name] | {"train.batch_size": str(2 * args.devices)}
        for remat in REMAT:
            spec = {"model": name, "remat": remat, "experiment": experiment, "steps": args.steps}
            if "remat" in fields:
                spec["overrides"] = overrides | {"model.remat": remat}
            elif remat == "none":
                spec["overrides"] = overrides
            else:
                spec["skipped"] = "this checkout's model has no `remat` field"
            out.append(spec)
    return out


def run_variant(spec: dict, timeout_s: int) -> dict:
    """One variant in a fresh process (its own memory peak); its JSON reply, or why it failed."""
    if "skipped" in spec:
        return {}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    start = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    replies = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not replies:
        lines = (out.stderr or out.stdout).strip().splitlines()
        reason = next((x for x in reversed(lines) if "Error" in x or "error" in x), None)
        return {"error": (reason or (lines[-1] if lines else f"exit {out.returncode}"))[-300:]}
    reply = json.loads(replies[-1])
    reply["wall_s"] = time.perf_counter() - start
    return reply


def summarize(specs: list[dict], replies: list[dict]) -> dict:
    """Per variant: throughput, model FLOP/s, MFU (where the device's peak is known), memory."""
    from research import plan

    results = {}
    plain_flops = {}  # model -> XLA FLOPs of its step without remat: ResNet's model FLOPs.
    for spec, r in zip(specs, replies):
        if spec["remat"] == "none" and "xla_flops" in r:
            plain_flops[spec["model"]] = r["xla_flops"]
    for spec, r in zip(specs, replies):
        key = f"{spec['model']}/remat={spec['remat']}"
        if "skipped" in spec or "error" in r:
            results[key] = {"skipped": spec.get("skipped")} if "skipped" in spec else r
            continue
        seconds = r["ms_per_step"] / 1e3
        model_flops = r["gpt_flops"] or plain_flops.get(spec["model"], r["xla_flops"])
        kind = plan.named(r["device_kind"])
        peak = kind.peak_tflops * 1e12 * r["devices"] if kind else None
        per_s = r["batch_size"] * (r["tokens_per_example"] or 1) / seconds
        results[key] = {
            **{k: r[k] for k in ("device_kind", "devices", "batch_size", "num_params", "loss")},
            "compile_s": round(r["compile_s"], 1),
            "ms_per_step": round(r["ms_per_step"], 2),
            "ms_rounds": r["ms_rounds"],
            ("tokens_per_s" if r["tokens_per_example"] else "images_per_s"): round(per_s, 1),
            "model_tflops_per_s": round(model_flops / seconds / 1e12, 2),
            "xla_tflops_per_step": round(r["xla_flops"] / 1e12, 4),
            "mfu": round(model_flops / seconds / peak, 4) if peak else None,
            "peak_device": kind.name if kind else None,
            "planned_gib": round(r["planned_bytes"] / 2**30, 3),
            "measured_peak_gib": (
                round(r["peak_bytes"] / 2**30, 3) if r["peak_bytes"] is not None else None
            ),
            "allocated_gib": round(r["allocated_bytes"] / 2**30, 3),
            "jax": r["jax"],
        }
    return results


def report(results: dict) -> None:
    columns = ("variant", "ms/step", "per second", "TFLOP/s", "MFU", "plan GiB", "peak GiB")
    print("  ".join(f"{c:>16s}" if i else f"{c:<22s}" for i, c in enumerate(columns)))
    for key, r in results.items():
        if "ms_per_step" not in r:
            print(f"{key:<22s}  {r.get('skipped') or r.get('error')}")
            continue
        rate = r.get("tokens_per_s") or r.get("images_per_s")
        unit = "tok/s" if "tokens_per_s" in r else "img/s"
        cells = [
            f"{r['ms_per_step']:.2f}",
            f"{rate:,.0f} {unit}",
            f"{r['model_tflops_per_s']:.1f}",
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
            f"{r['planned_gib']:.2f}",
            f"{r['measured_peak_gib']:.2f}" if r["measured_peak_gib"] is not None else "-",
        ]
        print(f"{key:<22s}  " + "  ".join(f"{c:>16s}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--gpt2_batch", type=int, default=16, help="sequences per device")
    parser.add_argument("--resnet50_batch", type=int, default=128, help="images per device")
    parser.add_argument("--gpt2_attention", default="auto", help="model.attention_impl, if any")
    parser.add_argument("--timeout_s", type=int, default=240, help="per variant at most")
    parser.add_argument(
        "--budget_s", type=int, default=500, help="all variants together; later ones are skipped"
    )
    parser.add_argument("--allow_cpu", action="store_true", help="run even without accelerator")
    parser.add_argument("--tiny", action="store_true", help="tiny models: checks the code runs")
    parser.add_argument("--out", default="", help="also write the results here as JSON")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # `research`, from any working directory.
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    backend = accelerator()
    if backend is None and not args.allow_cpu:
        import jax

        print(
            f"no accelerator: JAX's backend is {jax.default_backend()} "
            f"({jax.devices()[0].device_kind}); nothing measured. Run this on a GPU or TPU "
            "machine (the module docstring gives the command).",
            flush=True,
        )
        return 0
    import jax

    args.devices = jax.device_count()
    specs = variants(args)
    replies, deadline = [], time.monotonic() + args.budget_s
    for spec in specs:
        left = int(deadline - time.monotonic())
        if left < 30 and "skipped" not in spec:
            spec["skipped"] = f"--budget_s={args.budget_s} spent"
        replies.append(run_variant(spec, min(args.timeout_s, left)))
        reply = replies[-1]
        status = reply.get("error") or (
            f"{reply['ms_per_step']:.2f} ms/step, compile {reply['compile_s']:.1f} s"
            if reply
            else spec.get("skipped")
        )
        print(f"{spec['model']} remat={spec['remat']}: {status}", file=sys.stderr, flush=True)
    results = summarize(specs, replies)
    print(f"{jax.devices()[0].device_kind} x {args.devices}, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    report(results)
    summary = {"benchmark": "accelerator", "date": time.strftime("%Y-%m-%d"), "results": results}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
