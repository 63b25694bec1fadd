"""Hugging Face checkpoints in and out (research/pretrained.py), without torch.

tests/fixtures/hf/<name>/ holds small random-weight checkpoints that `transformers` saved, with the
outputs it computed on fixed inputs (made by tests/fixtures/make_hf_fixtures.py). Imported here,
our models give those outputs to float32 rounding (bound 1e-4; measured 2e-7 to 3e-6); exported
back, the tensors are the fixture's, name for name and bit for bit. Then the other ways in: shards,
the released checkpoints' layouts (no base prefix, old buffers, tied copies, gamma/beta, heads of
other classes), `init.source` (the same checks as a run's checkpoint, and the experiment's model
fields against config.json), the mistakes (one line each), and a GPT trained here that survives
export -> import -> evaluation with identical metrics (`launch.py export` too; a LoRA run is
exported with its adapters merged).
"""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import launch
from research import checkpoint, evaluate, initialize, lora, models, pretrained, train
from research import config as cfg
from research.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
NAMES = ("gpt2", "bert_cls", "bert_mlm", "bert", "vit_cls", "vit")


def outputs(name: str, model, variables) -> dict[str, np.ndarray]:
    """Our model's outputs on the fixture's inputs, named as transformers names them."""
    ref = np.load(FIXTURES / name / "reference.npz")
    if name.startswith("gpt2"):
        return {"logits": model.apply(variables, ref["input/input_ids"], train=False)}
    if name.startswith("bert"):
        out = model.apply(
            variables, ref["input/input_ids"], ref["input/token_type_ids"], train=False
        )
        return (
            dict(zip(("last_hidden_state", "pooler_output"), out))
            if name == "bert"
            else {"logits": out}
        )
    images = ref["input/pixel_values"].transpose(0, 2, 3, 1)  # transformers' NCHW -> our NHWC
    out = model.apply(variables, images, train=False)
    return {"pooler_output": out} if name == "vit" else {"logits": out}


def max_difference(name: str, directory: Path | None = None) -> float:
    model, variables = pretrained.load(directory or FIXTURES / name)
    ref = np.load(FIXTURES / name / "reference.npz")
    ours = outputs(name, model, variables)
    assert ours, name
    return max(float(np.abs(np.asarray(v) - ref[f"output/{k}"]).max()) for k, v in ours.items())


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_transformers(name):
    assert max_difference(name) <= 1e-4


def test_config_json_becomes_our_model_config():
    gpt2 = pretrained.read(FIXTURES / "gpt2").model_config
    assert {k: gpt2[k] for k in ("vocab_size", "block_size", "num_layers", "num_heads")} == dict(
        vocab_size=97, block_size=24, num_layers=2, num_heads=4
    )
    assert (gpt2["embed_dim"], gpt2["mlp_ratio"], gpt2["activation"]) == (32, 4.0, "gelu")
    assert (gpt2["norm_epsilon"], gpt2["use_bias"], gpt2["tie_embeddings"]) == (1e-5, True, True)
    bert = pretrained.read(FIXTURES / "bert_cls").model_config
    assert models.build(bert).sizes == dict(num_layers=2, hidden_size=48, num_heads=3, mlp_dim=80)
    assert (bert["head"], bert["num_classes"], bert["type_vocab_size"]) == ("classifier", 3, 3)
    assert (bert["activation"], bert["layer_norm_epsilon"], bert["pooler"]) == (
        "gelu_exact",
        1e-12,
        True,
    )
    mlm = pretrained.read(FIXTURES / "bert_mlm").model_config
    assert (mlm["head"], mlm["pooler"]) == ("mlm", False)  # BertForMaskedLM has no pooler
    vit = pretrained.read(FIXTURES / "vit").model_config
    assert (vit["num_classes"], vit["representation_size"], vit["patch_size"]) == (0, 32, 4)
    assert (vit["activation"], vit["layer_norm_epsilon"]) == ("gelu_exact", 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_export_writes_the_fixtures_tensors_and_reads_back_bitwise(name, tmp_path):
    imported = pretrained.read(FIXTURES / name)
    image_size = imported.hf_config.get("image_size")  # 16 x 12: not the square the export guesses
    architecture = pretrained.export(
        imported.model_config, imported.params, tmp_path, image_size=image_size
    )
    assert architecture == imported.architecture
    original, written = (
        load_file(FIXTURES / name / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    back = pretrained.read(tmp_path)
    assert back.model_config == imported.model_config and back.architecture == architecture
    assert_same_params(back.params, imported.params)


def assert_same_params(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert sorted(flat_a) == sorted(flat_b)
    for key in flat_a:
        assert flat_a[key].dtype == flat_b[key].dtype and np.array_equal(flat_a[key], flat_b[key])


def copy_fixture(name: str, to: Path, tensors=None, **config_changes) -> Path:
    """A fixture's directory, its tensors and config.json optionally changed."""
    to.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURES / name / "config.json").read_text()) | config_changes
    (to / "config.json").write_text(json.dumps(config))
    if tensors is None:
        shutil.copy(FIXTURES / name / "model.safetensors", to)
    else:
        save_file(tensors, to / "model.safetensors", metadata={"format": "pt"})
    return to


def test_sharded_checkpoints_read_as_one(tmp_path):
    tensors = load_file(FIXTURES / "bert_cls" / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, tmp_path / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(FIXTURES / "bert_cls" / "config.json", tmp_path)
    assert_same_params(
        pretrained.read(tmp_path).params, pretrained.read(FIXTURES / "bert_cls").params
    )


def test_the_released_checkpoints_layouts(tmp_path):
    # GPT-2 as OpenAI's gpt2 is stored: GPT2Model names (no "transformer."), causal-mask buffers.
    tensors = {
        k.removeprefix("transformer."): v
        for k, v in load_file(FIXTURES / "gpt2" / "model.safetensors").items()
    }
    tensors |= {f"h.{i}.attn.bias": np.ones((1, 1, 24, 24), np.float32) for i in range(2)}
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()  # a tied copy, equal
    for architecture in ("GPT2Model", "GPT2LMHeadModel"):
        directory = copy_fixture(
            "gpt2", tmp_path / architecture, tensors, architectures=[architecture]
        )
        assert max_difference("gpt2", directory) <= 1e-4
    tensors["lm_head.weight"][0, 0] += 1  # a tied copy that is not a copy
    directory = copy_fixture("gpt2", tmp_path / "untied", tensors)
    with pytest.raises(ConfigError, match="lm_head.weight differs from wte.weight; our model ties"):
        pretrained.read(directory)

    # BERT as bert-base-uncased is stored: BertForMaskedLM with the pre-training heads' tensors
    # (pooler, next-sentence head), the decoder's tied copies, TensorFlow's gamma/beta names.
    tensors = load_file(FIXTURES / "bert_mlm" / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in tensors.items()
    }
    extra = {
        "cls.predictions.decoder.weight": tensors["bert.embeddings.word_embeddings.weight"],
        "cls.predictions.decoder.bias": tensors["cls.predictions.bias"],
        "cls.seq_relationship.weight": np.ones((2, 48), np.float32),
        "cls.seq_relationship.bias": np.ones(2, np.float32),
        "bert.embeddings.position_ids": np.arange(40)[None],
        "bert.pooler.dense.weight": np.eye(48, dtype=np.float32),
        "bert.pooler.dense.bias": np.zeros(48, np.float32),
    }
    directory = copy_fixture("bert_mlm", tmp_path / "bert", renamed | extra)
    imported = pretrained.read(directory)
    assert imported.unused == ("cls.seq_relationship.bias", "cls.seq_relationship.weight")
    assert imported.model_config["pooler"] and imported.model_config["head"] == "mlm"
    assert max_difference("bert_mlm", directory) <= 1e-4


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(drop="bert.encoder.layer.1.attention.self.key.bias"),
            "tensors missing from the file: bert.encoder.layer.1.attention.self.key.bias",
        ),
        (
            dict(add="bert.encoder.layer.2.output.dense.weight"),
            "tensors with no place in our bert (BertForSequenceClassification): bert.encoder.layer.2.output.dense.weight",
        ),
        (
            dict(config={"hidden_act": "silu"}),
            "config.json hidden_act='silu' has no counterpart here",
        ),
        (
            dict(config={"position_embedding_type": "relative_key"}),
            "position_embedding_type='relative_key': only absolute",
        ),
        (
            dict(config={"architectures": ["BertForQuestionAnswering"]}),
            "architectures=['BertForQuestionAnswering'] names none of the classes",
        ),
        (
            dict(config={"hidden_size": 64, "num_attention_heads": 4}),
            "classifier.weight [(3, 48)] gives (48, 3) for classifier/kernel, but config.json implies (64, 3)",
        ),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_tensor_or_field(change, message, tmp_path):
    tensors = load_file(FIXTURES / "bert_cls" / "model.safetensors")
    tensors.pop(change.get("drop", ""), None)
    if "add" in change:
        tensors[change["add"]] = np.zeros((48, 80), np.float32)
    directory = copy_fixture("bert_cls", tmp_path / "d", tensors, **change.get("config", {}))
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        pretrained.read(directory)
    assert "\n" not in str(e.value)


def test_not_a_hugging_face_directory(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json; give a Hugging Face model"):
        pretrained.read(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="save it again with safe_serialization=True"):
        pretrained.read(tmp_path)


# --- init.source ----------------------------------------------------------------------------


def experiment_model(fixture: str, **changes) -> dict:
    """The model config an experiment would give, agreeing with `fixture`'s, changed."""
    return pretrained.read(FIXTURES / fixture).model_config | changes


def abstract_params(model_config: dict, inputs) -> dict:
    model = models.build(model_config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False))["params"]


def test_init_source_takes_a_hugging_face_directory():
    # Fine-tuning BertForMaskedLM weights as a 5-way classifier: the encoder copied, the new
    # head (and the pooler, which the MLM checkpoint lacks) fresh, the MLM head left behind.
    model = experiment_model("bert_mlm", head="classifier", num_classes=5, pooler=True)
    tokens = (jnp.zeros((1, 4), jnp.int32),)
    init = ml_collections.ConfigDict(
        dict(source=str(FIXTURES / "bert_mlm"), step=0, include="", exclude="^(classifier|pooler)/")
    )
    initialize.check_model(init, model)  # agrees: no error
    plan = initialize.plan(init, abstract_params(model, tokens))
    assert plan.architecture == "BertForMaskedLM"
    assert len(plan.copied) == 29  # 5 embedding and 2 x 12 encoder arrays
    assert plan.fresh == ("classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel")
    assert set(plan.unused) == {
        "mlm_bias",
        "mlm_norm/bias",
        "mlm_norm/scale",
        "mlm_transform/bias",
        "mlm_transform/kernel",
    }
    fresh = models.build(model).init(jax.random.key(0), *tokens, train=False)["params"]
    params = initialize.apply(plan, fresh)
    source = pretrained.flat_params(pretrained.read(FIXTURES / "bert_mlm"))
    flat = traverse_util.flatten_dict(params, sep="/")
    for path in plan.copied:
        assert np.array_equal(flat[path], source[path]), path
    assert np.array_equal(
        flat["classifier/kernel"], traverse_util.flatten_dict(fresh, sep="/")["classifier/kernel"]
    )
    assert "(Hugging Face BertForMaskedLM)" in plan.describe()

    # Without the exclusion the missing pooler is named, as for a run's checkpoint.
    with pytest.raises(ConfigError, match="the model's parameter pooler/bias is not in"):
        initialize.plan(changed(init, exclude="^classifier/"), abstract_params(model, tokens))
    with pytest.raises(ConfigError, match="init.step=3: .* is a Hugging Face directory"):
        initialize.plan(changed(init, step=3), abstract_params(model, tokens))


def changed(init: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(init.to_dict() | fields)


@pytest.mark.parametrize(
    "name, field, value, says",
    [
        (
            "bert_cls",
            "activation",
            "gelu",
            "its config.json hidden_act gives model.activation='gelu_exact', the experiment has 'gelu'; set --config.model.activation='gelu_exact'",
        ),
        (
            "bert_cls",
            "size",
            "tiny",
            "its config.json hidden_size gives model.hidden_size=48, the experiment has 128",
        ),
        (
            "vit_cls",
            "layer_norm_epsilon",
            1e-6,
            "its config.json layer_norm_eps gives model.layer_norm_epsilon=1e-12, the experiment has 1e-06",
        ),
        (
            "gpt2",
            "mlp_ratio",
            2.0,
            "its config.json n_inner gives model.mlp_ratio=4.0, the experiment has 2.0",
        ),
        (
            "gpt2",
            "name",
            "bert",
            "it holds a 'gpt' model (GPT2LMHeadModel), the experiment model.name='bert'",
        ),
    ],
)
def test_the_experiments_model_must_be_what_config_json_describes(name, field, value, says):
    model = experiment_model(name, **{field: value}) if field != "name" else {"name": value}
    if field == "size":  # the Turc et al. size alone decides
        model |= dict(num_layers=0, hidden_size=0, num_heads=0, mlp_dim=0)
    init = ml_collections.ConfigDict(
        dict(source=str(FIXTURES / name), step=0, include="", exclude="")
    )
    with pytest.raises(ConfigError, match=re.escape(says)) as e:
        initialize.check_model(init, model)
    assert "\n" not in str(e.value)


def test_config_validation_runs_the_check():
    with pytest.raises(
        ConfigError, match=re.escape("model.hidden_size=48, the experiment has 128")
    ):
        cfg.build_config(
            "experiments/shakespeare_bert.py:smoke", {"init.source": str(FIXTURES / "bert_mlm")}
        )


# --- a GPT trained here: export, import, evaluate ---------------------------------------------


@pytest.fixture(scope="module")
def trained_gpt(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gpt")
    config = cfg.build_config("experiments/shakespeare_char_gpt.py:smoke", {})
    result = train.run(config, workdir)
    return config, workdir, result


def test_a_trained_gpt_survives_export_import_and_evaluation(trained_gpt, tmp_path):
    config, workdir, trained = trained_gpt
    assert config.model.use_bias is False  # nanoGPT's layout: exported with zero biases
    out = tmp_path / "hf"
    assert pretrained.export_run(workdir, out) == "GPT2LMHeadModel"

    # Through init.source into the same experiment: bitwise the run's parameters, the same metrics.
    result = evaluate.evaluate(config, out, tmp_path / "eval")
    assert result["metrics"] == trained["metrics"]

    # Through load(): a GPT-2 with zero biases, computing the same logits.
    model, variables = pretrained.load(out)
    assert model.use_bias and not any(
        np.any(v)
        for p, v in pretrained.flat_params(pretrained.read(out)).items()
        if p.endswith("bias")
    )
    _, state = checkpoint.restore_state(workdir / "checkpoints")
    tokens = jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % config.model.vocab_size
    ours = models.build(config.model).apply({"params": state["params"]}, tokens, train=False)
    np.testing.assert_array_equal(model.apply(variables, tokens, train=False), ours)


def test_lora_fine_tuning_the_imported_gpt_on_another_text(tmp_path):
    """Issue 15, item 7: a GPT pre-trained here on one text, exported, imported through
    init.source (a Hugging Face directory) and LoRA-fine-tuned on another text: the loss falls,
    the frozen base stays bitwise the imported weights."""
    rng = np.random.default_rng(7)

    def text(name: str, words: list[str]) -> str:
        body = " ".join(str(rng.choice(words)) for _ in range(600))
        (tmp_path / name).write_text("abcdefghijklmnopqrstuvwxyz\n" + body)  # one alphabet
        return str(tmp_path / name)

    common = {
        "data.mock": "false",
        "data.data_dir": str(tmp_path / "tfds"),
        "optimizer.learning_rate": "1e-2",
        "schedule.warmup_steps": "0",
        "train.steps": "60",
        "train.log_every_steps": "5",
        "train.eval_every_steps": "60",
        "train.checkpoint_every_steps": "60",
    }
    spec = "experiments/shakespeare_char_gpt.py:smoke"
    first = text("a.txt", ["to", "be", "or", "not", "that", "is", "the", "question"])
    train.run(cfg.build_config(spec, common | {"data.path": first}), tmp_path / "pre")
    exported = tmp_path / "hf"
    pretrained.export_run(tmp_path / "pre", exported)

    other = text("b.txt", ["quick", "brown", "fox", "jumps", "over", "lazy", "dog"])
    fine = {"data.path": other, "init.source": str(exported), "lora.rank": "4"}
    fine |= {"lora.alpha": "4.0", "lora.targets": "kernel$"}
    tuned = tmp_path / "lora"
    result = train.run(cfg.build_config(spec, common | fine), tuned)
    records = [json.loads(line) for line in (tuned / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert 0 < result["num_trainable_params"] < result["num_params"] / 2
    _, state = checkpoint.restore_state(tuned / "checkpoints")
    _, original = checkpoint.restore_state(tmp_path / "pre" / "checkpoints")
    base = jax.tree.map(np.asarray, lora.base(state["params"]))
    want = jax.tree.map(np.asarray, original["params"])
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(base), jax.tree.leaves(want)):
        assert x.tobytes() == y.tobytes(), path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step=5"], "--step=5 is not a checkpoint of"),
        (["--out=EXISTING"], "exists and is not an empty directory; give a new one"),
        (["--workdir=NOWHERE"], "has no config.json; pass the --workdir of a training run"),
    ],
)
def test_launch_export_mistakes_are_one_line_and_write_nothing(
    trained_gpt, tmp_path, capsys, args, message
):
    _, workdir, _ = trained_gpt
    (tmp_path / "EXISTING").mkdir()
    (tmp_path / "EXISTING" / "notes.txt").write_text("mine")
    flags = {"--workdir": str(workdir), "--out": str(tmp_path / "new")}
    for arg in args:
        key, _, value = arg.partition("=")
        flags[key] = str(tmp_path / value) if value.isupper() else value
    assert launch.main(["export", *(f"{k}={v}" for k, v in flags.items())]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    assert [p.name for p in (tmp_path / "EXISTING").iterdir()] == ["notes.txt"]


def test_launch_export_writes_what_transformers_reads(trained_gpt, tmp_path, capsys):
    _, workdir, _ = trained_gpt
    out = tmp_path / "hf"
    assert launch.main(["export", f"--workdir={workdir}", f"--out={out}", "--step=12"]) == 0
    assert f"wrote GPT2LMHeadModel to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (1, 2, 32)


def test_layouts_hugging_face_cannot_express_are_refused(tmp_path):
    for fields, message in [
        (dict(pos_emb="rotary"), "model.pos_emb='rotary': Hugging Face's GPT-2 has 'learned' only"),
        (dict(norm="rms"), "model.norm='rms': Hugging Face's GPT-2 has 'layer' only"),
        (dict(activation="swiglu"), "model.activation='swiglu' has no Hugging Face counterpart"),
    ]:
        model_config = {"name": "gpt"} | models.SMOKE_SIZES["gpt"] | dict(vocab_size=40) | fields
        params = abstract_params(model_config, (jnp.zeros((1, 4), jnp.int32),))
        with pytest.raises(ConfigError, match=re.escape(message)):
            pretrained.export(model_config, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_lora_run_is_exported_with_its_adapters_merged(tmp_path):
    config = cfg.build_config("experiments/shakespeare_char_gpt.py:smoke", {"lora.rank": "2"})
    train.run(config, tmp_path / "run")
    pretrained.export_run(tmp_path / "run", tmp_path / "hf")
    _, state = checkpoint.restore_state(tmp_path / "run" / "checkpoints")
    merged = traverse_util.flatten_dict(lora.merge(state["params"], config.lora.alpha), sep="/")
    exported = pretrained.flat_params(pretrained.read(tmp_path / "hf"))
    for path, value in merged.items():
        assert np.array_equal(exported[path], value), path
    base = np.asarray(state["params"]["h_0"]["attn"]["qkv"]["kernel"])
    assert not np.array_equal(exported["h_0/attn/qkv/kernel"], base)  # the adapters trained


def test_half_precision_files_import_exactly_as_float32(tmp_path):
    tensors = load_file(FIXTURES / "vit_cls" / "model.safetensors")
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    imported = pretrained.read(copy_fixture("vit_cls", tmp_path / "fp16", half))
    kernel = imported.params["head"]["kernel"]
    assert kernel.dtype == np.float32
    assert np.array_equal(kernel, half["classifier.weight"].T.astype(np.float32))


@pytest.mark.parametrize(
    "model_config, inputs, architecture",
    [
        (  # untied LM head, MLP 3x, erf GELU
            dict(name="gpt", vocab_size=50, block_size=12, num_layers=2, num_heads=2)
            | dict(embed_dim=24, mlp_ratio=3.0, tie_embeddings=False, activation="gelu_exact"),
            (np.zeros((1, 12), np.int32),),
            "GPT2LMHeadModel",
        ),
        (  # masked LM and next sentence, 8-wide heads, tanh GELU
            dict(name="bert", size="", num_layers=1, hidden_size=40, num_heads=5, mlp_dim=56)
            | dict(vocab_size=60, max_len=16, head="mlm_nsp", activation="gelu"),
            (np.ones((1, 16), np.int32),),
            "BertForPreTraining",
        ),
        (  # no pooler, no head
            dict(name="vit", variant="", width=24, depth=1, num_heads=3, mlp_dim=40)
            | dict(patch_size=3, num_classes=0, activation="relu"),
            (np.zeros((1, 9, 12, 3), np.float32),),
            "ViTModel",
        ),
    ],
)
def test_other_layouts_export_and_read_back_bitwise(model_config, inputs, architecture, tmp_path):
    # Checked once with transformers too (docs/pretrained.md): it loads them, outputs within 1e-6.
    model = models.build(model_config)
    params = model.init(jax.random.key(1), *inputs, train=False)["params"]
    rng = np.random.default_rng(0)  # no zeros: they would hide a tensor in the wrong place
    params = jax.tree.map(
        lambda p: np.asarray(p) + rng.normal(size=p.shape).astype(p.dtype), params
    )
    image_size = [9, 12] if model_config["name"] == "vit" else None
    assert pretrained.export(model_config, params, tmp_path, image_size=image_size) == architecture
    back = pretrained.read(tmp_path)
    assert_same_params(back.params, params)
    rebuilt = models.build(back.model_config).apply({"params": back.params}, *inputs, train=False)
    original = model.apply({"params": params}, *inputs, train=False)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, original)
