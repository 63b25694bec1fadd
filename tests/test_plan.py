"""`launch.py plan` (research/plan.py): what it says of a tiny GPT agrees with what a real run of it
allocates, compiles and counts; its table and FLOP estimate against independent figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import launch
from research import checkpoint, data, parallel, plan, steps, train
from research import config as cfg

ROOT = Path(__file__).resolve().parents[1]
SPEC = "experiments/shakespeare_char_gpt.py:smoke"  # 1 layer, 32 wide, batch 32 of 16 tokens


@pytest.fixture(scope="module")
def config():
    return cfg.build_config(SPEC, {})


@pytest.fixture(scope="module")
def planned(config):
    return plan.make(config)


def total(memory: dict) -> int:
    """A compiled step's bytes per device: arguments, temporaries, outputs not aliased to them."""
    return memory["argument"] + memory["temp"] + memory["output"] - memory["alias"]


def test_parameters_and_state_bytes_are_what_a_real_run_allocates(config, planned, tmp_path):
    short = {"train.steps": 3, "train.eval_every_steps": 3, "train.checkpoint_every_steps": 3}
    result = train.run(cfg.build_config(SPEC, short), tmp_path)
    # wte 65 x 32 (tied), wpe 16 x 32, one block (2 norm scales, qkv, proj, fc, proj), final norm.
    n = 65 * 32 + 16 * 32 + 32 + 32 * 96 + 32 * 32 + 32 + 32 * 128 + 128 * 32 + 32
    assert planned.num_params == result["num_params"] == n == 14_976
    # The state the run saved, restored as the trainer places it on this (one) device.
    s = planned.setup
    target = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        s.abstract_state,
        s.state_sharding,
    )
    _, state = checkpoint.restore_state(tmp_path / "checkpoints", target=target)
    allocated = {k: sum(x.nbytes for x in jax.tree.leaves(v)) for k, v in state.items()}
    assert planned.state == allocated
    assert allocated["params"] == 4 * n  # float32
    assert (
        allocated["opt_state"] == 2 * 4 * n + 2 * 4
    )  # Two moments; Adam's and the schedule's counts
    # XLA's arguments are that state and the batch: 32 rows of inputs and targets, int32 x 16.
    assert planned.batch_bytes == 32 * 2 * 16 * 4
    assert planned.memory["argument"] == sum(allocated.values()) + planned.batch_bytes

    # From shapes, the plan lowers the very program the trainer runs on these arrays.
    rows = data.train_iterator(
        config.data, global_batch_size=32, seed=0, process_index=0, process_count=1
    )
    batch = parallel.global_batch(next(rows), s.mesh)
    trainer_step = steps.compile_train_step(s.parts, config.parallel, s.mesh, s.state_sharding)
    shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), (state, batch)
    )
    assert trainer_step.lower(*shapes).as_text() == trainer_step.lower(state, batch).as_text()
    _, metrics = planned.compiled.executable(state, batch)
    assert np.isfinite(float(metrics["loss"]))


def test_memory_per_device_is_predicted_for_another_layout(planned):
    """The line through two compilations (32 and 16 rows) predicts a third, 8 rows: one device's
    share of data parallelism over 4."""
    s = planned.setup
    third = plan.compile_step(s, 8)
    predicted = planned.memory_model.bytes_on(4)
    assert predicted == pytest.approx(total(third.memory), rel=0.05)
    assert planned.memory_model.bytes_on(1) == pytest.approx(total(planned.memory), rel=1e-9)
    assert planned.memory_model.bytes_on(3) is None  # 32 rows do not split over 3 devices.


def test_measure_allocates_what_the_plan_says(planned):
    measured = plan.measure(planned, steps_to_time=2)
    assert measured["allocated_bytes"] == planned.memory["argument"]
    assert measured["peak_bytes"] is None  # XLA:CPU reports no memory_stats.
    assert measured["mfu"] is None and measured["ms_per_step"] > 0
    assert np.isfinite(measured["loss"])
    text = plan.describe_measured(planned, measured)
    assert "2 steps" in text and "no peak reported by cpu" in text


def test_gpt2_flop_estimate_is_nanogpts():
    """GPT-2 124M as nanoGPT's train_gpt2 builds it: 123.59M parameters without the position
    table (nanoGPT prints "number of parameters: 123.59M"), 6N + 12 L D T FLOPs per token."""
    c = cfg.load_experiment("experiments/openwebtext_gpt2.py")
    parts = steps.build(c, (1024,))
    params = steps.abstract_state(parts)["params"]
    n = 124_373_760 - 1024 * 768
    assert n == 123_587_328
    assert plan.gpt_flops_per_token(c, params, 1024) == 6 * n + 12 * 12 * 768 * 1024


def test_devices_table(planned):
    text = planned.describe(mfu=0.5)
    assert "parameters  14,976" in text
    for device in plan.DEVICES:
        assert f"  {device.name} " in text
    # A tiny model fits one of anything: one device each, and the run's time at 50% MFU.
    assert all(layout.devices == 1 for layout in planned.layouts)
    h100 = next(d for d in plan.DEVICES if d.name == "H100 SXM")
    seconds = planned.step_seconds(h100, 1, 0.5)
    assert seconds == pytest.approx(planned.model_flops / (989e12 * 0.5))
    estimate = planned.estimate_flops / planned.compiled_flops
    assert 0.5 < estimate < 1.5  # XLA also counts the softmax, norms and the optimizer.


def test_device_kinds_are_recognised():
    class Fake:
        platform = "gpu"

        def __init__(self, kind):
            self.device_kind = kind

    names = {
        "NVIDIA A100-SXM4-40GB": "A100 40GB",
        "NVIDIA A100-SXM4-80GB": "A100 80GB",
        "NVIDIA H100 80GB HBM3": "H100 SXM",
        "NVIDIA H100 PCIe": "H100 PCIe",
        "NVIDIA H200": "H200",
        "NVIDIA L4": "L4",
        "NVIDIA A10": "A10",
        "TPU v5 lite": "TPU v5e",
        "TPU v5": "TPU v5p",
    }
    for kind, name in names.items():
        assert plan.device_kind(Fake(kind)).name == name, kind
    assert plan.device_kind(Fake("NVIDIA L40S")) is None  # Not an L4: unknown.
    assert plan.device_kind(Fake("NVIDIA A10G")) is None  # AWS's variant, not the A10.


def test_plan_command(planned, monkeypatch, capsys):
    """launch.py plan passes the experiment and its overrides to plan.make and prints the plan."""
    seen = []
    monkeypatch.setattr(plan, "make", lambda config: seen.append(config) or planned)
    status = launch.main(["plan", f"--config={SPEC}", "--mfu=0.5", "--config.train.steps=100"])
    assert status == 0 and seen[0].train.steps == 100
    out = capsys.readouterr().out
    assert "parameters  14,976" in out and "50% MFU" in out
    assert launch.main(["plan", f"--config={SPEC}", "--mfu=2"]) == 2
    assert "--mfu=2.0" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_on_eight_devices_with_fsdp(tmp_path):
    """On 8 (fake) devices with FSDP over 2: the plan's state per device is the real sharded
    state's, and the memory model's state on an 8-device mesh is the compiled one's."""
    program = (
        "import json, jax\n"
        "from research import config as cfg, plan\n"
        f"c = cfg.build_config({SPEC!r}, {{'parallel.fsdp': 2}})\n"
        "p = plan.make(c)\n"
        "m = plan.measure(p, 1)\n"
        "print(json.dumps(dict(devices=jax.device_count(), state=p.state, memory=p.memory,\n"
        "    allocated=m['allocated_bytes'], predicted=p.memory_model.bytes_on(8),\n"
        "    num_params=p.num_params)))\n"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["num_params"] == 14_976
    assert r["allocated"] == r["memory"]["argument"]  # The sharded state and 4 rows, real.
    # FSDP halves every array with an even dimension: all of them here but AdamW's count.
    assert r["state"]["params"] == 4 * 14_976 // 2
    assert r["predicted"] == pytest.approx(total(r["memory"]), rel=1e-9)


def test_accelerator_benchmark_without_an_accelerator_says_so_and_exits_0():
    out = subprocess.run(
        [sys.executable, "bench/accelerator.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        out.stdout.startswith("no accelerator: JAX's backend is cpu")
        and "nothing measured" in out.stdout
    )
