"""Launch the digits smoke experiment through launch.py's main(), with a fault injected.

    python tests/drivers/die_at.py WORKDIR POINT STEP [--config.key=value ...]

POINT is one of:
    never      no fault (the uninterrupted reference)
    log        SIGKILL right after the train metrics of STEP are logged (before its checkpoint)
    save       SIGKILL right after the checkpoint save of STEP starts (async write in flight)
    stop       exit cleanly after STEP, checkpointed (launch.py --stop_after_step)
    nan        batches from index STEP on (0-based; one batch if STEP is "K:1", N batches
               if "K:N") have NaN images
    spike      batch STEP has images scaled by 1e3: finite, but a loss spike
    diskfull   orbax's save of step STEP raises "No space left on device"
A fault-injection harness for tests/test_reliability.py; not part of the library.
"""

import errno
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import launch  # noqa: E402
from research import checkpoint, data, train, writer  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Faulty:
    """Wraps the train iterator; changes the images of batches in [first, first + count)."""

    def __init__(self, inner, first: int, count: int, change):
        self.inner, self.first, self.count, self.change = inner, first, count, change

    def __next__(self):
        index = self.inner.get_state()["next_index"]  # The batch about to be read.
        batch = next(self.inner)
        if self.first <= index < self.first + self.count:
            batch = {**batch, "image": self.change(batch["image"])}
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def close(self):
        self.inner.close()


def inject(point: str, step: str) -> list[str]:
    """Patch the library for `point`; return extra launch.py arguments."""
    at, _, count = step.partition(":")
    at = int(at)
    if point == "log":
        original_write = writer.MetricWriter.write

        def write(self, s, split, metrics):
            original_write(self, s, split, metrics)
            if s == at and split == "train":
                die()

        writer.MetricWriter.write = write
    elif point == "save":
        original_save = checkpoint.Checkpointer.save

        def save(self, s, *args, **kwargs):
            original_save(self, s, *args, **kwargs)
            if s == at:
                die()

        checkpoint.Checkpointer.save = save
    elif point == "stop":
        return [f"--stop_after_step={at}"]
    elif point in ("nan", "spike"):
        change = (lambda x: x * np.nan) if point == "nan" else (lambda x: x * 1e3)
        original = data.train_iterator
        span = int(count or (1 if point == "spike" else 10**9))
        train.data.train_iterator = lambda *a, **k: Faulty(original(*a, **k), at, span, change)
    elif point == "diskfull":
        original_manager_save = ocp.CheckpointManager.save

        def full(self, s, *args, **kwargs):
            if s == at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return original_manager_save(self, s, *args, **kwargs)

        ocp.CheckpointManager.save = full
    return []


def main(workdir: str, point: str, step: str, *overrides: str) -> int:
    extra = inject(point, step) if point != "never" else []
    argv = ["--config=experiments/digits_cnn.py:smoke", f"--workdir={workdir}", *overrides, *extra]
    return launch.main(argv)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(*sys.argv[1:]))
