"""The interface between the trainer and a task."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    """Pure functions the trainer needs from a task.

    input_key:     which batch entry is the model's input ("image", "tokens", ...).
    input_dtype:   its dtype, for initialising the model from shapes alone.
    train_loss:    (logits, batch) -> (scalar loss, {name: scalar}) inside the jitted step.
    eval_outputs:  (logits, batch) -> {name: per-example array} inside the jitted eval step.
    summarize:     (outputs as host numpy arrays, padding removed; data info) ->
                   ({"name": float} metrics, {"name": JSON-able} details such as a confusion matrix).
    metric_names:  (data info) -> the names `summarize` returns, known before a run, so that
                   train.best_metric and expected.metric are checked before anything trains.
    report:        (details) -> text printed at the end of a run ("" for none).

    Options (such as label smoothing) are bound when the task is built (research/tasks `build`).
    """

    input_key: str
    input_dtype: str
    train_loss: Callable[[jax.Array, dict], tuple[jax.Array, dict]]
    eval_outputs: Callable[[jax.Array, dict], dict]
    summarize: Callable[[dict[str, np.ndarray], Any], tuple[dict[str, float], dict[str, Any]]]
    metric_names: Callable[[Any], tuple[str, ...]]
    report: Callable[[dict[str, Any]], str] = lambda details: ""
