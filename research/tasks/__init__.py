"""Tasks: what a model's outputs mean. `config.task` names one; the trainer calls its functions.

A task knows losses and metrics, not training: it never sees optimizers, devices or checkpoints.
"""

from research.tasks import classification, lm
from research.tasks.base import Task

TASKS: dict[str, Task] = {
    "classification": classification.TASK,
    "lm": lm.TASK,
}


def get(name: str) -> Task:
    """The task named `name` (`config.task`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
