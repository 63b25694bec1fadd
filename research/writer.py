"""Metric logging: `metrics.jsonl` (for tools and reports) and TensorBoard events (for people).

Only process 0 writes. On resume, lines logged after the restored checkpoint are dropped, so the file
of a resumed run reads exactly like that of an uninterrupted one.

In a bucket (gs://), objects cannot be appended to: metrics.jsonl is kept in memory and the whole
object rewritten at most every `BUCKET_FLUSH_S` seconds, at every checkpoint (`flush`) and at the
end; TensorBoard's event files likewise go up whole at each of tensorboardX's flushes (every 120 s
and at the end), through epath (`_EpathRecordWriter`), so `tensorboard --logdir gs://...` reads
them and no package beyond the workdir's own (gcsfs) is needed. Both are small (scalars).
"""

import datetime
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorboardX
from tensorboardX import record_writer

from research import workdir as workdirs

# Keys of every record that are not metrics: where and when it was written.
NOT_METRICS = ("step", "split", "time", "elapsed_s")

BUCKET_FLUSH_S = 30.0  # In a bucket, metrics.jsonl goes up at most this often (and at checkpoints).


class MetricWriter:
    """Appends {"step", "split", <metrics>, "time", "elapsed_s"} objects to metrics.jsonl and
    TensorBoard scalars. `time` is the wall clock (UTC, ISO 8601); `elapsed_s` the run's training
    time so far, from `clock` (over all its launches), so curves can be drawn against time."""

    def __init__(
        self,
        workdir: Path,
        *,
        enabled: bool = True,
        resume_step: int = 0,
        clock: Callable[[], float] | None = None,
    ):
        self.enabled = enabled
        self._clock = clock
        self.path = workdirs.path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        kept = []
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._bucket = workdirs.is_bucket(self.path)
        if self._bucket:  # No appends in a bucket: the lines so far, rewritten whole.
            self._lines, self._uploaded = kept, time.monotonic()
        else:
            self._file = self.path.open("a")
        self._tb = tensorboardX.SummaryWriter(
            os.fspath(self.path.parent / "tensorboard"), purge_step=resume_step + 1
        )

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Log one split's metrics at `step`; non-scalars go to jsonl only."""
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        record["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        if self._clock is not None:
            record["elapsed_s"] = round(self._clock(), 3)
        if self._bucket:
            self._lines.append(json.dumps(record))
            if time.monotonic() - self._uploaded > BUCKET_FLUSH_S:
                self.flush()
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        for name, value in record.items():
            if name not in NOT_METRICS and isinstance(value, int | float):
                self._tb.add_scalar(f"{split}/{name}", value, step)

    def flush(self) -> None:
        """Make everything logged so far durable (in a bucket: upload metrics.jsonl)."""
        if self.enabled and self._bucket:
            self.path.write_text("".join(line + "\n" for line in self._lines))
            self._uploaded = time.monotonic()

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
            if self._bucket:
                self.flush()
            else:
                self._file.close()
            self._tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # A torn last line from a crash: drop it.


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, less a torn last line (a crash mid-write).

    Raises ValueError naming the line if an earlier line is not JSON (the file is damaged).
    """
    path = workdirs.path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == last:  # Dropped on resume too (`_step_of`).
                break
            raise ValueError(f"line {i + 1} is not valid JSON") from None
    return records


# -------------------------------------------------------------------------------------------------
# TensorBoard event files in a bucket.
# -------------------------------------------------------------------------------------------------


class _EpathRecordWriter:
    """A tensorboardX record writer into a bucket: the file kept in memory and written whole
    through epath at each flush (objects cannot be appended to)."""

    def __init__(self, path: str):
        self.path = workdirs.path(path)
        self.buffer = io.BytesIO()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


class _EpathRecordWriterFactory:
    def open(self, path: str) -> _EpathRecordWriter:
        return _EpathRecordWriter(path)

    def directory_check(self, path: str) -> None:
        """Buckets need no directories."""


# Replaces tensorboardX's own gs:// writer (google-cloud-storage) with the workdir's path type.
for _scheme in workdirs.BUCKETS:
    record_writer.register_writer_factory(_scheme, _EpathRecordWriterFactory())
