"""Metric logging: `metrics.jsonl` (for tools and reports) and TensorBoard events (for people).

Only process 0 writes. On resume, lines logged after the restored checkpoint are dropped, so the file
of a resumed run reads exactly like that of an uninterrupted one.
"""

import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorboardX

# Keys of every record that are not metrics: where and when it was written.
NOT_METRICS = ("step", "split", "time", "elapsed_s")


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
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._tb = tensorboardX.SummaryWriter(
            str(workdir / "tensorboard"), purge_step=resume_step + 1
        )

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Log one split's metrics at `step`; non-scalars go to jsonl only."""
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        record["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        if self._clock is not None:
            record["elapsed_s"] = round(self._clock(), 3)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name not in NOT_METRICS and isinstance(value, int | float):
                self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
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
    path = Path(workdir) / "metrics.jsonl"
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
