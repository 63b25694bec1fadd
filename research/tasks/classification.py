"""Image classification: softmax cross-entropy; accuracy, top-k and per-class metrics (scikit-learn)."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics as skm

from research.tasks.base import Task, single_input


def train_loss(
    logits: jax.Array, batch: dict, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy with optional label smoothing (Szegedy et al. 2016); also accuracy.

    The targets are batch["label_probs"] where the batch has them (soft labels from mixup or
    cutmix, research/data/augment.py), else one-hot labels; accuracy is against batch["label"],
    each example's own class.
    """
    num_classes = logits.shape[-1]
    if "label_probs" in batch:
        probs = batch["label_probs"]  # [B, classes of the data] <= the model's outputs
        targets = jnp.pad(probs, ((0, 0), (0, num_classes - probs.shape[-1])))
    else:
        targets = jax.nn.one_hot(batch["label"], num_classes)
    targets = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"accuracy": accuracy}


def eval_outputs(logits: jax.Array, batch: dict) -> dict:
    """Per-example loss and class probabilities (probabilities feed top-k and the report)."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss": loss, "probs": jax.nn.softmax(logits), "label": batch["label"]}


def summarize(
    outputs: dict[str, np.ndarray], info: Any, split: str = ""
) -> tuple[dict[str, float], dict]:
    """Accuracy, top-5, macro F1 and the per-class report, all computed by scikit-learn."""
    del split
    labels, probs = outputs["label"], outputs["probs"]
    predictions = probs.argmax(-1)
    classes = np.arange(probs.shape[-1])
    metrics = {
        "loss": float(outputs["loss"].mean()),
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "macro_f1": float(
            skm.f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)
        ),
    }
    if (info.num_classes if info is not None else len(classes)) > 5:  # See metric_names.
        metrics["top5_accuracy"] = float(
            skm.top_k_accuracy_score(labels, probs, k=5, labels=classes)
        )
    names = list(info.class_names) if info is not None else [str(c) for c in classes]
    details = {
        "per_class": skm.classification_report(
            labels,
            predictions,
            labels=classes,
            target_names=names,
            output_dict=True,
            zero_division=0,
        ),
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=classes).tolist(),
        "_text_report": skm.classification_report(
            labels, predictions, labels=classes, target_names=names, digits=4, zero_division=0
        ),
    }
    return metrics, details


def report(details: dict) -> str:
    """The scikit-learn classification report and confusion matrix, as printed text."""
    matrix = "\n".join(" ".join(f"{v:4d}" for v in row) for row in details["confusion_matrix"])
    return (
        f"{details['_text_report']}\nconfusion matrix (rows: true, columns: predicted)\n{matrix}\n"
    )


def metric_names(info: Any) -> tuple[str, ...]:
    """What `summarize` returns for data with `info.num_classes` classes."""
    return ("loss", "accuracy", "macro_f1") + (("top5_accuracy",) if info.num_classes > 5 else ())


def make(label_smoothing: float = 0.0, decode: Any = None) -> Task:
    """The classification task; `label_smoothing` is train.label_smoothing."""
    del decode  # Nothing to generate.
    inputs, example_inputs = single_input("image", "float32")
    return Task(
        inputs=inputs,
        example_inputs=example_inputs,
        train_loss=functools.partial(train_loss, label_smoothing=label_smoothing),
        eval_outputs=eval_outputs,
        summarize=summarize,
        metric_names=metric_names,
        report=report,
    )
