"""Experiment files, command-line overrides and validation.

An experiment file defines `get_config(arg=None) -> ml_collections.ConfigDict`. It is named on the
command line as `experiments/x.py` or `experiments/x.py:arg`, and any field can be overridden with
the ml_collections/absl syntax `--config.section.field=value`. The value is parsed to the type the
field already has (ConfigDict's type safety), so `--config.train.steps=1.5` and unknown keys fail
here, in one line, before anything compiles.

We parse overrides ourselves instead of through `ml_collections.config_flags` because the latter
reports unknown keys and missing files as tracebacks (or lazily, at first use); a researcher should
get one line that says what to do.
"""

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from research import expected
from research.errors import ConfigError

SECTIONS = ("model", "data", "optimizer", "schedule", "train", "parallel", "expected")
TRAIN_POSITIVE_INTS = (
    "steps",
    "batch_size",
    "eval_every_steps",
    "checkpoint_every_steps",
    "log_every_steps",
)


# ---------------------------------------------------------------------------------------------
# Defaults: every field the code reads exists in every experiment, so any of them is one override.
# ---------------------------------------------------------------------------------------------


def defaults() -> ml_collections.ConfigDict:
    """The base config an experiment file starts from and changes what its recipe needs."""
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.model = ml_collections.ConfigDict({"name": ""})  # Fields are the module's arguments.
    c.data = ml_collections.ConfigDict(
        {
            "kind": "images",  # images | text (research/data/__init__.py KINDS)
            "name": "",  # TFDS name ("digits" is built locally; others download on first use).
            "data_dir": "",  # "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
            "train_split": "train",
            "eval_split": "test",
            "test_split": "test",
            "image_scale": 1 / 255,  # Pixels to [0, 1]: 1/255 for uint8 images, 1/16 for digits.
            "mean": (),  # Per-channel normalisation after scaling to [0, 1]; () = none.
            "std": (),
            "augment": {
                "crop_padding": 0,
                "flip": False,
                "rotate_deg": 0.0,
                "scale": 0.0,
                "translate": 0.0,
            },
            "mock": False,  # tfds.testing.mock_data: random examples of the real shapes, no download.
            # Text (kind="text", research/data/text.py):
            "path": "",  # A local text file; replaces `name` (split 90/5/5 like tiny_shakespeare).
            "tokenizer": "char",  # char | gpt2 (research/data/tokenizers.py)
            "seq_len": 256,  # Tokens per window: the context length T (nanoGPT's block_size).
        }
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",  # sgd | adam | adamw
            "learning_rate": 0.1,
            "momentum": 0.9,
            "nesterov": False,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "decay_mask": "matrices",  # Decay kernels and embeddings, not biases or norm scales.
            "clip_norm": 0.0,  # 0 = off; else clip_by_global_norm.
            "grad_accum_steps": 1,
            "ema_decay": 0.0,  # 0 = off; else evaluate on an EMA of the parameters.
        }
    )
    c.schedule = ml_collections.ConfigDict(
        {
            "name": "constant",  # constant | warmup_cosine | warmup_linear | piecewise | rsqrt
            "warmup_steps": 0,
            "end_lr": 0.0,
            "decay_steps": 0,  # 0 = train.steps.
            "boundaries": (),  # Piecewise: multiply by decay_factor at these steps.
            "decay_factor": 0.1,
            "scales": (),  # Piecewise: one factor per boundary instead of decay_factor.
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "steps": 1000,
            "batch_size": 128,
            "eval_batch_size": 256,
            "steps_per_call": 1,  # Steps per compiled call (lax.scan); keep 1 for conv nets on CPU.
            "seed": 0,
            "log_every_steps": 50,
            "eval_every_steps": 500,
            "checkpoint_every_steps": 500,
            "keep_checkpoints": 3,
            "best_metric": "eval/accuracy",  # Keeps the best checkpoint; drives early stopping.
            "best_mode": "max",
            "early_stopping_patience": 0,  # Evals without improvement before stopping; 0 = off.
            "label_smoothing": 0.0,
            "nonfinite": "halt",  # halt | skip: what a NaN/Inf loss or update does (research/guard.py).
            "max_consecutive_skips": 10,  # Skipped updates in a row before stopping; 0 = never.
            "loss_spike_sigmas": 0.0,  # Skip updates whose loss exceeds mean + k std; 0 = off.
        }
    )
    c.parallel = ml_collections.ConfigDict(
        {
            "strategy": "gspmd",  # gspmd | shard_map | pmap (research/parallel.py)
            "fsdp": 1,  # Devices the parameters are sharded over (FSDP, gspmd only); 1 = none.
            "sync_batch_stats": True,  # BatchNorm statistics over the global batch.
        }
    )
    c.expected = ml_collections.ConfigDict(expected.defaults())  # research/expected.py
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a variant string such as "smoke" or "depth=56,smoke" into fields (cf. big_vision).

    Bare words become True; `key=value` values take the type of the default. Unknown keys are
    errors, so a typo in a variant name cannot silently run the baseline.
    """
    fields = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if key not in fields:
            raise ConfigError(f"unknown variant {key!r}; this experiment knows {sorted(fields)}")
        fields[key] = _parse_value(value, fields[key], key) if sep else True
    return ml_collections.ConfigDict(fields)


# ---------------------------------------------------------------------------------------------
# Loading experiment files.
# ---------------------------------------------------------------------------------------------


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/file.py[:arg]` and return its (locked) config."""
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(
            f"experiment file {path_str!r} not found; pass --config=experiments/<name>.py"
        )
    module_spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(
            f"{path_str} defines no get_config(arg=None); see experiments/digits_cnn.py"
        )
    try:
        config = module.get_config(arg or None)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{spec}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path_str}: get_config() must return an ml_collections.ConfigDict")
    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ConfigError(
            f"{path_str}: get_config() lacks section(s) {missing}; every experiment has {SECTIONS}"
        )
    config.experiment = path.stem + (f":{arg}" if arg else "")
    config.lock()
    return config


def experiment_module(spec: str):
    """Import an experiment file as a module (for its optional `sweep()`)."""
    path = Path(spec.partition(":")[0])
    module_spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Overrides: --config.a.b=value.
# ---------------------------------------------------------------------------------------------


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse `text` to the type of the field's current value."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text}: expected true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text}: expected an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text}: expected a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, tuple | list):
        try:
            value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
        except (ValueError, SyntaxError):
            raise ConfigError(f"--config.{key}={text}: expected a tuple such as (1, 2)") from None
        value = tuple(value) if isinstance(value, tuple | list) else (value,)
        if current:  # Keep the element type of the default, e.g. floats stay floats.
            kind = type(current[0])
            try:
                value = tuple(kind(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"--config.{key}={text}: expected {kind.__name__} elements"
                ) from None
        return type(current)(value)
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    raise ConfigError(f"--config.{key} is a {type(current).__name__}; set its fields instead")


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set `config.<key>` from its command-line text, refusing unknown keys and wrong types."""
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigError(
                f"unknown config key --config.{'.'.join(parents[: i + 1])}; {_known(node)}"
            )
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config key --config.{key}; {_known(node)}")
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"--config.{key} is a section; set one of its fields: {sorted(current.keys())}"
        )
    value = _parse_value(text, current, key)
    with config.unlocked():
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"--config.{key}={text}: {e}") from None


def _known(node: Any) -> str:
    if isinstance(node, ml_collections.ConfigDict):
        return f"known here: {', '.join(sorted(node.keys()))}"
    return "its parent is not a section"


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Split `--config.a.b=v` arguments into {"a.b": "v"}; anything else is an error."""
    overrides = {}
    for arg in args:
        if not arg.startswith("--config."):
            raise ConfigError(
                f"unrecognised argument {arg!r}; overrides look like --config.train.steps=100"
            )
        key, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            raise ConfigError(f"{arg}: give a value as --config.{key}=VALUE")
        overrides[key] = value
    return overrides


def build_config(spec: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Load an experiment, apply overrides (strings parsed, other values set as given), validate."""
    config = load_experiment(spec)
    for key, value in overrides.items():
        apply_override(config, key, value if isinstance(value, str) else json.dumps(value))
    validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# Validation: invalid values are caught before any compilation.
# ---------------------------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid setting and what to do about it."""
    from research import models, optim  # Deferred: keeps `launch.py --help` light.

    train = config.train
    for name in TRAIN_POSITIVE_INTS:
        value = train.get(name)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
    from research import guard

    if train.get("nonfinite", "halt") not in guard.POLICIES:
        raise ConfigError(f"train.nonfinite={train.nonfinite!r}; choose one of {guard.POLICIES}")
    if train.get("loss_spike_sigmas", 0.0) < 0 or train.get("max_consecutive_skips", 0) < 0:
        raise ConfigError("train.loss_spike_sigmas and train.max_consecutive_skips must be >= 0")
    if "seed" not in train:
        raise ConfigError("train.seed is missing; add train.seed = 0 to the experiment file")
    if config.model.get("name") not in models.MODELS:
        raise ConfigError(
            f"model.name={config.model.get('name')!r} is unknown; choose one of {sorted(models.MODELS)}"
        )
    try:
        optim.validate(config.optimizer, config.schedule, train.steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    accum = config.optimizer.get("grad_accum_steps", 1)
    if train.batch_size % accum:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is not divisible by optimizer.grad_accum_steps={accum}"
        )
    if device_count is not None and train.batch_size % (device_count * accum):
        raise ConfigError(
            f"train.batch_size={train.batch_size} does not split over {device_count} devices x "
            f"{accum} accumulation steps; use a multiple of {device_count * accum}"
        )
    expected.validate(config.expected)
