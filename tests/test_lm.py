"""Language modelling: the lm task's numbers, text windows, the local text builder, sampling, and
shakespeare_char_gpt end to end (smoke variant on tfds's mock text; no network, no shared data)."""

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch
from research import config as cfg
from research import data, models, train
from research.data import sources, text, text_file
from research.models import gpt
from research.tasks import decoding, lm

SEQ_LEN = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str, str]:
    """(text, path, data_dir): 3,001 characters of pseudo-words, with one non-ASCII letter."""
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "café"]
    pieces, length = [], 0
    while length < 3001:
        pieces.append(str(rng.choice(words)) + str(rng.choice([" ", " ", ",\n"])))
        length += len(pieces[-1])
    corpus_text = "".join(pieces)[:3001]
    root = tmp_path_factory.mktemp("text")
    path = root / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return corpus_text, str(path), str(root / "tensorflow_datasets")


def text_config(path: str, data_dir: str, **overrides):
    c = cfg.defaults().data
    c.update(dict(kind="text", path=path, data_dir=data_dir, seq_len=SEQ_LEN) | overrides)
    return c


# -------------------------------------------------------------------------------------------------
# The task.
# -------------------------------------------------------------------------------------------------


def numpy_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_loss_matches_numpy_cross_entropy_and_metrics_follow():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
    batch = {"inputs": targets, "targets": targets}
    reference = numpy_cross_entropy(logits, targets)

    loss, _ = lm.train_loss(jnp.asarray(logits), batch)
    assert float(loss) == pytest.approx(reference.mean(), rel=1e-6)

    outputs = jax.tree.map(np.asarray, lm.eval_outputs(jnp.asarray(logits), batch))
    np.testing.assert_allclose(outputs["loss"], reference.mean(-1), rtol=1e-6)
    metrics, details = lm.summarize(outputs, None)
    assert metrics["loss"] == pytest.approx(reference.mean(), rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    assert metrics["bits_per_token"] == pytest.approx(metrics["loss"] / math.log(2), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == targets))
    assert details == {"windows": 3}


# -------------------------------------------------------------------------------------------------
# Data: the local builder, the vocabulary, training windows, evaluation windows.
# -------------------------------------------------------------------------------------------------


def test_local_builder_split_is_nanogpts_and_contiguous(corpus):
    corpus_text, path, data_dir = corpus
    source = text_file.builder(path, data_dir)
    read = lambda split: "".join(x["text"].decode() for x in source.as_data_source(split))
    n = len(corpus_text)  # characters, not bytes: "é" is two bytes
    assert read("train") == corpus_text[: int(n * 0.9)]  # nanoGPT prepare.py: data[:int(n*0.9)]
    assert read("validation+test") == corpus_text[int(n * 0.9) :]  # and val = the rest
    assert read("train") + read("validation") + read("test") == corpus_text
    assert abs(len(read("validation")) - len(read("test"))) <= 1

    config = text_config(path, data_dir)
    tok = text.tokenizer(config)
    assert tok.chars == sorted(set(corpus_text))  # the whole text's characters, sorted
    assert tok.decode(text.split_tokens(config, "train")) == corpus_text[: int(n * 0.9)]
    info = data.info(config)
    assert (info.num_classes, info.class_names) == (len(set(corpus_text)), [])
    assert (info.input_shape, info.num_train) == ((SEQ_LEN,), int(n * 0.9))


def test_changed_file_is_prepared_again(tmp_path):
    path, data_dir = tmp_path / "t.txt", str(tmp_path / "tfds")
    path.write_text("abcdefghij" * 30)
    config = text_config(str(path), data_dir)
    assert set(text.tokenizer(config).chars) == set("abcdefghij")
    path.write_text("klmnopqrst" * 30)
    assert text.tokenizer(config).decode(text.split_tokens(config, "train")) == "klmnopqrst" * 27
    assert len(list((tmp_path / "tfds" / "text_file").iterdir())) == 2  # one dataset per content


def test_train_windows_are_shifted_pairs_drawn_from_the_train_split(corpus):
    _, path, data_dir = corpus
    config = text_config(path, data_dir)
    tokens = text.split_tokens(config, "train")
    windows = np.lib.stride_tricks.sliding_window_view(tokens, SEQ_LEN + 1)
    iterator = data.train_iterator(
        config, global_batch_size=16, seed=0, process_index=0, process_count=1
    )
    starts = []
    for _ in range(4):
        batch = next(iterator)
        assert batch["inputs"].shape == batch["targets"].shape == (16, SEQ_LEN)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        for x, y in zip(batch["inputs"], batch["targets"]):
            # x = data[i:i+T] and y = data[i+1:i+T+1] for some i in [0, len - T).
            pair = np.concatenate([x, y[-1:]])
            matches = np.flatnonzero((windows == pair).all(-1))
            assert len(matches) and np.array_equal(y[:-1], x[1:])
            starts.append(matches[0])
    assert max(starts) < len(tokens) - SEQ_LEN and len(set(starts)) > 50


def test_train_batches_are_seeded_resumable_and_sliced_per_process(corpus):
    _, path, data_dir = corpus
    config = text_config(path, data_dir)
    make = lambda seed, index=0, count=1: data.train_iterator(
        config, global_batch_size=8, seed=seed, process_index=index, process_count=count
    )
    take = lambda it, k: [next(it) for _ in range(k)]

    first, again, other = take(make(1), 5), take(make(1), 5), take(make(2), 5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])

    iterator = make(1)
    take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
    resumed = make(1)
    resumed.set_state(state)
    for a, b in zip(take(resumed, 3), first[2:]):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"], b["targets"])

    # Two processes: process p's batch k is rows p, p + 2, ... of the global batch k.
    halves = [take(make(1, index, 2), 2) for index in range(2)]
    for k in range(2):
        for index in range(2):
            np.testing.assert_array_equal(halves[index][k]["inputs"], first[k]["inputs"][index::2])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_windows_cover_the_split_once_with_masks(corpus, process_count):
    _, path, data_dir = corpus
    config = text_config(path, data_dir)
    tokens = text.split_tokens(config, "validation+test")
    num_windows = (len(tokens) - 1) // SEQ_LEN
    per_process = [
        list(
            data.eval_batches(
                config,
                "validation+test",
                global_batch_size=16,
                process_index=index,
                process_count=process_count,
            )
        )
        for index in range(process_count)
    ]
    assert len({len(batches) for batches in per_process}) == 1  # processes stay in step
    windows = {}  # global window index -> (inputs, targets)
    for index, batches in enumerate(per_process):
        for b, batch in enumerate(batches):
            assert batch["mask"].shape == (16 // process_count,) and batch["mask"].dtype == bool
            padding = ~batch["mask"]
            assert not batch["inputs"][padding].any() and not batch["targets"][padding].any()
            for row in np.flatnonzero(batch["mask"]):
                # Process p holds rows p, p + count, ... of each global batch.
                g = b * 16 + index + row * process_count
                assert g not in windows
                windows[g] = batch["inputs"][row], batch["targets"][row]
    assert sorted(windows) == list(range(num_windows))  # every window once, then padding
    for g, (x, y) in windows.items():
        np.testing.assert_array_equal(x, tokens[g * SEQ_LEN : (g + 1) * SEQ_LEN])
        np.testing.assert_array_equal(y, tokens[g * SEQ_LEN + 1 : (g + 1) * SEQ_LEN + 1])


def test_user_errors_are_one_line(tmp_path, corpus):
    _, path, data_dir = corpus
    with pytest.raises(cfg.ConfigError, match="data.kind"):
        data.info(text_config(path, data_dir, kind="audio"))
    with pytest.raises(cfg.ConfigError, match="data.tokenizer"):
        data.info(text_config(path, data_dir, tokenizer="bytes"))
    with pytest.raises(cfg.ConfigError, match="too few"):
        data.info(text_config(path, data_dir, seq_len=100_000))
    with pytest.raises(sources.DatasetUnavailable, match="cannot be read"):
        data.info(text_config(str(tmp_path / "missing.txt"), data_dir))


# -------------------------------------------------------------------------------------------------
# Models and decoding.
# -------------------------------------------------------------------------------------------------


def test_recipe_model_has_nanogpts_parameter_count():
    """nanoGPT prints "number of parameters: 10.65M" for train_shakespeare_char (without wpe)."""
    config = cfg.load_experiment("experiments/shakespeare_char_gpt.py")
    model = models.build(config.model)
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    count = sum(x.size for x in jax.tree.leaves(shapes))
    assert count - 256 * 384 == 10_646_784


@pytest.mark.parametrize(
    "arg, steps, batch",
    [
        ("cpu", 10, 12),  # the CPU recipe as written: 10 steps per call, dtype "auto"
        ("cpu,fp32", 2, 12),
        ("", 1, 2),  # the A100 recipe (10.7M params, context 256) at batch 2
    ],
)
def test_each_variant_trains_on_mock_text(tmp_path, arg, steps, batch):
    """The recipe and cpu variants as written, shortened, on tfds's mock text (11 characters)."""
    overrides = {
        "data.mock": True,
        "train.steps": steps,
        "train.batch_size": batch,
        "train.eval_batch_size": 64,
        "train.eval_every_steps": steps,
        "train.checkpoint_every_steps": steps,
        "schedule.warmup_steps": 0,
        "expected.metric": "",
    }
    config = cfg.build_config(f"experiments/shakespeare_char_gpt.py:{arg}", overrides)
    cpu, fp32 = arg.startswith("cpu"), arg.endswith("fp32")
    assert config.model.dtype == ("auto" if cpu and not fp32 else "float32")
    assert config.train.steps_per_call == (10 if cpu else 1)
    assert config.optimizer.grad_accum_steps == (2 if cpu else 1)
    result = train.run(config, tmp_path)
    assert result["step"] == steps and result["num_params"] == (804_096 if cpu else 10_745_088)
    # 65 outputs at init (ln 65 = 4.17); the mock text uses 11 of them (ln 11 = 2.40). Measured:
    # cpu 2.67 after 10 steps, cpu,fp32 3.40 after 2, the recipe 3.00 after 1.
    assert result["metrics"]["eval/loss"] < (3.0 if steps == 10 else 3.75)


def test_fp32_is_a_cpu_variant_word():
    with pytest.raises(cfg.ConfigError, match="use :cpu,fp32"):
        cfg.load_experiment("experiments/shakespeare_char_gpt.py:fp32")


def test_generate_past_the_context_length():
    """Greedy chunks: each token is the argmax given the tokens of its chunk before it."""
    model = gpt.GPTTiny(vocab_size=11, block_size=8)
    prompt = jnp.array([[1, 2, 3]], jnp.int32)
    init = jax.jit(functools.partial(model.init, train=False))  # jitted: 10x faster than eager
    params = init(jax.random.key(0), prompt)["params"]
    # 5 tokens fill the first block; then chunks restart from the last 4 tokens and add 4.
    out = decoding.generate(
        model, params, prompt, 5 + 4 * 3, rng=jax.random.key(1), temperature=0.0
    )
    assert out.shape == (1, 20) and np.array_equal(out[:, :3], prompt)
    assert out.min() >= 0 and out.max() < 11
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens, train=False))
    # First chunk: positions 3..7 from the prompt on. Second: positions 8..11 from tokens 4..7.
    np.testing.assert_array_equal(forward(out[:, :7]).argmax(-1)[:, 2:], out[:, 3:8])
    np.testing.assert_array_equal(forward(out[:, 4:11]).argmax(-1)[:, 3:], out[:, 8:12])


# -------------------------------------------------------------------------------------------------
# End to end: the smoke variant through the trainer, then `launch.py sample` on its workdir.
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm_smoke")
    config = cfg.build_config("experiments/shakespeare_char_gpt.py:smoke", {})
    return workdir, config, train.run(config, workdir)


def test_smoke_variant_trains_and_evaluates_every_window(smoke_run):
    workdir, config, result = smoke_run
    assert (
        result["step"] == config.train.steps
        and result["experiment"] == "shakespeare_char_gpt:smoke"
    )
    assert set(result["metrics"]) >= {"eval/loss", "eval/perplexity", "test/bits_per_token"}
    # The trainer's padded, masked evaluation equals one plain forward pass over every window.
    state = train_state(workdir)
    batch = next(
        iter(
            data.eval_batches(
                config.data,
                config.data.test_split,
                global_batch_size=4096,
                process_index=0,
                process_count=1,
            )
        )
    )
    mask = batch["mask"]
    logits = models.build(config.model).apply(
        {"params": state["params"]}, batch["inputs"][mask], train=False
    )
    loss = numpy_cross_entropy(np.asarray(logits), batch["targets"][mask]).mean()
    assert result["details"]["test"]["windows"] == mask.sum()
    assert result["metrics"]["test/loss"] == pytest.approx(loss, rel=1e-5)


def train_state(workdir: Path) -> dict:
    from research import sample

    config, params, step = sample.load(workdir)
    return {"params": params, "step": step}


def test_launch_sample_prints_text(smoke_run, capsys):
    workdir, config, _ = smoke_run
    status = launch.main(
        ["sample", f"--workdir={workdir}", "--prompt=ab", "--max_new_tokens=22", "--num_samples=2"]
    )
    out = capsys.readouterr().out
    assert status == 0
    samples = out.rstrip("\n").split("\n---------------\n")
    assert len(samples) == 2
    for sample_text in samples:
        assert sample_text.startswith("ab") and len(sample_text) == 24  # past block_size 16
        assert set(sample_text) <= set(" abcdefghij")  # the mock text's characters


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "not_lm"])
def test_launch_sample_bad_workdir_is_one_line_exit_2(tmp_path, capsys, case):
    if case != "missing":
        task = "lm" if case == "no_checkpoint" else "classification"
        (tmp_path / "config.json").write_text(json.dumps({"task": task}))
    status = launch.main(
        ["sample", f"--workdir={tmp_path / 'run' if case == 'missing' else tmp_path}"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
