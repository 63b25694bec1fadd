"""The expected result: the number an experiment declares it reproduces, and the check against it.

An experiment sets `config.expected` (metric, value, tolerance, comparison, source); every run
ends with `expected_met` in results.json, and `report` checks a cell's mean over seeds the same way:

    ">="      achieved >= value - tolerance       (accuracy-like: at least the paper's number)
    "<="      achieved <= value + tolerance       (loss-like)
    "within"  |achieved - value| <= tolerance     (a measured reference, either side)
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from research.errors import ConfigError

COMPARISONS = (">=", "<=", "within")


@dataclasses.dataclass(frozen=True)
class Expected:
    """A declared target; `metric` "" means none (see `from_fields`)."""

    metric: str = ""  # e.g. "test/accuracy"; "" = no target.
    value: float = 0.0
    tolerance: float = 0.0
    comparison: str = ">="  # One of COMPARISONS.
    source: str = ""  # Paper, table or figure the number comes from.

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any] | None) -> "Expected | None":
        """From a config section or a results.json record; None when no metric is declared."""
        if not fields or not fields.get("metric"):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(fields).items() if k in known})

    def met(self, metrics: Mapping[str, float]) -> bool:
        """Whether `metrics` (e.g. {"test/accuracy": 0.99}) meets the target; missing = False."""
        achieved = metrics.get(self.metric)
        if achieved is None or not math.isfinite(achieved):
            return False
        if self.comparison == ">=":
            return achieved >= self.value - self.tolerance
        if self.comparison == "<=":
            return achieved <= self.value + self.tolerance
        return abs(achieved - self.value) <= self.tolerance

    def describe(self) -> str:
        """One line: "test/accuracy >= 0.98 (tolerance 0.0; <source>)"."""
        return (
            f"{self.metric} {self.comparison} {self.value} "
            f"(tolerance {self.tolerance}; {self.source or 'no source given'})"
        )

    def record(self) -> dict[str, Any]:
        """The JSON form kept in results.json."""
        return dataclasses.asdict(self)


def defaults() -> dict[str, Any]:
    """The `expected` section's declared defaults (research/config.py `defaults`)."""
    return dataclasses.asdict(Expected())


def validate(fields: Mapping[str, Any]) -> None:
    """Raise ConfigError for a declared target that cannot be checked."""
    if not fields.get("metric"):
        return
    if fields["comparison"] not in COMPARISONS:
        raise ConfigError(
            f"expected.comparison={fields['comparison']!r}; choose one of {COMPARISONS}"
        )
    if not math.isfinite(fields["value"]):
        raise ConfigError("expected.value must be a finite number")
    if not (math.isfinite(fields["tolerance"]) and fields["tolerance"] >= 0):
        raise ConfigError(f"expected.tolerance={fields['tolerance']} must be a number >= 0")
    split, _, name = fields["metric"].partition("/")
    if split not in ("eval", "test") or not name:
        raise ConfigError(
            f"expected.metric={fields['metric']!r} names no metric; use eval/<name> or "
            "test/<name>, e.g. test/accuracy"
        )
