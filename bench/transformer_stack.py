"""Compile time, step time and planned memory of a GPT's train step by depth, with its blocks
scanned or unrolled and rematerialised or not (model.scan_layers, model.remat:
research/models/stack.py).

    python bench/transformer_stack.py                      # depths 4 8 16, the CPU recipe's width
    python bench/transformer_stack.py --depths 2 4 --embed_dim=64 --steps=5

The step is the trainer's own (research/plan.py `setup`, `compile_step`, `run_steps`: the helpers
bench/accelerator.py times with), built from experiments/shakespeare_char_gpt.py:cpu at one step
per call, float32, no gradient accumulation, with the depth and the two fields overridden; batches
are zeros of the data's shapes (mock shapes where the text is absent). Per row: the seconds to
lower and compile the step, its median ms over `--steps` timed calls, and from XLA's memory
analysis of the compiled step the temporaries (activations kept for the backward pass, mostly)
and the whole planned footprint (arguments + outputs + temporaries - donated aliases).

Expected shape of the result: unrolled compile time grows with depth, scanned stays about flat;
remat="full" cuts the temporaries and costs a recomputed forward (about a third more step time).
Prints a table, then one JSON line; bench/NOTES.md records a run.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_cpu import EXPERIMENT, load_average  # noqa: E402


def measure(depth: int, scan_layers: bool, remat: str, args: argparse.Namespace) -> dict:
    from research import config as config_lib
    from research import plan

    overrides = {
        "model.num_layers": depth,
        "model.scan_layers": scan_layers,
        "model.remat": remat,
        "model.dtype": "float32",
        "model.embed_dim": args.embed_dim,
        "train.batch_size": args.batch_size,
        "train.steps_per_call": 1,
        "optimizer.grad_accum_steps": 1,
    }
    config = config_lib.build_config(EXPERIMENT, overrides)
    s = plan.setup(config)
    compiled = plan.compile_step(s, config.train.batch_size)
    ran = plan.run_steps(s, compiled, args.steps)
    m = compiled.memory
    return {
        "depth": depth,
        "scan_layers": scan_layers,
        "remat": remat,
        "compile_s": round(compiled.seconds, 3),
        "ms_per_step": round(statistics.median(ran["seconds"]) * 1e3, 3),
        "temp_mib": round(m["temp"] / 2**20, 3),
        "planned_mib": round((m["argument"] + m["output"] + m["temp"] - m["alias"]) / 2**20, 3),
        "loss": round(float(ran["loss"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--remats", nargs="+", default=["none", "full"])
    parser.add_argument("--embed_dim", type=int, default=128)  # the cpu recipe's
    parser.add_argument("--batch_size", type=int, default=12)  # the cpu recipe's
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import jax

    from research import hardware

    rows = []
    load = load_average()
    for depth in args.depths:
        for scan_layers in (False, True):
            for remat in args.remats:
                rows.append(measure(depth, scan_layers, remat, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cpu = hardware.summary()
    print(
        f"GPT train step, width {args.embed_dim}, batch {args.batch_size}, "
        f"{jax.devices()[0].device_kind}: {cpu}"
    )
    header = ("depth", "scan", "remat", "compile s", "ms/step", "temp MiB", "planned MiB")
    print("".join(f"{h:>12}" for h in header))
    for r in rows:
        cells = (r["depth"], str(r["scan_layers"]), r["remat"], r["compile_s"], r["ms_per_step"])
        cells += (r["temp_mib"], r["planned_mib"])
        print("".join(f"{c:>12}" for c in cells))
    print(f"load average {load:.2f} before, {load_average():.2f} after (other work shares it)")
    summary = {
        "bench": "transformer_stack",
        "cpu": cpu,
        "jax": jax.__version__,
        "embed_dim": args.embed_dim,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
