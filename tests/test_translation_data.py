"""Translation data: the number_words and parallel_file builders, the SentencePiece tokenizer, packed
training rows (shapes, shifting, packing, epochs, resume, process shards), evaluation rows, mock
wmt14_translate, and one-line errors. Temporary TFDS data dirs only; no network."""

import collections
import json

import ml_collections
import numpy as np
import pytest
from num2words import num2words

import research.data as data
from research.config import defaults
from research.data import number_words, parallel_file, tokenizers, translation
from research.errors import ConfigError, DatasetUnavailable

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SEQ_LEN = 32  # Two or three pairs of number words to a row.
ASCII = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump; 42 of them, (really) 7% faster?",
    "Sphinx of black quartz, judge my vow: \"yes\" or 'no' - A/B @ #1 & $2 + 3 = 6 ~ [x] {y} <z>",
    "I can't believe it's not butter_ said Jack | Jill ^ ` \\ *",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def make_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """English -> German number words; the tokenizer trained on the first 2,000 training pairs."""
    config = defaults().data
    config.update(
        dict(
            kind="translation",
            name="number_words",
            data_dir=data_dir,
            source_lang="en",
            target_lang="de",
            train_split="train[:2000]",
            eval_split="validation",
            test_split="test",
            tokenizer="sentencepiece",
            seq_len=SEQ_LEN,
        )
    )
    config.update(overrides)
    return config


def encoded_pairs(config) -> tuple[list[tuple], list[tuple]]:
    """The train split's (source ids, target ids) pairs, every pair and the kept ones."""
    tok = translation.tokenizer(config)
    sources, targets = translation.texts(config, config.train_split)
    pairs = [(tuple(tok.encode(s)), tuple(tok.encode(t))) for s, t in zip(sources, targets)]
    return pairs, [pairs[i] for i in translation.kept_pairs(config)]


def row_pairs(batch: dict, row: int) -> list[tuple]:
    """The (source ids, target ids) pairs of one training row, checking its invariants."""
    seg_s, seg_t = batch["source_segments"][row], batch["target_segments"][row]
    count = seg_s.max()
    # Segments 1..count, each contiguous, on both sides; padding (segment 0) only at the end.
    for segments in (seg_s, seg_t):
        used = segments[segments > 0]
        assert (np.diff(used) >= 0).all() and set(used) == set(range(1, count + 1))
        assert (segments[len(used) :] == 0).all()
    for key, segments in [("source", seg_s), ("target_in", seg_t), ("target_out", seg_t)]:
        assert (batch[key][row][segments == 0] == PAD).all()
    pairs = []
    for s in range(1, count + 1):
        source = batch["source"][row][seg_s == s]
        target_in, target_out = (
            batch["target_in"][row][seg_t == s],
            batch["target_out"][row][seg_t == s],
        )
        np.testing.assert_array_equal(
            batch["source_positions"][row][seg_s == s], range(len(source))
        )
        np.testing.assert_array_equal(
            batch["target_positions"][row][seg_t == s], range(len(target_in))
        )
        assert source[-1] == EOS and EOS not in source[:-1]
        assert target_in[0] == BOS and target_out[-1] == EOS
        np.testing.assert_array_equal(target_in[1:], target_out[:-1])  # shifted by one
        assert not {PAD, BOS, EOS} & set(target_out[:-1].tolist())
        pairs.append((tuple(source[:-1].tolist()), tuple(target_out[:-1].tolist())))
    return pairs


def train_batches(config, num_batches: int, *, batch_size: int = 64, seed: int = 0, **process):
    process = process or dict(process_index=0, process_count=1)
    it = data.train_iterator(config, global_batch_size=batch_size, seed=seed, **process)
    return [next(it) for _ in range(num_batches)]


# -------------------------------------------------------------------------------------------------
# Sources: number_words, parallel_file, mock wmt14_translate.
# -------------------------------------------------------------------------------------------------


def test_number_words_splits_are_fixed_disjoint_and_num2words(data_dir):
    splits = number_words.split_numbers()
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 50_000,
        "validation": 2_000,
        "test": 2_000,
    }
    everything = np.concatenate(list(splits.values()))
    assert len(set(everything.tolist())) == 54_000  # disjoint, no repeats
    assert everything.min() >= 0 and everything.max() < 10**6
    # The same numbers on every machine: PCG64(0)'s raw stream is fixed by NumPy (NEP 19).
    assert {k: v[:3].tolist() for k, v in splits.items()} == {
        "train": [150050, 78538, 238149],
        "validation": [490424, 106155, 590639],
        "test": [484844, 75923, 730497],
    }
    np.testing.assert_array_equal(number_words.split_numbers()["test"], splits["test"])
    assert number_words.words(321, "de") == "dreihunderteinundzwanzig"

    config = make_config(data_dir)
    sources, targets = translation.texts(config, "test")
    assert len(sources) == 2_000
    # Stored in ascending order of the number; every text is num2words' own.
    numbers = sorted(splits["test"].tolist())
    assert sources == [num2words(n, lang="en") for n in numbers]
    assert targets == [num2words(n, lang="de") for n in numbers]
    # Either side can be the source: "de" -> "en" reads the same "en-de" config reversed.
    reverse = make_config(data_dir, source_lang="de", target_lang="en")
    assert translation.texts(reverse, "test") == (targets, sources)


def write_pairs(tmp_path, pairs: list[tuple[str, str]]):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\tCC-BY attribution\n\n" for s, t in pairs), encoding="utf-8")
    source, target = tmp_path / "corpus.en", tmp_path / "corpus.de"
    source.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    target.write_text("".join(t + "\r\n" for _, t in pairs), encoding="utf-8")
    return str(tsv), str(source), str(target)


def test_parallel_file_tsv_and_two_files_give_the_same_ordered_splits(tmp_path):
    pairs = [(f"number {i}, café", f"Nummer {i}") for i in range(250)] + [("", "leer")]
    tsv, source, target = write_pairs(tmp_path, pairs)
    assert parallel_file.split_sizes(251) == {"train": 247, "validation": 2, "test": 2}
    assert parallel_file.split_sizes(3) == {"train": 1, "validation": 1, "test": 1}
    data_dir = str(tmp_path / "tfds")
    for path, target_path in [(tsv, ""), (source, target)]:
        config = make_config(data_dir, name="", path=path, target_path=target_path)
        read = {
            split: translation.texts(config, split) for split in ("train", "validation", "test")
        }
        assert read["train"] == ([s for s, _ in pairs[:247]], [t for _, t in pairs[:247]])
        assert read["validation"] == (
            [s for s, _ in pairs[247:249]],
            [t for _, t in pairs[247:249]],
        )
        assert read["test"] == (["number 249, café", ""], ["Nummer 249", "leer"])
    # One prepared dataset per content.
    assert len(list((tmp_path / "tfds" / "parallel_file").iterdir())) == 2


def test_mock_wmt14_through_the_real_pipeline():
    config = defaults().data
    config.update(
        dict(
            kind="translation",
            name="wmt14_translate/de-en",
            mock=True,
            tokenizer="sentencepiece",
            seq_len=16,
        )
    )
    info = data.info(config)
    assert (info.input_shape, info.class_names) == ((16,), [])
    sources, targets = info.texts("train")
    assert len(sources) == len(targets) == 512 and set("".join(sources)) <= set(" abcdefghij")
    assert info.num_train == len(translation.kept_pairs(config)) > 400
    batch = train_batches(config, 1, batch_size=8, process_index=1, process_count=2)[0]
    assert {k: v.shape for k, v in batch.items()} == {k: (4, 16) for k in translation.TRAIN_KEYS}
    for row in range(4):
        row_pairs(batch, row)
    evals = list(
        data.eval_batches(config, "test", global_batch_size=100, process_index=0, process_count=1)
    )
    assert len(evals) == 6 and sum(int(b["mask"].sum()) for b in evals) == 512


# -------------------------------------------------------------------------------------------------
# The SentencePiece tokenizer.
# -------------------------------------------------------------------------------------------------


def test_sentencepiece_ids_round_trips_and_serialisation(data_dir, tmp_path):
    tok = tokenizers.SentencePieceTokenizer.train(ASCII * 20, vocab_size=8000)
    assert tokenizers.TOKENIZERS["sentencepiece"] is tokenizers.SentencePieceTokenizer
    pieces = [tok.processor.id_to_piece(i) for i in range(4)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]  # pad 0, unk 1, bos 2, eos 3
    assert 4 < tok.vocab_size < 8000  # a soft limit: a small text gets a small vocabulary
    for sentence in ASCII + ["quick zebras jump over 6 lazy dogs."]:
        ids = tok.encode(sentence)
        assert ids.dtype == np.int32 and ids.min() > EOS  # no special ids in an encoding
        assert tok.decode(ids) == sentence
    assert tok.decode([BOS, *tok.encode("lazy dog"), EOS, PAD]) == "lazy dog"

    number_tok = translation.tokenizer(make_config(data_dir))
    sources, targets = translation.texts(make_config(data_dir), "test")
    for text in sources + targets:
        assert number_tok.decode(number_tok.encode(text)) == text

    # Serialised as the .model file, and read back from one as data.tokenizer_model.
    restored = tokenizers.SentencePieceTokenizer.from_bytes(tok.to_bytes())
    assert restored.to_bytes() == tok.to_bytes()
    assert tokenizers.from_json(tok.to_json()).to_bytes() == tok.to_bytes()
    model = tmp_path / "tokenizer.model"
    model.write_bytes(number_tok.to_bytes())
    loaded = translation.tokenizer(make_config(data_dir, tokenizer_model=str(model)))
    assert loaded is not number_tok and loaded.to_bytes() == number_tok.to_bytes()
    with pytest.raises(RuntimeError, match="data.kind='translation'"):
        tokenizers.SentencePieceTokenizer.fit("text for a token stream")


def test_sentencepiece_training_is_deterministic(data_dir):
    config = make_config(data_dir)
    sources, targets = translation.texts(config, config.train_split)
    sentences = [s for pair in zip(sources[:500], targets[:500]) for s in pair]
    first = tokenizers.SentencePieceTokenizer.train(sentences, vocab_size=300)
    again = tokenizers.SentencePieceTokenizer.train(sentences, vocab_size=300)
    assert first.to_bytes() == again.to_bytes()
    # info, training and evaluation share one training per process.
    assert translation.tokenizer(config) is translation.tokenizer(make_config(data_dir))


def test_info_describes_the_pairs_and_decodes(data_dir):
    # The first 2,000 training numbers (all below 40,000) take up to 11 English pieces: with
    # EOS, the longest do not fit 11 tokens.
    config = make_config(data_dir, seq_len=11)
    info = data.info(config)
    tok = translation.tokenizer(config)
    pairs, kept = encoded_pairs(config)
    fits = [len(s) < 11 and len(t) < 11 for s, t in pairs]
    assert 0 < len(pairs) - len(kept) == fits.count(False)
    assert (info.num_classes, info.input_shape) == (tok.vocab_size, (11,))
    assert info.num_train == len(kept)
    assert data.info(make_config(data_dir)).num_train == len(pairs) == 2000  # all fit 32
    assert info.workdir_files == {"tokenizer.model": tok.to_bytes()}
    ids = np.array([BOS, *tok.encode("einhundert"), EOS, *tok.encode("zwei"), PAD], np.int32)
    assert info.decode_text(ids) == "einhundert"
    assert info.decode_text(ids[:3]) == tok.decode(ids[1:3])  # no EOS: everything
    assert info.texts("validation") == translation.texts(config, "validation")


# -------------------------------------------------------------------------------------------------
# Training rows.
# -------------------------------------------------------------------------------------------------


def test_packed_rows_shift_targets_and_hold_every_kept_pair_once_per_epoch(data_dir):
    config = make_config(data_dir)
    pairs, kept = encoded_pairs(config)
    batches = train_batches(config, 40, batch_size=64)
    for batch in batches[:1]:
        assert set(batch) == set(translation.TRAIN_KEYS)
        assert all(v.shape == (64, SEQ_LEN) and v.dtype == np.int32 for v in batch.values())
    seen = [pair for batch in batches for row in range(64) for pair in row_pairs(batch, row)]
    assert set(seen) <= set(kept)  # whole pairs, never split, never a dropped one
    # Rows never span epochs: the first len(kept) pairs are epoch 0, each kept pair once.
    assert len(seen) > 2 * len(kept)
    epoch0, epoch1 = seen[: len(kept)], seen[len(kept) : 2 * len(kept)]
    assert collections.Counter(epoch0) == collections.Counter(kept) == collections.Counter(epoch1)
    assert epoch0 != epoch1  # reshuffled
    other_seed = train_batches(config, 1, batch_size=64, seed=1)[0]
    assert not np.array_equal(other_seed["source"], batches[0]["source"])
    assert np.mean([len(row_pairs(b, r)) for b in batches for r in range(64)]) > 1.5  # packed


def test_unpacked_rows_hold_one_pair_each(data_dir):
    config = make_config(data_dir, pack=False)
    _, kept = encoded_pairs(config)
    batch = train_batches(config, 1, batch_size=len(kept))[0]  # one epoch
    assert (batch["source_segments"].max(1) == 1).all()
    rows = [row_pairs(batch, row)[0] for row in range(len(kept))]
    assert collections.Counter(rows) == collections.Counter(kept)


def test_pack_is_first_fit_over_the_open_rows():
    # (source, target) needs: the third pair fits the first row, not only the newest.
    np.testing.assert_array_equal(
        translation.pack([3, 3, 1, 1, 1], [3, 3, 1, 1, 1], 4), [0, 1, 0, 1, 2]
    )
    np.testing.assert_array_equal(translation.pack([2, 1, 2], [1, 4, 2], 4), [0, 1, 0])
    # Rows close once OPEN_ROWS newer ones are open: the last pair skips row 0.
    assert translation.OPEN_ROWS == 8
    np.testing.assert_array_equal(translation.pack([3] * 9 + [1], [3] * 9 + [1], 4), [*range(9), 1])


@pytest.mark.parametrize("process_count", [1, 2])
def test_resuming_from_get_state_replays_the_stream_bitwise(data_dir, process_count):
    config = make_config(data_dir)
    kwargs = dict(global_batch_size=128, seed=3, process_index=process_count - 1)
    kwargs["process_count"] = process_count
    uninterrupted = data.train_iterator(config, **kwargs)
    expected = [next(uninterrupted) for _ in range(12)]  # across the first epoch's end
    interrupted = data.train_iterator(config, **kwargs)
    for _ in range(9):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))  # as a checkpoint stores it
    resumed = data.train_iterator(config, **kwargs)
    resumed.set_state(state)
    for want in expected[9:]:
        got = next(resumed)
        for key in translation.TRAIN_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_process_shards_make_up_the_global_batch(data_dir):
    config = make_config(data_dir)
    whole = train_batches(config, 3, batch_size=64, seed=5)
    shards = [
        train_batches(config, 3, batch_size=64, seed=5, process_index=p, process_count=4)
        for p in range(4)
    ]
    for k in range(3):
        for key in translation.TRAIN_KEYS:
            # Process p holds global rows p, p + 4, ... of each batch.
            interleaved = np.stack([shards[p][k][key] for p in range(4)], 1).reshape(64, SEQ_LEN)
            np.testing.assert_array_equal(interleaved, whole[k][key])


# -------------------------------------------------------------------------------------------------
# Evaluation rows.
# -------------------------------------------------------------------------------------------------


def test_eval_batches_cover_the_split_once_in_order(data_dir):
    config = make_config(data_dir, seq_len=8)  # short: long pairs are cut, not dropped
    tok = translation.tokenizer(config)
    sources, targets = translation.texts(config, "validation")
    shards = [
        list(
            data.eval_batches(
                config, "validation", global_batch_size=96, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 21  # ceil(2000 / 96), padded alike
    rows = collections.defaultdict(list)
    for shard in shards:
        for batch in shard:
            assert set(batch) == {"source", "target_in", "target_out", "mask", "index"}
            assert batch["source"].shape == (48, 8) and batch["index"].dtype == np.int32
            assert batch["mask"].dtype == bool
            assert not batch["source"][~batch["mask"]].any()
            for row in np.flatnonzero(batch["mask"]):
                rows[int(batch["index"][row])].append({k: batch[k][row] for k in batch})
    assert sorted(rows) == list(range(2000)) and all(len(v) == 1 for v in rows.values())
    cut = 0
    for index, [row] in rows.items():
        source, target = tok.encode(sources[index])[:7], tok.encode(targets[index])[:7]
        cut += len(tok.encode(sources[index])) > 7
        np.testing.assert_array_equal(row["source"], np.pad([*source, EOS], (0, 7 - len(source))))
        np.testing.assert_array_equal(
            row["target_in"], np.pad([BOS, *target], (0, 7 - len(target)))
        )
        np.testing.assert_array_equal(
            row["target_out"], np.pad([*target, EOS], (0, 7 - len(target)))
        )
    assert cut > 1000  # most English numbers are longer than 7 pieces
    order = [int(i) for b in shards[0] for i, m in zip(b["index"], b["mask"]) if m]
    assert order == sorted(order)


# -------------------------------------------------------------------------------------------------
# One-line errors, raised by info before anything runs.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(target_lang="xx"), ConfigError, "number_words pairs English"),
        (dict(tokenizer="char"), ConfigError, "needs data.tokenizer='sentencepiece'"),
        (dict(target_lang="en"), ConfigError, "both 'en'"),
        (
            dict(name="wmt14_translate/de-en", mock=True, source_lang="fr"),
            ConfigError,
            r"\['de', 'en'\]",
        ),
        (
            dict(name="wmt14_translate", mock=True),
            ConfigError,
            "name a config: wmt14_translate/de-en",
        ),
        (
            dict(name="", path="missing.tsv"),
            DatasetUnavailable,
            "data.path='missing.tsv' cannot be read",
        ),
        (
            dict(tokenizer_model="missing.model"),
            DatasetUnavailable,
            "tokenizer_model='missing.model'",
        ),
        (dict(tokenizer_vocab_size=5), ConfigError, "Vocabulary size is smaller"),
        (dict(seq_len=1), ConfigError, "no training pair"),
        (dict(eval_split="valid"), ConfigError, "split 'valid'"),
    ],
)
def test_config_errors_are_one_line(data_dir, overrides, error, match):
    with pytest.raises(error, match=match) as caught:
        data.info(make_config(data_dir, **overrides))
    assert "\n" not in str(caught.value)


def test_bad_files_are_one_line_errors(tmp_path):
    def info_error(path: str, target_path: str = "") -> str:
        config = make_config(str(tmp_path / "tfds"), name="", path=path, target_path=target_path)
        with pytest.raises((ConfigError, DatasetUnavailable)) as caught:
            data.info(config)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    tsv = tmp_path / "bad.tsv"
    tsv.write_text("a\tb\nc\td\nno tab here\n")
    assert "line 3 of data.path" in info_error(str(tsv))
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("a\nb\nc\nd\n")
    two.write_text("a\nb\nc\n")
    assert "has 4 lines but data.target_path" in info_error(str(one), str(two))
    assert "data.target_path=" in info_error(str(one), str(tmp_path / "missing.txt"))
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes("caf\xe9\tcafé\n".encode("latin-1") * 3)
    assert "is not UTF-8" in info_error(str(latin))
    short = tmp_path / "short.tsv"
    short.write_text("a\tb\n")
    assert "at least 3" in info_error(str(short))
    assert not (tmp_path / "tfds").exists()  # nothing was written for any of them
