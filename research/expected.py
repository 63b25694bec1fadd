"""The expected result: the number an experiment declares it reproduces, and the check against it.

An experiment sets `config.expected` (metric, value, tolerance, comparison, source); every run
ends with `expected_met` in results.json, and `report` checks a cell's mean over seeds the same way:

    ">="      achieved >= value - tolerance       (accuracy-like: at least the paper's number)
    "<="      achieved <= value + tolerance       (loss-like)
    "within"  |achieved - value| <= tolerance     (a measured reference, either side)

An experiment may also declare a reference curve, `expected.curve`: the metric's expected values
at intermediate steps (from a paper's figure, a reference implementation run here, or a run of
ours), with a tolerance band and its source. At each evaluation a run reports where it stands
against the curve, linearly interpolated between the declared steps, and warns once when it leaves
the band (`train.off_curve=stop` stops it there), so a reproduction that is off track says so at
its first evaluation instead of at its end.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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


@dataclasses.dataclass(frozen=True)
class Curve:
    """A reference curve: `metric` (e.g. "eval/loss") should be near `values` at `steps`."""

    metric: str = ""  # An eval metric, e.g. "eval/loss"; "" = no curve.
    steps: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    tolerance: float = 0.0  # Half-width of the band around the curve.
    source: str = ""  # Where the curve comes from.

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any] | None) -> "Curve | None":
        """From `expected.curve`; None when no metric is declared."""
        if not fields or not fields.get("metric"):
            return None
        return cls(
            metric=fields["metric"],
            steps=tuple(int(s) for s in fields["steps"]),
            values=tuple(float(v) for v in fields["values"]),
            tolerance=float(fields["tolerance"]),
            source=fields["source"],
        )

    def reference(self, step: int) -> float | None:
        """The curve at `step`, interpolated; None outside the declared steps."""
        if not self.steps[0] <= step <= self.steps[-1]:
            return None
        return float(np.interp(step, self.steps, self.values))

    def standing(self, step: int, metrics: Mapping[str, float]) -> "Standing | None":
        """Where `metrics` (e.g. {"eval/loss": 2.31}) stand at `step`; None if not comparable."""
        reference, value = self.reference(step), metrics.get(self.metric)
        if reference is None or value is None:
            return None
        return Standing(self, step, value, reference)


@dataclasses.dataclass(frozen=True)
class Standing:
    """A metric's value at a step against the reference curve."""

    curve: Curve
    step: int
    value: float
    reference: float

    @property
    def delta(self) -> float:
        return self.value - self.reference

    @property
    def inside(self) -> bool:
        return math.isfinite(self.value) and abs(self.delta) <= self.curve.tolerance

    def short(self) -> str:
        """ "on the reference curve (2.19 +/- 0.05)" or "0.12 above the reference curve (...)"."""
        band = f"{self.reference:.4g} +/- {self.curve.tolerance:.4g}"
        if self.inside:
            return f"on the reference curve ({band})"
        side = "above" if self.delta > 0 else "below"
        return f"{abs(self.delta):.4g} {side} the reference curve ({band})"

    def warning(self) -> str:
        """The one line a run prints when it leaves the band."""
        return (
            f"{self.curve.metric} {self.value:.4g} at step {self.step} is {self.short()}, "
            f"source: {self.curve.source or 'not given'}"
        )

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl record (split "reference")."""
        return {
            "metric": self.curve.metric,
            "value": self.value,
            "reference": self.reference,
            "tolerance": self.curve.tolerance,
            "delta": self.delta,
            "inside": self.inside,
        }


def defaults() -> dict[str, Any]:
    """The `expected` section's declared defaults (research/config.py `defaults`)."""
    return dataclasses.asdict(Expected()) | {"curve": dataclasses.asdict(Curve())}


def validate(fields: Mapping[str, Any]) -> None:
    """Raise ConfigError for a declared target or curve that cannot be checked."""
    _validate_curve(fields["curve"])
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


def _validate_curve(curve: Mapping[str, Any]) -> None:
    if not curve["metric"]:
        return
    split, _, name = curve["metric"].partition("/")
    if split != "eval" or not name:
        raise ConfigError(
            f"expected.curve.metric={curve['metric']!r}: a reference curve is checked at each "
            "evaluation, so name an eval metric, e.g. eval/loss"
        )
    steps, values = list(curve["steps"]), list(curve["values"])
    if not steps or len(steps) != len(values):
        raise ConfigError(
            f"expected.curve has {len(steps)} steps and {len(values)} values; give one value per "
            "step, at least one"
        )
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"expected.curve.steps={tuple(steps)} must increase")
