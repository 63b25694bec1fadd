"""Checkpoints: one orbax CheckpointManager per run, in `<workdir>/checkpoints/`.

Each step directory holds three items, so a resumed run continues exactly where it stopped:
    state   the train-state pytree (params, model state such as BatchNorm statistics, optimizer
            state, EMA parameters, step), saved asynchronously
    data    the input iterator's position (grain iterator state, JSON)
    meta    host-side loop state: best metric so far, evals without improvement, wall time (JSON)
The manager keeps the latest `keep` steps plus the best step by `best_metric` (orbax preservation
policies). Orbax writes each step to a temporary directory and renames it when complete, so a
crash mid-save leaves the previous steps intact; restore() still falls back to an earlier step if
the latest cannot be read.

This is the only module that knows the layout. Besides the trainer's `Checkpointer`, it offers
read-only access for the commands that use a run's weights (`sample`, tests, export):
`latest_step`, `restore_state` (the saved state on this host), and the checks `mismatches` (does
a checkpoint fit a model's shapes?) and `copy_step` (`--fork_from`). A checkpoint that does not fit
the model is a config mismatch, reported as such; only unreadable data is moved aside.
"""

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from research import workdir
from research.errors import ConfigMismatch, SaveFailed

log = logging.getLogger(__name__)


class Checkpointer:
    """Save and restore (state, data iterator position, loop metadata) by step."""

    def __init__(
        self,
        directory: Path,
        *,
        keep: int = 3,
        best_metric: str = "",
        best_mode: str = "max",
        async_save: bool = True,
    ):
        policies = [checkpoint_managers.LatestN(keep)]
        if best_metric:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.directory = _absolute(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict,
        meta: dict,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Start saving `step` (returns once arrays are copied off the devices)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, metrics=metrics, force=True)

    def restore(
        self, abstract_state: Any, step: int | None = None
    ) -> tuple[int, Any, dict, dict] | None:
        """Restore `step` (default: the newest readable one) onto `abstract_state`'s shardings.

        Returns (step, state, data_state, meta), or None when there is no checkpoint at all.
        A step that fails to restore (truncated or corrupt files) is reported and skipped in
        favour of the previous one.
        """
        candidates = [step] if step is not None else list(reversed(self.all_steps()))
        for candidate in candidates:
            different = mismatches(self.directory, candidate, abstract_state)
            if different:
                raise ConfigMismatch(
                    f"checkpoint step {candidate} in {self.directory} does not fit the model: "
                    f"{different}; the config has changed since it was saved: use a fresh "
                    "--workdir, or restore the config the run was made with"
                )
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            )
            try:
                restored = self._manager.restore(candidate, args=args)
            except Exception as e:  # noqa: BLE001 - any unreadable step falls back to the previous.
                log.warning(
                    "checkpoint step %d is unreadable (%s); trying an earlier step", candidate, e
                )
                self._quarantine(candidate)
                continue
            return candidate, restored["state"], restored["data"], restored["meta"]
        return None

    def _quarantine(self, step: int) -> None:
        """Move an unreadable step aside so the manager no longer offers it."""
        source = self.directory / str(step)
        if source.exists() and jax.process_index() == 0:  # One process moves it; all reload.
            target = self.directory.parent / f"corrupt_checkpoint_{step}"
            with contextlib.suppress(OSError):
                target.rmtree()
            source.rename(target)
        self._manager.reload()

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (raises SaveFailed if one failed)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self.save_failed(self._manager.latest_step() or -1, e) from e

    def save_failed(self, step: int, error: Exception) -> SaveFailed:
        """The error for a failed save of `step`, naming the steps still intact."""
        try:
            intact = self.all_steps()
        except Exception:  # noqa: BLE001 - the filesystem itself may be gone.
            intact = "unknown"
        return SaveFailed(step, error, intact, self.directory)

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.close()


# -------------------------------------------------------------------------------------------------
# Read-only access, for commands that use a run's weights and for checks before a run.
# -------------------------------------------------------------------------------------------------


def all_steps(directory: Path) -> list[int]:
    """The complete steps in a checkpoints directory, oldest first ([] if none or no directory)."""
    directory = _absolute(directory)
    if not directory.is_dir():
        return []
    with _absl_errors_only():  # orbax warns about options a read-only manager ignores
        options = ocp.CheckpointManagerOptions(read_only=True)
        return sorted(ocp.CheckpointManager(directory, options=options).all_steps())


def latest_step(directory: Path) -> int | None:
    """The newest complete step in a checkpoints directory (None: none, or no directory)."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def read_step(directory: Path, step: int, target: Any) -> tuple[Any, dict, dict]:
    """(state, data iterator position, loop metadata) of checkpoint `step`, the state restored
    onto `target` (an abstract state with shardings); read-only, like `restore_state`."""
    with _absl_errors_only():
        options = ocp.CheckpointManagerOptions(read_only=True)
        manager = ocp.CheckpointManager(_absolute(directory), options=options)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        restored = manager.restore(step, args=args)
    return restored["state"], restored["data"], restored["meta"]


def read_meta(directory: Path, step: int) -> dict:
    """The loop metadata of checkpoint `step` (best step and value, wall time, ...); read-only."""
    with _absl_errors_only():
        options = ocp.CheckpointManagerOptions(read_only=True)
        manager = ocp.CheckpointManager(_absolute(directory), options=options)
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]


def write_step(directory: Path, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Write one complete checkpoint `step` into a checkpoints directory (e.g. an average)."""
    checkpointer = Checkpointer(directory, async_save=False)
    checkpointer.save(step, state, data_state, meta)
    checkpointer.close()


def _saved_tree(directory: Path, step: int) -> Any | None:
    """The saved state's tree of array metadata (shape, dtype), or None if unreadable."""
    try:
        with _absl_errors_only():
            checkpointer = ocp.StandardCheckpointer()
            return checkpointer.metadata(_absolute(directory) / str(step) / "state").item_metadata
    except Exception:  # noqa: BLE001 - unreadable metadata: the step is corrupt, not mismatched.
        return None


def _shapes(tree: Any) -> dict[str, tuple]:
    """{"params/wte/embedding": (shape, dtype)} with container kinds erased (a saved namedtuple
    reads back as a dict of its fields)."""

    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        "/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
        for path, leaf in leaves
        if hasattr(leaf, "shape")
    }


def mismatches(directory: Path, step: int, abstract_state: Any, limit: int = 3) -> str:
    """How checkpoint `step` differs from `abstract_state` in structure or shapes ("" if it fits,
    or if its metadata is unreadable: that is corruption, which restore handles)."""
    saved = _saved_tree(directory, step)
    if saved is None:
        return ""
    have, want = _shapes(saved), _shapes(abstract_state)
    problems = [
        f"{key} is {have.get(key, ('absent',))[0]} in the checkpoint but "
        f"{want.get(key, ('absent',))[0]} in the model"
        for key in sorted(set(have) | set(want))
        if have.get(key, (None,))[0] != want.get(key, (None,))[0]
    ]
    if len(problems) > limit:
        problems = [*problems[:limit], f"and {len(problems) - limit} more"]
    return "; ".join(problems)


def restore_state(directory: Path, step: int | None = None, target: Any = None) -> tuple[int, dict]:
    """(step, saved train state) of `step` (default: the newest). Never writes, so a run still
    training can be read.

    Without `target`, every array lands on this host's first device whatever it was saved on, in
    plain containers (optax's states read back as dicts of their fields): enough to read weights.
    With `target` (the state's abstract tree, shardings included, e.g. from steps.abstract_state),
    the state comes back in exactly that structure and placement, ready for the step.
    """
    directory = _absolute(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    with _absl_errors_only():
        checkpointer = ocp.StandardCheckpointer()
        if target is None:
            saved = checkpointer.metadata(directory / str(step) / "state").item_metadata
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), saved
            )
        return step, checkpointer.restore(directory / str(step) / "state", target)


def param_shapes(directory: Path, step: int) -> dict[str, tuple[int, ...]]:
    """{"layer_0/attn/qkv/kernel": shape} of the parameters saved at `step` (metadata only)."""
    saved = _saved_tree(directory, step)
    if saved is None:
        raise ConfigMismatch(f"the checkpoint at step {step} in {directory} cannot be read")
    prefix = "params/"
    return {
        k[len(prefix) :]: shape for k, (shape, _) in _shapes(saved).items() if k.startswith(prefix)
    }


def read_params(directory: Path, step: int) -> dict[str, Any]:
    """{"layer_0/attn/qkv/kernel": array} of the parameters saved at `step`, on this host."""
    _, state = restore_state(directory, step)
    return {k: v for k, v in _flat(state["params"]).items()}


def _flat(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def copy_step(source: Path, step: int, destination: Path) -> None:
    """Copy checkpoint `step` from one checkpoints directory to another (`--fork_from`); either
    may be in a bucket."""
    origin, target = workdir.path(source) / str(step), workdir.path(destination) / str(step)
    if not (workdir.is_bucket(origin) or workdir.is_bucket(target)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(origin, target)
        return
    _copy_tree(origin, target)


def _copy_tree(origin: Any, target: Any) -> None:
    """Copy a directory file by file through epath (from or to a bucket)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in origin.iterdir():
        if item.is_dir():
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())


def _absolute(directory: "str | Path") -> Any:
    """The directory as orbax wants it: an absolute local epath.Path, or a bucket path."""
    return workdir.absolute(workdir.path(directory))


@contextlib.contextmanager
def _absl_errors_only():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
