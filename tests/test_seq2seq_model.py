"""The encoder-decoder Transformer (Vaswani et al. 2017) and translation decoding: parameter counts,
initialization, masks (padding, causality, packed rows), the KV cache, greedy decoding against
full recomputation, beam search against brute force; tiny sizes except the eval_shape counts."""

import itertools
import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models import transformer
from research.tasks import decoding

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the project's sentencepiece ids


def param_count(model: nn.Module) -> int:
    """Number of parameters, from shapes only (jax.eval_shape: nothing is allocated)."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, train=False))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def expected_count(model: transformer.Transformer) -> int:
    """Hand count: the shared embedding, then encoder and decoder layers (LayerNorm with bias)."""
    d, d_ff, vocab = model.embed_dim, model.mlp_dim, model.vocab_size
    attention = 4 * (d * d + d)  # q, k, v and output projections, each with a bias
    ffn = d * d_ff + d_ff + d_ff * d + d
    norm = 2 * d  # scale and bias
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm  # self- and cross-attention
    final_norms = 2 * norm if model.norm_position == "pre" else 0
    return (
        vocab * d
        + model.encoder_layers * encoder_layer
        + model.decoder_layers * decoder_layer
        + final_norms
    )


def tokens(seed: int, shape: tuple[int, ...], vocab_size: int = 32) -> jax.Array:
    """Random ids that are never pad, BOS or EOS."""
    return jax.random.randint(jax.random.key(seed), shape, 4, vocab_size, dtype=jnp.int32)


def target_in(seed: int, batch: int, length: int) -> jax.Array:
    """Decoder inputs: BOS then random tokens."""
    return tokens(seed, (batch, length)).at[:, 0].set(BOS)


def init_params(model: nn.Module, seed: int = 0) -> dict:
    # Jitted, from an "rbg" key: eager init, or threefry's graph, takes seconds on a CPU.
    source = jnp.ones((1, 4), jnp.int32)
    init = jax.jit(lambda key: model.init(key, source, source, train=False))
    return init(jax.random.key(seed, impl="rbg"))["params"]


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, dict]:
    model = transformer.TransformerTiny()
    return model, init_params(model)


@partial(jax.jit, static_argnames="model")  # one compile per model and shape; eager is slower
def forward(model, params, source, target, **kwargs):
    return model.apply({"params": params}, source, target, train=False, **kwargs)


# --- parameter counts, initialization, fields -----------------------------------------------


@pytest.mark.parametrize(
    "size, vocab_size, expected",
    [
        (transformer.TransformerBase, 37000, 63_082_496),  # Table 3: 65M
        (transformer.TransformerBig, 37000, 214_245_376),  # Table 3: 213M
        (transformer.TransformerBase, 32000, 60_522_496),
        (transformer.TransformerBig, 32000, 209_125_376),
    ],
)
def test_base_and_big_parameter_counts(size, vocab_size, expected):
    model = size(vocab_size=vocab_size)
    assert param_count(model) == expected_count(model) == expected


def test_pre_norm_adds_a_final_norm_to_each_stack():
    model = transformer.TransformerTiny(norm_position="pre")
    assert (
        param_count(model)
        == expected_count(model)
        == param_count(model.clone(norm_position="post")) + 4 * 16
    )


def test_initialization_follows_tensor2tensor():
    model = transformer.Transformer(
        vocab_size=512, encoder_layers=1, decoder_layers=1, num_heads=4, embed_dim=64, mlp_dim=256
    )
    params = init_params(model)
    # normal(d ** -0.5): times sqrt(d), the embeddings have unit variance.
    np.testing.assert_allclose(params["embed"]["embedding"].std() * math.sqrt(64), 1.0, rtol=0.03)

    def assert_glorot_uniform(kernel, fan_in, fan_out):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert float(jnp.abs(kernel).max()) <= bound
        np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)

    decoder = params["decoder_0"]
    for q_k_v in jnp.split(params["encoder_0"]["attn"]["qkv"]["kernel"], 3, axis=1):
        assert_glorot_uniform(q_k_v, 64, 64)  # each its own [D, D] projection
    for k_v in jnp.split(decoder["cross_attn"]["key_value"]["kernel"], 2, axis=1):
        assert_glorot_uniform(k_v, 64, 64)
    assert_glorot_uniform(decoder["cross_attn"]["out"]["kernel"], 64, 64)
    assert_glorot_uniform(decoder["mlp"]["fc"]["kernel"], 64, 256)
    assert_glorot_uniform(decoder["mlp"]["proj"]["kernel"], 256, 64)
    assert not decoder["mlp"]["fc"]["bias"].any() and (decoder["ln_1"]["scale"] == 1).all()


def test_fields_are_checked_and_the_model_is_registered():
    with pytest.raises(ValueError, match=r"unknown Transformer norm_position 'middle'"):
        transformer.Transformer(norm_position="middle")
    with pytest.raises(ValueError, match="unknown Transformer dtype 'float8'"):
        transformer.Transformer(dtype="float8")
    with pytest.raises(ValueError, match="Transformer decoder_layers must be >= 1, got 0"):
        transformer.Transformer(decoder_layers=0)
    with pytest.raises(ValueError, match=r"attention_dropout_rate must be in \[0, 1\), got 1.0"):
        transformer.Transformer(attention_dropout_rate=1.0)
    with pytest.raises(ValueError, match="embed_dim 512 must be divisible by num_heads 7"):
        transformer.Transformer(num_heads=7)
    model = models.build({"name": "transformer", **models.SMOKE_SIZES["transformer"]})
    assert isinstance(model, transformer.Transformer) and model.num_outputs == 512  # smoke size
    assert models.arguments("transformer")["norm_position"] == "post"


# --- masks: padding, causality, packed rows -------------------------------------------------


def test_padding_never_changes_an_output(tiny):
    model, params = tiny
    source = tokens(1, (2, 6)).at[0, 3:].set(PAD)
    target = target_in(2, 2, 6)
    logits = forward(model, params, source, target)
    assert logits.shape == (2, 6, 32) and logits.dtype == jnp.float32

    # A longer source is another matmul shape: float rounding may differ (1.2e-6 seen on AVX2).
    more_padding = jnp.pad(source, ((0, 0), (0, 5)))
    np.testing.assert_allclose(forward(model, params, more_padding, target), logits, atol=1e-5)

    # Other ids in the padded slots, which stay padding for the mask (segment 0): no change. The
    # same ids read as tokens (no segments) change every output of the row.
    other_ids = source.at[0, 3:].set(jnp.array([21, 22, 23]))
    segments = dict(source_segments=(source != 0).astype(jnp.int32), target_segments=target * 0 + 1)
    np.testing.assert_allclose(
        forward(model, params, other_ids, target, **segments), logits, atol=1e-6
    )
    changed = forward(model, params, other_ids, target)
    assert not np.allclose(changed[0], logits[0], atol=1e-3)
    np.testing.assert_array_equal(changed[1], logits[1])


def test_changing_a_target_token_never_changes_earlier_logits(tiny):
    model, params = tiny
    source, target = tokens(3, (2, 6)), target_in(4, 2, 6)
    logits = forward(model, params, source, target)
    for t in (1, 3, 5):
        changed = forward(model, params, source, target.at[:, t].set(4 + (target[:, t] - 3) % 28))
        np.testing.assert_array_equal(changed[:, :t], logits[:, :t])
        assert not np.allclose(changed[:, t], logits[:, t])


def test_packed_rows_give_each_pair_its_own_logits(tiny):
    model, params = tiny
    source_a, target_a = tokens(5, (1, 3)), target_in(6, 1, 3)
    source_b, target_b = tokens(7, (1, 2)), target_in(8, 1, 4)
    pad = jnp.zeros((1, 1), jnp.int32)
    source = jnp.concatenate([source_a, source_b, pad], axis=1)
    target = jnp.concatenate([target_a, target_b, pad], axis=1)
    logits = forward(
        model,
        params,
        source,
        target,
        source_segments=jnp.array([[1, 1, 1, 2, 2, 0]]),
        target_segments=jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]),
        source_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
        target_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]]),
    )
    alone_a = forward(model, params, source_a, target_a)
    alone_b = forward(model, params, source_b, target_b)
    np.testing.assert_allclose(logits[:, :3], alone_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, 3:7], alone_b, rtol=1e-5, atol=1e-5)


# --- the KV cache, dtypes, dropout ----------------------------------------------------------


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_cached_decoding_matches_the_full_forward(tiny, norm_position):
    model = tiny[0].clone(norm_position=norm_position)
    params = tiny[1] if norm_position == "post" else init_params(model)
    source = tokens(9, (2, 6)).at[1, 3:].set(PAD)
    target = target_in(10, 2, 6)
    full = forward(model, params, source, target)

    @jax.jit
    def step(cache, token):  # the encoder is rerun at every step: one compile, for brevity
        encoded = model.apply({"params": params}, source, train=False, method="encode")
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            encoded,
            source,
            token,
            train=False,
            decode=True,
            method="decode",
            mutable=["cache"],
        )
        return logits, variables["cache"]

    encoded = jnp.zeros((2, 6, 16))  # only its shape matters
    cache = decoding.init_decoder_cache(model, encoded, source, 6)
    pieces = []
    for t in range(6):
        logits, cache = step(cache, target[:, t : t + 1])
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache["decode_positions"]["cache_index"]) == 6
    assert cache["decoder_1"]["attn"]["cached_key"].shape == (2, 6, 2, 8)  # [B, T, H, Dh]


def test_bfloat16_matmul_and_dropout(tiny):
    model, params = tiny
    source, target = tokens(11, (2, 6)), target_in(12, 2, 6)
    logits = forward(model, params, source, target)
    low = forward(model.clone(dtype="bfloat16_matmul"), params, source, target)
    assert low.dtype == jnp.float32 and not np.array_equal(low, logits)
    np.testing.assert_allclose(low, logits, atol=0.05)

    dropped = model.clone(dropout_rate=0.3, attention_dropout_rate=0.1)
    train = jax.jit(
        lambda seed: dropped.apply(
            {"params": params},
            source,
            target,
            train=True,
            rngs={"dropout": jax.random.key(seed, impl="rbg")},  # threefry compiles slowly
        )
    )
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2)) and not np.allclose(train(1), logits)


# --- translation ----------------------------------------------------------------------------


def test_length_penalty_is_gnmt_formula():
    lengths = jnp.array([1, 2, 7, 50])
    for alpha in (0.0, 0.6, 1.0):
        expected = [((5 + n) / 6) ** alpha for n in (1, 2, 7, 50)]
        np.testing.assert_allclose(decoding.length_penalty(lengths, alpha), expected, rtol=1e-6)
    assert float(decoding.length_penalty(7, 0.6)) == pytest.approx(2**0.6, rel=1e-6)


def test_greedy_matches_recomputation_and_beam_size_1(tiny):
    model, params = tiny
    source = jnp.concatenate([tokens(13, (4, 6))[:, :4], jnp.zeros((4, 2), jnp.int32)], axis=1)
    source = source.at[1, 2:].set(PAD).at[2, 4:].set(tokens(14, (2,))).at[3, 1:].set(PAD)
    # A larger EOS embedding: some rows end on their own, others at their limit.
    embedding = params["embed"]["embedding"].at[EOS].multiply(4.0)
    params = {**params, "embed": {"embedding": embedding}}
    args = dict(max_extra_tokens=4, bos_id=BOS, eos_id=EOS)
    greedy = np.asarray(decoding.translate_greedy(model, params, source, **args))
    assert greedy.shape == (4, 10) and greedy.dtype == np.int32

    # Uncached: rerun the whole target for every token; causality lets a fixed-length buffer
    # stand in for the growing prefix. EOS forced at source length + 4.
    limits = np.sum(np.asarray(source) != PAD, axis=1) + 4
    expected = np.zeros((4, 10), np.int32)
    target, done = np.full((4, 11), BOS, np.int32), np.zeros(4, bool)
    for t in range(10):
        logits = np.array(forward(model, params, source, jnp.asarray(target[:, :10]))[:, t])
        logits[:, PAD] = -np.inf
        token = np.where(t == limits - 1, EOS, logits.argmax(-1))
        expected[:, t] = np.where(done, PAD, token)
        target[:, t + 1] = token
        done |= token == EOS
    np.testing.assert_array_equal(greedy, expected)
    ends = np.array([list(row).index(EOS) + 1 for row in greedy])
    assert any(ends < limits) and any(ends == limits)  # some rows end early, some are cut
    assert all((row[:end] != PAD).all() and not row[end:].any() for row, end in zip(greedy, ends))

    beam_1 = decoding.translate(model, params, source, beam_size=1, alpha=0.6, **args)
    np.testing.assert_array_equal(beam_1, greedy)
    with pytest.raises(ValueError, match="the model's max_len 32"):
        decoding.translate_greedy(model, params, source, max_extra_tokens=27, bos_id=2, eos_id=3)


def test_beam_search_finds_the_best_sequence_by_brute_force():
    # Vocabulary: pad, unk, bos, eos and one word. Output limits 4 and 3 (source length + 2).
    model = transformer.TransformerTiny(vocab_size=5, encoder_layers=1, decoder_layers=1)
    source = jnp.array([[4, 1], [4, 0]], jnp.int32)
    params = init_params(model, seed=6)
    limits = (4, 3)

    # Every output: 0..limit-1 tokens other than pad and EOS, then EOS. 40 + 13 of them.
    outputs = [
        [[*y, EOS] for n in range(limit) for y in itertools.product((UNK, BOS, 4), repeat=n)]
        for limit in limits
    ]
    # Their log-probabilities from the full forward pass, in one batch.
    candidates = [(b, y) for b in (0, 1) for y in outputs[b]]
    target = np.zeros((len(candidates), 4), np.int32)
    for i, (_, y) in enumerate(candidates):
        target[i, : len(y)] = [BOS, *y[:-1]]
    rows = source[np.array([b for b, _ in candidates])]
    scores = np.asarray(jax.nn.log_softmax(forward(model, params, rows, jnp.asarray(target))))
    log_probs = [[], []]
    for i, (b, y) in enumerate(candidates):
        log_probs[b].append(sum(scores[i, t, token] for t, token in enumerate(y)))

    winners = []
    for alpha in (0.0, 0.6, 2.0):
        # A beam of 36 keeps every hypothesis (at most 9 alive x 4 tokens), so nothing is pruned.
        out = decoding.translate(
            model,
            params,
            source,
            beam_size=36,
            alpha=alpha,
            max_extra_tokens=2,
            bos_id=BOS,
            eos_id=EOS,
        )
        for b, candidates in enumerate(outputs):
            score = [lp / ((5 + len(y)) / 6) ** alpha for lp, y in zip(log_probs[b], candidates)]
            best = candidates[int(np.argmax(score))]
            assert sorted(score)[-1] - sorted(score)[-2] > 1e-4  # the winner is unambiguous
            np.testing.assert_array_equal(out[b], best + [PAD] * (4 - len(best)))
            winners.append(tuple(best))
    assert len(set(winners)) > 2  # alpha matters: longer outputs win as it grows
    # Some winners are not greedy's: their hypotheses moved between beam slots, and the cache
    # followed them.
    greedy = decoding.translate_greedy(
        model, params, source, max_extra_tokens=2, bos_id=2, eos_id=3
    )
    assert not {tuple(row[: list(row).index(EOS) + 1]) for row in np.asarray(greedy)} >= set(
        winners
    )
