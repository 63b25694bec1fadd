"""Experiment files, command-line overrides and validation: the one tree of defaults.

An experiment file defines `get_config(arg=None) -> ml_collections.ConfigDict`, starting from
`defaults()` and changing what its recipe needs. It is named on the command line as
`experiments/x.py` or `experiments/x.py:arg`, and any field can be overridden with the
ml_collections/absl syntax `--config.section.field=value`. The value is parsed to the type the field
already has, so `--config.train.steps=1.5` and unknown keys fail here, in one line, before anything
compiles. Every field's allowed values are declared once, in `rules()`; `validate` checks them all.

Every default lives in `defaults()` (the model section: in the model's own dataclass fields, which
loading copies in, so every model argument is one override too). Code reads fields as attributes
of the locked config, never with `.get(name, default)`, so a field nobody declared is an error.

The variant word `smoke` works for every experiment: `experiments/x.py:smoke` is the recipe shrunk
by `smoke()` to seconds on a CPU (tiny model, a few steps, mock data where the real data would
need a download), for tests.

We parse overrides ourselves instead of through `ml_collections.config_flags` because the latter
reports unknown keys and missing files as tracebacks (or lazily, at first use); a researcher should
get one line that says what to do.
"""

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from research import expected
from research.errors import ConfigError

SECTIONS = (
    "model",
    "data",
    "optimizer",
    "schedule",
    "train",
    "init",
    "lora",
    "decode",
    "parallel",
    "expected",
)
TOP_LEVEL = ("task", *SECTIONS, "experiment")  # `experiment` is set on loading: file[:arg].
SMOKE = "smoke"  # The variant word every experiment understands (see `smoke`).

# ---------------------------------------------------------------------------------------------
# Defaults: every field the code reads exists in every experiment, so any of them is one override.
# ---------------------------------------------------------------------------------------------


def defaults() -> ml_collections.ConfigDict:
    """The base config an experiment file starts from and changes what its recipe needs."""
    from research.data import augment  # Deferred: keeps `launch.py --help` light.

    c = ml_collections.ConfigDict()
    c.task = "classification"  # research/tasks TASKS
    c.model = ml_collections.ConfigDict({"name": ""})  # Other fields: the module's arguments.
    c.data = ml_collections.ConfigDict(
        {
            "kind": "images",  # images | text | translation | masked_text | text_classification
            # (research/data/__init__.py KINDS)
            "name": "",  # TFDS name ("digits" is built locally; others download on first use).
            "data_dir": "",  # "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
            "train_split": "train",
            "eval_split": "test",
            "test_split": "test",
            "image_scale": 1 / 255,  # Pixels to [0, 1]: 1/255 for uint8 images, 1/16 for digits.
            "image_size": 0,  # Images cropped/resized to this square; 0 = the source's fixed size.
            "mean": (),  # Per-channel normalisation after scaling to [0, 1]; () = none.
            "std": (),
            "augment": augment.OFF,  # research/data/augment.py: all off.
            # Processes computing training batches (reading, decoding, augmenting) while the step
            # runs; 0 = in the trainer's process. The batches are the same (data/workers.py).
            "workers": 0,
            "mock": False,  # tfds.testing.mock_data: random examples of the real shapes, no download.
            # Text (kind="text", research/data/text.py) and translation (research/data/translation.py):
            # A local text file (text), or parallel text (translation), replacing `name`; the root
            # of a class-per-directory image tree (images, with name="image_folder").
            "path": "",
            "target_path": "",  # Translation: the target side's file, line by line; "" = path is a TSV.
            "source_lang": "en",  # Translation: the feature (language) translated from ...
            "target_lang": "de",  # ... and into.
            "tokenizer": "char",  # char | gpt2 | sentencepiece | wordpiece (data/tokenizers.py)
            "tokenizer_vocab_size": 8000,  # Trained tokenizers (sentencepiece, wordpiece): size.
            # A trained tokenizer's file (SentencePiece .model, WordPiece vocab.txt); "" = train
            # one on the train split.
            "tokenizer_model": "",
            # Text classification: the features holding the text, one or a pair (a, b).
            "text_features": ("text",),
            "seq_len": 256,  # Text: tokens per window (nanoGPT's block_size); translation: tokens
            # per side, longer training pairs dropped and evaluation inputs truncated.
            "pack": True,  # Translation: pack several training pairs into each row of seq_len.
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
            "grad_accum_steps": 1,  # Micro-batches per update (the same update, less memory).
            "ema_decay": 0.0,  # 0 = off; else evaluate on an EMA of the parameters.
            # Parameter groups for fine-tuning (research/optim.py), regexes over parameter paths
            # such as "layer_0/attn/qkv/kernel":
            "trainable": "",  # The parameters that train; "" = all (with LoRA: the adapters).
            "freeze": "",  # Parameters that do not train (no optimizer state), after `trainable`.
            "lr_multipliers": (),  # ((regex, factor), ...): the first match scales its lr.
            "layer_decay": 0.0,  # 0 = off; else lr * d ** (L + 1 - depth) (ELECTRA, BEiT).
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
            "eval_max_batches": 0,  # Batches scored at intermediate evals; 0 = all. Last eval: all.
            "checkpoint_every_steps": 500,
            "keep_checkpoints": 3,
            "best_metric": "eval/accuracy",  # Keeps the best checkpoint; drives early stopping.
            "best_mode": "max",  # max | min
            "early_stopping_patience": 0,  # Evals without improvement before stopping; 0 = off.
            "label_smoothing": 0.0,
            "nonfinite": "halt",  # halt | skip: what a NaN/Inf loss or update does (research/guard.py).
            "max_consecutive_skips": 10,  # Skipped updates in a row before stopping; 0 = never.
            "loss_spike_sigmas": 0.0,  # Skip updates whose loss exceeds mean + k std; 0 = off.
            # Loss scaling for float16 (research/loss_scale.py): none | fixed | dynamic.
            "loss_scale": "none",
            "loss_scale_init": 2.0**15,  # S under "fixed"; the first S under "dynamic".
            "loss_scale_interval": 2000,  # "dynamic": finite steps in a row before S doubles.
            "off_curve": "warn",  # warn | stop: leaving expected.curve's band (research/expected.py).
        }
    )
    c.init = ml_collections.ConfigDict(
        {  # Start from another run's weights (fine-tuning): research/initialize.py.
            "source": "",  # A run's workdir or a Hugging Face directory; "" = fresh.
            "step": 0,  # A run's checkpoint; 0 = the latest.
            "include": "",  # Regex over parameter paths to copy; "" = all.
            "exclude": "",  # Regex of parameters to keep fresh, e.g. "^classifier/" (a new head).
        }
    )
    c.lora = ml_collections.ConfigDict(
        {  # Low-rank adapters on Dense layers, the base frozen (Hu et al. 2021): research/lora.py.
            "rank": 0,  # r; 0 = no LoRA.
            "alpha": 8.0,  # The branch is scaled by alpha / rank (PEFT's default alpha).
            "dropout": 0.0,  # On the branch's input, in training.
            "targets": "attn/qkv/kernel",  # Regex over Dense kernel paths: the layers adapted.
            "qkv": "fused",  # fused: one pair on the q|k|v projection; or slices, e.g. "qv".
        }
    )
    c.decode = ml_collections.ConfigDict(
        {  # Generating outputs (translation): research/tasks/decoding.py, research/tasks/seq2seq.py.
            "beam_size": 4,  # 1 = greedy.
            "length_penalty": 0.6,  # alpha of Wu et al. 2016: ((5 + |Y|) / 6) ** alpha.
            "max_extra_tokens": 50,  # Output length <= input length + this (Vaswani et al. 6.1).
            "on_eval": False,  # Also decode at periodic evaluations (always at the final test).
            "bleu_tokenize": "13a",  # sacreBLEU's tokenizer: 13a (its default), intl, char, ...
        }
    )
    c.parallel = ml_collections.ConfigDict(
        {
            "strategy": "gspmd",  # gspmd | shard_map | pmap (research/parallel.py)
            "fsdp": 1,  # Devices the parameters are sharded over (FSDP, gspmd only); 1 = none.
            # "data=-1,fsdp=2,tensor=2": the mesh's axis sizes (research/sharding.py); "" =
            # data=-1,fsdp=<parallel.fsdp>. tensor > 1: Megatron tensor parallelism (gspmd only).
            "mesh": "",
            "sync_batch_stats": True,  # BatchNorm statistics over the global batch.
        }
    )
    c.expected = ml_collections.ConfigDict(expected.defaults())  # research/expected.py
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a variant string such as "cpu" or "depth=56,cpu" into fields (cf. big_vision).

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
    """Load `path/to/file.py[:arg]` and return its (locked) config.

    The word `smoke` in arg is handled here for every experiment (see `smoke`); the rest of arg
    goes to get_config. Fields that no default declares are errors naming the nearest valid one.
    """
    path_str, _, arg = spec.partition(":")
    words = [w for w in arg.split(",") if w]
    is_smoke = SMOKE in words
    module = experiment_module(spec)
    if not hasattr(module, "get_config"):
        raise ConfigError(
            f"{path_str} defines no get_config(arg=None); see experiments/digits_cnn.py"
        )
    try:
        config = module.get_config(",".join(w for w in words if w != SMOKE) or None)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{spec}: {message}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path_str}: get_config() must return an ml_collections.ConfigDict")
    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ConfigError(
            f"{path_str}: get_config() lacks section(s) {missing}; every experiment has {SECTIONS}"
        )
    config.model = _with_model_defaults(config.model, path_str)
    check_declared(config, f"{path_str} sets")
    if is_smoke:
        smoke(config)
    config.experiment = Path(path_str).stem + (f":{arg}" if arg else "")
    config.lock()
    return config


def experiment_module(spec: str):
    """Import an experiment file as a module (for get_config and the optional `sweep()`)."""
    path = Path(spec.partition(":")[0])
    if not path.is_file():
        raise ConfigError(
            f"experiment file {str(path)!r} not found; pass --config=experiments/<name>.py"
        )
    module_spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: {e.msg}; fix the experiment file") from None
    return module


def _with_model_defaults(model: Any, where: str) -> ml_collections.ConfigDict:
    """The model section with every argument of the named module, its defaults filled in."""
    from research import models  # Deferred: keeps `launch.py --help` light.

    fields = dict(model)
    name = fields.get("name", "")
    if name not in models.MODELS:
        raise ConfigError(
            f"{where}: model.name={name!r} is unknown; choose one of {sorted(models.MODELS)}"
        )
    declared = models.arguments(name)
    unknown = [k for k in fields if k != "name" and k not in declared]
    if unknown:
        raise ConfigError(
            f"{where} model.{unknown[0]}, which {name!r} does not take"
            f"{_did_you_mean(unknown[0], declared)}; its fields: {', '.join(sorted(declared))}"
        )
    return ml_collections.ConfigDict({"name": name, **declared, **fields})


def check_declared(config: ml_collections.ConfigDict, what: str) -> None:
    """Raise ConfigError for a field no default declares (a typo such as train.stpes)."""
    declared = defaults()
    for key in config:
        if key not in TOP_LEVEL:
            raise ConfigError(
                f"{what} {key!r}, which is not a section{_did_you_mean(key, TOP_LEVEL)}"
            )
    for section in SECTIONS[1:]:  # The model section is checked against the module's fields.
        for key, _ in _leaves(config[section], section):
            node, parts = declared, key.split(".")
            for part in parts:
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    names = [k for k, _ in _leaves(declared[section], section)]
                    raise ConfigError(
                        f"{what} {key}, which no default declares{_did_you_mean(key, names)}"
                    )
                node = node[part]


def _did_you_mean(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every field under `node`."""
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            yield from _leaves(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.steps": 800, ...} for every field of a config (or its JSON form)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            flat |= dict(_leaves(value, key))
        else:
            flat[key] = value
    return flat


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
# Validation: what every field may hold, declared once; invalid values are caught before anything
# is compiled or written.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field may hold: `ok(value)`, and `says` for the error ("a positive integer")."""

    kind: str
    says: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _all(v: Any, test: Callable[[Any], bool]) -> bool:
    return isinstance(v, tuple | list) and all(test(x) for x in v)


POSITIVE_INT = Rule("positive_int", "a positive integer", lambda v: _is_int(v) and v > 0)
COUNT = Rule("count", "an integer >= 0", lambda v: _is_int(v) and v >= 0)
SEED = Rule("seed", "an integer in [0, 2**31)", lambda v: _is_int(v) and 0 <= v < 2**31)
POSITIVE = Rule("positive", "a finite number > 0", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE = Rule("non_negative", "a finite number >= 0", lambda v: _is_number(v) and v >= 0)
FRACTION = Rule("fraction", "a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1)
FINITE = Rule("finite", "a finite number", _is_number)
FLAG = Rule("flag", "true or false", lambda v: isinstance(v, bool))
TEXT = Rule("text", "a string", lambda v: isinstance(v, str))
SPLIT = Rule(
    "split", "a TFDS split such as train or train[:90%]", lambda v: isinstance(v, str) and bool(v)
)
POSITIVE_INTS = Rule(
    "positive_ints", "a tuple of positive integers", lambda v: _all(v, POSITIVE_INT.ok)
)
NUMBERS = Rule("numbers", "a tuple of finite numbers", lambda v: _all(v, _is_number))


def _is_regex(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        re.compile(v)
    except re.error:
        return False
    return True


REGEX = Rule("regex", 'a regular expression ("" for none)', _is_regex)
LR_MULTIPLIERS = Rule(
    "lr_multipliers",
    "a tuple of (regex, factor > 0) pairs, e.g. (('^classifier/', 10.0),)",
    lambda v: _all(
        v,
        lambda pair: (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and _is_regex(pair[0])
            and bool(pair[0])
            and POSITIVE.ok(pair[1])
        ),
    ),
)
POSITIVE_NUMBERS = Rule(
    "positive_numbers", "a tuple of numbers > 0", lambda v: _all(v, POSITIVE.ok)
)


def choice(names: Any) -> Rule:
    """One of `names` (a tuple, or the keys of a table such as optim.OPTIMIZERS)."""
    names = tuple(sorted(names))
    return Rule("choice", ", ".join(names), lambda v: v in names)


def rules() -> dict[str, Rule]:
    """Every field of `defaults()` and what it may hold. Names resolve through the tables next
    to the code they name. Model fields beyond `name` are checked by the model itself."""
    from research import (  # Deferred: heavy imports.
        data,
        guard,
        lora,
        loss_scale,
        models,
        optim,
        parallel,
        sharding,
        tasks,
    )
    from research.data import tokenizers

    return {
        "task": choice(tasks.TASKS),
        "model.name": choice(models.MODELS),
        "data.kind": choice(data.KINDS),
        "data.name": TEXT,  # Checked against the TFDS catalog before a run.
        "data.data_dir": TEXT,
        "data.train_split": SPLIT,
        "data.eval_split": SPLIT,
        "data.test_split": SPLIT,
        "data.image_scale": POSITIVE,
        "data.image_size": COUNT,
        "data.mean": NUMBERS,
        "data.std": POSITIVE_NUMBERS,
        "data.augment.crop_padding": COUNT,
        "data.augment.flip": FLAG,
        "data.augment.rotate_deg": NON_NEGATIVE,
        "data.augment.scale": FRACTION,
        "data.augment.translate": FRACTION,
        "data.augment.random_resized_crop": FLAG,
        "data.augment.crop_area": POSITIVE_NUMBERS,  # (min, max) <= 1: checked by augment.check
        "data.augment.crop_aspect": POSITIVE_NUMBERS,  # (min, max): checked by augment.check
        "data.augment.randaugment_layers": COUNT,
        "data.augment.randaugment_magnitude": COUNT,
        "data.augment.mixup_alpha": NON_NEGATIVE,
        "data.augment.cutmix_alpha": NON_NEGATIVE,
        "data.workers": COUNT,
        "data.mock": FLAG,
        "data.path": TEXT,  # Checked for readability before a run.
        "data.target_path": TEXT,  # Checked for readability before a run.
        "data.source_lang": TEXT,  # Checked against the dataset's features before a run.
        "data.target_lang": TEXT,
        "data.tokenizer": choice(tokenizers.TOKENIZERS),
        "data.tokenizer_vocab_size": POSITIVE_INT,
        "data.tokenizer_model": TEXT,  # Checked for readability before a run.
        "data.text_features": Rule(
            "text_features",
            "one or two feature names",
            lambda v: (
                isinstance(v, tuple | list)
                and len(v) in (1, 2)
                and all(isinstance(x, str) and x for x in v)
            ),
        ),
        "data.seq_len": POSITIVE_INT,
        "data.pack": FLAG,
        "optimizer.name": choice(optim.OPTIMIZERS),
        "optimizer.learning_rate": POSITIVE,
        "optimizer.momentum": FRACTION,
        "optimizer.nesterov": FLAG,
        "optimizer.b1": FRACTION,
        "optimizer.b2": FRACTION,
        "optimizer.eps": POSITIVE,
        "optimizer.weight_decay": NON_NEGATIVE,
        "optimizer.decay_mask": choice(optim.DECAY_MASKS),
        "optimizer.clip_norm": NON_NEGATIVE,
        "optimizer.grad_accum_steps": POSITIVE_INT,
        "optimizer.ema_decay": FRACTION,
        "optimizer.trainable": REGEX,  # Checked against the model's parameters before a run.
        "optimizer.freeze": REGEX,
        "optimizer.lr_multipliers": LR_MULTIPLIERS,
        "optimizer.layer_decay": FRACTION,
        "schedule.name": choice(optim.SCHEDULES),
        "schedule.warmup_steps": COUNT,
        "schedule.end_lr": NON_NEGATIVE,
        "schedule.decay_steps": COUNT,
        "schedule.boundaries": POSITIVE_INTS,
        "schedule.decay_factor": POSITIVE,
        "schedule.scales": POSITIVE_NUMBERS,
        "train.steps": POSITIVE_INT,
        "train.batch_size": POSITIVE_INT,
        "train.eval_batch_size": POSITIVE_INT,
        "train.steps_per_call": POSITIVE_INT,
        "train.seed": SEED,
        "train.log_every_steps": POSITIVE_INT,
        "train.eval_every_steps": POSITIVE_INT,
        "train.eval_max_batches": COUNT,
        "train.checkpoint_every_steps": POSITIVE_INT,
        "train.keep_checkpoints": POSITIVE_INT,
        "train.best_metric": TEXT,  # "" or eval/<a metric of the task>, checked before a run.
        "train.best_mode": choice(("max", "min")),
        "train.early_stopping_patience": COUNT,
        "train.label_smoothing": FRACTION,
        "train.nonfinite": choice(guard.POLICIES),
        "train.max_consecutive_skips": COUNT,
        "train.loss_spike_sigmas": NON_NEGATIVE,
        "train.loss_scale": choice(loss_scale.POLICIES),
        "train.loss_scale_init": POSITIVE,
        "train.loss_scale_interval": POSITIVE_INT,
        "train.off_curve": choice(("warn", "stop")),
        "init.source": TEXT,  # Checked for a checkpoint that fits before a run.
        "init.step": COUNT,
        "init.include": REGEX,
        "init.exclude": REGEX,
        "lora.rank": COUNT,
        "lora.alpha": POSITIVE,
        "lora.dropout": FRACTION,
        "lora.targets": REGEX,  # Checked against the model's Dense kernels before a run.
        "lora.qkv": choice(lora.QKV_CHOICES),
        "decode.beam_size": POSITIVE_INT,
        "decode.length_penalty": NON_NEGATIVE,
        "decode.max_extra_tokens": POSITIVE_INT,
        "decode.on_eval": FLAG,
        "decode.bleu_tokenize": choice(
            ("none", "13a", "intl", "char", "zh", "ja-mecab", "ko-mecab", "flores101", "flores200")
        ),
        "parallel.strategy": choice(parallel.STRATEGIES),
        "parallel.fsdp": dataclasses.replace(
            POSITIVE_INT, says="a positive integer that must divide the device count"
        ),
        "parallel.mesh": Rule(
            "text",
            "empty or AXIS=SIZE,... over data, fsdp, tensor (one size may be -1)",
            sharding.well_formed,
        ),
        "parallel.sync_batch_stats": FLAG,
        "expected.metric": TEXT,  # "" or eval|test/<a metric of the task>, checked before a run.
        "expected.value": FINITE,
        "expected.tolerance": NON_NEGATIVE,
        "expected.comparison": choice(expected.COMPARISONS),
        "expected.source": TEXT,
        "expected.curve.metric": TEXT,  # "" or eval/<a metric of the task>, checked before a run.
        "expected.curve.steps": POSITIVE_INTS,
        "expected.curve.values": NUMBERS,
        "expected.curve.tolerance": NON_NEGATIVE,
        "expected.curve.source": TEXT,
    }


# Data fields that only some kinds of data read. Set for another kind they would be ignored in
# silence, so a value other than the default is an error there.
KIND_FIELDS = {
    "image_scale": ("images",),
    "image_size": ("images",),
    "mean": ("images",),
    "std": ("images",),
    "augment": ("images",),
    "workers": ("images",),
    "path": ("text", "translation", "masked_text", "text_classification", "images"),
    "tokenizer": ("text", "translation", "masked_text", "text_classification"),
    "seq_len": ("text", "translation", "masked_text", "text_classification"),
    "target_path": ("translation",),
    "source_lang": ("translation",),
    "target_lang": ("translation",),
    "tokenizer_vocab_size": ("translation", "masked_text", "text_classification"),
    "tokenizer_model": ("translation", "masked_text", "text_classification"),
    "pack": ("translation",),
    "text_features": ("text_classification",),
}


# The tokenizers each kind of data can use (research/data/tokenizers.py TOKENIZERS).
KIND_TOKENIZERS = {
    "text": ("char", "gpt2"),
    "translation": ("sentencepiece",),
    "masked_text": ("wordpiece",),
    "text_classification": ("wordpiece",),
}


def _check_kind_fields(data: ml_collections.ConfigDict) -> None:
    usable = KIND_TOKENIZERS.get(data.kind)
    if usable and data.tokenizer not in usable:
        raise ConfigError(
            f"data.tokenizer={data.tokenizer!r} does not serve data.kind={data.kind!r}; choose "
            f"one of {', '.join(usable)}"
        )
    declared = flatten(defaults().data)
    given = flatten(data)
    for field, kinds in KIND_FIELDS.items():
        changed = any(given[k] != declared[k] for k in declared if k.split(".")[0] == field)
        if data.kind not in kinds and changed:
            raise ConfigError(
                f"data.{field} applies to data.kind {' or '.join(kinds)}, not {data.kind!r}; "
                "leave it at its default"
            )


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid setting and what to do about it.

    Checks every field against `rules()`, then the settings that constrain each other, then
    builds the model (its own fields checked by its constructor). With `device_count`, also the
    layout over devices. Data, shapes and metric names are checked by the trainer's preparation
    (research/train.py `prepare`), which needs the data.
    """
    from research import lora, models, optim, parallel  # Deferred: keeps `launch.py --help` light.
    from research.data import augment

    table = rules()
    for key, value in flatten(config).items():
        if key == "experiment" or (key.startswith("model.") and key != "model.name"):
            continue
        rule = table.get(key)
        if rule is None:
            raise ConfigError(f"{key} is not a declared field{_did_you_mean(key, table)}")
        if not rule.ok(value):
            if rule.kind == "choice":
                raise ConfigError(f"{key}={value!r} is unknown; choose one of {rule.says}")
            raise ConfigError(f"{key} must be {rule.says}, got {value!r}")
    _check_kind_fields(config.data)
    try:
        augment.check(config.data.augment)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.data.path and config.data.mock:
        raise ConfigError(
            f"data.path={config.data.path!r} reads local files, which data.mock replaces; unset one"
        )
    if config.data.target_path and not config.data.path:
        raise ConfigError("data.target_path is the target side of data.path: set both")
    if config.data.kind == "images" and config.data.path and config.data.name != "image_folder":
        raise ConfigError(
            f"data.path={config.data.path!r} is read for images only as an image folder: set "
            "data.name=image_folder, or leave data.path empty"
        )
    train = config.train
    try:
        optim.validate(config.optimizer, config.schedule, train.steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        lora.validate(config.lora, defaults().lora)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    accum = config.optimizer.grad_accum_steps
    if train.batch_size % accum:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is not divisible by optimizer.grad_accum_steps={accum}"
        )
    if config.model.get("dtype") == "float16" and train.loss_scale == "none":
        raise ConfigError(
            "model.dtype=float16 trains without loss scaling: small gradients flush to zero; set "
            "--config.train.loss_scale=dynamic (or use bfloat16)"
        )
    if device_count is not None:
        parallel.validate(config, device_count)
    expected.validate(config.expected)
    try:
        models.build(config.model)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    if config.model.get("scan_layers") and (config.lora.rank or config.optimizer.layer_decay):
        # Both find blocks by their names h_0, h_1, ...; scanned blocks are one stacked entry.
        raise ConfigError(
            "model.scan_layers=True stacks the blocks into one parameter entry; lora and "
            "optimizer.layer_decay need them one by one: set model.scan_layers=False"
        )
    from research import initialize  # Deferred: orbax, safetensors.

    initialize.check_model(config.init, config.model)  # A Hugging Face source's config.json.


# ---------------------------------------------------------------------------------------------
# The smoke variant, derived from any recipe.
# ---------------------------------------------------------------------------------------------


# The committed random Hugging Face checkpoints a smoke run initialises from, by model name
# (tests/fixtures/make_hf_fixtures.py). ViT has none: its fixture's 16 x 12 images fit no
# square pipeline, so a ViT smoke run starts from random weights.
_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf"
SMOKE_CHECKPOINTS = {"gpt": _FIXTURES / "gpt2", "bert": _FIXTURES / "bert_cls"}


def smoke(config: ml_collections.ConfigDict) -> None:
    """Shrink a recipe in place to a run of every code path that takes seconds on a CPU.

    The model takes its tiny size (research/models SMOKE_SIZES); data that would need a download
    becomes tfds mock data of the real shapes; 12 steps with logs, evaluations and checkpoints
    every few; a batch of at most 32; no expected result or curve (a smoke run checks the
    plumbing). Pre-trained weights (`init.source`), which a smoke run cannot download, become the
    committed random checkpoint of the same family (tests/fixtures/hf, SMOKE_CHECKPOINTS) and the
    model takes its size, so the import runs too; GPT-2's BPE, which downloads its files, becomes
    the character tokenizer (except over token files, which hold its ids already).
    """
    from research import data, models, pretrained

    config.model.update(models.SMOKE_SIZES[config.model.name])
    if config.init.source:
        fixture = SMOKE_CHECKPOINTS.get(config.model.name)
        config.init.source = str(fixture or "")
        if fixture is not None:
            fields, _ = pretrained.model_config(fixture)
            keep = {k: config.model[k] for k in ("head", "num_classes") if k in config.model}
            config.model.update({**fields, **keep})
    if config.data.kind in ("masked_text", "text_classification") and config.init.source:
        config.data.tokenizer_model = ""  # The checkpoint's vocab.txt: trained on the mock text.
    if config.data.tokenizer == "gpt2" and not data.holds_token_ids(config.data):
        config.data.tokenizer = "char"
    config.data.workers = 0  # In-process: each worker process costs seconds to start.
    if not data.available_offline(config.data):
        config.data.mock = True
        config.data.path = ""
    if config.data.kind == "text":
        config.data.seq_len = min(config.data.seq_len, 16)
    if config.data.kind in ("translation", "masked_text", "text_classification"):
        # A vocabulary the tiny model's outputs (or embeddings) cover.
        config.data.seq_len = min(config.data.seq_len, 32)
        config.data.tokenizer_vocab_size = min(
            config.data.tokenizer_vocab_size, config.model.vocab_size
        )
    train = config.train
    train.steps = 12
    train.log_every_steps = 4
    train.eval_every_steps = 6
    train.checkpoint_every_steps = 6
    train.batch_size = min(train.batch_size, 32)
    train.eval_batch_size = min(train.eval_batch_size, 64)
    # At most 2 micro-batches: each is unrolled into the compiled step (nanoGPT's 32 would take
    # minutes to compile), and 2 still exercise accumulation.
    accum = min(config.optimizer.grad_accum_steps, 2)
    config.optimizer.grad_accum_steps = accum if train.batch_size % accum == 0 else 1
    config.schedule.warmup_steps = min(config.schedule.warmup_steps, 2)
    config.schedule.decay_steps = 0  # = train.steps
    config.decode.beam_size = min(config.decode.beam_size, 2)  # Still a beam search.
    config.decode.max_extra_tokens = min(config.decode.max_extra_tokens, 8)
    config.expected.metric = ""
    config.expected.curve.metric = ""
