"""Transformer layers and GPT: parameter counts, causality, KV-cache decoding, positional
encodings, masks, norms, dtypes and sampling, all on tiny sizes (except eval_shape counts)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import attention, gpt, layers
from research.tasks import decoding


def param_count(model: nn.Module, length: int = 8) -> int:
    """Number of parameters, from shapes only (jax.eval_shape: nothing is allocated)."""
    tokens = jnp.zeros((1, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, train=False))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def init_params(model: nn.Module, batch: int = 2, length: int = 12) -> dict:
    # Eager, not jitted: tiny variants share primitive shapes, so after the first model every
    # op is already compiled, while a jitted init compiles the whole RNG graph per variant.
    tokens = jnp.zeros((batch, length), jnp.int32)
    return model.init(jax.random.key(0), tokens, train=False)["params"]


def random_tokens(key: int, shape: tuple[int, ...], vocab_size: int) -> jax.Array:
    return jax.random.randint(jax.random.key(key), shape, 0, vocab_size, dtype=jnp.int32)


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, dict]:
    """GPTTiny and its parameters, shared by the tests that only read them."""
    model = gpt.GPTTiny()
    return model, init_params(model)


# --- parameter counts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [
        (gpt.GPT2, 124_439_808),  # GPT-2 124M: vocab 50,257, context 1,024, tied, with biases
        (gpt.GPT2Medium, 354_823_168),
        (gpt.GPT2Large, 774_030_080),
        (gpt.GPT2XL, 1_557_611_200),
        (gpt.GPTShakespeareCPU, 804_096),  # nanoGPT prints 0.80M (it leaves out wpe's 8,192)
    ],
)
def test_gpt2_parameter_counts(size, expected):
    assert param_count(size()) == expected


def expected_tiny_count(
    vocab: int,
    context: int,
    layers_: int,
    width: int,
    hidden: int,
    *,
    use_bias: bool = True,
    norm: str = "layer",
    gated: bool = False,
    pos_emb: str = "learned",
    tied: bool = True,
    final_norm: bool = True,
) -> int:
    """Hand count: embeddings, per layer (qkv, out, fc, proj, 2 norms), final norm, head."""
    bias = int(use_bias)
    norm_params = width * (2 if norm == "layer" and use_bias else 1)
    per_layer = (
        3 * width * width + 3 * width * bias  # qkv
        + width * width + width * bias  # attention out
        + width * hidden * (2 if gated else 1) + hidden * (2 if gated else 1) * bias  # fc
        + hidden * width + width * bias  # proj
        + 2 * norm_params
    )  # fmt: skip
    return (
        vocab * width
        + (context * width if pos_emb == "learned" else 0)
        + layers_ * per_layer
        + (norm_params if final_norm else 0)
        + (0 if tied else width * vocab)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_bias": False},
        {"norm": "rms"},
        {"activation": "swiglu"},
        {"pos_emb": "rotary"},
        {"pos_emb": "sinusoidal"},
        {"tie_embeddings": False},
        {"norm_position": "post"},
        {"mlp_ratio": 3},
    ],
)
def test_tiny_gpt_count_matches_hand_formula(overrides):
    model = gpt.GPTTiny(**overrides)
    expected = expected_tiny_count(
        vocab=32,
        context=16,
        layers_=2,
        width=16,
        hidden=16 * overrides.get("mlp_ratio", 4),
        use_bias=overrides.get("use_bias", True),
        norm=overrides.get("norm", "layer"),
        gated=overrides.get("activation") == "swiglu",
        pos_emb=overrides.get("pos_emb", "learned"),
        tied=overrides.get("tie_embeddings", True),
        final_norm=overrides.get("norm_position", "pre") == "pre",
    )
    assert param_count(model) == expected


def test_use_bias_false_leaves_no_bias_anywhere():
    model = gpt.GPTTiny(use_bias=False)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), train=False)
    )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    assert paths and not [p for p in paths if "bias" in p]


def test_gpt2_initialization_scales():
    # normal(0.02), and normal(0.02 / sqrt(2 * num_layers)) for residual output projections.
    params = init_params(gpt.GPTTiny(num_layers=8))
    blocks = [params[f"h_{i}"] for i in range(8)]
    qkv = jnp.stack([b["attn"]["qkv"]["kernel"] for b in blocks])
    residual_out = jnp.concatenate(
        [jnp.ravel(b["attn"]["out"]["kernel"]) for b in blocks]
        + [jnp.ravel(b["mlp"]["proj"]["kernel"]) for b in blocks]
    )
    np.testing.assert_allclose(params["wte"]["embedding"].std(), 0.02, rtol=0.1)
    np.testing.assert_allclose(qkv.std(), 0.02, rtol=0.05)
    np.testing.assert_allclose(residual_out.std(), 0.02 / math.sqrt(2 * 8), rtol=0.05)
    assert not any(b["mlp"]["fc"]["bias"].any() for b in blocks)  # biases start at zero


def test_bad_config_strings_fail_at_construction():
    with pytest.raises(
        ValueError, match=r"unknown GPT norm 'batch'; choose one of \['layer', 'rms'\]"
    ):
        gpt.GPTTiny(norm="batch")
    with pytest.raises(ValueError, match="unknown GPT pos_emb 'alibi'"):
        gpt.GPTTiny(pos_emb="alibi")
    with pytest.raises(ValueError, match="unknown GPT dtype 'float8'"):
        gpt.GPTTiny(dtype="float8")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        gpt.GPTTiny(num_heads=3)


# --- causality and the KV cache -------------------------------------------------------------

VARIANTS = [
    {"pos_emb": "learned"},
    {"pos_emb": "sinusoidal"},
    {"pos_emb": "rotary"},
    {"pos_emb": "none"},
    {"norm_position": "post"},
    {"norm": "rms"},
    {"activation": "swiglu", "use_bias": False},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(map(str, o.values())))
def test_changing_a_token_never_changes_earlier_logits(overrides):
    model = gpt.GPTTiny(**overrides)
    params = init_params(model)
    apply = lambda tokens: model.apply({"params": params}, tokens, train=False)
    tokens = random_tokens(1, (2, 12), 32)
    logits = apply(tokens)
    assert logits.shape == (2, 12, 32) and logits.dtype == jnp.float32
    for t in (0, 5, 11):
        changed = apply(tokens.at[:, t].set((tokens[:, t] + 1) % 32))
        np.testing.assert_array_equal(changed[:, :t], logits[:, :t])
        assert not np.allclose(changed[:, t], logits[:, t])  # the token itself does matter


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_kv_cache_decoding_matches_full_forward(pos_emb):
    model = gpt.GPTTiny(pos_emb=pos_emb)
    params = init_params(model)
    tokens = random_tokens(2, (2, 12), 32)
    full = model.apply({"params": params}, tokens, train=False)

    @jax.jit  # compiled twice: for the 5-token prefill, then for single tokens
    def step(cache, chunk):
        variables = {"params": params, "cache": cache}
        logits, variables = model.apply(variables, chunk, train=False, decode=True, mutable=True)
        return logits, variables["cache"]

    cache = decoding.init_cache(model, batch_size=2, max_len=12)
    pieces = []
    for chunk in (tokens[:, :5], *[tokens[:, t : t + 1] for t in range(5, 12)]):
        logits, cache = step(cache, chunk)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5, rtol=1e-5)
    assert int(cache["cache_index"]) == 12
    assert int(cache["h_1"]["attn"]["cache_index"]) == 12
    assert cache["h_0"]["attn"]["cached_key"].shape == (2, 12, 2, 8)  # [B, max_len, H, Dh]


# --- sampling -------------------------------------------------------------------------------


def test_greedy_generate_matches_full_recomputation(tiny):
    model, params = tiny
    prompt = random_tokens(3, (2, 4), 32)
    # top_k=5 shares the compiled loop with the next test; greedy picks the top-1 anyway.
    out = decoding.generate_in_context(
        model, params, prompt, 8, rng=jax.random.key(0), temperature=0.0, top_k=5
    )
    assert out.shape == (2, 12) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :4], prompt)

    # Uncached, as nanoGPT: rerun the whole sequence for every new token. Causality lets a
    # fixed-length buffer stand in for the growing prefix (positions > t never matter).
    apply = lambda tokens: model.apply({"params": params}, tokens, train=False)
    expected = jnp.zeros((2, 12), jnp.int32).at[:, :4].set(prompt)
    for t in range(4, 12):
        expected = expected.at[:, t].set(jnp.argmax(apply(expected)[:, t - 1], axis=-1))
    np.testing.assert_array_equal(out, expected)


def test_sampling_is_reproducible_and_in_vocabulary(tiny):
    model, params = tiny
    prompt = random_tokens(4, (2, 4), 32)
    generate = lambda seed, temperature: decoding.generate_in_context(
        model, params, prompt, 8, rng=jax.random.key(seed), temperature=temperature, top_k=5
    )
    a, b, c = generate(1, 1.0), generate(1, 1.0), generate(2, 2.0)  # one compile: T is traced
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(c.min()) >= 0 and int(c.max()) < 32
    with pytest.raises(ValueError, match="exceeds the model's block_size 16"):
        decoding.generate_in_context(model, params, prompt, 13, rng=jax.random.key(0))


@jax.jit
def _top_k_draws(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    draws = decoding.sample_logits(jnp.tile(logits, (500, 1)), key, 1.0, 2)  # 500 draws
    # top_k=1 is greedy whatever the temperature; temperature 0 is greedy whatever top_k.
    return (
        draws,
        decoding.sample_logits(logits, key, 5.0, 1),
        decoding.sample_logits(logits, key, 0.0),
    )


def test_top_k_only_samples_the_k_largest():
    draws, top1, greedy = _top_k_draws(jax.random.key(0))
    assert set(np.unique(draws).tolist()) == {1, 3}
    assert int(top1[0]) == 1 and int(greedy[0]) == 1


# --- positional encodings -------------------------------------------------------------------


def test_rotary_scores_depend_only_on_relative_offset_and_preserve_norms():
    # The same q and k vectors at every position [B=2, T=12, H=2, Dh=8] (GPTTiny's shapes).
    q, k = jax.random.normal(jax.random.key(0), (2, 2, 1, 2, 8))
    q, k = jnp.broadcast_to(q, (2, 12, 2, 8)), jnp.broadcast_to(k, (2, 12, 2, 8))

    def scores(offset):
        positions = jnp.arange(12) + offset
        rotated_q = attention.apply_rotary(q, positions)
        rotated_k = attention.apply_rotary(k, positions)
        return jnp.einsum("bqhd,bkhd->bhqk", rotated_q, rotated_k), rotated_q

    s, rotated = scores(0)
    # S[m, n] depends on m - n only: constant along diagonals, and under a shift of both.
    np.testing.assert_allclose(s[..., 1:, 1:], s[..., :-1, :-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores(1000)[0], s, rtol=1e-3, atol=1e-4)
    assert not np.allclose(s[..., 3, 0], s[..., 3, 1])  # and it does depend on m - n
    np.testing.assert_allclose(
        jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(rotated[:, 0], q[:, 0], rtol=1e-6)  # position 0: no rotation


def test_sinusoidal_table_matches_vaswani_formula():
    d = 16
    table = layers.sinusoidal_table(50, d)
    assert table.shape == (50, d) and table.dtype == np.float32
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    assert np.abs(table).max() <= 1.0
    np.testing.assert_array_equal(table[0, 0::2], 0.0)
    np.testing.assert_array_equal(table[0, 1::2], 1.0)

    # PE(pos + k) is a fixed linear map of PE(pos): a rotation of each (sin, cos) pair by the
    # angle of k, read off PE(k) itself (Vaswani et al., Section 3.5).
    k = 5
    sin_k, cos_k = table[k, 0::2], table[k, 1::2]
    sin_p, cos_p = table[:-k, 0::2], table[:-k, 1::2]
    np.testing.assert_allclose(table[k:, 0::2], sin_p * cos_k + cos_p * sin_k, atol=1e-5)
    np.testing.assert_allclose(table[k:, 1::2], cos_p * cos_k - sin_p * sin_k, atol=1e-5)

    module = layers.SinusoidalPositionalEmbedding(num_positions=50, features=d)
    assert module.init(jax.random.key(0), jnp.arange(3)) == {}  # no parameters
    np.testing.assert_array_equal(module.apply({}, jnp.array([7, 49])), table[[7, 49]])


# --- attention: masks, cross-attention ------------------------------------------------------


def test_padded_keys_do_not_affect_unpadded_queries():
    x = jax.random.normal(jax.random.key(0), (2, 12, 16))
    valid = jnp.arange(12) < jnp.array([[8], [11]])  # 4 and 1 padding positions
    mask = attention.padding_mask(valid)
    assert mask.shape == (2, 1, 1, 12)
    block = layers.TransformerBlock(num_heads=2, mlp_dim=64)  # bidirectional, as BERT/ViT
    params = block.init(jax.random.key(1), x, mask=mask, train=False)
    out = block.apply(params, x, mask=mask, train=False)
    noise = jax.random.normal(jax.random.key(2), x.shape)
    changed = block.apply(params, jnp.where(valid[..., None], x, noise), mask=mask, train=False)
    np.testing.assert_allclose(changed[valid], out[valid], rtol=1e-5, atol=1e-6)
    unmasked = block.apply(params, jnp.where(valid[..., None], x, noise), train=False)
    assert not np.allclose(unmasked[valid], out[valid])  # without the mask they would


def test_causal_mask_helper_matches_causal_attention():
    x = jax.random.normal(jax.random.key(0), (2, 12, 16))
    causal = attention.MultiHeadAttention(num_heads=2, causal=True)
    params = causal.init(jax.random.key(1), x, train=False)
    explicit = attention.MultiHeadAttention(num_heads=2)
    assert attention.causal_mask(12).shape == (1, 1, 12, 12)
    np.testing.assert_allclose(
        explicit.apply(params, x, mask=attention.causal_mask(12), train=False),
        causal.apply(params, x, train=False),
        rtol=1e-6,
    )


def test_cross_attention_to_a_context_of_another_length():
    x = jax.random.normal(jax.random.key(0), (2, 12, 16))
    context = jax.random.normal(jax.random.key(1), (2, 7, 24))
    context_valid = jnp.arange(7) < jnp.array([[7], [4]])
    block = layers.TransformerBlock(num_heads=2, mlp_dim=64, causal=True, cross_attention=True)
    kwargs = dict(context_mask=attention.padding_mask(context_valid), train=False)
    params = block.init(jax.random.key(2), x, context, **kwargs)
    out = block.apply(params, x, context, **kwargs)
    assert out.shape == (2, 12, 16)
    cross = params["params"]["cross_attn"]
    assert cross["query"]["kernel"].shape == (16, 16)
    assert cross["key_value"]["kernel"].shape == (24, 32)  # from the context's width
    # Padded context positions are invisible to every query.
    noisy = context.at[1, 4:].set(100.0)
    np.testing.assert_allclose(block.apply(params, x, noisy, **kwargs), out, rtol=1e-5, atol=1e-6)


# --- norms, activations, dtypes, dropout ----------------------------------------------------


def test_layer_norm_and_rms_norm_match_numpy_formulas():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 10)).astype(np.float32)
    scale = np.random.default_rng(1).normal(size=10).astype(np.float32)
    bias = np.random.default_rng(2).normal(size=10).astype(np.float32)
    eps = 1e-5

    layer = layers.NORMS["layer"](use_bias=True, dtype=jnp.float32)
    out = layer.apply({"params": {"scale": scale, "bias": bias}}, x)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + eps) * scale + bias, rtol=1e-4)

    rms = layers.NORMS["rms"](use_bias=True, dtype=jnp.float32)  # RMSNorm has no bias at all
    assert jax.tree.map(jnp.shape, rms.init(jax.random.key(0), x)) == {"params": {"scale": (10,)}}
    out = rms.apply({"params": {"scale": scale}}, x)
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_gelu_is_gpt2_tanh_approximation_and_swiglu_is_gated():
    x = jnp.linspace(-4, 4, 33)
    gelu, gated = layers.ACTIVATIONS["gelu"]
    tanh_gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu(x), tanh_gelu, rtol=1e-6, atol=1e-6)
    assert not gated and layers.ACTIVATIONS["swiglu"][1]
    gelu_exact, _ = layers.ACTIVATIONS["gelu_exact"]
    erf_gelu = 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2)))
    np.testing.assert_allclose(gelu_exact(x), erf_gelu, rtol=1e-6, atol=1e-6)

    mlp = layers.MLP(hidden_dim=32, activation="swiglu", use_bias=False)
    h = jax.random.normal(jax.random.key(0), (2, 12, 16))
    params = mlp.init(jax.random.key(1), h)["params"]
    w_gate, w_up = jnp.split(params["fc"]["kernel"], 2, axis=-1)
    expected = (jax.nn.silu(h @ w_gate) * (h @ w_up)) @ params["proj"]["kernel"]
    np.testing.assert_allclose(mlp.apply({"params": params}, h), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
    model32, params = tiny
    model16 = gpt.GPTTiny(dtype="bfloat16")
    tokens = random_tokens(5, (2, 12), 32)
    shapes = jax.eval_shape(lambda: model16.init(jax.random.key(0), tokens, train=False))
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    logits16 = jax.jit(lambda p: model16.apply({"params": p}, tokens, train=False))(params)
    logits32 = model32.apply({"params": params}, tokens, train=False)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05)  # bf16 has ~3 significant digits
    assert not np.array_equal(logits16, logits32)  # and the compute really was bf16


def test_dropout_only_in_training_and_from_the_dropout_stream(tiny):
    _, params = tiny  # dropout has no parameters: GPTTiny's fit
    model = gpt.GPTTiny(dropout_rate=0.5)
    tokens = random_tokens(6, (2, 12), 32)
    eval_a = model.apply({"params": params}, tokens, train=False)
    np.testing.assert_array_equal(eval_a, tiny[0].apply({"params": params}, tokens, train=False))

    @jax.jit
    def train(seed):
        # An "rbg" key: dropout masks from threefry take seconds to compile on CPU.
        rngs = {"dropout": jax.random.key(seed, impl="rbg")}
        return model.apply({"params": params}, tokens, train=True, rngs=rngs)

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_a)
