"""Tensor parallelism (research/sharding.py): every (data, fsdp, tensor) mesh computes what one
device computes, lays the Transformer's matrices out Megatron-style, and a checkpoint saved on
one mesh restores on another; the plan's memory per device falls with tensor=2 (CPU only).

Fake CPU devices need XLA_FLAGS before JAX starts, so the 8-device work happens in one
subprocess: this file run as a script is the worker (`python tests/test_tensor_parallel.py OUT`).
The test process keeps its single device and makes the reference.

Model: the smoke GPT (1 layer, 2 heads, 32 wide, 16 tokens) with a 96-token vocabulary, so that
tensor=2 splits the (tied) embedding; mock text data, batch 32. Per mesh the worker computes the
loss and gradients of one batch and runs one real training step (the trainer's gspmd step).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from research import config as cfg
from research import data, parallel, sharding, steps, train

ROOT = Path(__file__).resolve().parents[1]
SPEC = "experiments/shakespeare_char_gpt.py:smoke"
OVERRIDES = {"data.mock": "true", "model.vocab_size": "96", "train.batch_size": "32"}
MESHES = ["data=8", "data=4,tensor=2", "data=2,fsdp=2,tensor=2", "fsdp=4,tensor=2"]
SAVE_ON, RESTORE_ON = "data=2,fsdp=2,tensor=2", "fsdp=4,tensor=2"
# Float32 summation order differs with the layout: |a - b| <= atol + rtol * |b|.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
TIMEOUT_S = 300


def build(mesh: str, **more: str):
    """(config, parts, abstract state) of the tiny GPT on `mesh`, checked as the trainer checks."""
    config = cfg.build_config(SPEC, OVERRIDES | {"parallel.mesh": mesh} | more)
    _, parts, abstract_state = train.prepare_model(config)
    return config, parts, abstract_state


def one_batch(config) -> dict[str, np.ndarray]:
    return next(
        data.train_iterator(
            config.data, global_batch_size=32, seed=0, process_index=0, process_count=1
        )
    )


def loss_grads_and_step(mesh_text: str) -> dict:
    """Loss, gradients and the state after one training step on `mesh_text`, as numpy; and the
    jax arrays of the state (for the checkpoint)."""
    config, parts, abstract_state = build(mesh_text)
    mesh = parallel.make_mesh(config.parallel)
    shardings = parallel.state_sharding(abstract_state, mesh)
    state = jax.jit(lambda key: steps.init_state(parts, key), out_shardings=shardings)(
        parts.init_key
    )
    batch = parallel.global_batch(one_batch(config), mesh)

    def loss(params):
        return steps.loss_fn(parts, params, state["model_state"], batch, parts.dropout_key)[0]

    value, grads = jax.jit(
        jax.value_and_grad(loss),
        in_shardings=(shardings["params"],),
        out_shardings=(parallel.replicated(mesh), shardings["params"]),
    )(state["params"])
    step = steps.compile_train_step(parts, config.parallel, mesh, shardings)
    after, metrics = step(state, batch)
    return {
        "loss": float(value),
        "grads": jax.tree.map(np.asarray, grads),
        "params_after": jax.tree.map(np.asarray, after["params"]),
        "step_loss": float(metrics["loss"]),
        "state": after,
        "shardings": shardings,
    }


def flat(tree) -> dict[str, np.ndarray]:
    return {sharding.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# -------------------------------------------------------------------------------------------------
# The worker: 8 fake devices.
# -------------------------------------------------------------------------------------------------


def _worker(out: Path) -> None:
    from research import checkpoint, plan

    report: dict = {"devices": jax.device_count(), "meshes": {}}
    for mesh_text in MESHES:
        result = loss_grads_and_step(mesh_text)
        arrays = {f"grads/{k}": v for k, v in flat(result["grads"]).items()}
        arrays |= {f"after/{k}": v for k, v in flat(result["params_after"]).items()}
        np.savez(out / f"{mesh_text}.npz", **arrays)
        specs = {k: str(s.spec) for k, s in flat(result["shardings"]).items()}
        report["meshes"][mesh_text] = {
            "loss": result["loss"],
            "step_loss": result["step_loss"],
            "specs": specs,
        }
        if mesh_text == SAVE_ON:
            checkpoint.write_step(out / "checkpoints", 1, result["state"], {}, {})
            saved = {k: np.asarray(v) for k, v in flat(result["state"]).items()}

    # Restore the checkpoint written on one mesh onto another mesh's shardings.
    config, _, abstract_state = build(RESTORE_ON)
    mesh = parallel.make_mesh(config.parallel)
    shardings = parallel.state_sharding(abstract_state, mesh)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
    _, restored = checkpoint.restore_state(out / "checkpoints", 1, target)
    restored = flat(restored)
    report["restore"] = {
        "max_abs_diff": max(float(np.abs(np.asarray(restored[k]) - saved[k]).max()) for k in saved),
        "same_keys": sorted(restored) == sorted(saved),
        "qkv_spec": str(restored["params/h_0/attn/qkv/kernel"].sharding.spec),
    }

    # The plan's memory per device on 8 devices, a wider GPT (state dominates): data=8 vs tensor=2.
    wider = {"model.embed_dim": "128", "model.num_heads": "4", "model.num_layers": "2"}
    report["plan"] = {}
    for mesh_text in ("data=8", "data=4,tensor=2"):
        c = cfg.build_config(SPEC, OVERRIDES | wider | {"parallel.mesh": mesh_text})
        p = plan.make(c)
        report["plan"][mesh_text] = {
            "compiled_bytes": p.memory["argument"]
            + p.memory["temp"]
            + p.memory["output"]
            - p.memory["alias"],
            "state_bytes": sum(p.state.values()),
            "predicted_on_8": p.memory_model.bytes_on(8),
        }
    (out / "report.json").write_text(json.dumps(report, indent=1))


# -------------------------------------------------------------------------------------------------
# The tests.
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The 8-device worker's report and arrays; it runs while this process makes the reference."""
    out = tmp_path_factory.mktemp("tensor_parallel")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(ROOT),
    }
    log = out / "worker.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, __file__, str(out)], cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    try:
        reference = loss_grads_and_step("")
        code = process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, log.read_text()[-3000:]
    report = json.loads((out / "report.json").read_text())
    return out, report, reference


@pytest.mark.parametrize("mesh", MESHES)
def test_every_mesh_gives_one_devices_loss_gradients_and_step(worker, mesh):
    out, report, reference = worker
    assert report["devices"] == 8
    ours = report["meshes"][mesh]
    np.testing.assert_allclose(ours["loss"], reference["loss"], **TOLERANCE)
    np.testing.assert_allclose(ours["step_loss"], reference["step_loss"], **TOLERANCE)
    assert 3.0 < reference["loss"] < 6.0  # About ln(96) = 4.56 at initialisation.
    arrays = np.load(out / f"{mesh}.npz")
    for kind, tree in (("grads", reference["grads"]), ("after", reference["params_after"])):
        for name, value in flat(tree).items():
            np.testing.assert_allclose(arrays[f"{kind}/{name}"], value, **TOLERANCE, err_msg=name)
    assert np.abs(flat(reference["grads"])["h_0/attn/qkv/kernel"]).max() > 1e-4  # Not all zero.


def test_megatron_layout_of_the_parameters_and_their_moments(worker):
    _, report, _ = worker
    specs = report["meshes"]["data=4,tensor=2"]["specs"]
    assert specs["params/h_0/attn/qkv/kernel"] == "P(None, 'tensor')"  # column
    assert specs["params/h_0/attn/out/kernel"] == "P('tensor',)"  # row
    assert specs["params/h_0/mlp/fc/kernel"] == "P(None, 'tensor')"  # column
    assert specs["params/h_0/mlp/proj/kernel"] == "P('tensor',)"  # row
    assert specs["params/wte/embedding"] == "P('tensor',)"  # vocabulary
    assert specs["params/wpe/embedding"] == "P()"  # positions: replicated
    assert specs["params/h_0/ln_1/scale"] == "P()"
    # Adam's moments live where their parameters live.
    moments = {k: v for k, v in specs.items() if k.startswith("opt_state") and "qkv" in k}
    assert len(moments) == 2 and set(moments.values()) == {"P(None, 'tensor')"}
    # FSDP takes the dimension tensor parallelism leaves.
    both = report["meshes"]["data=2,fsdp=2,tensor=2"]["specs"]
    assert both["params/h_0/attn/qkv/kernel"] == "P('fsdp', 'tensor')"
    assert both["params/h_0/attn/out/kernel"] == "P('tensor', 'fsdp')"
    assert both["params/wte/embedding"] == "P('tensor', 'fsdp')"
    plain = report["meshes"]["data=8"]["specs"]
    assert set(plain.values()) == {"P()"}


def test_checkpoint_saved_on_one_mesh_restores_on_another(worker):
    _, report, _ = worker
    assert report["restore"]["same_keys"]
    assert report["restore"]["max_abs_diff"] == 0.0
    assert report["restore"]["qkv_spec"] == "P('fsdp', 'tensor')"


def test_plan_memory_per_device_falls_with_tensor_parallelism(worker):
    _, report, _ = worker
    dp, tp = report["plan"]["data=8"], report["plan"]["data=4,tensor=2"]
    # Most of the state is in the attention, MLP and embedding matrices, which tensor=2 halves.
    assert tp["state_bytes"] < 0.6 * dp["state_bytes"]
    assert tp["compiled_bytes"] < dp["compiled_bytes"]
    assert tp["predicted_on_8"] < dp["predicted_on_8"]


def test_layouts_a_model_or_the_devices_cannot_take_are_config_errors():
    with pytest.raises(cfg.ConfigError, match="needs exactly 4 devices; this run has 1"):
        parallel.mesh_shape(
            cfg.build_config(SPEC, {"parallel.mesh": "data=2,tensor=2"}).parallel, 1
        )
    assert sharding.parse_mesh("data=-1,fsdp=2,tensor=2", 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.parse_mesh("tensor=2", 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(cfg.ConfigError, match="needs a multiple of 3 devices; this run has 8"):
        sharding.parse_mesh("tensor=3", 8)
    with pytest.raises(cfg.ConfigError, match="parallel.mesh must be empty or AXIS=SIZE"):
        cfg.validate(cfg.build_config(SPEC, {"parallel.mesh": "model=2"}))
    with pytest.raises(cfg.ConfigError, match="both set the layout"):
        parallel.mesh_shape(
            cfg.build_config(SPEC, {"parallel.mesh": "data=1", "parallel.fsdp": "2"}).parallel, 2
        )
    assert parallel.mesh_shape(cfg.build_config(SPEC, {"parallel.fsdp": "2"}).parallel, 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    # The model checks, without devices: tensor=2 with 3 heads, and a CNN.
    params = {"h_0": {"attn": {"qkv": {"kernel": jax.ShapeDtypeStruct((48, 144), np.float32)}}}}
    with pytest.raises(cfg.ConfigError, match="does not divide the 3 attention heads"):
        sharding.check_model({"tensor": 2}, "gpt", params, {3})
    conv = {"Conv_0": {"kernel": jax.ShapeDtypeStruct((3, 3, 1, 32), np.float32)}}
    with pytest.raises(cfg.ConfigError, match="model cnn has no layers tensor parallelism"):
        sharding.check_model({"tensor": 2}, "cnn", conv, set())
    with pytest.raises(cfg.ConfigError, match="tensor=2 needs parallel.strategy=gspmd"):
        parallel.validate(
            cfg.build_config(
                SPEC, {"parallel.mesh": "data=1,tensor=2", "parallel.strategy": "shard_map"}
            ),
            2,
        )


def test_heads_are_read_from_the_traced_model():
    """A real model on one device: the trainer's check finds its heads by tracing it."""
    config = cfg.build_config(SPEC, OVERRIDES | {"model.num_heads": "4"})
    parts = steps.build(config, data.info(config.data).input_shape)
    with sharding.recording_heads() as heads:
        steps.abstract_state(parts)
    assert heads == {4}


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
