"""Preemption: SIGTERM (schedulers, `kill`) or SIGINT (Ctrl-C) ends a run at a checkpointed step.

The handler only records the signal; the training loop asks `requested()` between steps, saves a
checkpoint at the current step and exits. With several processes, `requested()` is a tiny
all-gather, so every process stops at the same step even if only one was signalled. A second
signal of the same kind gets the default behaviour back (force quit).
"""

import signal
from types import FrameType

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """Context manager: catches SIGTERM/SIGINT while a run trains."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Preemption":
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, self._previous[signum])  # A second signal is not caught.

    def requested(self) -> bool:
        """Whether any process has been signalled (all processes get the same answer)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.int32(local))))

    @property
    def name(self) -> str:
        """The received signal's name, e.g. "SIGTERM" (or "a peer's signal")."""
        return signal.Signals(self.received).name if self.received else "a peer process's signal"
