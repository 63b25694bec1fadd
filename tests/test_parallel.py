"""Every parallel strategy and a two-process run compute what one device computes (CPU only).

Fake CPU devices need XLA_FLAGS before JAX starts, so multi-device runs happen in subprocesses:
this file run as a script is the worker (`python tests/test_parallel.py ROOT RUNS_JSON`), and
the 4-device and two-process runs go through launch.py itself. The test process keeps its single
device and makes the single-device reference runs while the subprocesses work.

Runs: the digits CNN smoke model (no BatchNorm, no dropout) for the strategies, ResNet-8 for
BatchNorm; STEPS steps, loss logged every step. Equal up to float32 summation order: TOLERANCE
is the bound asserted; the errors measured when it was written are in docs/scaling.md (about
1e-7 on the loss, 2e-6 on the parameters).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from research import checkpoint, data, parallel, train
from research import config as cfg

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = "experiments/digits_cnn.py:smoke"
RESNET = "experiments/digits_resnet.py:smoke"  # ResNet-8: BatchNorm.
# float32 convolutions: "auto" picks bf16 operands on some CPUs, whose rounding of per-device
# kernel gradients differs from one device's by more than TOLERANCE.
RESNET_EXACT = {"model.conv_impl": "xla"}
STEPS = 8
OVERRIDES = {
    "train.steps": str(STEPS),
    "train.log_every_steps": "1",
    "train.eval_every_steps": str(STEPS),
    "train.checkpoint_every_steps": str(STEPS // 2),
}
# Per-step training loss and final parameters: |a - b| <= atol + rtol * |b|.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
# The strategies on 8 fake devices; "fsdp" shards the state 4 ways on a (data 2, fsdp 4) mesh.
STRATEGIES = {
    "pmap": {"parallel.strategy": "pmap"},
    "shard_map": {"parallel.strategy": "shard_map"},
    "gspmd": {"parallel.strategy": "gspmd"},
    "fsdp": {"parallel.strategy": "gspmd", "parallel.fsdp": "4"},
}
# {name: (experiment, overrides)} for the 8-device workers (two, to keep both cores busy).
WORKERS = [
    {name: (EXPERIMENT, overrides) for name, overrides in STRATEGIES.items()},
    {
        "resnet_synced_bn": (RESNET, {"parallel.strategy": "shard_map", **RESNET_EXACT}),
        "resnet_per_device_bn": (
            RESNET,
            {"parallel.strategy": "pmap", "parallel.sync_batch_stats": "false", **RESNET_EXACT},
        ),
    },
]
TIMEOUT_S = 400


# -------------------------------------------------------------------------------------------------
# Helpers.
# -------------------------------------------------------------------------------------------------


def fake_devices(n: int) -> dict[str, str]:
    # TFDS_DATA_DIR (tests/conftest.py) is inherited; PYTHONPATH lets the worker import research.
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "PYTHONPATH": str(ROOT),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(workdir: Path) -> np.ndarray:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    assert sorted(losses) == list(range(1, STEPS + 1)), workdir
    return np.array([losses[s] for s in range(1, STEPS + 1)])


def saved_state(workdir: Path, step: int) -> dict:
    """The train state saved at `step`, restored onto this process's one device."""
    _, state = checkpoint.restore_state(workdir / "checkpoints", step)
    return jax.tree.map(np.asarray, state)


def continue_from(workdir: Path, new_workdir: Path, step: int) -> None:
    """A copy of `workdir` as it was when it checkpointed `step` (later checkpoints removed)."""
    shutil.copytree(workdir, new_workdir)
    for later in (new_workdir / "checkpoints").iterdir():
        if later.name.isdigit() and int(later.name) > step:
            shutil.rmtree(later)
    (new_workdir / "results.json").unlink()


def assert_close(a, b, what: str) -> None:
    np.testing.assert_allclose(a, b, **TOLERANCE, err_msg=what)


def launch(args: list[str], devices: int, log: Path) -> tuple[subprocess.Popen, Path]:
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=fake_devices(devices), stdout=out, stderr=out
        )
    return process, log


def wait(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert code == 0, f"{process.args} exited {code}:\n{log.read_text()[-3000:]}"


# -------------------------------------------------------------------------------------------------
# The runs: started together, compared by the tests below.
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: workdir} of every run (see make_runs); subprocesses do not outlive a failure."""
    root = tmp_path_factory.mktemp("parallel")
    jobs = []
    started = time.time()
    try:
        make_runs(root, jobs)
    finally:
        for process, _ in jobs:
            if process.poll() is None:
                process.kill()
    print(f"parallel runs: {time.time() - started:.0f}s")
    names = ["1_device", "resnet_1_device", "4_devices", "2_processes"]
    names += [name for runs in WORKERS for name in runs]
    return {name: root / name for name in names}


def make_runs(root: Path, jobs: list) -> None:
    """Subprocesses work while the test process makes the single-device runs; the two-process
    run takes over the 4-device run at step STEPS / 2."""
    config = cfg.build_config(EXPERIMENT, OVERRIDES)
    data.info(config.data)  # Prepare the dataset once, before four processes want it.
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    for i, runs in enumerate(WORKERS):
        jobs.append(launch([__file__, str(root), json.dumps(runs)], 8, root / f"8_{i}.log"))
    four = ["launch.py", f"--config={EXPERIMENT}", f"--workdir={root / '4_devices'}", *flags]
    jobs.append(launch(four, 4, root / "4_devices.log"))
    train.run(config, root / "1_device")

    wait(*jobs[-1])
    continue_from(root / "4_devices", root / "2_processes", STEPS // 2)
    port = free_port()
    for i in range(2):
        two = [
            "launch.py",
            f"--config={EXPERIMENT}",
            f"--workdir={root / '2_processes'}",
            *flags,
            "--config.parallel.strategy=pmap",
            f"--coordinator=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ]
        jobs.append(launch(two, 2, root / f"2_processes_{i}.log"))
    train.run(cfg.build_config(RESNET, OVERRIDES | RESNET_EXACT), root / "resnet_1_device")
    for job in jobs:
        wait(*job)


def test_the_test_process_has_one_device():
    assert jax.device_count() == 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_on_8_devices_matches_one_device(runs, strategy):
    """Same losses at every step and same final parameters as the single-device run."""
    assert_close(train_losses(runs[strategy]), train_losses(runs["1_device"]), f"{strategy} loss")
    ours, reference = saved_state(runs[strategy], STEPS), saved_state(runs["1_device"], STEPS)
    for x, y in zip(jax.tree.leaves(ours["params"]), jax.tree.leaves(reference["params"])):
        assert_close(x, y, f"{strategy} params")
    assert int(ours["step"]) == STEPS


@pytest.mark.slow
def test_strategies_agree_with_each_other(runs):
    losses = {name: train_losses(runs[name]) for name in STRATEGIES}
    for name, values in losses.items():
        assert_close(values, losses["pmap"], f"{name} vs pmap")
    # pmap and shard_map run the same per-device program on the same rows.
    np.testing.assert_array_equal(losses["pmap"], losses["shard_map"])


@pytest.mark.slow
def test_fsdp_shards_parameters_and_optimizer_state(runs):
    """The worker reports the shardings of the state it saved: kernels and Adam moments split 4
    ways over "fsdp" (replicated over "data"); scalars and the 10-wide bias replicated."""
    shardings = json.loads((runs["fsdp"] / "shardings.json").read_text())
    kernel = "['params']['Dense_0']['kernel']"  # (1024, 128)
    assert shardings[kernel] == {"spec": "P('fsdp',)", "shard_shape": [256, 128]}
    moments = [k for k in shardings if k.startswith("['opt_state']") and "kernel" in k]
    assert len(moments) == 8  # mu and nu of four kernels.
    for name in moments + [k for k in shardings if k.startswith("['params']") and "kernel" in k]:
        assert "'fsdp'" in shardings[name]["spec"], name
    assert shardings["['params']['Dense_1']['bias']"]["spec"] == "P()"  # 10 rows: not divisible.
    assert shardings["['step']"]["spec"] == "P()"
    replicated = json.loads((runs["gspmd"] / "shardings.json").read_text())
    assert {s["spec"] for s in replicated.values()} == {"P()"}


@pytest.mark.slow
def test_batch_norm_statistics_synchronised_or_per_device(runs):
    """Synchronised BatchNorm under shard_map computes what one device computes; per-device
    statistics (sync_batch_stats=false, 16 rows each) are a different, still replicated, model."""
    reference = train_losses(runs["resnet_1_device"])
    assert_close(train_losses(runs["resnet_synced_bn"]), reference, "synced BatchNorm")
    per_device = train_losses(runs["resnet_per_device_bn"])
    assert np.all(np.isfinite(per_device))
    assert np.abs(per_device - reference).max() > 1e-3


@pytest.mark.slow
def test_two_processes_take_over_and_match_one_process_with_as_many_devices(runs):
    """2 processes x 2 devices restore the 1 x 4 run's step-4 checkpoint (orbax, from both
    processes), read each their half of every batch, train on with pmap, and end where the
    4-device run (gspmd) ended."""
    assert_close(train_losses(runs["2_processes"]), train_losses(runs["4_devices"]), "losses")
    a, b = saved_state(runs["2_processes"], STEPS), saved_state(runs["4_devices"], STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert_close(x, y, "state")
    first, second = (
        (runs["2_processes"].parent / f"2_processes_{i}.log").read_text() for i in range(2)
    )
    assert "resumed from step 4" in first and "resumed from step 4" in second
    assert "4 device(s), steps 4->8" in first
    # Only process 0 wrote the workdir files and printed.
    assert json.loads((runs["2_processes"] / "results.json").read_text())["step"] == STEPS
    assert (runs["2_processes"] / "metrics.jsonl").read_text().count('"split": "test"') == 1
    assert "step 8/8" not in second and "test/accuracy" not in second


@pytest.mark.slow
def test_checkpoint_from_8_devices_restores_on_1_and_continues(runs, tmp_path):
    """The FSDP run's step-4 checkpoint (sharded over 8 devices) restores bit for bit onto one
    device, and training on from it retraces the 8-device run's steps 5..8."""
    workdir = tmp_path / "resumed"
    continue_from(runs["fsdp"], workdir, STEPS // 2)
    saved_on_8 = np.load(runs["fsdp"] / "state_at_4.npz")
    restored_on_1 = jax.tree_util.tree_flatten_with_path(saved_state(workdir, STEPS // 2))[0]
    for path, value in restored_on_1:
        np.testing.assert_array_equal(value, saved_on_8[jax.tree_util.keystr(path)])

    result = train.run(cfg.build_config(EXPERIMENT, OVERRIDES), workdir)
    assert result["step"] == STEPS
    assert_close(train_losses(workdir), train_losses(runs["fsdp"]), "resumed losses")
    a, b = saved_state(workdir, STEPS), saved_state(runs["fsdp"], STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert_close(x, y, "resumed state")


def test_invalid_parallel_settings_are_config_errors():
    mesh_config = lambda **fields: (
        cfg.build_config(EXPERIMENT, {f"parallel.{k}": v for k, v in fields.items()}).parallel
    )
    with pytest.raises(cfg.ConfigError, match="choose one of"):
        parallel.make_mesh(mesh_config(strategy="dp"))
    with pytest.raises(cfg.ConfigError, match="must divide"):
        parallel.make_mesh(mesh_config(fsdp="0"))
    with pytest.raises(cfg.ConfigError, match="needs parallel.strategy=gspmd"):
        parallel.make_mesh(mesh_config(strategy="pmap", fsdp="2"))
    with pytest.raises(cfg.ConfigError, match="sync_batch_stats=false needs"):
        parallel.make_mesh(mesh_config(sync_batch_stats="false"))
    with pytest.raises(cfg.ConfigError, match="give all of"):
        parallel.initialize_distributed(coordinator="127.0.0.1:1234")


def test_batch_norm_axis_follows_strategy_and_sync_flag():
    axis = lambda **fields: parallel.batch_norm_axis(
        cfg.build_config(EXPERIMENT, {f"parallel.{k}": v for k, v in fields.items()}).parallel
    )
    assert axis() is None  # gspmd: statistics are global already.
    assert axis(strategy="pmap") == axis(strategy="shard_map") == "data"
    assert axis(strategy="pmap", sync_batch_stats="false") is None


# -------------------------------------------------------------------------------------------------
# The worker: several runs in one process with the fake devices of XLA_FLAGS.
# -------------------------------------------------------------------------------------------------


def _worker(root: Path, runs: dict[str, tuple[str, dict[str, str]]]) -> None:
    """Train each run; save its step-4 state as numpy and report where each array lived."""
    import orbax.checkpoint as ocp  # Onto the saved shardings: this test is about the format.

    for name, (experiment, overrides) in runs.items():
        workdir = root / name
        train.run(cfg.build_config(experiment, OVERRIDES | overrides), workdir)
        manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
        restore = ocp.args.Composite(state=ocp.args.StandardRestore())
        state = manager.restore(STEPS // 2, args=restore)["state"]  # Onto the saved shardings.
        manager.close()
        flat = [
            (jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
        ]
        np.savez(workdir / "state_at_4.npz", **{k: np.asarray(x) for k, x in flat})
        shardings = {
            k: {
                "spec": str(x.sharding.spec),
                "shard_shape": list(x.addressable_shards[0].data.shape),
            }
            for k, x in flat
        }
        (workdir / "shardings.json").write_text(json.dumps(shardings, indent=1))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), json.loads(sys.argv[2]))
