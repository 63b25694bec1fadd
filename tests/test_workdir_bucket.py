"""A workdir in a bucket (gs://): the run's files, its lock, resume, and a busy workdir.

No real bucket is reachable here, so `bucket` fakes one: fsspec's gs:// filesystem (the one epath
uses, as gcsfs does) is replaced by a directory-mapped filesystem, gs://bucket/x -> tmp/bucket/x.
Everything of ours goes through that: config, provenance, metrics.jsonl, TensorBoard events,
results, the lock (with its create-if-absent write), and orbax's own gs:// code (its step listing,
its commit_success.txt finalisation instead of renames). Two things could not run here and are
patched in orbax, which is where a real bucket differs:
  - tensorstore writes the arrays with its own GCS driver, which would go to the network: its
    kvstore spec is pointed at the same mapped directory with the file driver;
  - orbax asks google-cloud-storage (not installed) whether the bucket has a hierarchical
    namespace: it is told no.
So the GCS driver, credentials, latency and gcsfs itself are untested; the paths, the layout and
the sequence of operations of a bucket run are.
"""

import datetime
import hashlib
import json
import os
from pathlib import Path

import fsspec
import pytest
from etils.epath import backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry
from orbax.checkpoint._src.path import gcs_utils

from research import workdir
from research.errors import WorkdirBusy
from tests.helpers import launch_here, snapshot

SMOKE = "experiments/digits_cnn.py:smoke"
RUN = "gs://bucket/run"


class FakeGCS(DirFileSystem):
    """gs://bucket/path -> <root>/bucket/path; files are written wherever asked (no directories
    to make first, as in an object store)."""

    protocol = ("gs", "gcs")
    cachable = False
    root = ""

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> Path:
    """The local directory that holds the fake gs://bucket."""
    root = tmp_path / "gcs"
    (root / "bucket").mkdir(parents=True)
    monkeypatch.setattr(FakeGCS, "root", str(root))
    for scheme in FakeGCS.protocol:
        monkeypatch.setitem(_registry, scheme, FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()  # epath's cached gs:// filesystem.
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)

    def file_kvstore(path):
        name, inside = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / name / inside)}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)
    # The fake stands in for gcsfs; google-cloud-storage is only orbax's, patched above.
    monkeypatch.setattr(workdir, "BUCKETS", {"gs": (("gcsfs", "gcsfs"),)})
    monkeypatch.setattr(workdir.BucketLock, "settle_s", 0.0)
    yield root / "bucket"
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_a_run_in_a_bucket_writes_there_resumes_and_refuses_a_second_run(bucket, capsys):
    run = bucket / "run"
    status, out, _ = launch_here(
        [f"--config={SMOKE}", f"--workdir={RUN}", "--stop_after_step=6"], capsys
    )
    assert status == 0 and "stopped at step 6 of 12" in out
    written = snapshot(run)
    assert {"config.json", "provenance.json", "metrics.jsonl"} <= set(written)
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in written)
    assert "checkpoints/6/commit_success.txt" in written  # orbax's gs:// finalisation, not rename.
    assert "lock" not in written and "results.json" not in written  # Released; not finished.
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 12
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6]  # train at 4, eval at 6: every line logged before the checkpoint.

    # A second run while the first holds the lock: refused in one line, nothing written.
    first = workdir.BucketLock(RUN)
    assert first.acquire() is None
    held = json.loads((run / "lock").read_text())
    assert held["pid"] == os.getpid() and len(held["token"]) == 32
    before = snapshot(run)
    status, _, err = launch_here([f"--config={SMOKE}", f"--workdir={RUN}"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert f"workdir {RUN} is in use by PID {os.getpid()}" in err
    assert snapshot(run) == before
    first.release()
    assert not (run / "lock").exists()

    # A lock left by a killed run: taken over once its heartbeat is older than stale_s.
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    stale = {"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00+00:00"}
    (run / "lock").write_text(json.dumps(stale | {"heartbeat": old.isoformat(), "token": "x"}))
    status, out, _ = launch_here([f"--config={SMOKE}", f"--workdir={RUN}"], capsys)
    assert status == 0, out
    assert "took over the lock of PID 1 on elsewhere" in out and "stopped 60 min ago" in out
    assert "steps 6->12" in out  # Resumed from the bucket's checkpoint.
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 12 and 0.0 <= results["metrics"]["test/accuracy"] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [
        (4, "train"),
        (6, "eval"),
        (8, "train"),
        (12, "train"),
        (12, "eval"),
        (12, "test"),
    ]
    assert results["metrics"]["test/accuracy"] == records[-1]["accuracy"]
    assert not (run / "lock").exists()
    events = sorted(n for n in snapshot(run) if n.startswith("tensorboard/"))
    assert len(events) == 2  # One per launch, each written whole through epath.
    assert all(b"train/loss" in (run / name).read_bytes() for name in events)


def test_bucket_lock_busy_heartbeat_takeover_and_release(bucket, monkeypatch):
    first, second = workdir.BucketLock(RUN), workdir.BucketLock(RUN)
    monkeypatch.setattr(first, "heartbeat_s", 0.05)
    assert first.acquire() is None
    with pytest.raises(WorkdirBusy, match=rf"workdir {RUN} is in use by PID {os.getpid()} on "):
        second.acquire()
    beat = json.loads((bucket / "run" / "lock").read_text())["heartbeat"]
    # The heartbeat thread keeps the lock fresh; a lock whose heartbeat stopped is taken over.
    monkeypatch.setattr(second, "stale_s", 0.0)
    note = second.acquire()
    assert note.startswith(f"took over the lock of PID {os.getpid()} on ")
    first._stop.wait(0.3)  # first's next beat finds second's token: it warns and stops.
    first._thread.join(timeout=5)
    assert not first._thread.is_alive()
    held = json.loads((bucket / "run" / "lock").read_text())
    assert held["token"] == second._token and held["heartbeat"] >= beat
    first.release()  # Not its lock any more: left alone.
    assert (bucket / "run" / "lock").exists()
    second.release()
    assert not (bucket / "run" / "lock").exists()


def test_the_lock_is_created_only_if_absent(bucket):
    """The race create-if-absent settles: the object exists, so this write loses."""
    (bucket / "run").mkdir()
    (bucket / "run" / "lock").write_text("{}")
    assert workdir.BucketLock(RUN)._create("mine") is False
    assert (bucket / "run" / "lock").read_text() == "{}"
    fs, inner = fsspec.core.url_to_fs(f"{RUN}/lock")
    assert isinstance(fs, FakeGCS) and inner == "bucket/run/lock"


def test_local_paths_stay_local_and_file_urls_are_local_paths(tmp_path):
    assert workdir.path(tmp_path) == tmp_path and not workdir.is_bucket(workdir.path(tmp_path))
    assert workdir.path(f"file://{tmp_path}") == tmp_path
    assert workdir.is_bucket("gs://bucket/run") and not workdir.is_bucket("runs/gs_like")


def test_a_missing_bucket_or_a_file_is_refused(bucket):
    with pytest.raises(workdir.ConfigError, match="bucket gs://nobucket does not exist"):
        workdir.check_path(workdir.path("gs://nobucket/run"))
    (bucket / "afile").write_text("x")
    with pytest.raises(workdir.ConfigError, match="is a file"):
        workdir.check_path(workdir.path("gs://bucket/afile"))
    workdir.check_path(workdir.path(RUN))  # Fine: nothing written.
    assert snapshot(bucket) == {"afile": hashlib.sha256(b"x").hexdigest()}
