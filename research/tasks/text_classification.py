"""Text classification (BERT fine-tuning, Devlin et al. 2019, Section 4.1): the classification
task's loss, metrics and report (research/tasks/classification.py: accuracy, macro F1 and the
per-class report through scikit-learn) on an encoder's token and segment inputs.

Batches: {"tokens", "segments": int32 [b, T], "label": int32 [b]} (research/data/labelled_text.py).
"""

import functools
from typing import Any

from research.tasks import classification, mlm
from research.tasks.base import Task


def make(label_smoothing: float = 0.0, decode: Any = None) -> Task:
    """The text-classification task; `label_smoothing` is train.label_smoothing."""
    del decode  # Nothing to generate.
    return Task(
        inputs=mlm.encoder_inputs,  # Tokens and segments, as in pre-training.
        example_inputs=mlm.encoder_example_inputs,
        train_loss=functools.partial(classification.train_loss, label_smoothing=label_smoothing),
        eval_outputs=classification.eval_outputs,
        summarize=classification.summarize,
        metric_names=classification.metric_names,
        report=classification.report,
    )
