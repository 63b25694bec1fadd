"""Language modelling: next-token cross-entropy; loss, perplexity and bits per token; sampling.

Batches are {"inputs": int32 [b, T], "targets": int32 [b, T]} with targets the inputs shifted by
one token (research/data/text.py), plus "mask": bool [b] in evaluation. Every evaluation window is
T tokens long, so the mean of the per-window mean losses is the mean loss per token.

    perplexity = exp(loss)           bits_per_token = loss / ln 2

(with a character tokenizer, bits per token is bits per character, the number char-level models
on enwik8/text8 report).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models import sampling
from research.tasks.base import Task


def train_loss(logits: jax.Array, batch: dict, config: Any) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of every next-token prediction in the batch (nanoGPT's loss)."""
    del config
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]
    ).mean()
    return loss, {}


def eval_outputs(logits: jax.Array, batch: dict) -> dict:
    """Per-window mean token loss [b] and next-token accuracy [b]."""
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = logits.argmax(-1) == batch["targets"]
    return {"loss": losses.mean(-1), "accuracy": correct.mean(-1)}


def summarize(outputs: dict[str, np.ndarray], info: Any) -> tuple[dict[str, float], dict]:
    """Loss per token, perplexity, bits per token and next-token accuracy over all windows."""
    del info
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


TASK = Task(
    input_key="inputs",
    input_dtype="int32",
    train_loss=train_loss,
    eval_outputs=eval_outputs,
    summarize=summarize,
    report=report,
)


# -------------------------------------------------------------------------------------------------
# Decoding.
# -------------------------------------------------------------------------------------------------


def generate(
    model: nn.Module,
    params: dict,
    prompt: np.ndarray,
    max_new_tokens: int,
    *,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> np.ndarray:
    """Continue int32 `prompt` [B, T0] by `max_new_tokens`, with the KV cache, past block_size.

    nanoGPT's `generate` conditions each token on the last block_size tokens, re-running the whole
    window per token. With a cache, a model of context block_size can only grow its cache to
    block_size, so we sample in chunks: when the cache is full, restart from the last
    block_size // 2 tokens (one prefill) and sample the next half block. Every token then sees
    between block_size // 2 and block_size - 1 tokens of context (nanoGPT: block_size once the
    text is that long); each chunk is one jitted `sampling.generate` call, cached per shape.
    `top_k` above the vocabulary size means no cut (nanoGPT: min(top_k, vocab_size)).
    """
    block_size = model.block_size
    if top_k is not None:
        top_k = min(top_k, model.vocab_size)
    keep = block_size // 2
    tokens = np.asarray(prompt, np.int32)
    if tokens.shape[1] >= block_size:
        tokens = tokens[:, -keep:]  # nanoGPT crops the prompt to the context as well.
    generated, chunk = [], 0
    while sum(g.shape[1] for g in generated) < max_new_tokens:
        remaining = max_new_tokens - sum(g.shape[1] for g in generated)
        new = min(remaining, block_size - tokens.shape[1])
        out = sampling.generate(
            model,
            params,
            tokens,
            new,
            rng=jax.random.fold_in(rng, chunk),
            temperature=temperature,
            top_k=top_k,
        )
        out = np.asarray(out)
        generated.append(out[:, tokens.shape[1] :])
        tokens = out[:, -keep:]
        chunk += 1
    return np.concatenate([np.asarray(prompt, np.int32), *generated], axis=1)
