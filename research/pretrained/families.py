"""The Hugging Face architectures research/pretrained reads and writes: for GPT-2, BERT and ViT,
config.json <-> our model fields, and every tensor name <-> our parameter path with its layout.

A family is data (STYLE principle 2): the classes it covers, a table of module rows (our module
path regex, Hugging Face module template, kind), and the two config translations. A kind says
how each leaf is stored (`KINDS`): torch's Linear is [out, in] where a flax kernel is [in, out];
GPT-2's Conv1D is [in, out] already; Conv2d is [out, in, kh, kw] where flax's Conv is [kh, kw, in,
out]; BERT's and ViT's separate query/key/value weights are our one fused q|k|v kernel.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError

# --- tensor layouts --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one of our parameters is stored by Hugging Face: from its tensors, and back."""

    to_ours: Callable[[list[np.ndarray]], np.ndarray]
    to_hf: Callable[[np.ndarray], list[np.ndarray]]


SAME = Layout(lambda t: t[0], lambda a: [a])
# torch's Linear weight is [out, in], a flax kernel [in, out].
TRANSPOSED = Layout(lambda t: t[0].T, lambda a: [a.T])
# torch's Conv2d weight is [out, in, kh, kw], a flax Conv kernel [kh, kw, in, out].
CONV = Layout(lambda t: t[0].transpose(2, 3, 1, 0), lambda a: [a.transpose(3, 2, 0, 1)])
# ViT's position embeddings carry a batch axis [1, N + 1, D]; ours are [N + 1, D].
BATCHED = Layout(lambda t: t[0][0], lambda a: [a[None]])
# q, k, v Linear weights [D, D] each -> our fused kernel [D, 3D], columns q | k | v, each
# head-major in both (a head's Dh output features are contiguous); biases likewise.
QKV_KERNEL = Layout(
    lambda t: np.concatenate([w.T for w in t], axis=1),
    lambda a: [w.T for w in np.split(a, 3, axis=1)],
)
QKV_BIAS = Layout(lambda t: np.concatenate(t), lambda a: np.split(a, 3))
QKV_PARTS = ("query", "key", "value")

# Module kinds: {our leaf name: (Hugging Face leaf name, layout)}; "" is a bare parameter.
KINDS: dict[str, dict[str, tuple[str, Layout]]] = {
    "embed": {"embedding": ("weight", SAME)},
    "norm": {"scale": ("weight", SAME), "bias": ("bias", SAME)},
    "linear": {"kernel": ("weight", TRANSPOSED), "bias": ("bias", SAME)},
    "conv1d": {"kernel": ("weight", SAME), "bias": ("bias", SAME)},  # GPT-2's Conv1D: [in, out]
    "conv2d": {"kernel": ("weight", CONV), "bias": ("bias", SAME)},
    "qkv": {"kernel": ("weight", QKV_KERNEL), "bias": ("bias", QKV_BIAS)},
    "tensor": {"": ("", SAME)},
    "batched": {"": ("", BATCHED)},
}

# Hugging Face hidden_act / activation_function <-> ours (research/models/layers.py ACTIVATIONS).
ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
EXPORTED_ACTIVATIONS = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}


# --- the three families ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: its classes, config.json <-> our model fields, and tensor names.

    `modules` rows are (our module path regex, Hugging Face module template, kind): "{base}" is
    the base model's prefix ("transformer.", "bert.", "vit." in a class with a head, "" in the
    bare model), "{part}" one of query/key/value, \\1 the regex's group (a layer index).
    """

    model: str  # our registry name (research/models/__init__.py)
    model_type: str  # config.json's model_type
    classes: dict[str, str]  # class -> the prefix of its base model's tensors
    modules: tuple[tuple[str, str, str], ...]
    to_fields: Callable[[dict, str, set[str]], dict]  # (config.json, class, tensor names)
    to_config: Callable[[Any, dict[str, tuple]], tuple[str, dict]]  # (model, shapes) -> both
    example: Callable[[Any, dict], tuple]  # (model, config.json) -> inputs for init
    config_keys: dict[str, str]  # our field -> its config.json key, for messages
    buffers: str = "$^"  # regex: saved buffers that are not parameters
    tied: tuple[tuple[str, str], ...] = ()  # (a copy, what it copies)
    heads: tuple[str, ...] = ()  # prefixes of other classes' heads: left behind, listed


def _get(config: dict, key: str, default: Any) -> Any:
    value = config.get(key, default)
    return default if value is None else value


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _activation(config: dict, key: str, default: str) -> str:
    name = _get(config, key, default)
    require(
        name in ACTIVATIONS,
        f"config.json {key}={name!r} has no counterpart here; supported: {sorted(ACTIVATIONS)}",
    )
    return ACTIVATIONS[name]


def _exported_activation(model: Any) -> str:
    require(
        model.activation in EXPORTED_ACTIVATIONS,
        f"model.activation={model.activation!r} has no Hugging Face counterpart; export supports "
        f"{sorted(EXPORTED_ACTIVATIONS)}",
    )
    return EXPORTED_ACTIVATIONS[model.activation]


def _num_labels(config: dict) -> int:
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)


def _labels(n: int) -> dict[str, str]:
    return {str(i): f"LABEL_{i}" for i in range(n)}


# GPT-2 (Radford et al. 2019; transformers' modeling_gpt2.py). Defaults are GPT2Config's.
def _gpt2_fields(c: dict, cls: str, names: set[str]) -> dict:
    width = _get(c, "n_embd", 768)
    inner = _get(c, "n_inner", 4 * width)
    require(
        _get(c, "scale_attn_weights", True) and not c.get("scale_attn_by_inverse_layer_idx"),
        "config.json scales GPT-2's attention other than by 1/sqrt(head size); not supported",
    )
    require(not c.get("add_cross_attention"), "config.json: GPT-2 with cross-attention")
    fields = dict(
        vocab_size=_get(c, "vocab_size", 50257),
        block_size=_get(c, "n_positions", _get(c, "n_ctx", 1024)),
        num_layers=_get(c, "n_layer", 12),
        num_heads=_get(c, "n_head", 12),
        embed_dim=width,
        mlp_ratio=inner / width,
        dropout_rate=float(_get(c, "resid_pdrop", 0.1)),
        use_bias=True,
        norm="layer",
        norm_epsilon=float(_get(c, "layer_norm_epsilon", 1e-5)),
        norm_position="pre",
        pos_emb="learned",
        activation=_activation(c, "activation_function", "gelu_new"),
        tie_embeddings=bool(_get(c, "tie_word_embeddings", True)),
    )
    require(
        int(fields["mlp_ratio"] * width) == inner,
        f"config.json n_inner={inner} is not a whole multiple our GPT's mlp_ratio can express "
        f"at n_embd={width}",
    )
    return fields


def _gpt2_config(model: Any, shapes: dict[str, tuple]) -> tuple[str, dict]:
    for field, want in (("norm", "layer"), ("norm_position", "pre"), ("pos_emb", "learned")):
        require(
            getattr(model, field) == want,
            f"model.{field}={getattr(model, field)!r}: Hugging Face's GPT-2 has {want!r} only; "
            "export needs a GPT-2 layout",
        )
    inner = int(model.mlp_ratio * model.embed_dim)
    return "GPT2LMHeadModel", {
        "vocab_size": model.vocab_size,
        "n_positions": model.block_size,
        "n_embd": model.embed_dim,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_inner": None if inner == 4 * model.embed_dim else inner,
        "activation_function": _exported_activation(model),
        "resid_pdrop": model.dropout_rate,
        "embd_pdrop": model.dropout_rate,
        "attn_pdrop": model.dropout_rate,
        "layer_norm_epsilon": model.norm_epsilon,
        "scale_attn_weights": True,
        "tie_word_embeddings": model.tie_embeddings,
        # GPT-2's <|endoftext|>, 50256, where the vocabulary has it (GPT2Config's default).
        "bos_token_id": 50256 if model.vocab_size > 50256 else None,
        "eos_token_id": 50256 if model.vocab_size > 50256 else None,
    }


GPT2 = Family(
    model="gpt",
    model_type="gpt2",
    classes={"GPT2LMHeadModel": "transformer.", "GPT2Model": ""},
    modules=(
        ("wte", "{base}wte", "embed"),
        ("wpe", "{base}wpe", "embed"),
        (r"h_(\d+)/ln_(1|2)", r"{base}h.\1.ln_\2", "norm"),
        (r"h_(\d+)/attn/qkv", r"{base}h.\1.attn.c_attn", "conv1d"),  # q | k | v, as ours
        (r"h_(\d+)/attn/out", r"{base}h.\1.attn.c_proj", "conv1d"),
        (r"h_(\d+)/mlp/fc", r"{base}h.\1.mlp.c_fc", "conv1d"),
        (r"h_(\d+)/mlp/proj", r"{base}h.\1.mlp.c_proj", "conv1d"),
        ("ln_f", "{base}ln_f", "norm"),
        ("lm_head", "lm_head", "linear"),  # only when the embeddings are not tied
    ),
    to_fields=_gpt2_fields,
    to_config=_gpt2_config,
    example=lambda model, c: (jnp.zeros((1, 1), jnp.int32),),
    config_keys=dict(
        vocab_size="vocab_size",
        block_size="n_positions",
        num_layers="n_layer",
        num_heads="n_head",
        embed_dim="n_embd",
        mlp_ratio="n_inner",
        norm_epsilon="layer_norm_epsilon",
        activation="activation_function",
    ),
    buffers=r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",  # causal masks older files saved
    tied=(("lm_head.weight", "{base}wte.weight"),),
)

BERT_HEADS = {
    "BertModel": "none",
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm_nsp",
    "BertForSequenceClassification": "classifier",
}


# BERT (Devlin et al. 2019; transformers' modeling_bert.py). Defaults are BertConfig's.
def _bert_fields(c: dict, cls: str, names: set[str]) -> dict:
    if _get(c, "position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            f"config.json position_embedding_type={c['position_embedding_type']!r}: only "
            "absolute positions are supported"
        )
    require(not c.get("is_decoder"), "config.json is_decoder=true: a causal BERT; not supported")
    require(
        _get(c, "tie_word_embeddings", True) or BERT_HEADS[cls] in ("none", "classifier"),
        "config.json tie_word_embeddings=false: our BERT ties the MLM decoder to the embeddings",
    )
    base = base_prefix(cls, BERT, names)
    return dict(
        size="",
        num_layers=_get(c, "num_hidden_layers", 12),
        hidden_size=_get(c, "hidden_size", 768),
        num_heads=_get(c, "num_attention_heads", 12),
        mlp_dim=_get(c, "intermediate_size", 3072),
        vocab_size=_get(c, "vocab_size", 30522),
        max_len=_get(c, "max_position_embeddings", 512),
        type_vocab_size=_get(c, "type_vocab_size", 2),
        dropout_rate=float(_get(c, "hidden_dropout_prob", 0.1)),
        attention_dropout_rate=float(_get(c, "attention_probs_dropout_prob", 0.1)),
        head=BERT_HEADS[cls],
        num_classes=_num_labels(c) if cls == "BertForSequenceClassification" else 2,
        # Our BERT attends to every token but pad_id; transformers to its attention_mask, which
        # tokenizers set from the same pad token.
        pad_id=_get(c, "pad_token_id", 0),
        activation=_activation(c, "hidden_act", "gelu"),
        layer_norm_epsilon=float(_get(c, "layer_norm_eps", 1e-12)),
        pooler=f"{base}pooler.dense.weight" in names,
    )


def _bert_config(model: Any, shapes: dict[str, tuple]) -> tuple[str, dict]:
    sizes = model.sizes
    classes = {head: cls for cls, head in BERT_HEADS.items()}
    config = {
        "vocab_size": model.vocab_size,
        "hidden_size": sizes["hidden_size"],
        "num_hidden_layers": sizes["num_layers"],
        "num_attention_heads": sizes["num_heads"],
        "intermediate_size": sizes["mlp_dim"],
        "hidden_act": _exported_activation(model),
        "hidden_dropout_prob": model.dropout_rate,
        "attention_probs_dropout_prob": model.attention_dropout_rate,
        "max_position_embeddings": model.max_len,
        "type_vocab_size": model.type_vocab_size,
        "layer_norm_eps": model.layer_norm_epsilon,
        "pad_token_id": model.pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if model.head == "classifier":
        config["id2label"] = _labels(model.num_classes)
    return classes[model.head], config


BERT = Family(
    model="bert",
    model_type="bert",
    classes={cls: "" if cls == "BertModel" else "bert." for cls in BERT_HEADS},
    modules=(
        ("word_embeddings", "{base}embeddings.word_embeddings", "embed"),
        ("segment_embeddings", "{base}embeddings.token_type_embeddings", "embed"),
        ("position_embeddings", "{base}embeddings.position_embeddings", "embed"),
        ("embeddings_norm", "{base}embeddings.LayerNorm", "norm"),
        (r"layer_(\d+)/attn/qkv", r"{base}encoder.layer.\1.attention.self.{part}", "qkv"),
        (r"layer_(\d+)/attn/out", r"{base}encoder.layer.\1.attention.output.dense", "linear"),
        (r"layer_(\d+)/ln_1", r"{base}encoder.layer.\1.attention.output.LayerNorm", "norm"),
        (r"layer_(\d+)/mlp/fc", r"{base}encoder.layer.\1.intermediate.dense", "linear"),
        (r"layer_(\d+)/mlp/proj", r"{base}encoder.layer.\1.output.dense", "linear"),
        (r"layer_(\d+)/ln_2", r"{base}encoder.layer.\1.output.LayerNorm", "norm"),
        ("pooler", "{base}pooler.dense", "linear"),
        ("classifier", "classifier", "linear"),
        ("mlm_transform", "cls.predictions.transform.dense", "linear"),
        ("mlm_norm", "cls.predictions.transform.LayerNorm", "norm"),
        ("mlm_bias", "cls.predictions.bias", "tensor"),
        ("nsp", "cls.seq_relationship", "linear"),
    ),
    to_fields=_bert_fields,
    to_config=_bert_config,
    example=lambda model, c: (jnp.zeros((1, 1), jnp.int32),),
    config_keys=dict(
        num_layers="num_hidden_layers",
        hidden_size="hidden_size",
        num_heads="num_attention_heads",
        mlp_dim="intermediate_size",
        vocab_size="vocab_size",
        max_len="max_position_embeddings",
        type_vocab_size="type_vocab_size",
        activation="hidden_act",
        layer_norm_epsilon="layer_norm_eps",
    ),
    buffers=r"(bert\.)?embeddings\.(position_ids|token_type_ids)",
    tied=(
        ("cls.predictions.decoder.weight", "{base}embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ),
    heads=("cls.", "classifier.", "{base}pooler."),
)


def pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


# ViT (Dosovitskiy et al. 2021; transformers' modeling_vit.py). Defaults are ViTConfig's.
def _vit_fields(c: dict, cls: str, names: set[str]) -> dict:
    patch = pair(_get(c, "patch_size", 16))
    require(patch[0] == patch[1], f"config.json patch_size={list(patch)}: square patches only")
    require(_get(c, "qkv_bias", True), "config.json qkv_bias=false: our attention has q|k|v biases")
    width = _get(c, "hidden_size", 768)
    pooler = cls == "ViTModel" and f"{base_prefix(cls, VIT, names)}pooler.dense.weight" in names
    if pooler:
        require(
            _get(c, "pooler_act", "tanh") == "tanh",
            f"config.json pooler_act={c.get('pooler_act')!r}: our pre-logits layer is tanh",
        )
    return dict(
        num_classes=_num_labels(c) if cls == "ViTForImageClassification" else 0,
        variant="",
        width=width,
        depth=_get(c, "num_hidden_layers", 12),
        num_heads=_get(c, "num_attention_heads", 12),
        mlp_dim=_get(c, "intermediate_size", 3072),
        patch_size=patch[0],
        pool="token",
        pos_emb="learned",
        representation_size=_get(c, "pooler_output_size", width) if pooler else 0,
        dropout_rate=float(_get(c, "hidden_dropout_prob", 0.0)),
        attention_dropout_rate=float(_get(c, "attention_probs_dropout_prob", 0.0)),
        activation=_activation(c, "hidden_act", "gelu"),
        layer_norm_epsilon=float(_get(c, "layer_norm_eps", 1e-12)),
    )


def _vit_config(model: Any, shapes: dict[str, tuple]) -> tuple[str, dict]:
    for field, want in (("pool", "token"), ("pos_emb", "learned")):
        require(
            getattr(model, field) == want,
            f"model.{field}={getattr(model, field)!r}: Hugging Face's ViT has {want!r} only",
        )
    require(
        not (model.num_classes and model.representation_size),
        "model.representation_size: Hugging Face's ViTForImageClassification has no pre-logits "
        "layer under its classifier; export a ViT without one",
    )
    s = model.sizes
    config = {
        "hidden_size": s["width"],
        "num_hidden_layers": s["depth"],
        "num_attention_heads": s["num_heads"],
        "intermediate_size": s["mlp_dim"],
        "patch_size": s["patch_size"],
        "num_channels": shapes["embedding/kernel"][2],
        "hidden_act": _exported_activation(model),
        "hidden_dropout_prob": model.dropout_rate,
        "attention_probs_dropout_prob": model.attention_dropout_rate,
        "layer_norm_eps": model.layer_norm_epsilon,
        "qkv_bias": True,
    }
    if model.representation_size:
        config |= {"pooler_output_size": model.representation_size, "pooler_act": "tanh"}
    if model.num_classes:
        config["id2label"] = _labels(model.num_classes)
    return "ViTForImageClassification" if model.num_classes else "ViTModel", config


def _vit_example(model: Any, c: dict) -> tuple:
    height, width = pair(_get(c, "image_size", 224))
    return (jnp.zeros((1, height, width, _get(c, "num_channels", 3)), jnp.float32),)


VIT = Family(
    model="vit",
    model_type="vit",
    classes={"ViTModel": "", "ViTForImageClassification": "vit."},
    modules=(
        ("embedding", "{base}embeddings.patch_embeddings.projection", "conv2d"),
        ("cls", "{base}embeddings.cls_token", "tensor"),
        ("pos_embedding", "{base}embeddings.position_embeddings", "batched"),
        (r"encoderblock_(\d+)/ln_1", r"{base}encoder.layer.\1.layernorm_before", "norm"),
        (
            r"encoderblock_(\d+)/attn/qkv",
            r"{base}encoder.layer.\1.attention.attention.{part}",
            "qkv",
        ),
        (
            r"encoderblock_(\d+)/attn/out",
            r"{base}encoder.layer.\1.attention.output.dense",
            "linear",
        ),
        (r"encoderblock_(\d+)/ln_2", r"{base}encoder.layer.\1.layernorm_after", "norm"),
        (r"encoderblock_(\d+)/mlp/fc", r"{base}encoder.layer.\1.intermediate.dense", "linear"),
        (r"encoderblock_(\d+)/mlp/proj", r"{base}encoder.layer.\1.output.dense", "linear"),
        ("encoder_norm", "{base}layernorm", "norm"),
        ("pre_logits", "{base}pooler.dense", "linear"),  # ViTModel's pooler: Dense + tanh
        ("head", "classifier", "linear"),
    ),
    to_fields=_vit_fields,
    to_config=_vit_config,
    example=_vit_example,
    config_keys=dict(
        width="hidden_size",
        depth="num_hidden_layers",
        num_heads="num_attention_heads",
        mlp_dim="intermediate_size",
        patch_size="patch_size",
        activation="hidden_act",
        layer_norm_epsilon="layer_norm_eps",
    ),
    heads=("classifier.", "{base}pooler."),
)

FAMILIES = {f.model: f for f in (GPT2, BERT, VIT)}  # by our model name
CLASSES = {cls: f for f in FAMILIES.values() for cls in f.classes}


def base_prefix(cls: str, family: Family, names: set[str]) -> str:
    """The base-model prefix of `cls` if the file uses it (the released gpt2 omits it)."""
    prefix = family.classes[cls]
    return prefix if any(n.startswith(prefix) for n in names) else ""
