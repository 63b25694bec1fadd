"""Grain worker processes for a batch stream: `data.workers = N` computes batches in N processes.

    batches = WorkerIterator(ds, num_workers=2)  # ds: a grain.MapDataset of whole batches

Everything up to the batches (reading, JPEG decoding, augmentation, batching, normalising) runs in
the workers, while the trainer's step runs in the main process; grain's `mp_prefetch` deals batch
i to worker i % N and hands them back in order, so the stream is the in-process one, batch for
batch. The iterator's state is the in-process iterator's, {"next_index": k} (k batches handed
out), so a checkpoint saved with any number of workers resumes with any other, bitwise: resuming
starts the workers on `ds[k:]`, and every stage of `ds` is a pure function of its position.
(grain's own multiprocess state is one state per worker, tied to their number.)

The workers start at the first `next`, not on construction, so `set_state` right after building
(a resumed run) starts them once, at the right batch; `close` stops them. grain starts them by
spawning: each is a fresh Python that imports the main script, so a script that iterates must
guard its entry point with `if __name__ == "__main__":` (launch.py does); without it the workers
fail with multiprocessing's "bootstrapping phase" error, and grain's cleanup of the process that
never started adds "can only join a started process" at exit.
"""

from typing import Any

import grain
from absl import flags


class WorkerIterator:
    """The batches of `batches` from index 0 on, computed by `num_workers` processes."""

    def __init__(
        self, batches: grain.MapDataset, num_workers: int, read_options: grain.ReadOptions
    ):
        assert num_workers > 0, num_workers
        self._batches = batches
        self._num_workers = num_workers
        self._read_options = read_options
        self._next_index = 0
        self._iterator: Any = None  # grain's multiprocess iterator, once started.

    def __iter__(self) -> "WorkerIterator":
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self._next_index += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict[str, int]) -> None:
        self.close()  # Batches already computed from the old position are dropped with them.
        self._next_index = int(state["next_index"])

    def close(self) -> None:
        """Stop the workers (a later `next` starts them again)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def _start(self) -> Any:
        # grain reads its own absl flags (debug mode, ...) while starting workers; a program that
        # never parsed flags (tests, notebooks, our argparse launcher) would get
        # UnparsedFlagAccessError, so their defaults are taken as given.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = self._batches[self._next_index :].to_iter_dataset(self._read_options)
        return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers)))
