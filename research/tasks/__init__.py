"""Tasks: what a model's outputs mean. `config.task` names one; the trainer calls its functions.

A task knows losses and metrics, not training: it never sees optimizers, devices or checkpoints.
"""

from collections.abc import Callable, Mapping
from typing import Any

from research.tasks import classification, lm, mlm, seq2seq, text_classification
from research.tasks.base import Task

# name -> make(label_smoothing, decode) -> Task.
TASKS: dict[str, Callable[..., Task]] = {
    "classification": classification.make,
    "lm": lm.make,
    "seq2seq": seq2seq.make,
    "mlm": mlm.make,
    "text_classification": text_classification.make,
}


def build(name: str, *, label_smoothing: float, decode: Mapping[str, Any]) -> Task:
    """The task named `name` (`config.task`) with its options: `train.label_smoothing` and the
    `decode` section (used by tasks that generate outputs)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](label_smoothing=label_smoothing, decode=decode)
