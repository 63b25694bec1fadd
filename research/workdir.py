"""A run's workdir: who may use it, whether a relaunch continues it, and what it holds besides
checkpoints.

config.json       the resolved config (experiment file + overrides)
provenance.json   git SHA and dirty flag, package versions, host, devices, command line (of the
                  latest launch; a resumed run keeps its earlier launches' under "earlier_launches",
                  and what a relaunch changed or where a fork came from)
metrics.jsonl     one JSON object per logged step and split (see research/writer.py)
results.json      final metrics and the check against the paper's number (`config.expected`)
lock              while a run is training: its host and PID (see `locked`)

A workdir belongs to one run. Relaunching it compares the new config with config.json
(`inspect`): identical, resume; only fields in config.RESUMABLE_CHANGES differ (more steps, other
intervals, another device layout, ...), resume and record what changed; anything else is a
different run, refused in one line that names the fields: use a fresh workdir, or `--fork_from`
to start one from this run's latest checkpoint. Nothing is written before these checks pass.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from research.errors import ConfigError, ConfigMismatch, WorkdirBusy
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


# -------------------------------------------------------------------------------------------------
# Relaunch rules: what the workdir holds, against the config being launched. Read-only.
# -------------------------------------------------------------------------------------------------

# Fields a relaunch may change and still continue the same run: how long it trains, how often it
# logs, evaluates and saves, how it is laid out on devices and input processes (data.workers: the
# same batches), and the target it is checked against.
# Anything else (model, data, optimizer, schedule, seed, ...) makes a different run: fork it.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every_steps",
    "train.eval_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.eval_batch_size",
    "train.steps_per_call",
    "train.early_stopping_patience",
    "train.nonfinite",
    "train.max_consecutive_skips",
    "train.off_curve",
    "data.data_dir",
    "data.workers",
    "decode.*",
    "parallel.*",
    "expected.*",
)


def resumable(key: str) -> bool:
    """Whether a relaunch may change `key` ("train.steps") and still continue the run."""
    return any(
        key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1]))
        for pattern in RESUMABLE_CHANGES
    )


def differences(before: Any, after: Any) -> dict[str, tuple]:
    """{key: (before, after)} for every field that differs between two configs, compared as they
    read back from config.json (tuples are lists there)."""
    a, b = _flat(_as_json(before)), _flat(_as_json(after))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _as_json(config: Any) -> Any:
    plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return json.loads(json.dumps(plain))


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= _flat(value, name + ".") if isinstance(value, dict) else {name: value}
    return out


@dataclasses.dataclass(frozen=True)
class Relaunch:
    """What a launch will do with its workdir, decided before anything is written."""

    resumes: bool  # The workdir holds a run of this config (possibly with resumable changes).
    changes: dict[str, tuple]  # Resumable fields that differ: {key: (before, now)}.
    results: dict | None  # results.json of a run that has ended.
    finished: bool  # It ended at this config's train.steps (or stopped early): nothing to run.
    latest_step: int | None  # Newest checkpoint of the workdir, or of --fork_from's run.
    fork_from: Path | None


def check_path(workdir: Path) -> None:
    """Refuse a workdir that is a file, or that cannot be created or written."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file, not a directory; choose another path")
    existing = next(p for p in (workdir.absolute(), *workdir.absolute().parents) if p.exists())
    try:  # A probe, not os.access: that says yes to root on a read-only filesystem.
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(
            f"--workdir={workdir} cannot be written ({existing}: {e.strerror}); choose a "
            "writable path"
        ) from None


def stored_config(workdir: Path) -> dict | None:
    """The config.json of the run in `workdir`, or None if there is none."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{path} is unreadable ({type(e).__name__}); restore it or use a fresh --workdir"
        ) from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is not a config; restore it or use a fresh --workdir")
    return stored


def inspect(
    workdir: Path, config: ml_collections.ConfigDict, fork_from: Path | None = None
) -> Relaunch:
    """Apply the relaunch rules (module docstring); raise ConfigMismatch/ConfigError if refused."""
    from research import checkpoint  # Deferred: orbax is heavy and this module is imported early.

    check_path(workdir)
    stored = stored_config(workdir)
    latest = checkpoint.latest_step(workdir / "checkpoints")
    if fork_from is not None:
        return _inspect_fork(workdir, config, Path(fork_from), stored, latest)
    if stored is None:
        return Relaunch(False, {}, None, False, latest, None)
    if stored.get("experiment") != config.experiment:
        raise ConfigMismatch(
            f"workdir {workdir} holds a run of {stored.get('experiment')!r}, not "
            f"{config.experiment!r}; use a fresh --workdir"
        )
    changed = differences(stored, config)
    refused = [k for k in changed if not resumable(k)]
    if refused:
        raise ConfigMismatch(
            f"workdir {workdir} holds a run with a different config ({_describe(changed, refused)}); "
            f"use a fresh --workdir, or --fork_from={workdir} with a fresh --workdir to continue "
            "from its latest checkpoint under the new config"
        )
    if latest is not None and config.train.steps < latest:
        raise ConfigMismatch(
            f"train.steps={config.train.steps} is below step {latest}, which the run in "
            f"{workdir} has reached; keep train.steps >= {latest} or fork into a fresh --workdir"
        )
    results = _read_results(workdir)
    finished = results is not None and (
        results.get("step") == config.train.steps or bool(results.get("stopped_early"))
    )
    return Relaunch(True, changed, results, finished, latest, None)


def _inspect_fork(workdir, config, source, stored, latest) -> Relaunch:
    from research import checkpoint

    if stored is not None or latest is not None:
        raise ConfigError(f"--workdir={workdir} already holds a run; fork into a fresh --workdir")
    source_config = stored_config(source)
    source_step = checkpoint.latest_step(source / "checkpoints")
    if source_config is None or source_step is None:
        raise ConfigError(
            f"--fork_from={source} holds no run with a checkpoint; name the workdir of a run"
        )
    changed = differences(source_config, config)
    if source_step > config.train.steps:
        raise ConfigMismatch(
            f"--fork_from={source} is at step {source_step}, beyond train.steps="
            f"{config.train.steps}; raise train.steps"
        )
    return Relaunch(False, changed, None, False, source_step, source)


def _describe(changed: dict[str, tuple], keys: list[str], limit: int = 4) -> str:
    shown = [f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"and {len(keys) - limit} more")
    return ", ".join(shown)


def describe_changes(changed: dict[str, tuple]) -> str:
    """ "train.steps: 800 -> 1200, ..." for a console line."""
    return _describe(changed, list(changed), limit=len(changed))


def _read_results(workdir: Path) -> dict | None:
    path = workdir / "results.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None  # A torn results.json: the run is not counted as finished; it re-evaluates.


def supersede_results(workdir: Path, step: int) -> None:
    """Move results.json aside (results_step<N>.json): the run continues past it."""
    path = workdir / "results.json"
    if path.exists():
        os.replace(path, workdir / f"results_step{step}.json")


# -------------------------------------------------------------------------------------------------
# The lock: one run per workdir.
# -------------------------------------------------------------------------------------------------


class Lock:
    """An exclusive lock on `<workdir>/lock`, holding the holder's host, PID and start time.

    flock(2): the kernel releases it when the holding process dies, however it dies, so a lock
    file left by a killed run is stale and taken over (with a message naming its holder).
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise WorkdirBusy naming the holder. Returns a note about a stale
        lock it took over, else None."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise WorkdirBusy(
                    f"workdir {self.path.parent} is in use by {holder}; wait for that run to end "
                    "(or stop it), or use another --workdir"
                ) from None
            # The file may have been removed by its last holder between our open and flock.
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd
        if previous != "an unknown process":
            return f"took over the lock of {previous}, which is no longer running"
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


LOCK_FILE = "lock"


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"PID {holder['pid']} on {holder['host']} (since {holder['started']})"
    except (ValueError, KeyError, TypeError, OSError):
        return "an unknown process"


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[str | None]:
    """Hold the workdir's lock for a run: process 0 takes it for every process of the run, and all
    processes learn whether it succeeded. Yields process 0's note about a stale lock, if any."""
    import jax

    lock = Lock(workdir) if jax.process_index() == 0 else None
    note, error = None, None
    if lock is not None:
        try:
            note = lock.acquire()
        except WorkdirBusy as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = WorkdirBusy(f"workdir {workdir} is in use by another run (process 0 says so)")
    if error is not None:
        raise error
    try:
        yield note
    finally:
        if lock is not None:
            lock.release()


# -------------------------------------------------------------------------------------------------
# Files.
# -------------------------------------------------------------------------------------------------


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

    from research import hardware  # Deferred, as jax: importing workdir stays cheap.

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
        "processor": hardware.describe(),  # What `auto` settings resolved by.
        "command": [sys.executable, *argv] if argv else None,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def record_provenance(path: Path, argv: list[str], **extra: Any) -> None:
    """Write this launch's provenance to `path`, keeping the records of earlier launches.

    `extra` adds to this launch's record, e.g. changed={...} on a resume with changes, or
    forked_from={...}."""
    record = provenance(argv) | extra
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
