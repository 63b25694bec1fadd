"""What a run leaves in its workdir, besides checkpoints.

config.json       the resolved config (experiment file + overrides)
provenance.json   git SHA and dirty flag, package versions, host, devices, command line (of the
                  latest launch; a resumed run keeps its earlier launches' under "earlier_launches")
metrics.jsonl     one JSON object per logged step and split (see research/writer.py)
results.json      final metrics and the check against the paper's number (`config.expected`)
"""

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_collections

from research.errors import ConfigError
from research.expected import Expected

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "ml-collections",
    "numpy",
    "scikit-learn",
)


def check_compatible(workdir: Path, config: ml_collections.ConfigDict, force: bool) -> None:
    """Refuse to reuse a workdir that holds a different experiment's run, unless forced."""
    previous = workdir / "config.json"
    if force or not previous.exists():
        return
    try:
        before = json.loads(previous.read_text()).get("experiment")
    except json.JSONDecodeError:
        raise ConfigError(
            f"{previous} is unreadable; pass --force or use a fresh --workdir"
        ) from None
    if before != config.experiment:
        raise ConfigError(
            f"workdir {workdir} holds a run of {before!r}, not {config.experiment!r}; "
            "use a fresh --workdir (or --force to reuse it)"
        )


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (write a temporary file, then rename), so a crash leaves no torn file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(argv: list[str]) -> dict[str, Any]:
    """Where and with what code this run was made."""
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "command": [sys.executable, *argv] if argv else None,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def record_provenance(path: Path, argv: list[str]) -> None:
    """Write this launch's provenance to `path`, keeping the records of earlier launches."""
    record = provenance(argv)
    earlier = []
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None  # Unreadable: start the history again rather than fail the run.
        if isinstance(previous, dict):
            earlier = previous.pop("earlier_launches", []) + [previous]
    write_json(path, record | {"earlier_launches": earlier})


def results(
    config: ml_collections.ConfigDict,
    step: int,
    wall_s: float,
    metrics: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """The results.json record (the contract that sweeps and reports read)."""
    target = Expected.from_fields(config.expected)
    return {
        "experiment": config.experiment,
        "step": step,
        "wall_s": round(wall_s, 3),
        "metrics": metrics,
        "expected": target.record() if target else None,
        "expected_met": target.met(metrics) if target else None,
        **extra,
    }
