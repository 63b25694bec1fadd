"""Masked language modelling (BERT's pre-training, Devlin et al. 2019, Section 3.1).

Batches come masked from the data (research/data/masked_text.py): {"tokens" (the masked input),
"segments", "positions" (the selected positions), "targets" (their original ids), "weights" (0
for unused slots)}; the model predicts at `positions` only. The loss is the
mean cross-entropy over the selected positions only, as the original's `get_masked_lm_output`
(sum of weighted losses / sum of weights); the 85% of positions that were not selected carry no
loss. With the model's "mlm_nsp" head the logits are (masked-LM, next-sentence) and a batch with
"next_sentence" labels (1 = B follows A) adds the next-sentence cross-entropy (Section 3.1, Task
#2; RoBERTa drops it, and the data here makes no sentence pairs).

Evaluation metrics, over every selected position of the split:

    loss = total cross-entropy / selected positions    perplexity = exp(loss)
    accuracy = the fraction of selected positions whose original token is the argmax
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.tasks.base import Task


def _mlm_logits(logits: Any) -> jax.Array:
    return (logits[0] if isinstance(logits, tuple) else logits).astype(jnp.float32)


def train_loss(logits: Any, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over selected positions (+ next-sentence loss if labelled)."""
    mlm = _mlm_logits(logits)
    nll = optax.softmax_cross_entropy_with_integer_labels(mlm, batch["targets"])
    if label_smoothing:
        uniform = -jax.nn.log_softmax(mlm).mean(-1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    weights = batch["weights"]
    selected = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / selected
    correct = (mlm.argmax(-1) == batch["targets"]) * weights
    metrics = {"accuracy": correct.sum() / selected}
    if isinstance(logits, tuple) and "next_sentence" in batch:
        nsp = optax.softmax_cross_entropy_with_integer_labels(
            logits[1].astype(jnp.float32), batch["next_sentence"]
        ).mean()
        metrics["mlm_loss"], metrics["nsp_loss"] = loss, nsp
        loss = loss + nsp
    return loss, metrics


def eval_outputs(logits: Any, batch: dict) -> dict:
    """Per example: summed cross-entropy, correct predictions and count over selected positions."""
    mlm = _mlm_logits(logits)
    weights = batch["weights"]
    nll = optax.softmax_cross_entropy_with_integer_labels(mlm, batch["targets"])
    correct = (mlm.argmax(-1) == batch["targets"]).astype(jnp.float32)
    return {
        "nll_sum": (nll * weights).sum(-1),
        "correct": (correct * weights).sum(-1),
        "selected": weights.sum(-1),
    }


def summarize(
    outputs: dict[str, np.ndarray], info: Any, split: str = ""
) -> tuple[dict[str, float], dict]:
    """Loss per selected token, perplexity and accuracy over the whole split."""
    del info, split
    selected = float(np.sum(outputs["selected"], dtype=np.float64))
    loss = float(np.sum(outputs["nll_sum"], dtype=np.float64)) / max(selected, 1.0)
    metrics = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": float(np.sum(outputs["correct"], dtype=np.float64)) / max(selected, 1.0),
    }
    return metrics, {"windows": len(outputs["selected"]), "selected": int(selected)}


def report(details: dict) -> str:
    """How much text the final evaluation scored."""
    return f"{details['selected']:,} masked positions in {details['windows']:,} windows evaluated"


def metric_names(info: Any) -> tuple[str, ...]:
    """What `summarize` returns."""
    del info
    return ("loss", "perplexity", "accuracy")


def encoder_inputs(batch: dict) -> tuple[tuple[jax.Array, ...], dict]:
    """An encoder's inputs: token ids and segment ids (also text classification's)."""
    return (batch["tokens"], batch["segments"]), {}


def encoder_example_inputs(shape: tuple[int, ...]) -> tuple[tuple[jax.Array, ...], dict]:
    """Zeros of one example's encoder inputs, for initialisation from shapes."""
    zeros = jnp.zeros((1, *shape), jnp.int32)
    return (zeros, zeros), {}


def inputs(batch: dict) -> tuple[tuple[jax.Array, ...], dict]:
    """Tokens and segments, and the positions to predict."""
    args, _ = encoder_inputs(batch)
    return args, {"positions": batch["positions"]}


def example_inputs(shape: tuple[int, ...]) -> tuple[tuple[jax.Array, ...], dict]:
    """Zeros of one example's inputs (one position to predict: the count sets no shape)."""
    args, _ = encoder_example_inputs(shape)
    return args, {"positions": jnp.zeros((1, 1), jnp.int32)}


def make(label_smoothing: float = 0.0, decode: Any = None) -> Task:
    """The masked-LM task; `label_smoothing` is train.label_smoothing."""
    del decode  # Nothing to generate.
    return Task(
        inputs=inputs,
        example_inputs=example_inputs,
        train_loss=lambda logits, batch: train_loss(logits, batch, label_smoothing),
        eval_outputs=eval_outputs,
        summarize=summarize,
        metric_names=metric_names,
        report=report,
    )
