"""Sequence to sequence (translation): label-smoothed cross-entropy over target tokens, token
accuracy and perplexity under teacher forcing; translations by beam search, scored by sacreBLEU.

Batches (research/data/translation.py) are {"source", "target_in", "target_out": int32 [b, L]}
with pad id 0, target_in = BOS + target and target_out = target + EOS; packed training rows add
"source_segments", "target_segments", "source_positions", "target_positions"; evaluation adds
"mask": bool [b] and "index": int32 [b] (the pair's position in its split).

Training loss: cross-entropy of every target token (padding masked), with label smoothing eps
(Vaswani et al. 2017, Sec. 5.4: eps = 0.1; `train.label_smoothing`): the target distribution puts
1 - eps on the reference token and eps spread evenly over the vocabulary (optax.smooth_labels).
Evaluation reports the plain cross-entropy per target token (its exp is the perplexity) and token
accuracy. With decoding (`generate`: research/tasks/decoding.py `translate`, beam search with the
length penalty of Wu et al. 2016 and outputs up to input length + 50), it also reports, on
detokenized text against the raw references:

    bleu         sacreBLEU's corpus BLEU (`decode.bleu_tokenize`; 13a is sacreBLEU's default)
    chrf         sacreBLEU's chrF2
    exact_match  the share of outputs equal to their reference, character for character

and writes translations_<split>.txt (index, source, reference, hypothesis) to the workdir.
BLEU is never computed here by hand. Note: with 13a tokenization, BLEU needs outputs of several
words; a target language that writes each output as one word (German number words, say) scores
BLEU 0 even when every output is exact, so such data uses `decode.bleu_tokenize=char`.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from research.tasks import decoding
from research.tasks.base import Task

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3  # The sentencepiece ids of research/data/tokenizers.py.
SEGMENT_KEYS = ("source_segments", "target_segments", "source_positions", "target_positions")
GENERATED = ("bleu", "chrf", "exact_match")


def inputs(batch: dict) -> tuple[tuple, dict]:
    """The model's inputs: source and shifted target, plus packing ids when the batch has them."""
    return (batch["source"], batch["target_in"]), {k: batch[k] for k in SEGMENT_KEYS if k in batch}


def example_inputs(shape: tuple[int, ...]) -> tuple[tuple, dict]:
    zeros = jnp.zeros((1, *shape), jnp.int32)
    return (zeros, zeros), {}


def train_loss(
    logits: jax.Array, batch: dict, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Label-smoothed cross-entropy per target token, padding excluded; also token accuracy."""
    targets = batch["target_out"]
    weights = (targets != PAD_ID).astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    soft = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, soft)
    tokens = jnp.maximum(weights.sum(), 1.0)
    accuracy = ((logits.argmax(-1) == targets) * weights).sum() / tokens
    return (losses * weights).sum() / tokens, {"token_accuracy": accuracy}


def eval_outputs(logits: jax.Array, batch: dict) -> dict:
    """Per pair: summed cross-entropy of its target tokens, their count and the correct ones."""
    targets = batch["target_out"]
    weights = (targets != PAD_ID).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return {
        "nll": (nll * weights).sum(-1),
        "tokens": weights.sum(-1),
        "correct": (correct * weights).sum(-1),
        "index": batch["index"],
    }


def generate(model: Any, variables: dict, batch: dict, options: Mapping[str, Any]) -> dict:
    """Translations of the batch's sources by beam search (greedy with beam_size 1)."""
    hypothesis = decoding.translate(
        model,
        variables["params"],
        batch["source"],
        beam_size=options["beam_size"],
        alpha=options["length_penalty"],
        max_extra_tokens=options["max_extra_tokens"],
        bos_id=BOS_ID,
        eos_id=EOS_ID,
    )
    return {"hypothesis": hypothesis}


def summarize(
    outputs: dict[str, np.ndarray], info: Any, split: str, bleu_tokenize: str = "13a"
) -> tuple[dict[str, float], dict]:
    """Teacher-forced loss, perplexity and token accuracy; with hypotheses, BLEU, chrF, exact."""
    tokens = float(outputs["tokens"].sum(dtype=np.float64))
    loss = float(outputs["nll"].sum(dtype=np.float64)) / max(tokens, 1.0)
    metrics = {
        "loss": loss,
        "perplexity": float(np.exp(loss)),
        "token_accuracy": float(outputs["correct"].sum(dtype=np.float64)) / max(tokens, 1.0),
    }
    details: dict[str, Any] = {"pairs": len(outputs["tokens"]), "target_tokens": int(tokens)}
    if "hypothesis" not in outputs:
        return metrics, details
    sources, references = info.texts(split)
    order = [int(i) for i in outputs["index"]]
    hypotheses = [info.decode_text(row) for row in outputs["hypothesis"]]
    references = [references[i] for i in order]
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenize)
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    metrics |= {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf.corpus_score(hypotheses, [references]).score),
        "exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)])),
    }
    details |= {
        "bleu": str(bleu_score),
        "bleu_signature": str(bleu.get_signature()),
        "_translations": [(i, sources[i], r, h) for i, r, h in zip(order, references, hypotheses)],
    }
    return metrics, details


def metric_names(info: Any) -> tuple[str, ...]:
    del info
    return ("loss", "perplexity", "token_accuracy", *GENERATED)


def report(details: dict) -> str:
    """BLEU with its sacreBLEU signature and a few translations."""
    if "_translations" not in details:
        return f"{details['pairs']:,} pairs evaluated (teacher-forced)"
    shown = "\n".join(
        f"  {source}\n    reference:  {reference}\n    hypothesis: {hypothesis}"
        for _, source, reference, hypothesis in details["_translations"][:3]
    )
    return (
        f"{details['pairs']:,} pairs translated; {details['bleu']}\n"
        f"sacreBLEU signature: {details['bleu_signature']}\n{shown}"
    )


def files(details: dict, split: str) -> dict[str, str]:
    """translations_<split>.txt: one tab-separated line per pair, in split order."""
    if "_translations" not in details:
        return {}
    clean = lambda text: text.replace("\t", " ").replace("\n", " ")
    lines = ["index\tsource\treference\thypothesis\texact"]
    for index, source, reference, hypothesis in sorted(details["_translations"]):
        same = "yes" if hypothesis == reference else "no"
        lines.append(f"{index}\t{clean(source)}\t{clean(reference)}\t{clean(hypothesis)}\t{same}")
    return {f"translations_{split}.txt": "\n".join(lines) + "\n"}


def make(label_smoothing: float, decode: Mapping[str, Any]) -> Task:
    """The translation task; `label_smoothing` is train.label_smoothing, `decode` the decode
    section (beam_size, length_penalty, max_extra_tokens, bleu_tokenize)."""
    decode = dict(decode)
    return Task(
        inputs=inputs,
        example_inputs=example_inputs,
        train_loss=functools.partial(train_loss, label_smoothing=label_smoothing),
        eval_outputs=eval_outputs,
        summarize=functools.partial(summarize, bleu_tokenize=decode["bleu_tokenize"]),
        metric_names=metric_names,
        report=report,
        generate=functools.partial(generate, options=decode),
        generated_metrics=GENERATED,
        files=files,
    )
