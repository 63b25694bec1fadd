"""BERT: exact parameter counts, padding, heads; masking statistics; WordPiece; the speaker task;
initialising from another run's checkpoint."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import checkpoint, initialize
from research import config as cfg
from research.data import labelled_text, masked_text, speakers
from research.data.tokenizers import WordPieceTokenizer
from research.errors import ConfigError
from research.models import bert
from research.tasks import mlm

KEY = jax.random.key(0)
HEADS = ("mlm_", "nsp", "classifier")  # parameters outside "encoder with pooler"


def count(model, exclude=HEADS, length=8) -> int:
    """Parameters of `model` (shapes only), leaving out top-level names starting with `exclude`."""
    tokens = jnp.zeros((1, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(KEY, tokens, train=False))["params"]
    return sum(
        math.prod(leaf.shape)
        for name, tree in shapes.items()
        if not name.startswith(exclude)
        for leaf in jax.tree.leaves(tree)
    )


def bert_formula(layers: int, width: int, vocab=30522, positions=512, segments=2) -> int:
    """Encoder + pooler by hand: embeddings and their LayerNorm, L blocks of attention (4 [H, H]
    with biases), MLP (H -> 4H -> H with biases), two LayerNorms; the pooler [H, H] + bias."""
    embeddings = (vocab + positions + segments) * width + 2 * width
    block = 4 * (width * width + width) + 2 * 4 * width * width + 4 * width + width + 4 * width
    return embeddings + layers * block + width * width + width


def test_paper_sizes_have_their_exact_parameter_counts():
    assert count(bert.BertBase()) == 109_482_240  # BERT-base, uncased vocabulary
    assert count(bert.BertLarge()) == 335_141_888


@pytest.mark.parametrize("size", sorted(bert.SIZES))
def test_every_size_matches_the_formula(size):
    layers, width = bert.SIZES[size]
    assert count(bert.Bert(size=size)) == bert_formula(layers, width)


def test_heads_add_what_they_should():
    base = count(bert.BertTiny(), exclude=())
    encoder = bert_formula(2, 128)
    # Masked-LM head: dense H x H + bias, LayerNorm, output bias over the vocabulary (tied).
    assert base == encoder + 128 * 128 + 128 + 2 * 128 + 30522
    nsp = count(bert.BertTiny(head="mlm_nsp"), exclude=())
    assert nsp == base + 128 * 2 + 2
    classifier = count(bert.BertTiny(head="classifier", num_classes=7), exclude=())
    assert classifier == encoder + 128 * 7 + 7


def test_padding_never_changes_the_other_positions():
    model = bert.Bert(size="tiny", vocab_size=50, max_len=16, head="mlm")
    tokens = jnp.array([[2, 10, 11, 12, 3, 0, 0, 0]], jnp.int32)
    variables = model.init(KEY, tokens, train=False)
    short = model.apply(variables, tokens, train=False)
    other_pad = tokens.at[0, 5:].set(0)  # same
    longer = jnp.concatenate([tokens, jnp.zeros((1, 4), jnp.int32)], axis=1)
    out_longer = model.apply(variables, longer, train=False)
    np.testing.assert_allclose(out_longer[0, :5], short[0, :5], atol=1e-5)
    changed = model.apply(variables, other_pad.at[0, 6].set(0), train=False)
    np.testing.assert_allclose(changed[0, :5], short[0, :5], atol=1e-6)


def test_segments_and_classifier_shapes():
    model = bert.Bert(size="tiny", vocab_size=50, max_len=16, head="classifier", num_classes=3)
    tokens = jnp.ones((2, 8), jnp.int32)
    variables = model.init(KEY, tokens, train=False)
    a = model.apply(variables, tokens, jnp.zeros_like(tokens), train=False)
    b = model.apply(variables, tokens, jnp.ones_like(tokens), train=False)
    assert a.shape == (2, 3) and not np.allclose(a, b)  # segment embeddings matter
    assert model.num_outputs == 3 and bert.Bert(size="tiny").num_outputs == 30522


def test_bad_fields_are_one_line_errors():
    for fields, word in (({"size": "huge"}, "size"), ({"head": "qa"}, "head")):
        with pytest.raises(ValueError, match=word):
            bert.Bert(**fields)


# --- masking ---------------------------------------------------------------------------------


def test_masking_statistics_match_the_paper():
    special = np.array([0, 2, 3, 4])
    rng = np.random.default_rng(0)
    selected = masked_as_mask = randomized = kept = 0
    for _ in range(2000):
        ids = np.concatenate([[2], rng.integers(5, 100, size=60), [3], np.zeros(10, int)])
        masked, positions, weights = masked_text.mask_tokens(
            ids, rng, special_ids=special, mask_id=4, vocab_size=100, num_predictions=12
        )
        count = int(weights.sum())
        assert count == round(0.15 * 60) == 9  # 15% of the 60 candidates
        assert (weights[count:] == 0).all() and (positions[count:] == 0).all()
        chosen = np.zeros(ids.shape, bool)
        chosen[positions[:count]] = True
        assert chosen.sum() == count and (np.diff(positions[:count]) > 0).all()
        assert not chosen[np.isin(ids, special)].any()  # never [CLS], [SEP] or padding
        assert (masked[~chosen] == ids[~chosen]).all()
        selected += count
        masked_as_mask += (masked[chosen] == 4).sum()
        kept += (masked[chosen] == ids[chosen]).sum()
        randomized += ((masked[chosen] != 4) & (masked[chosen] != ids[chosen])).sum()
        assert not np.isin(masked[chosen & (masked != 4)], special).any()
    # 80 / 10 / 10; a random replacement equals the original 1 time in 96 (counted as kept).
    assert masked_as_mask / selected == pytest.approx(0.8, abs=0.01)
    assert randomized / selected == pytest.approx(0.1 * 95 / 96, abs=0.01)
    assert kept / selected == pytest.approx(0.1 + 0.1 / 96, abs=0.01)


def smoke_config(arg: str = "smoke", **overrides):
    return cfg.build_config(f"experiments/shakespeare_bert.py:{arg}", overrides)


def test_masks_are_a_function_of_seed_and_step():
    config = smoke_config()

    def batches(seed, count=3):
        iterator = masked_text.train_iterator(
            config.data, global_batch_size=4, seed=seed, process_index=0, process_count=1
        )
        return [next(iterator) for _ in range(count)]

    first, again, other = batches(0), batches(0), batches(1)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["positions"], other[0]["positions"])
    assert not np.array_equal(first[0]["positions"], first[1]["positions"])  # new each step
    interrupted = masked_text.train_iterator(
        config.data, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    next(interrupted), next(interrupted)
    resumed = masked_text.train_iterator(
        config.data, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    resumed.set_state(json.loads(json.dumps(interrupted.get_state())))  # as a checkpoint keeps it
    np.testing.assert_array_equal(next(resumed)["tokens"], first[2]["tokens"])
    tok = masked_text.tokenizer(config.data)
    batch = first[0]
    assert (batch["tokens"][:, 0] == tok.cls_id).all()
    assert (batch["tokens"][:, -1] == tok.sep_id).all()
    assert (batch["positions"] > 0).all()  # [CLS] is never a prediction (every slot used)
    assert batch["positions"].shape == (4, masked_text.max_predictions(config.data.seq_len))


def test_mlm_loss_counts_selected_positions_only():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, size=(2, 5)))
    weights = jnp.asarray([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], jnp.float32)
    loss, _ = mlm.train_loss(logits, {"targets": targets, "weights": weights})
    log_probs = jax.nn.log_softmax(logits)
    picked = -np.take_along_axis(np.asarray(log_probs), np.asarray(targets)[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(float((picked * weights).sum() / 3), rel=1e-6)
    outputs = mlm.eval_outputs(logits, {"targets": targets, "weights": weights})
    summary, _ = mlm.summarize(jax.tree.map(np.asarray, outputs), None)
    assert summary["loss"] == pytest.approx(float(loss), rel=1e-6)
    nsp = jnp.asarray([[2.0, 0.0], [0.0, 1.0]])
    total, parts = mlm.train_loss(
        (logits, nsp), {"targets": targets, "weights": weights, "next_sentence": jnp.array([0, 1])}
    )
    expected_nsp = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(np.e / (np.e + 1))])
    assert float(parts["nsp_loss"]) == pytest.approx(expected_nsp, rel=1e-5)
    assert float(total) == pytest.approx(float(loss) + expected_nsp, rel=1e-5)


# --- WordPiece and the speaker task ------------------------------------------------------------


def test_wordpiece_trains_and_round_trips_a_vocab_file():
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer"
    tok = WordPieceTokenizer.train(text.splitlines() * 20, vocab_size=120)
    assert tok.vocab[:5] == list(WordPieceTokenizer.SPECIAL_TOKENS)
    ids = tok.encode("To be or not")
    assert tok.decode(ids) == "to be or not"  # uncased, as BERT-uncased
    again = WordPieceTokenizer.from_vocab(tok.to_vocab())
    assert again.vocab == tok.vocab and list(again.encode("the question")) == list(
        tok.encode("the question")
    )
    # Google's layout: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
    google = (
        ["[PAD]"]
        + [f"[unused{i}]" for i in range(99)]
        + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "to", "be"]
    )
    g = WordPieceTokenizer(google)
    assert (g.pad_id, g.unk_id, g.cls_id, g.sep_id, g.mask_id) == (0, 100, 101, 102, 103)
    assert list(g.encode("To be")) == [104, 105]
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])


def test_pairs_are_truncated_longest_first_with_segments():
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokens, segments = labelled_text.encode_pair([10, 11, 12, 13], [20, 21], tok, seq_len=8)
    assert tokens.tolist() == [2, 10, 11, 12, 3, 20, 21, 3]
    assert segments.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    tokens, _ = labelled_text.encode_pair([10], None, tok, seq_len=5)
    assert tokens.tolist() == [2, 10, 3, 0, 0]


def test_speaker_task_holds_out_speeches_from_pretraining():
    play = speakers.play(None)  # the generated play
    assert len(play.names) == speakers.NUM_SPEAKERS
    sizes = {k: len(v) for k, v in play.splits.items()}
    total = sum(sizes.values())
    assert sizes["test"] == pytest.approx(0.2 * total, abs=2)
    pretraining = "".join(e["text"] for e in speakers.text(None, "train"))
    for split in ("validation", "test"):
        for example in speakers.labelled(None, split):
            assert example["text"] not in pretraining
    for example in speakers.labelled(None, "train")[:20]:
        assert example["text"] in pretraining
    blocks = speakers.speeches(["ROMEO:\nBut soft", "not a speech", "JULIET:\nAy me"])
    assert [(s.speaker, s.text, s.block) for s in blocks] == [
        ("ROMEO", "But soft", 0),
        ("JULIET", "Ay me", 2),
    ]


# --- initialising from a checkpoint --------------------------------------------------------------


def test_init_copies_exactly_the_named_parameters(tmp_path):
    source_model = bert.Bert(size="tiny", vocab_size=40, max_len=16, head="mlm")
    tokens = jnp.ones((1, 8), jnp.int32)
    source_params = source_model.init(jax.random.key(1), tokens, train=False)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": source_params}
    checkpoint.write_step(tmp_path / "checkpoints", 7, state, {}, {})

    target_model = bert.Bert(
        size="tiny", vocab_size=40, max_len=16, head="classifier", num_classes=3
    )
    target = target_model.init(jax.random.key(2), tokens, train=False)["params"]
    init = cfg.defaults().init
    init.update(source=str(tmp_path), exclude="^classifier/|^pooler/")
    plan = initialize.plan(init, jax.eval_shape(lambda: target))
    assert plan.step == 7
    assert set(plan.fresh) == {
        "classifier/kernel",
        "classifier/bias",
        "pooler/kernel",
        "pooler/bias",
    }
    assert {p.split("/")[0] for p in plan.unused} == {"mlm_transform", "mlm_norm", "mlm_bias"}
    loaded = initialize.apply(plan, target)
    source_flat, target_flat = initialize_flat(source_params), initialize_flat(target)
    for name, value in initialize_flat(loaded).items():
        expected = target_flat[name] if name in plan.fresh else source_flat[name]
        np.testing.assert_array_equal(value, expected)

    init.update(exclude="")  # The classifier is not in the source: refused, with its name.
    with pytest.raises(ConfigError, match="classifier"):
        initialize.plan(init, jax.eval_shape(lambda: target))
    init.update(source=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        initialize.plan(init, jax.eval_shape(lambda: target))
    bigger = bert.Bert(size="tiny", vocab_size=41, max_len=16, head="classifier")
    init.update(source=str(tmp_path), exclude="^classifier/")
    shapes = jax.eval_shape(lambda: bigger.init(KEY, tokens, train=False)["params"])
    with pytest.raises(ConfigError, match="word_embeddings"):
        initialize.plan(init, shapes)


def initialize_flat(params) -> dict:
    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


# --- the experiments' smoke variants, end to end ----------------------------------------------


def test_pretrain_then_finetune_smoke_runs(tmp_path):
    """Masked-LM pre-training smoke run, then fine-tuning initialised from it, through the real
    trainer; the sweep over both cells plans (validates) against the pre-training run."""
    from research import train
    from research.sweeps import plan as sweep_plan

    pretrain = tmp_path / "mlm"
    result = train.run(smoke_config(), pretrain)
    assert result["step"] == 12 and (pretrain / "vocab.txt").is_file()
    assert result["metrics"]["test/loss"] < math.log(512)  # better than uniform over the vocab

    finetune = tmp_path / "ft"
    overrides = {"init.source": str(pretrain), "data.tokenizer_model": str(pretrain / "vocab.txt")}
    result = train.run(smoke_config("finetune,smoke", **overrides), finetune)
    assert 0 <= result["metrics"]["test/accuracy"] <= 1
    provenance = json.loads((finetune / "provenance.json").read_text())
    assert provenance["initialized_from"]["fresh"] == ["classifier/bias", "classifier/kernel"]

    spec = f"experiments/shakespeare_bert.py:pretrained={pretrain},smoke"
    planned = sweep_plan.plan(spec, tmp_path / "sweep")
    assert sorted({r.cell for r in planned.runs}) == ["pretrained", "random_init"]
    assert len(planned.runs) == 4  # 2 seeds each
