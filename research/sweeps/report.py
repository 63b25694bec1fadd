"""Ablation reports: one row per cell with seeds aggregated, deltas vs the baseline, paper checks, plots.

    python launch.py report sweeps/digits                    # a sweep (research/sweeps/plan.py)
    python launch.py report runs/a runs/b --out=reports/ab   # any run workdirs, or a single one

Runs are the directories holding a config.json (searched recursively). Runs of a sweep are grouped
by their cell (cell.json); other runs are grouped when their configs differ only in `train.seed`
(research/sweeps/runs.py). The baseline is the sweep's first cell, or else the first group. A run
whose files cannot be read is skipped with one line on stderr. Writes into --out (default:
<path>/report) and prints report.md:

    report.md        the table (Markdown), expected-result checks, unfinished runs
    table.csv        every final metric: mean, std, n, delta vs baseline and its 95% interval
    checks.csv       achieved vs expected for runs whose config declares `expected`
    curves.png       train and eval curves per cell: mean over seeds, min-max band shaded
    bars_<metric>.png  the chosen metric per cell: mean, 95% t-interval, one dot per seed

Intervals are t-based (research/sweeps/stats.py). Only runs with results.json enter the table; the
curves include unfinished runs up to where they are.
"""

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from research.errors import ConfigError
from research.expected import Expected
from research.sweeps import plots, runs, stats
from research.sweeps.runs import Cell, RunRecord, cell_dirname

# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------


def metric_names(cells: Sequence[Cell]) -> list[str]:
    names: list[str] = []
    for cell in cells:
        for run in cell.finished:
            names += [m for m in run.results["metrics"] if m not in names]
    return names


def choose_metric(cells: Sequence[Cell], baseline: Cell, metric: str | None) -> str:
    """--metric, else the baseline's expected metric, else test/accuracy, else the first metric."""
    names = metric_names(cells)
    if not names:
        raise ConfigError("no run has finished (no results.json); nothing to report yet")
    if metric is None:
        targets = _targets(baseline)
        metric = targets[0].metric if targets else None
    if metric is None:
        metric = "test/accuracy" if "test/accuracy" in names else names[0]
    if metric not in names:
        raise ConfigError(f"--metric={metric} is not a final metric; choose one of {names}")
    return metric


def rows(cells: Sequence[Cell], baseline: Cell) -> list[dict[str, Any]]:
    """Per cell: every metric's summary and difference vs the baseline, and wall time."""
    table = []
    for cell in cells:
        row = {"cell": cell, "baseline": cell is baseline, "n": len(cell.finished), "metrics": {}}
        for metric in metric_names(cells):
            values = cell.values(metric)
            delta = stats.difference_interval(values, baseline.values(metric))
            row["metrics"][metric] = (stats.summarize(values), delta)
        walls = [float(r.results["wall_s"]) for r in cell.finished]
        row["wall_s"] = stats.summarize(walls)
        row["wall_s_total"] = sum(walls)
        table.append(row)
    return table


def common_overrides(cells: Sequence[Cell]) -> dict[str, str]:
    """Overrides every cell sets to the same value (shown once, above the table)."""
    first = cells[0].overrides
    return {k: v for k, v in first.items() if all(c.overrides.get(k) == v for c in cells)}


def _mean_std(s: stats.Summary, digits: int = 4) -> str:
    if s.n == 0:
        return "—"
    return f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.n > 1 else "")


def _delta(delta: tuple[float, float, float]) -> str:
    d, lo, hi = delta
    if math.isnan(d):
        return "—"
    return f"{d:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if not math.isnan(lo) else " [n<2]")


def _overrides_text(overrides: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "—"


def markdown_table(table: list[dict[str, Any]], shown: list[str], metric: str, common: dict) -> str:
    head = ["cell", "overrides", "n", *shown, f"Δ {metric} vs baseline [95% CI]", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cell = row["cell"]
        own = {k: v for k, v in cell.overrides.items() if k not in common}
        summary, delta = row["metrics"][metric]
        cells = [
            cell.name + (" (baseline)" if row["baseline"] and "baseline" not in cell.name else ""),
            _overrides_text(own),
            str(row["n"]),
            *(_mean_std(row["metrics"][m][0]) for m in shown),
            "—" if row["baseline"] else _delta(delta),
            _mean_std(row["wall_s"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, table: list[dict[str, Any]], metrics: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["cell", "baseline", "overrides", "n", "seeds"]
        for m in metrics:
            header += [f"{m} mean", f"{m} std", f"{m} delta", f"{m} delta_lo95", f"{m} delta_hi95"]
        writer.writerow([*header, "wall_s mean", "wall_s total"])
        for row in table:
            cell = row["cell"]
            line = [
                cell.name,
                row["baseline"],
                ";".join(f"{k}={v}" for k, v in cell.overrides.items()),
                row["n"],
                " ".join(str(r.seed) for r in cell.finished),
            ]
            for m in metrics:
                s, (d, lo, hi) = row["metrics"][m]
                line += [s.mean, s.std, *(("", "", "") if row["baseline"] else (d, lo, hi))]
            writer.writerow([*line, row["wall_s"].mean, row["wall_s_total"]])


# ---------------------------------------------------------------------------------------------
# Expected results (the paper's number): achieved vs expected.
# ---------------------------------------------------------------------------------------------


def _targets(cell: Cell) -> list[Expected]:
    """The targets the cell's finished runs declare (results.json `expected`)."""
    targets = [Expected.from_fields(r.results.get("expected")) for r in cell.finished]
    return [t for t in targets if t is not None]


def checks(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Per cell whose runs declare `expected`: the mean over seeds against the target."""
    found = []
    for cell in cells:
        targets = _targets(cell)
        if not targets:
            continue
        target = targets[0]
        achieved = stats.summarize(cell.values(target.metric))
        seeds_met = sum(bool(r.results.get("expected_met")) for r in cell.finished)
        found.append(
            {
                "cell": cell.name,
                "metric": target.metric,
                "achieved": achieved,
                "comparison": target.comparison,
                "expected": target.value,
                "tolerance": target.tolerance,
                "seeds_met": f"{seeds_met}/{len(cell.finished)}",
                "verdict": "PASS" if target.met({target.metric: achieved.mean}) else "FAIL",
                "source": target.source,
            }
        )
    return found


def markdown_checks(found: list[dict[str, Any]]) -> str:
    head = [
        "cell",
        "metric",
        "achieved (mean ± std)",
        "expected",
        "tolerance",
        "seeds met",
        "verdict",
        "source",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in found:
        achieved = _mean_std(c["achieved"]) + f" (n={c['achieved'].n})"
        lines.append(
            f"| {c['cell']} | {c['metric']} | {achieved} | {c['comparison']} {c['expected']} "
            f"| {c['tolerance']} | {c['seeds_met']} | {c['verdict']} | {c['source']} |"
        )
    return "\n".join(lines)


def write_checks_csv(path: Path, found: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "cell",
                "metric",
                "achieved mean",
                "achieved std",
                "n",
                "comparison",
                "expected",
                "tolerance",
                "seeds met",
                "verdict",
                "source",
            ]
        )
        for c in found:
            a = c["achieved"]
            writer.writerow(
                [
                    c["cell"],
                    c["metric"],
                    a.mean,
                    a.std,
                    a.n,
                    c["comparison"],
                    c["expected"],
                    c["tolerance"],
                    c["seeds_met"],
                    c["verdict"],
                    c["source"],
                ]
            )


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------


def report(
    paths: Sequence[str | Path], *, out: str | Path | None = None, metric: str | None = None
) -> str:
    """Write the report files into `out` and return report.md's text."""
    if not paths:
        raise ConfigError("name at least one run or sweep workdir")
    if out is None and len(paths) > 1:
        raise ConfigError("several workdirs: say where the report goes with --out=DIR")
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    cells = runs.group(load_readable(paths))
    baseline = runs.baseline_of(cells)
    cells = [baseline, *(c for c in cells if c is not baseline)]
    metric = choose_metric(cells, baseline, metric)
    metrics = metric_names(cells)
    shown = [m for m in metrics if m.startswith("test/")] or metrics
    if metric not in shown:
        shown.insert(0, metric)
    table = rows(cells, baseline)
    common = common_overrides(cells) if len(cells) > 1 else {}
    found = checks(cells)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "table.csv", table, metrics)
    files = ["report.md", "table.csv"]
    if found:
        write_checks_csv(out / "checks.csv", found)
        files.append("checks.csv")
    if plots.plot_curves(cells, metric, out / "curves.png"):
        files.append("curves.png")
    bars = f"bars_{cell_dirname(metric.replace('/', '_'))}.png"
    plots.plot_bars(cells, baseline, metric, out / bars)
    files.append(bars)

    finished = sum(len(c.finished) for c in cells)
    wall = sum(row["wall_s_total"] for row in table)
    text = [
        f"# Report: {', '.join(map(str, paths))}",
        "",
        f"{len(cells)} cell(s), {finished} finished run(s), {wall:.0f} s of run wall time in total. "
        "Metrics: mean ± std over seeds (n = finished seeds). "
        f"Δ: difference of means vs the baseline with a Welch 95% t-interval.",
    ]
    if common:
        text += ["", "Every cell: " + _overrides_text(common)]
    text += ["", markdown_table(table, shown, metric, common)]
    if found:
        text += ["", "## Expected results", "", markdown_checks(found)]
    unfinished = [r for c in cells for r in c.runs if r.results is None]
    if unfinished:
        text += ["", "Not finished (not in the table): " + ", ".join(map(_unfinished, unfinished))]
    text += ["", "Files: " + ", ".join(files)]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return "\n".join(text) + f"\n\nwrote {out}/{{{','.join(files)}}}"


def load_readable(paths: Sequence[str | Path]) -> list[RunRecord]:
    """The runs under `paths`, each unreadable one skipped with one line on stderr."""
    found, records = runs.find_runs(paths), []
    for path in found:
        try:
            records.append(runs.load_run(path))
        except ConfigError as e:  # Names the run and the file.
            print(f"skipping {e}", file=sys.stderr)
    if not records:
        raise ConfigError(
            f"none of the {len(found)} run(s) under {', '.join(map(str, paths))} could be read "
            "(see the lines above)"
        )
    return records


def _unfinished(run: RunRecord) -> str:
    """The run and where it stopped, e.g. "runs/x (interrupted at step 500)"."""
    state = {
        "failed": f"failed, exit {run.exit_code}",
        "interrupted": f"interrupted at step {run.last_step}",
        "pending": "not started",
    }[run.status]
    return f"{run.path} ({state})"
