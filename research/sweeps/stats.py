"""Seed statistics for ablation tables: mean, spread, and 95% intervals from Student's t.

With the 2-5 seeds a sweep can afford, a bootstrap interval is too narrow (it cannot see beyond
the few values it resamples), so intervals here are t-based: the mean's interval uses the sample
standard deviation, and a difference of two cells' means uses Welch's unequal-variance interval
(seeds of different cells are independent runs; no pairing is assumed).
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Summary(float(values.mean()), std, int(values.size))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t interval of the mean; (nan, nan) for fewer than two values."""
    s = summarize(values)
    if s.n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, s.n - 1) * s.std / math.sqrt(s.n)
    return s.mean - half, s.mean + half


def difference_interval(
    values: Sequence[float], baseline: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """mean(values) - mean(baseline) and its Welch t interval; nan bounds if either has n < 2."""
    a, b = summarize(values), summarize(baseline)
    delta = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return delta, math.nan, math.nan
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # Identical values within each cell: the difference is exact.
        return delta, delta, delta
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))  # Welch-Satterthwaite.
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return delta, delta - half, delta + half
