"""Report plots (matplotlib, Agg: files only, no display needed): curves and bars per cell.

curves.png: train and eval curves per cell, mean over seeds with the min-max band shaded, and
            behind them the reference curve and its tolerance band where the runs declare one
            (`expected.curve`, research/expected.py);
bars_<metric>.png: the chosen metric per cell, mean and 95% t-interval, one dot per seed.
"""

import math
from collections.abc import Sequence
from pathlib import Path

from research.expected import Curve
from research.sweeps import stats
from research.sweeps.runs import Cell


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve(
    cell: Cell, split: str, name: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, min and max over the cell's seeds of `name` in `split` records."""
    by_step: dict[int, list[float]] = {}
    for run in cell.runs:
        for record in run.metrics:
            value = record.get(name)
            if record["split"] == split and isinstance(value, int | float):
                by_step.setdefault(record["step"], []).append(float(value))
    steps = sorted(by_step)
    return (
        steps,
        [sum(by_step[s]) / len(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def plot_curves(cells: Sequence[Cell], metric: str, path: Path) -> bool:
    """Train and eval loss and `metric`'s quantity per cell; False if no run logged any."""
    quantity = metric.split("/")[-1]
    panels = [(s, n) for s in ("train", "eval") for n in dict.fromkeys(("loss", quantity))]
    panels = [p for p in panels if any(curve(c, *p)[0] for c in cells)]
    if not panels:
        return False
    plt = _pyplot()
    columns = 2 if len(panels) > 1 else 1
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(6 * columns, 3.8 * rows_), squeeze=False)
    references = _reference_curves(cells)
    for ax, (split, name) in zip(axes.flat, panels):
        reference = references.get(f"{split}/{name}")
        if reference is not None:
            low = [v - reference.tolerance for v in reference.values]
            high = [v + reference.tolerance for v in reference.values]
            ax.fill_between(reference.steps, low, high, color="0.85", lw=0, zorder=0)
            ax.plot(
                reference.steps,
                reference.values,
                color="0.45",
                ls="--",
                lw=1,
                zorder=0,
                label=f"reference +/- {reference.tolerance:g}",
            )
        for i, cell in enumerate(cells):
            steps, mean, low, high = curve(cell, split, name)
            if not steps:
                continue
            n = len(cell.runs)
            ax.plot(steps, mean, color=f"C{i}", label=f"{cell.name} (n={n})", lw=1.5)
            if n > 1:
                ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2, lw=0)
        if name == "loss":
            _log_scale(ax)
        ax.set_title(f"{split} {name}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("mean over seeds; shaded: min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _reference_curves(cells: Sequence[Cell]) -> dict[str, Curve]:
    """The reference curve each metric's runs declare in config.json (the first one found)."""
    found = {}
    for cell in cells:
        for run in cell.runs:
            declared = run.config.get("expected", {}).get("curve")  # Runs from before curves: none.
            curve = Curve.from_fields(declared)
            if curve is not None:
                found.setdefault(curve.metric, curve)
    return found


def _log_scale(ax) -> None:
    """Log y axis labelled with plain numbers (0.05, not 5 x 10^-2)."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.LogFormatter())
    ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))


def plot_bars(cells: Sequence[Cell], baseline: Cell, metric: str, path: Path) -> None:
    """The metric per cell: bar at the mean, 95% t-interval whiskers, a dot per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(cells) + 1.5), 4.5))
    everything = []
    for i, cell in enumerate(cells):
        values = cell.values(metric)
        if not values:
            continue
        s = stats.summarize(values)
        lo, hi = stats.mean_interval(values)
        color = "0.6" if cell is baseline else f"C{i}"
        err = None if math.isnan(lo) else [[s.mean - lo], [hi - s.mean]]
        ax.bar(i, s.mean, color=color, alpha=0.8, yerr=err, capsize=5)
        ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
        everything += values + ([lo, hi] if err else [])
    if baseline.values(metric):
        ax.axhline(stats.summarize(baseline.values(metric)).mean, color="0.4", ls="--", lw=1)
    low, high = min(everything), max(everything)
    pad = max(0.15 * (high - low), 1e-3 * max(abs(high), 1e-12))
    zoomed = low - pad > 0 and (low - pad) > 0.2 * high
    if zoomed:  # Differences between cells are small next to the values: show them.
        ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(range(len(cells)), [c.name for c in cells], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(
        f"{metric} per cell\nbar: mean; whiskers: 95% t-interval; dots: seeds"
        + ("; dashed: baseline mean" if baseline.values(metric) else "")
        + ("\n(the y axis does not start at 0)" if zoomed else ""),
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
