"""Run the digits smoke experiment in this process and SIGKILL it at a chosen point.

    python tests/drivers/die_at.py WORKDIR POINT STEP [--config.key=value ...]

POINT is one of:
    log    right after the train metrics of STEP are logged (before that step's checkpoint)
    save   right after the checkpoint save of STEP starts (its asynchronous write in flight)
    stop   exit cleanly after STEP, checkpointed (train.run's stop_after_step)
    never  do not die (the uninterrupted reference)
A fault-injection harness for tests/test_reliability.py; not part of the library.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from research import checkpoint, config, train, writer  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(workdir: str, point: str, step: str, *overrides: str) -> None:
    at = int(step)
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
    c = config.build_config(
        "experiments/digits_cnn.py:smoke", config.parse_overrides(list(overrides))
    )
    train.run(c, workdir, stop_after_step=at if point == "stop" else None)


if __name__ == "__main__":
    main(*sys.argv[1:])
