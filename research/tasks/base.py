"""The interface between the trainer and a task."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

# (positional arguments, keyword arguments) of the model's __call__, besides `train`.
ModelInputs = tuple[tuple[jax.Array, ...], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Task:
    """Pure functions the trainer needs from a task.

    inputs:          (batch) -> the model's inputs, e.g. ((batch["image"],), {}).
    example_inputs:  (one example's shape, DatasetInfo.input_shape) -> zeros of the inputs for a
                     batch of 1, for initialising the model from shapes alone.
    train_loss:      (logits, batch) -> (scalar loss, {name: scalar}) inside the jitted step.
    eval_outputs:    (logits, batch) -> {name: per-example array} inside the jitted eval step.
    summarize:       (outputs as host numpy arrays, padding removed; data info; split) ->
                     ({"name": float} metrics, {"name": JSON-able} details such as a confusion
                     matrix). Details under keys starting with "_" stay out of results.json.
    metric_names:    (data info) -> the names `summarize` returns, known before a run, so that
                     train.best_metric and expected.metric are checked before anything trains.
    report:          (details) -> text printed at the end of a run ("" for none).
    generate:        None, or (model, params, batch) -> {name: per-example array} inside a jitted
                     step: the model's own outputs (e.g. translations), which `summarize` then
                     scores. Run at the final test evaluation (and every evaluation with
                     decode.on_eval).
    generated_metrics: the names among metric_names that only exist when `generate` ran.
    files:           (details, split) -> {file name: text} the run writes to its workdir.

    Options (label smoothing, decoding settings) are bound when the task is built
    (research/tasks `build`).
    """

    inputs: Callable[[dict], ModelInputs]
    example_inputs: Callable[[tuple[int, ...]], ModelInputs]
    train_loss: Callable[[jax.Array, dict], tuple[jax.Array, dict]]
    eval_outputs: Callable[[jax.Array, dict], dict]
    summarize: Callable[..., tuple[dict[str, float], dict[str, Any]]]
    metric_names: Callable[[Any], tuple[str, ...]]
    report: Callable[[dict[str, Any]], str] = lambda details: ""
    generate: Callable[..., dict[str, jax.Array]] | None = None
    generated_metrics: tuple[str, ...] = ()
    files: Callable[[dict[str, Any], str], dict[str, str]] = lambda details, split: {}


def single_input(key: str, dtype: str) -> tuple[Callable, Callable]:
    """`inputs` and `example_inputs` of a model that takes one array, batch[key] of `dtype`."""
    import jax.numpy as jnp

    return (
        lambda batch: ((batch[key],), {}),
        lambda shape: ((jnp.zeros((1, *shape), dtype),), {}),
    )
