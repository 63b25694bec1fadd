"""The seq2seq task: its loss against numpy, sacreBLEU scoring of translations, the translations
file, and the number-words experiment end to end on its smoke size."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from research import config as cfg
from research import train
from research.tasks import seq2seq


def numpy_smoothed_loss(logits, targets, eps):
    """Mean over non-pad targets of -sum_v q(v) log p(v), q = (1 - eps) one_hot + eps / V."""
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    q = np.full(logits.shape, eps / vocab)
    np.put_along_axis(q, targets[..., None], 1 - eps + eps / vocab, axis=-1)
    losses = -(q * logp).sum(-1)
    weights = targets != 0
    return (losses * weights).sum() / weights.sum()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothed_loss_matches_numpy_and_ignores_padding(eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    targets = np.array([[4, 5, 3, 0, 0], [6, 3, 0, 0, 0], [7, 8, 9, 10, 3]])
    loss, metrics = seq2seq.train_loss(jnp.asarray(logits), {"target_out": targets}, eps)
    assert float(loss) == pytest.approx(numpy_smoothed_loss(logits, targets, eps), rel=1e-5)
    # Whatever the logits at padded positions, the loss is the same.
    changed = logits.copy()
    changed[targets == 0] = rng.normal(size=changed[targets == 0].shape) * 50
    again, _ = seq2seq.train_loss(jnp.asarray(changed), {"target_out": targets}, eps)
    assert float(again) == pytest.approx(float(loss), rel=1e-6)
    correct = (logits.argmax(-1) == targets)[targets != 0].mean()
    assert float(metrics["token_accuracy"]) == pytest.approx(correct)


@dataclasses.dataclass
class FakeInfo:
    """What summarize reads from DatasetInfo: detokenization and the split's raw texts."""

    sources: list
    references: list

    def texts(self, split):
        return self.sources, self.references

    def decode_text(self, ids):
        return " ".join(f"w{i}" for i in ids if i > 3)


def test_summarize_scores_translations_with_sacrebleu_and_writes_them():
    sources = ["s0", "s1", "s2"]
    references = ["w4 w5 w6 w7", "w8 w9", "w4 w4 w5"]
    hypothesis = np.array([[4, 5, 6, 7, 3], [8, 3, 0, 0, 0], [4, 4, 5, 3, 0]])
    outputs = {
        "nll": np.array([2.0, 1.0, 3.0]),
        "tokens": np.array([5.0, 3.0, 4.0]),
        "correct": np.array([5.0, 1.0, 4.0]),
        "index": np.array([2, 0, 1]),  # Out of order, as a multi-host gather may give them.
        "hypothesis": hypothesis,
    }
    info = FakeInfo(sources, references)
    metrics, details = seq2seq.summarize(outputs, info, "test", bleu_tokenize="13a")
    hyps = ["w4 w5 w6 w7", "w8", "w4 w4 w5"]
    refs = [references[i] for i in (2, 0, 1)]
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert metrics["exact_match"] == pytest.approx(0.0)  # Index order: no hypothesis matches.
    assert metrics["loss"] == pytest.approx(6.0 / 12.0)
    assert metrics["token_accuracy"] == pytest.approx(10.0 / 12.0)
    text = seq2seq.files(details, "test")["translations_test.txt"]
    lines = text.splitlines()
    assert lines[0] == "index\tsource\treference\thypothesis\texact"
    assert lines[1] == "0\ts0\tw4 w5 w6 w7\tw8\tno"  # Sorted by the pair's index.
    assert "_translations" in details and "bleu_signature" in details


@pytest.fixture(scope="module")
def number_words_smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("number_words")
    config = cfg.build_config("experiments/number_words_transformer.py:smoke", {})
    return workdir, train.run(config, workdir)


def test_number_words_smoke_writes_translations_and_scores(number_words_smoke):
    workdir, result = number_words_smoke
    assert set(result["metrics"]) >= {"test/bleu", "test/chrf", "test/exact_match", "eval/loss"}
    lines = (workdir / "translations_test.txt").read_text().splitlines()
    assert len(lines) == 1 + 2000  # Every test number, with a header.
    index, source, reference, _, _ = lines[1].split("\t")
    assert index == "0" and reference and source
    assert (workdir / "tokenizer.model").stat().st_size > 1000
    saved = json.loads((workdir / "results.json").read_text())
    assert "_translations" not in saved["details"]["test"]
    assert saved["details"]["test"]["pairs"] == 2000
