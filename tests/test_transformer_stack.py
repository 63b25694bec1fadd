"""Rematerialisation, scanned layers and attention implementations (research/models/stack.py,
attention.py): remat changes no gradient, scanned and unrolled models agree from the same weights
(converted by stack.scan_params), a scanned GPT decodes with its KV cache, and every attention
implementation available on CPU agrees with the einsum reference, values and gradients."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import ConfigError
from research.models import SCAN_PREFIXES, attention, bert, gpt, stack, transformer, vit
from research.tasks import decoding

TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 1, 32, dtype=jnp.int32)
IMAGES = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))

# name -> (constructor taking overrides, example inputs): three blocks, so order matters.
FAMILIES = {
    "gpt": (lambda **kw: gpt.GPTTiny(num_layers=3, **kw), (TOKENS,)),
    "bert": (
        lambda **kw: bert.Bert(
            size="",
            num_layers=3,
            hidden_size=16,
            num_heads=2,
            mlp_dim=32,
            vocab_size=32,
            max_len=16,
            **kw,
        ),
        (TOKENS.at[:, -2:].set(0),),  # padding at the end: the padding mask matters
    ),
    "vit": (
        lambda **kw: vit.ViT(
            width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4, num_classes=3, **kw
        ),
        (IMAGES,),
    ),
    "transformer": (
        lambda **kw: transformer.TransformerTiny(encoder_layers=3, decoder_layers=2, **kw),
        (TOKENS.at[:, -2:].set(0), TOKENS),
    ),
}


def close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def loss_and_grads(model, params, inputs, train=True):
    def loss(p):
        out = model.apply({"params": p}, *inputs, train=train, rngs={"dropout": jax.random.key(3)})
        return sum(jnp.mean(jnp.square(y)) for y in jax.tree.leaves(out))

    return jax.jit(jax.value_and_grad(loss))(params)


def forward(model, params, inputs):
    return jax.jit(lambda p: model.apply({"params": p}, *inputs, train=False))(params)


@pytest.mark.parametrize("remat", ["full", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_same_gradients(remat):
    """With dropout on: the checkpointed block recomputes the same masks on the way back."""
    make, inputs = FAMILIES["gpt"]
    base = make(dropout_rate=0.1)
    params = base.init(jax.random.key(0), *inputs, train=False)["params"]
    loss, grads = loss_and_grads(base, params, inputs)
    loss_r, grads_r = loss_and_grads(make(dropout_rate=0.1, remat=remat), params, inputs)
    assert float(loss) > 0
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
    close(grads_r, grads, atol=1e-6)


def test_remat_in_the_jaxpr():
    """remat is really on: the gradient's program holds a checkpoint (remat) primitive."""
    make, inputs = FAMILIES["gpt"]
    model = make(remat="full")
    params = model.init(jax.random.key(0), *inputs, train=False)["params"]
    jaxpr = str(jax.make_jaxpr(lambda p: loss_and_grads(model, p, inputs))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    plain = str(jax.make_jaxpr(lambda p: loss_and_grads(make(), p, inputs))(params))
    assert "remat" not in plain and "checkpoint" not in plain


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_scanned_and_unrolled_agree(name):
    make, inputs = FAMILIES[name]
    unrolled, scanned = make(), make(scan_layers=True, remat="full")
    params = unrolled.init(jax.random.key(0), *inputs, train=False)["params"]
    stacked = stack.scan_params(params, SCAN_PREFIXES[name])
    # The scanned model's own init has exactly this layout.
    own = jax.eval_shape(lambda: scanned.init(jax.random.key(0), *inputs, train=False))["params"]
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, stacked)
    first = jax.tree.leaves(stacked[stack.scanned_name(SCAN_PREFIXES[name][0])])[0]
    assert first.shape[0] == 3
    close(forward(scanned, stacked, inputs), forward(unrolled, params, inputs))
    if name in ("gpt", "transformer"):  # gradients too (one decoder, one encoder-decoder)
        loss, grads = loss_and_grads(unrolled, params, inputs, train=False)
        loss_s, grads_s = loss_and_grads(scanned, stacked, inputs, train=False)
        np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-5)
        close(grads_s, stack.scan_params(grads, SCAN_PREFIXES[name]))
    # And back: the round trip is the identity, bit for bit.
    back = stack.unscan_params(stacked, SCAN_PREFIXES[name])
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scanned_gpt_decodes_with_its_cache():
    """Greedy generation with the (stacked) KV cache gives the unrolled model's tokens."""
    make, _ = FAMILIES["gpt"]
    unrolled, scanned = make(), make(scan_layers=True)
    params = unrolled.init(jax.random.key(0), TOKENS, train=False)["params"]
    stacked = stack.scan_params(params, SCAN_PREFIXES["gpt"])
    cache = decoding.init_cache(scanned, 2, 12)
    assert cache["h"]["attn"]["cached_key"].shape == (3, 2, 12, 2, 8)  # [L, B, T, H, Dh]
    prompt = TOKENS[:, :4]
    kw = dict(rng=jax.random.key(0), temperature=1e-6)
    want = decoding.generate_in_context(unrolled, params, prompt, 8, **kw)
    got = decoding.generate_in_context(scanned, stacked, prompt, 8, **kw)
    assert got.shape == (2, 12)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_scanned_transformer_refuses_to_decode():
    make, inputs = FAMILIES["transformer"]
    model = make(scan_layers=True)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False))["params"]
    with pytest.raises(ValueError, match="scan_layers=False") as e:
        decoding.translate(
            model, params, inputs[0], beam_size=1, max_extra_tokens=2, alpha=0.6, bos_id=1, eos_id=2
        )
    assert "\n" not in str(e.value)


def test_bad_fields_are_one_line_errors():
    make, _ = FAMILIES["gpt"]
    with pytest.raises(ValueError, match="unknown GPT remat 'ful'") as e:
        make(remat="ful")
    assert "\n" not in str(e.value) and "dots_saveable" in str(e.value)
    with pytest.raises(ValueError, match="unknown GPT attention_impl 'flash'"):
        make(attention_impl="flash")


# --- attention implementations -----------------------------------------------------------------

CPU_IMPLS = ["jax", "xla", "auto"]  # cudnn: GPU only (tested below to refuse on CPU)


def attend(impl, x, context=None, *, causal=False, mask=None, params=None):
    module = attention.MultiHeadAttention(num_heads=2, causal=causal, attention_impl=impl)
    if params is None:
        params = module.init(jax.random.key(0), x, context, mask=mask, train=False)["params"]

    def f(p, x):
        return module.apply({"params": p}, x, context, mask=mask, train=False)

    out = jax.jit(f)(params, x)
    grads = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1)))(params, x)
    return params, out, grads


X = jax.random.normal(jax.random.key(4), (2, 6, 16))
CONTEXT = jax.random.normal(jax.random.key(5), (2, 5, 12))
PADDING = attention.padding_mask(jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]))
CONTEXT_PADDING = attention.padding_mask(jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
CASES = {
    "causal": dict(causal=True),
    "padding": dict(mask=PADDING),
    "causal_and_padding": dict(causal=True, mask=PADDING),
    "cross": dict(context=CONTEXT, mask=CONTEXT_PADDING),
}


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_impls_agree_with_einsum(impl, case):
    kw = dict(CASES[case])
    context = kw.pop("context", None)
    params, want, want_grads = attend("einsum", X, context, **kw)
    _, got, got_grads = attend(impl, X, context, params=params, **kw)
    assert got.shape == (2, 6, 16) and got.dtype == jnp.float32
    assert float(jnp.abs(want).max()) > 1e-3
    close(got, want)
    close(got_grads, want_grads)


def test_attention_impls_decode_like_einsum(impl="xla"):
    """With the KV cache the causal mask is offset: passed as a mask, not as is_causal."""
    make, _ = FAMILIES["gpt"]
    ref, model = make(), make(attention_impl=impl)
    params = ref.init(jax.random.key(0), TOKENS, train=False)["params"]
    kw = dict(rng=jax.random.key(0), temperature=1e-6)
    want = decoding.generate_in_context(ref, params, TOKENS[:, :3], 6, **kw)
    got = decoding.generate_in_context(model, params, TOKENS[:, :3], 6, **kw)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_models_agree_across_attention_impls():
    for name in ("bert", "transformer"):
        make, inputs = FAMILIES[name]
        ref = make()
        params = ref.init(jax.random.key(0), *inputs, train=False)["params"]
        close(forward(make(attention_impl="xla"), params, inputs), forward(ref, params, inputs))


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU refusal")
def test_cudnn_needs_a_gpu():
    make, _ = FAMILIES["gpt"]
    with pytest.raises(ValueError, match="needs an NVIDIA GPU") as e:
        make(attention_impl="cudnn")
    assert "\n" not in str(e.value)


def test_attention_dropout_needs_einsum_unless_auto():
    make, inputs = FAMILIES["gpt"]
    model = make(dropout_rate=0.1, attention_impl="xla")
    params = model.init(jax.random.key(0), *inputs, train=False)["params"]
    rngs = {"dropout": jax.random.key(0)}
    with pytest.raises(ValueError, match="has no attention dropout"):
        model.apply({"params": params}, *inputs, train=True, rngs=rngs)
    auto = make(dropout_rate=0.1, attention_impl="auto").apply(
        {"params": params}, *inputs, train=True, rngs=rngs
    )
    einsum = make(dropout_rate=0.1).apply({"params": params}, *inputs, train=True, rngs=rngs)
    close(auto, einsum)  # auto falls back to einsum, same dropout masks


# --- Hugging Face names are unrolled ------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "hf"


def test_hugging_face_export_unrolls_and_import_refuses_scanned():
    from research import initialize, pretrained

    imported = pretrained.read(FIXTURES / "gpt2")
    params = imported.params
    scanned_config = imported.model_config | {"scan_layers": True}
    stacked = stack.scan_params(params, SCAN_PREFIXES["gpt"])
    config, tensors = pretrained.to_hf(imported.model_config, params)
    config_s, tensors_s = pretrained.to_hf(scanned_config, stacked)
    assert config_s == config and sorted(tensors_s) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(tensors_s[name], value)
    init = ml_collections.ConfigDict(
        dict(source=str(FIXTURES / "gpt2"), step=0, include="", exclude="")
    )
    with pytest.raises(ConfigError, match="set model.scan_layers=False") as e:
        initialize.check_model(init, ml_collections.ConfigDict(scanned_config))
    assert "\n" not in str(e.value)


def test_weight_decay_mask_sees_through_the_layer_axis():
    """A stacked bias [L, D] is a vector: "matrices" decays exactly what it decays unrolled."""
    from research import models, optim

    make, inputs = FAMILIES["gpt"]
    params = jax.eval_shape(lambda: make().init(jax.random.key(0), *inputs, train=False))
    params = params["params"]
    stacked = stack.scan_params(params, SCAN_PREFIXES["gpt"])
    entries = models.stacked_entries({"name": "gpt", "scan_layers": True})
    assert entries == ("h",) and models.stacked_entries({"name": "gpt"}) == ()
    want = stack.scan_params(optim.decay_mask(params, "matrices"), SCAN_PREFIXES["gpt"])
    want = jax.tree.map(lambda m: bool(np.all(m)), want)  # stacked bools back to one per entry
    got = optim.decay_mask(stacked, "matrices", stacked=entries)
    assert got == want
    assert not got["h"]["ln_1"]["scale"] and got["h"]["attn"]["qkv"]["kernel"]
