"""Fine-tuning and parameter-efficient fine-tuning: parameter groups (trainable, freeze,
lr_multipliers, layer_decay; research/optim.py) and LoRA (research/lora.py), on tiny models and
through the real trainer."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import launch
from research import checkpoint, lora, models, optim, sample, steps, train
from research import config as cfg
from research.models import bert, gpt, transformer, vit

GPT_SMOKE = "experiments/shakespeare_char_gpt.py:smoke"


def lora_config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(cfg.defaults().lora) | fields)


def optimizer_config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(cfg.defaults().optimizer) | fields)


def gpt_names() -> list[str]:
    abstract = jax.eval_shape(
        lambda: gpt.GPTTiny().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), train=False)
    )
    return optim.param_names(abstract["params"])


def saved_params(workdir: Path) -> dict:
    _, state = checkpoint.restore_state(workdir / "checkpoints")
    return jax.tree.map(np.asarray, state["params"])


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert optim.param_names(a) == optim.param_names(b)
    for name, x, y in zip(optim.param_names(a), jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


# -------------------------------------------------------------------------------------------------
# Parameter groups.
# -------------------------------------------------------------------------------------------------


def test_layer_decay_multipliers_are_beits_exactly():
    """GPTTiny has 2 blocks: embeddings d^3, block 0 d^2, block 1 d, final norm 1 (BEiT)."""
    names = gpt_names()
    got = optim.lr_multipliers(
        optimizer_config(layer_decay=0.5, lr_multipliers=(("^ln_f/", 10.0), ("ln_", 3.0))),
        names,
        layers=models.LAYERS["gpt"],
    )
    assert got["wte/embedding"] == got["wpe/embedding"] == 0.125
    assert got["h_0/attn/qkv/kernel"] == got["h_0/mlp/proj/bias"] == 0.25
    assert got["h_1/attn/qkv/kernel"] == got["h_1/mlp/fc/kernel"] == 0.5
    assert got["h_0/ln_1/scale"] == 0.25 * 3.0  # The first matching pattern only.
    assert got["ln_f/scale"] == got["ln_f/bias"] == 10.0
    assert set(got) == set(names)


@pytest.mark.parametrize(
    ("name", "module", "inputs", "expected"),
    [
        (
            "bert",
            bert.BertTiny(head="classifier", vocab_size=64, max_len=16),
            (jnp.ones((1, 8), jnp.int32),),
            {
                "word_embeddings/embedding": 0,
                "segment_embeddings/embedding": 0,
                "position_embeddings/embedding": 0,
                "embeddings_norm/scale": 0,
                "layer_0/attn/qkv/kernel": 1,
                "layer_1/ln_2/bias": 2,
                "pooler/kernel": 3,
                "classifier/bias": 3,
            },
        ),
        (
            "vit",
            vit.ViTTiny(num_classes=10),
            (jnp.zeros((1, 8, 8, 3)),),
            {
                "embedding/kernel": 0,
                "cls": 0,
                "pos_embedding": 0,
                "encoderblock_0/mlp/fc/kernel": 1,
                "encoderblock_1/attn/out/kernel": 2,
                "encoder_norm/scale": 3,
                "head/kernel": 3,
            },
        ),
    ],
)
def test_layer_depths_of_bert_and_vit(name, module, inputs, expected):
    """Depth d gives the multiplier 0.5 ** (L + 1 - d), L = 2 blocks."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, train=False))
    names = optim.param_names(abstract["params"])
    got = optim.lr_multipliers(optimizer_config(layer_decay=0.5), names, layers=models.LAYERS[name])
    assert {n: got[n] for n in expected} == {n: 0.5 ** (3 - d) for n, d in expected.items()}


def test_groups_scale_the_plain_update_exactly_and_freeze_without_state():
    """One AdamW update (weight decay on): each trainable parameter's update is the ungrouped
    chain's times its multiplier, bit for bit; frozen ones get exactly 0 and no optimizer state."""
    names = gpt_names()
    params = gpt.GPTTiny().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), train=False)[
        "params"
    ]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.1 * p, params)
    fields = dict(name="adamw", learning_rate=1e-3, weight_decay=0.1, clip_norm=0.0)
    schedule = cfg.defaults().schedule
    plain, _ = optim.build_optimizer(optimizer_config(**fields), schedule, 10)
    grouped = optimizer_config(**fields, freeze="^h_0/attn/", layer_decay=0.5)
    tx, _ = optim.build_optimizer(grouped, schedule, 10, layers=models.LAYERS["gpt"])
    multipliers = optim.lr_multipliers(grouped, names, layers=models.LAYERS["gpt"])
    assert sorted(n for n, m in multipliers.items() if m == 0) == [
        "h_0/attn/out/bias",
        "h_0/attn/out/kernel",
        "h_0/attn/qkv/bias",
        "h_0/attn/qkv/kernel",
    ]

    expected, _ = plain.update(grads, plain.init(params), params)
    state = tx.init(params)
    got, _ = tx.update(grads, state, params)
    for name, e, g in zip(names, jax.tree.leaves(expected), jax.tree.leaves(got)):
        m = multipliers[name]
        want = np.zeros_like(e) if m == 0 else np.asarray(e) * np.float32(m)
        assert np.asarray(g).tobytes() == want.tobytes(), name

    # Adam's two moments exist for the trainable parameters only (plus scalar step counts).
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if x.ndim)
    trainable = sum(p.size for n, p in zip(names, jax.tree.leaves(params)) if multipliers[n])
    frozen = size(params) - trainable
    assert frozen == 3 * 16 * 16 + 3 * 16 + 16 * 16 + 16
    assert size(state) == 2 * trainable and size(plain.init(params)) == 2 * size(params)


def test_frozen_parameters_are_bitwise_unchanged_after_real_training_steps():
    """Five real train steps (AdamW, weight decay 0.1, clipping) of the smoke GPT with its
    embeddings frozen: they do not move by one bit, everything else does."""
    config = cfg.build_config(GPT_SMOKE, {"optimizer.freeze": "^(wte|wpe)/"})
    parts = steps.build(config, (16,))
    state = steps.init_state(parts, parts.init_key)
    before = jax.tree.map(np.asarray, state["params"])
    step = jax.jit(lambda s, b: steps.train_step(parts, s, b))
    rng = np.random.default_rng(0)
    for _ in range(5):
        tokens = rng.integers(0, 65, (8, 17)).astype(np.int32)
        state, metrics = step(state, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    assert np.isfinite(float(metrics["loss"]))
    after = jax.tree.map(np.asarray, state["params"])
    for name, x, y in zip(
        optim.param_names(before), jax.tree.leaves(before), jax.tree.leaves(after)
    ):
        assert (x.tobytes() == y.tobytes()) == name.startswith(("wte/", "wpe/")), name


# -------------------------------------------------------------------------------------------------
# LoRA on every model.
# -------------------------------------------------------------------------------------------------

TOKENS = jnp.array([[5, 9, 3, 7, 2, 0, 0, 0], [1, 4, 4, 8, 6, 3, 2, 9]], jnp.int32)
MODELS = {
    "gpt": (gpt.GPTTiny(), (TOKENS,), {}),
    "bert": (
        bert.BertTiny(head="classifier", vocab_size=64, max_len=16),
        (TOKENS, (jnp.arange(8) >= 4).astype(jnp.int32)[None].repeat(2, 0)),
        {},
    ),
    "vit": (
        vit.ViTTiny(num_classes=10, head_zero_init=False),
        (jax.random.normal(jax.random.key(1), (2, 8, 8, 3)),),
        {},
    ),
    "transformer": (transformer.TransformerTiny(), (TOKENS, TOKENS), {}),
}
LORA_VARIANTS = {
    "fused_all_dense": dict(rank=4, alpha=8.0, targets="/kernel$"),
    "qv_slices": dict(rank=2, alpha=3.0, targets="attn/qkv/kernel", qkv="qv"),
}


@pytest.mark.parametrize("variant", LORA_VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_lora_starts_as_the_base_model_and_merges_to_the_same_outputs(name, variant):
    module, args, kwargs = MODELS[name]
    adapted = lora.adapt(module, lora_config(**LORA_VARIANTS[variant]))
    variables = adapted.init(jax.random.key(0), *args, **kwargs, train=False)
    params = variables["params"]
    names = optim.param_names(params)
    adapted_layers = {n.rpartition("/")[0] for n in names if lora.is_factor(n)}
    if variant == "qv_slices":  # Attention's fused q|k|v projections, a pair for q and for v.
        assert adapted_layers == {n[: -len("/kernel")] for n in names if n.endswith("qkv/kernel")}
        assert {n.rpartition("_")[2] for n in names if lora.is_factor(n)} == {"q", "v"}
    else:  # Every Dense layer: the 2-D kernels (not the ViT's patch convolution).
        kernels = zip(names, jax.tree.leaves(params))
        dense = {n[: -len("/kernel")] for n, x in kernels if n.endswith("/kernel") and x.ndim == 2}
        assert adapted_layers == dense
    base_params = lora.base(params)
    # Step 0: B = 0, so the adapted model is the base model exactly (the same initial base, too).
    plain = module.init(jax.random.key(0), *args, **kwargs, train=False)["params"]
    assert_bitwise_equal(jax.tree.map(np.asarray, base_params), jax.tree.map(np.asarray, plain))
    base_out = module.apply({"params": base_params}, *args, **kwargs, train=False)
    np.testing.assert_array_equal(adapted.apply(variables, *args, **kwargs, train=False), base_out)

    # Trained adapters (B random): merged weights in the plain model give the adapted outputs.
    def randomize(path, leaf):
        if "lora_b" not in str(path[-1]):
            return leaf
        return 0.1 * jax.random.normal(jax.random.key(len(str(path))), leaf.shape)

    trained = jax.tree_util.tree_map_with_path(randomize, params)
    out = adapted.apply({"params": trained}, *args, **kwargs, train=False)
    merged = lora.merge(trained, LORA_VARIANTS[variant]["alpha"])
    assert optim.param_names(merged) == optim.param_names(plain)
    merged_out = module.apply({"params": merged}, *args, **kwargs, train=False)
    assert float(jnp.max(jnp.abs(out - base_out))) > 1e-3  # The adapters do change the outputs.
    np.testing.assert_allclose(merged_out, out, atol=1e-5, rtol=1e-5)


def test_lora_parameter_counts_and_dropout_only_in_training():
    """Rank 8 on GPT-2 124M's fused qkv: 12 x 8 x (768 + 2304) = 294,912 trainable (0.24%); the
    paper's W_q, W_v slices cost the same (12 x 2 x 8 x (768 + 768)). Dropout: training only."""

    def count(**fields):
        adapted = lora.adapt(gpt.GPT2(), lora_config(rank=8, **fields))
        abstract = jax.eval_shape(
            lambda: adapted.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), train=False)
        )
        sizes = {n: x.size for n, x in zip(optim.param_names(abstract), jax.tree.leaves(abstract))}
        return sum(s for n, s in sizes.items() if lora.is_factor(n)), sum(sizes.values())

    assert count() == (294_912, 124_439_808 + 294_912)
    assert count(qkv="qv") == (294_912, 124_439_808 + 294_912)

    module, args, _ = MODELS["gpt"]
    adapted = lora.adapt(module, lora_config(rank=4, dropout=0.5, targets="kernel$"))
    variables = adapted.init(jax.random.key(0), *args, train=False)
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 if "lora_b" in str(p[-1]) else x, variables["params"]
    )
    run = lambda train, key: adapted.apply(
        {"params": trained}, *args, train=train, rngs={"dropout": jax.random.key(key)}
    )
    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    assert not np.allclose(run(True, 0), run(True, 1))


# -------------------------------------------------------------------------------------------------
# Through the trainer.
# -------------------------------------------------------------------------------------------------


def test_lora_run_reports_trainable_parameters_keeps_state_for_adapters_only_and_resumes(tmp_path):
    """The smoke GPT (15,488 parameters) with rank-4 adapters on q and v: 512 trainable; the
    optimizer holds 2 x 512 numbers; 12 steps in one go == 5, stop, relaunch, 7 (bitwise)."""
    overrides = {"lora.rank": "4", "lora.qkv": "qv", "train.checkpoint_every_steps": "3"}
    prep = train.prepare(cfg.build_config(GPT_SMOKE, overrides), tmp_path / "unused")
    assert (prep.num_params, prep.num_trainable) == (15_488, 512)
    opt_leaves = jax.tree.leaves(prep.abstract_state["opt_state"])
    assert sum(x.size for x in opt_leaves if x.shape) == 2 * 512

    whole = train.run(cfg.build_config(GPT_SMOKE, overrides), tmp_path / "whole")
    assert whole["num_params"] == 15_488 and whole["num_trainable_params"] == 512
    train.run(cfg.build_config(GPT_SMOKE, overrides), tmp_path / "split", stop_after_step=5)
    resumed = train.run(cfg.build_config(GPT_SMOKE, overrides), tmp_path / "split")
    _, a = checkpoint.restore_state(tmp_path / "whole" / "checkpoints")
    _, b = checkpoint.restore_state(tmp_path / "split" / "checkpoints")
    assert_bitwise_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))
    assert whole["metrics"] == resumed["metrics"]


def write_text(path: Path, words: list[str], seed: int) -> str:
    """3,000 characters of pseudo-words, every letter of a-z present (one shared vocabulary)."""
    rng = np.random.default_rng(seed)
    pieces = ["abcdefghijklmnopqrstuvwxyz\n"]
    while sum(map(len, pieces)) < 3000:
        pieces.append(str(rng.choice(words)) + str(rng.choice([" ", " ", ",\n"])))
    path.write_text("".join(pieces)[:3000])
    return str(path)


def test_lora_fine_tuning_a_tiny_gpt_on_another_text(tmp_path):
    """Pre-train the smoke GPT on one text, then LoRA-fine-tune it on another: the loss falls
    while the frozen base stays bitwise the pre-trained weights; the merged model samples."""
    data_dir = str(tmp_path / "tfds")
    text_a = write_text(tmp_path / "a.txt", ["to", "be", "or", "not", "that", "is"], 0)
    text_b = write_text(tmp_path / "b.txt", ["quick", "brown", "fox", "jumps", "lazy", "dog"], 1)
    common = {
        "data.mock": "false",
        "data.data_dir": data_dir,
        "train.steps": "60",
        "train.log_every_steps": "5",
        "train.eval_every_steps": "60",
        "train.checkpoint_every_steps": "60",
        "optimizer.learning_rate": "1e-2",
        "schedule.warmup_steps": "0",
    }
    pre = cfg.build_config(GPT_SMOKE, common | {"data.path": text_a})
    train.run(pre, tmp_path / "pretrained")
    fine = {
        "data.path": text_b,
        "init.source": str(tmp_path / "pretrained"),
        "lora.rank": "4",
        "lora.targets": "kernel$",  # Every Dense: q|k|v, out, fc, proj.
        "lora.alpha": "4.0",
    }
    result = train.run(cfg.build_config(GPT_SMOKE, common | fine), tmp_path / "lora")

    records = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses
    # r (d_in + d_out) for q|k|v [32, 96], out [32, 32], fc [32, 128], proj [128, 32].
    assert result["num_trainable_params"] == 4 * (32 + 96 + 32 + 32 + 32 + 128 + 128 + 32)
    pretrained, tuned = saved_params(tmp_path / "pretrained"), saved_params(tmp_path / "lora")
    assert_bitwise_equal(lora.base(tuned), pretrained)
    assert len(sample.sample(tmp_path / "lora", prompt="the", max_new_tokens=4)[0]) == 7


# -------------------------------------------------------------------------------------------------
# Bad settings: one line, before anything is written.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "overrides", "message"),
    [
        (
            GPT_SMOKE,
            {"lora.rank": "2", "lora.targets": "no_such_layer"},
            "matches none of the model's Dense",
        ),
        (GPT_SMOKE, {"lora.rank": "2", "lora.targets": ""}, "lora.targets is empty"),
        (
            GPT_SMOKE,
            {"lora.rank": "2", "lora.qkv": "qv", "lora.targets": "mlp/fc"},
            "adapts no qkv kernel",
        ),
        (GPT_SMOKE, {"lora.rank": "0", "lora.alpha": "16"}, "lora.alpha applies to LoRA"),
        (GPT_SMOKE, {"optimizer.freeze": "no_such_param"}, "optimizer.freeze='no_such_param'"),
        (GPT_SMOKE, {"optimizer.trainable": "zzz"}, "optimizer.trainable='zzz' matches none"),
        (GPT_SMOKE, {"optimizer.freeze": "."}, "no parameter trains"),
        (GPT_SMOKE, {"optimizer.lr_multipliers": "(('^zz', 2.0),)"}, "matches none"),
        (GPT_SMOKE, {"optimizer.lr_multipliers": "('^h_0/', 2.0)"}, "(regex, factor > 0) pairs"),
        (GPT_SMOKE, {"optimizer.lr_multipliers": "(('^h_0/', 0.0),)"}, "pairs"),
        (GPT_SMOKE, {"optimizer.layer_decay": "1.0"}, "optimizer.layer_decay must be"),
        ("experiments/digits_cnn.py:smoke", {"optimizer.layer_decay": "0.8"}, "layer order"),
        ("experiments/digits_cnn.py:smoke", {"lora.rank": "2", "lora.targets": "conv"}, "Dense"),
    ],
)
def test_bad_settings_are_refused_in_one_line(spec, overrides, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = [f"--config={spec}", f"--workdir={workdir}"]
    assert launch.main(argv + [f"--config.{k}={v}" for k, v in overrides.items()]) == 2
    # The last line; TFDS's progress bars may come before it, preparing the digits on first use.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and message in errors[0], lines
    assert not workdir.exists()


def test_a_merged_tree_without_adapters_is_unchanged():
    params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    assert_bitwise_equal(lora.merge(params, 8.0), params)
    assert_bitwise_equal(lora.base(params), params)
