"""A run's workdir: who may use it, whether a relaunch continues it, and what it holds besides
checkpoints.

config.json       the resolved config (experiment file + overrides)
provenance.json   git SHA and dirty flag, package versions, host, devices, command line (of the
                  latest launch; a resumed run keeps its earlier launches' under "earlier_launches",
                  and what a relaunch changed or where a fork came from)
metrics.jsonl     one JSON object per logged step and split (see research/writer.py)
results.json      final metrics and the check against the paper's number (`config.expected`)
lock              while a run is training: its host and PID (see `locked`)

A workdir is a local path or a bucket (`gs://bucket/run`): every file in it is reached through
`path()`, an etils.epath.Path (the path type orbax and TFDS use), so the same code writes both.
Buckets need packages a local run does not (`BUCKETS`); `path()` refuses what cannot work here.

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
import importlib.util
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from etils import epath

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
# Where a workdir may live: local paths and buckets.
# -------------------------------------------------------------------------------------------------

# Buckets a workdir may be in: scheme -> the (module, pip package) pairs a run there needs. gs://:
# epath reads and writes files through gcsfs (or tf.io.gfile, when tensorflow is installed);
# orbax lists checkpoint steps with google-cloud-storage; tensorstore writes the arrays itself.
# Not s3://: orbax-checkpoint writes arrays only to local paths and gs:// (its tensorstore specs
# refuse any other URL), so a run there could not checkpoint: mount such a bucket instead.
BUCKETS = {
    "gs": (("gcsfs", "gcsfs"), ("google.cloud.storage", "google-cloud-storage")),
}


def path(workdir: "str | os.PathLike") -> epath.Path:
    """`workdir` (or a file in it) as an epath.Path: a local path, or `gs://bucket/dir`.

    Raises ConfigError, before anything is touched, for a scheme no workdir can have (`foo://`,
    `s3://`) or a bucket whose packages are not installed here (it names them).
    """
    if isinstance(workdir, epath.Path):
        return workdir
    text = os.fspath(workdir)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return epath.Path(text)
    if scheme == "file":  # file:///abs/path is a local path
        return epath.Path(rest)
    if scheme == "s3":
        raise ConfigError(
            f"{text}: s3:// workdirs are not supported (orbax-checkpoint writes checkpoints only "
            "to local paths and gs://); mount the bucket (e.g. mountpoint-s3) and give its local "
            "path"
        )
    if scheme not in BUCKETS:
        raise ConfigError(
            f"{text}: unknown scheme {scheme}://; give a local path or a bucket "
            f"({', '.join(f'{s}://bucket/dir' for s in BUCKETS)})"
        )
    missing = [package for module, package in BUCKETS[scheme] if not _importable(module)]
    if missing:
        raise ConfigError(
            f"{text}: {scheme}:// workdirs need {' and '.join(missing)}, not installed here; "
            f"pip install {' '.join(missing)}"
        )
    return epath.Path(text)


def _importable(module: str) -> bool:
    if module == "gcsfs":  # epath reaches gs:// through fsspec's "gcs" filesystem or tf.io.gfile
        import fsspec

        try:
            fsspec.get_filesystem_class("gcs")
            return True
        except (ImportError, ValueError):
            module = "tensorflow"
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # A missing parent package ("google")
        return False


def is_bucket(p: "str | os.PathLike") -> bool:
    """Whether `p` is in a bucket (gs://...), not on a local filesystem."""
    return "://" in os.fspath(p)


def absolute(p: epath.Path) -> epath.Path:
    """`p` made absolute if local (a bucket path already is)."""
    return p if is_bucket(p) else p.absolute()


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
    """Refuse a workdir that is a file, or that cannot be created or written (in a bucket: whose
    bucket does not exist or cannot be reached; writing is not probed, that would leave objects)."""
    if is_bucket(workdir):
        _check_bucket(epath.Path(workdir))
        return
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


def _check_bucket(workdir: epath.Path) -> None:
    scheme, _, rest = os.fspath(workdir).partition("://")
    bucket = epath.Path(f"{scheme}://{rest.split('/')[0]}")
    try:
        found = bucket.exists()
        is_file = found and workdir.exists() and not workdir.is_dir()
    except Exception as e:  # noqa: BLE001 - credentials, network, permissions: all one message.
        raise ConfigError(
            f"--workdir={workdir} cannot be reached ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); check the bucket name and credentials"
        ) from None
    if not found:
        raise ConfigError(f"--workdir={workdir}: bucket {bucket} does not exist; create it first")
    if is_file:
        raise ConfigError(f"--workdir={workdir} is a file, not a directory; choose another path")


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
        return _inspect_fork(workdir, config, path(fork_from), stored, latest)
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
        path.replace(workdir / f"results_step{step}.json")


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


class BucketLock:
    """The lock of a workdir in a bucket: an object `<workdir>/lock` holding the holder's host,
    PID, start time, a random token and a heartbeat time that a thread refreshes every
    `heartbeat_s`. Same interface and messages as `Lock`.

    Object stores have no flock(2), and an object outlives the run that wrote it, so:
      - Taking it: if a lock exists whose heartbeat is younger than `stale_s`, the workdir is busy
        (one line naming the holder). If it is older, its run is taken to be dead: it is deleted
        and taken over with a printed note. Then the lock is created with create-if-absent
        (fsspec's mode "xb": a GCS ifGenerationMatch=0 precondition in gcsfs >= 2024.12; losing
        that race is "busy"), or written plainly where the backend cannot (tf.io.gfile).
      - Then it is read back after `settle_s`: the run whose token is there holds it, any other
        is refused. This settles two launches that both found a stale lock (one deletes the
        other's fresh lock) and backends without create-if-absent, provided each launch's
        read-check-write takes less than `settle_s`.
    Limits, honestly: a run whose process is alive but frozen (no heartbeat) for `stale_s` loses
    its lock to the next launch, which then writes the same files: its heartbeat notices and
    logs a warning, but cannot stop the old run. A killed run's lock blocks relaunches until it
    is `stale_s` old (delete `<workdir>/lock` by hand if you know the run is dead). Clocks of the
    machines are compared (heartbeat times are wall-clock UTC): keep them within a minute.
    """

    heartbeat_s = 60.0
    stale_s = 600.0
    settle_s = 2.0

    def __init__(self, workdir: "str | os.PathLike"):
        self.path = epath.Path(workdir) / LOCK_FILE
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise WorkdirBusy naming the holder. Returns a note about a stale
        lock it took over, else None."""
        note = None
        held = self._read()
        if held is not None:
            age = self._age(held)
            if age < self.stale_s:
                raise self._busy(held)
            note = (
                f"took over the lock of {_describe_holder(held)}, whose heartbeat stopped "
                f"{age / 60:.0f} min ago (a bucket lock is stale after {self.stale_s / 60:.0f} min)"
            )
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        token = uuid.uuid4().hex
        if not self._create(json.dumps(_holder() | {"token": token, "heartbeat": _now()})):
            raise self._busy(self._read())
        time.sleep(self.settle_s)
        now_held = self._read()
        if now_held is None or now_held.get("token") != token:
            raise self._busy(now_held)
        self._token = token
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()
        return note

    def release(self) -> None:
        if self._token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._token = None

    def _beat(self) -> None:
        """Refresh the heartbeat while the lock is ours; warn once if another run took it."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._read()
                if held is None or held.get("token") != self._token:
                    logging.getLogger(__name__).warning(
                        "the lock of %s was taken over by %s (this run's heartbeat was late by "
                        "more than %.0f s); two runs may now write this workdir",
                        self.path.parent,
                        _describe_holder(held),
                        self.stale_s,
                    )
                    return
                self.path.write_text(json.dumps(held | {"heartbeat": _now()}))
            except Exception:  # noqa: BLE001 - a transient storage error: try again next beat.
                continue

    def _create(self, text: str) -> bool:
        """Write the lock only if absent (where the backend can); False if it exists."""
        try:
            import fsspec

            fs, inner = fsspec.core.url_to_fs(os.fspath(self.path))
        except (ImportError, ValueError):  # No fsspec filesystem: tf.io.gfile. Plain write.
            self.path.write_text(text)
            return True
        try:
            with fs.open(inner, "xb") as f:
                f.write(text.encode())
        except FileExistsError:
            return False
        return True

    def _read(self) -> dict | None:
        """The lock's record; None if there is none; {} if unreadable (its age: the object's)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            held = json.loads(text)
            return held if isinstance(held, dict) else {}
        except ValueError:
            return {}

    def _age(self, held: dict) -> float:
        """Seconds since the holder's last heartbeat (or the object's modification time)."""
        try:
            beat = datetime.datetime.fromisoformat(held["heartbeat"]).timestamp()
        except (KeyError, TypeError, ValueError):
            try:
                beat = float(self.path.stat().mtime)
            except OSError:
                beat = 0.0
        return time.time() - beat

    def _busy(self, held: dict | None) -> WorkdirBusy:
        beat = ""
        if held:
            beat = f", heartbeat {self._age(held):.0f} s ago"
        return WorkdirBusy(
            f"workdir {self.path.parent} is in use by {_describe_holder(held)}{beat}; wait for "
            "that run to end (or stop it), or use another --workdir (a bucket lock whose "
            f"heartbeat stops for {self.stale_s / 60:.0f} min is taken over)"
        )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _describe_holder(held: dict | None) -> str:
    try:
        return f"PID {held['pid']} on {held['host']} (since {held['started']})"
    except (KeyError, TypeError):
        return "an unknown process"


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}


def _read_holder(fd: int) -> str:
    try:
        return _describe_holder(json.loads(os.pread(fd, 4096, 0).decode() or "null"))
    except (ValueError, OSError):
        return "an unknown process"


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[str | None]:
    """Hold the workdir's lock for a run: process 0 takes it for every process of the run, and all
    processes learn whether it succeeded. Yields process 0's note about a stale lock, if any.
    A local workdir gets a `Lock` (flock), one in a bucket a `BucketLock`."""
    import jax

    kind = BucketLock if is_bucket(workdir) else Lock
    lock = kind(workdir) if jax.process_index() == 0 else None
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
    """Write JSON atomically, so a crash leaves no torn file: locally, write a temporary file and
    rename it; in a bucket an object appears whole or not at all, so write it directly."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if is_bucket(path):
        epath.Path(path).write_text(text)
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
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
