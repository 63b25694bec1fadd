"""Language modelling: next-token cross-entropy; loss, perplexity and bits per token.

Batches are {"inputs": int32 [b, T], "targets": int32 [b, T]} with targets the inputs shifted by
one token (research/data/text.py), plus "mask": bool [b] in evaluation. Every evaluation window is
T tokens long, so the mean of the per-window mean losses is the mean loss per token.

    perplexity = exp(loss)           bits_per_token = loss / ln 2

(with a character tokenizer, bits per token is bits per character, the number char-level models
on enwik8/text8 report).
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.tasks.base import Task, single_input


def train_loss(
    logits: jax.Array, batch: dict, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of every next-token prediction in the batch (nanoGPT's loss).

    With label smoothing eps (Szegedy et al. 2016; Vaswani et al. 2017 use 0.1), the target puts
    1 - eps on the next token and eps uniformly over the vocabulary:
    loss = (1 - eps) * nll + eps * mean over the vocabulary of -log p.
    """
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    if label_smoothing:
        uniform = -jax.nn.log_softmax(logits).mean(-1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    return nll.mean(), {}


def eval_outputs(logits: jax.Array, batch: dict) -> dict:
    """Per-window mean token loss [b] and next-token accuracy [b]."""
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = logits.argmax(-1) == batch["targets"]
    return {"loss": losses.mean(-1), "accuracy": correct.mean(-1)}


def summarize(
    outputs: dict[str, np.ndarray], info: Any, split: str = ""
) -> tuple[dict[str, float], dict]:
    """Loss per token, perplexity, bits per token and next-token accuracy over all windows."""
    del info, split
    loss = float(np.mean(outputs["loss"], dtype=np.float64))
    metrics = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "accuracy": float(np.mean(outputs["accuracy"], dtype=np.float64)),
    }
    return metrics, {"windows": len(outputs["loss"])}


def report(details: dict) -> str:
    """How much text the final evaluation scored."""
    return f"{details['windows']:,} non-overlapping windows evaluated"


def metric_names(info: Any) -> tuple[str, ...]:
    """What `summarize` returns."""
    del info
    return ("loss", "perplexity", "bits_per_token", "accuracy")


def make(label_smoothing: float = 0.0, decode: Any = None) -> Task:
    """The language-modelling task; `label_smoothing` is train.label_smoothing."""
    del decode  # Nothing to generate.
    inputs, example_inputs = single_input("inputs", "int32")
    return Task(
        inputs=inputs,
        example_inputs=example_inputs,
        train_loss=functools.partial(train_loss, label_smoothing=label_smoothing),
        eval_outputs=eval_outputs,
        summarize=summarize,
        metric_names=metric_names,
        report=report,
    )
