"""Hugging Face checkpoints in and out: GPT-2, BERT and ViT, with the logits `transformers` gives.

A Hugging Face directory is `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`), read here with the safetensors package's numpy API, no torch.

    from research import pretrained
    model, variables = pretrained.load("gpt2_dir")      # our GPT, float32 parameters
    logits = model.apply(variables, input_ids, train=False)
    logits = model.apply(variables, input_ids, token_type_ids, train=False)        # BERT
    logits = model.apply(variables, pixel_values.transpose(0, 2, 3, 1), train=False)  # ViT: NCHW

    pretrained.export(model_config, params, "out_dir")          # back: config.json + safetensors
    python launch.py export --workdir=runs/x --out=hf/x [--step=N]   # a run's checkpoint
    python launch.py --config=... --config.init.source=hf/x     # fine-tune from one
                                                                # (research/initialize.py)

Classes and what they become (config.json's `architectures` picks the class):

    GPT2LMHeadModel, GPT2Model        gpt   the LM head is the token embedding, tied, in both
                                            (untied: tie_embeddings=False and lm_head)
    BertForMaskedLM                   bert  head="mlm"; the pooler only if the file holds one
    BertForPreTraining                bert  head="mlm_nsp"
    BertForSequenceClassification     bert  head="classifier", num_classes = its labels
    BertModel                         bert  head="none": (sequence output, pooled output)
    ViTForImageClassification         vit   pool="token", num_classes = its labels
    ViTModel                          vit   num_classes=0; its pooler is our pre_logits (Dense
                                            + tanh on the class token), the output

Every config.json field that changes the function is mapped or refused (one line naming it):
sizes, vocabulary, positions, token types, activation (Hugging Face "gelu" is the erf form,
our "gelu_exact"; "gelu_new" and "gelu_pytorch_tanh" are our "gelu"), LayerNorm epsilon (ViT's
1e-12, ours 1e-6 by default: the model field `layer_norm_epsilon`), qkv biases, image and patch
size. Dropout rates come across for fine-tuning and do not change `train=False` outputs.

Tensors. Every parameter of our model is taken from the file, and every tensor in the file is
used, or the load stops with one line naming what is missing or unknown. Our attention fuses
q|k|v into one [D, 3D] kernel (research/models/attention.py): BERT's and ViT's separate query,
key and value Linear weights [out, in] are transposed and concatenated; GPT-2's Conv1D weights
are [in, out] already. Three kinds of tensor are accepted without a place in our tree: buffers
older checkpoints saved (GPT-2's attention masks, BERT's position_ids); tied copies (GPT-2's
lm_head, BERT's MLM decoder), checked equal to what they copy, as our models tie them; and the
heads of another class (BERT's next-sentence head in a BertForMaskedLM file, as the released
bert-base-uncased has), listed in a warning, as `transformers` does. A fine-tuning run that
replaces a head excludes it (`init.exclude='^classifier/'`): it starts from its initialisation.

Export writes the class our model config corresponds to (the table above, read backwards):
tensors under the names and layouts `save_pretrained` uses, so `transformers` loads the directory
unchanged, and `read(export(x))` is bitwise x. Layouts Hugging Face's classes cannot express
(RMSNorm, rotary or sin-cos positions, post-norm GPT, average pooling, a ViT pre-logits layer
under a classifier) are refused in one line. A GPT trained without biases (`use_bias=False`,
nanoGPT's) is written with zero biases, which compute the same function: it reads back as a GPT
with (zero) biases, or, through `init.source` into the same bias-free experiment, bitwise.
The architectures themselves, config fields and tensor names, are tables in families.py;
docs/pretrained.md has the parity figures and how the fixtures were made.
"""

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from research import checkpoint, lora, models
from research import workdir as workdirs
from research.errors import ConfigError
from research.models import stack
from research.pretrained.families import (
    CLASSES,
    FAMILIES,
    GPT2,
    KINDS,
    QKV_PARTS,
    VIT,
    Family,
    base_prefix,
    pair,
    require,
)

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


# --- reading ---------------------------------------------------------------------------------


def is_directory(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face checkpoint directory (config.json + safetensors)."""
    path = Path(path)
    return (path / CONFIG).is_file() and ((path / WEIGHTS).is_file() or (path / INDEX).is_file())


def read_config(directory: str | Path) -> dict:
    """config.json of a Hugging Face directory (a one-line error if there is none)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{directory} has no {CONFIG}; give a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    require(isinstance(config, dict), f"{path} is not a model config")
    return config


def _files(directory: Path) -> list[Path]:
    """The safetensors files of a directory: model.safetensors, or the shards its index lists."""
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    if (directory / INDEX).is_file():
        index = json.loads((directory / INDEX).read_text())
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
        for path in files:
            require(path.is_file(), f"{path} is listed in {INDEX} but missing")
        return files
    bins = sorted(p.name for p in directory.glob("*.bin")) if directory.is_dir() else []
    hint = f" (it has {', '.join(bins)}: save it again with safe_serialization=True)"
    raise ConfigError(f"{directory} has neither {WEIGHTS} nor {INDEX}" + (hint if bins else ""))


def _renamed(name: str) -> str:
    """Old TensorFlow-converted names (LayerNorm gamma/beta) as transformers reads them."""
    return re.sub(
        r"LayerNorm\.beta$",
        "LayerNorm.bias",
        re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name),
    )


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """{name: array} of model.safetensors, or of every shard model.safetensors.index.json lists."""
    from safetensors.numpy import load_file

    tensors = {}
    for path in _files(Path(directory)):
        try:
            loaded = load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types.
            if "bfloat16" in str(e):  # numpy has no bfloat16
                raise ConfigError(
                    f"{path} holds bfloat16 tensors, which numpy cannot read; save it as float32 "
                    "(model.float().save_pretrained(...)) and import that"
                ) from None
            raise ConfigError(f"{path} cannot be read as safetensors ({e})") from None
        tensors |= {_renamed(name): array for name, array in loaded.items()}
    return tensors


def tensor_names(directory: str | Path) -> set[str]:
    """The tensor names of a directory, from the file headers only (nothing loaded)."""
    from safetensors import safe_open

    names = set()
    for path in _files(Path(directory)):
        try:
            with safe_open(path, framework="np") as f:
                names |= {_renamed(name) for name in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types.
            raise ConfigError(f"{path} cannot be read as safetensors ({e})") from None
    return names


def model_config(directory: str | Path, names: set[str] | None = None) -> tuple[dict, str]:
    """(our model config, the Hugging Face class) a directory's config.json describes."""
    hf_config = read_config(directory)
    family, cls = family_of(hf_config, directory)
    names = tensor_names(directory) if names is None else names
    fields = family.to_fields(hf_config, cls, names)
    return {"name": family.model} | models.arguments(family.model) | fields, cls


def family_of(config: dict, where: Any) -> tuple[Family, str]:
    """(family, class) named by config.json's `architectures`."""
    classes = config.get("architectures") or []
    known = [c for c in classes if c in CLASSES]
    if not known:
        raise ConfigError(
            f"{where}: config.json architectures={classes} names none of the classes this "
            f"imports: {sorted(CLASSES)}"
        )
    return CLASSES[known[0]], known[0]


def _names(family: Family, shapes: dict[str, tuple], base: str) -> dict[str, tuple]:
    """{our parameter path: (Hugging Face tensor names, layout)} for the model's parameters."""
    out = {}
    for path in shapes:
        module, _, leaf = path.rpartition("/") if "/" in path else (path, "", "")
        rows = ((re.fullmatch(p, module), t, k) for p, t, k in family.modules)
        # Every parameter of our model has a row: a missing one is a bug here, not the user's.
        match, template, kind = next(row for row in rows if row[0])
        hf_leaf, layout = KINDS[kind][leaf]
        parts = QKV_PARTS if kind == "qkv" else ("",)
        names = tuple(
            match.expand(template.format(base=base, part=part)) + (f".{hf_leaf}" if hf_leaf else "")
            for part in parts
        )
        out[path] = (names, layout)
    return out


def _param_shapes(model: Any, inputs: tuple) -> dict[str, tuple]:
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False))
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _listed(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An imported checkpoint: our model config, its parameters, and what came from where."""

    model_config: dict  # a `model` config section: {"name": "gpt", ...every field}
    params: dict  # the parameter tree, float32 numpy arrays
    architecture: str  # the Hugging Face class
    hf_config: dict  # config.json as read
    unused: tuple[str, ...]  # tensors of another class's head, left behind

    def build(self):
        """The flax module."""
        return models.build(self.model_config)


def read(directory: str | Path) -> Pretrained:
    """Import a Hugging Face directory: our model config and every parameter (see the docstring)."""
    directory = Path(directory)
    hf_config = read_config(directory)
    family, _ = family_of(hf_config, directory)
    tensors = read_tensors(directory)
    names = set(tensors)
    config, cls = model_config(directory, names)
    try:
        model = models.build(config)
    except ValueError as e:
        raise ConfigError(f"{directory}: {e}") from None
    shapes = _param_shapes(model, family.example(model, hf_config))
    base = base_prefix(cls, family, names)

    flat, used, missing = {}, set(), []
    for path, (hf_names, layout) in _names(family, shapes, base).items():
        absent = [n for n in hf_names if n not in tensors]
        if absent:
            missing += absent
            continue
        used.update(hf_names)
        value = layout.to_ours([tensors[n] for n in hf_names])
        if value.shape != shapes[path]:
            raise ConfigError(
                f"{directory}: {' + '.join(hf_names)} {[tensors[n].shape for n in hf_names]} "
                f"gives {value.shape} for {path}, but config.json implies {shapes[path]}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ConfigError(f"{directory}: {hf_names[0]} is {value.dtype}, not floating point")
        flat[path] = np.ascontiguousarray(value, dtype=np.float32)
    if missing:
        raise ConfigError(f"{directory}: {cls} tensors missing from the file: {_listed(missing)}")

    copies = {copy.format(base=base): source.format(base=base) for copy, source in family.tied}
    heads = tuple(h.format(base=base) for h in family.heads)
    unused, unknown = [], []
    for name in sorted(names - used):
        if re.fullmatch(family.buffers, name):
            continue
        if name in copies and copies[name] in tensors:
            require(
                np.array_equal(tensors[name], tensors[copies[name]]),
                f"{directory}: {name} differs from {copies[name]}; our model ties them",
            )
        elif name.startswith(heads):
            unused.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"{directory}: tensors with no place in our {family.model} ({cls}): {_listed(unknown)}"
        )
    params = traverse_util.unflatten_dict(flat, sep="/")
    return Pretrained(config, params, cls, hf_config, tuple(unused))


def load(directory: str | Path) -> tuple[Any, dict]:
    """(model, variables) of a Hugging Face directory, for `model.apply(variables, ..., train=False)`.

    Inputs as transformers takes them, except ViT's images, NHWC here: `pixel_values.transpose(0,
    2, 3, 1)`. BERT attends to every token but `model.pad_id` (transformers: to attention_mask).
    """
    imported = read(directory)
    if imported.unused:
        log.warning(
            "%s: not used by %s (another class's head): %s",
            directory,
            imported.architecture,
            _listed(list(imported.unused)),
        )
    return imported.build(), {"params": imported.params}


def flat_params(imported: Pretrained) -> dict[str, np.ndarray]:
    """{"h_0/attn/qkv/kernel": array} of an import (research/initialize.py's naming)."""
    return traverse_util.flatten_dict(imported.params, sep="/")


def disagreement(directory: str | Path, experiment_model: Mapping[str, Any]) -> str:
    """ "" if the experiment's model computes what a directory's config.json describes; else one
    line naming the first field that differs. Heads aside (fine-tuning replaces them), and biases
    (research/initialize.py checks those it drops are zero)."""
    ours = dict(experiment_model)
    theirs, cls = model_config(directory)
    family = FAMILIES[theirs["name"]]
    if ours.get("name") != theirs["name"]:
        return (
            f"it holds a {theirs['name']!r} model ({cls}), the experiment "
            f"model.name={ours.get('name')!r}"
        )
    a, b = models.build(theirs), models.build(ours)
    for field, key in family.config_keys.items():
        if _resolved(a, field) != _resolved(b, field):
            shown = getattr(b, field) if field == "mlp_ratio" else _resolved(b, field)
            return (
                f"its config.json {key} gives model.{field}={theirs[field]!r}, the experiment "
                f"has {shown!r}; set --config.model.{field}={theirs[field]!r}"
            )
    return ""


def _resolved(model: Any, field: str) -> Any:
    """A field's effective value: sizes decoded from `size`/`variant`; GPT's MLP width."""
    if field == "mlp_ratio":
        return int(model.mlp_ratio * model.embed_dim)
    sizes = getattr(model, "sizes", {})
    return sizes[field] if field in sizes else getattr(model, field)


# --- writing ---------------------------------------------------------------------------------


def to_hf(
    model_config: Mapping[str, Any], params: Any, *, image_size: Any = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, {tensor name: array}) of our model and parameters: what `export` writes.

    `image_size` (ViT): [height, width] or one side; default: the square the position
    embeddings imply.
    """
    model_config = dict(model_config)
    name = model_config.get("name")
    require(
        name in FAMILIES,
        f"model.name={name!r}: export covers {sorted(FAMILIES)} (Hugging Face GPT-2, BERT, ViT)",
    )
    family = FAMILIES[name]
    if model_config.get("scan_layers"):  # Hugging Face names layers one by one: unroll first.
        params = stack.unscan_params(_plain(params), models.SCAN_PREFIXES[name])
        model_config["scan_layers"] = False
    model = models.build(model_config)
    flat = {
        path: np.asarray(value)
        for path, value in traverse_util.flatten_dict(_plain(params), sep="/").items()
    }
    shapes = {path: value.shape for path, value in flat.items()}
    cls, config = family.to_config(model, shapes)
    if family is VIT:
        config["image_size"] = _image_size(model, shapes, image_size)
    hf_config = {"architectures": [cls], "model_type": family.model_type} | config
    # Hugging Face's GPT-2 always has biases: a bias-free GPT's are written as zeros.
    full = model.clone(use_bias=True) if family is GPT2 else model
    full_shapes = _param_shapes(full, family.example(full, hf_config))
    tensors = {}
    for path, (hf_names, layout) in _names(family, full_shapes, family.classes[cls]).items():
        if path in flat:
            require(
                flat[path].shape == full_shapes[path],
                f"parameter {path} is {flat[path].shape}, the model config implies "
                f"{full_shapes[path]}; export the config the parameters were trained with",
            )
            value = flat[path]
        else:
            assert path.endswith("/bias"), path  # Only a bias-free GPT lacks parameters HF has.
            value = np.zeros(full_shapes[path], np.float32)
        for hf_name, array in zip(hf_names, layout.to_hf(value), strict=True):
            tensors[hf_name] = np.ascontiguousarray(array, dtype=np.float32)
    left = sorted(set(flat) - set(full_shapes))
    assert not left, f"parameters with no Hugging Face name: {left}"
    return hf_config, tensors


def _plain(params: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(params))


def _image_size(model: Any, shapes: dict, image_size: Any) -> Any:
    patch = model.sizes["patch_size"]
    tokens = shapes["pos_embedding"][0] - 1  # the class token has a position too
    if image_size is not None:
        height, width = pair(image_size)
        require(
            (height // patch) * (width // patch) == tokens,
            f"image_size {height}x{width} gives {(height // patch) * (width // patch)} patches of "
            f"{patch}, the position embeddings {tokens}",
        )
    else:
        side = math.isqrt(tokens)
        require(
            side * side == tokens,
            f"{tokens} patch positions is no square grid; give the image size (image_size=)",
        )
        height = width = side * patch
    return height if height == width else [height, width]


def export(
    model_config: Mapping[str, Any], params: Any, out: str | Path, *, image_size: Any = None
) -> str:
    """Write config.json + model.safetensors into `out` (created; must hold no checkpoint yet);
    returns the Hugging Face class written."""
    from safetensors.numpy import save_file

    out = Path(out)
    require(
        not (out / CONFIG).exists() and not (out / WEIGHTS).exists(),
        f"{out} already holds a checkpoint; give a new --out directory",
    )
    hf_config, tensors = to_hf(model_config, params, image_size=image_size)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})  # transformers checks "format"
    (out / CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return hf_config["architectures"][0]


def export_run(workdir: str | Path, out: str | Path, step: int | None = None) -> str:
    """`launch.py export`: a run's checkpoint (`step`, default the latest) as a Hugging Face
    directory. The evaluated weights are written: the EMA ones when the run kept an EMA, and a
    LoRA run's adapters folded into the base weights (research/lora.py `merge`)."""
    workdir, out = workdirs.path(workdir), Path(out)  # The run may be in a bucket (gs://).
    path = workdir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{workdir} has no config.json; pass the --workdir of a training run")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not valid JSON; is {workdir} a training run?") from None
    steps = checkpoint.all_steps(workdir / "checkpoints")
    if not steps:
        raise ConfigError(f"{workdir} has no checkpoint; train first, or wait for the first save")
    if step is not None and step not in steps:
        raise ConfigError(f"--step={step} is not a checkpoint of {workdir}; it has {steps}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out={out} exists and is not an empty directory; give a new one")
    _, state = checkpoint.restore_state(workdir / "checkpoints", step)
    ema = config["optimizer"]["ema_decay"] > 0  # config.json records every declared field
    params = state["ema_params" if ema else "params"]
    if "lora" in config:  # A tree without adapters comes back as it was.
        params = lora.merge(params, config["lora"]["alpha"])
    image_size = config.get("data", {}).get("image_size") or None
    return export(config["model"], params, out, image_size=image_size)
