"""Masked-LM pre-training data: WordPiece windows of a text, masked as BERT masks them.

`data.kind = "masked_text"`. The text is read as research/data/text.py reads it (`data.path`, a
TFDS dataset with a "text" feature, or `data.name = "speakers"` with data.path), tokenized with
WordPiece (research/data/tokenizers.py): trained on the train split at first use with
`data.tokenizer_vocab_size` pieces and kept in the run's workdir as vocab.txt, or read from
`data.tokenizer_model` (a vocab.txt, e.g. another run's, or Google's).

An example is [CLS] + T - 2 contiguous tokens + [SEP] (T = data.seq_len); training windows start
anywhere, uniformly (as text.py's), evaluation takes every non-overlapping window once. Masking
(Devlin et al. 2019, Section 3.1 and Appendix A.1): of the positions that are not [CLS], [SEP] or
[PAD], round(15%) are selected at random (the original's create_pretraining_data.py); a selected token becomes [MASK] with probability 0.8, a
random non-special token with probability 0.1, and stays itself with probability 0.1; the loss
is computed on the selected positions only. A training example is drawn and masked by a generator
seeded by (seed, its position in the stream), so the masks are new at every step (dynamic
masking, as RoBERTa, Liu et al. 2019) and batch k is a function of (seed, k) alone: resume is
exact. Evaluation windows are masked by a generator seeded by their index: the same masks at
every evaluation and in every run, so evaluations compare.

Batches, as the original's masked_lm_positions / _ids / _weights: {"tokens": the masked input int32
[b, T], "segments": int32 [b, T] (zeros), "positions": the selected positions int32 [b, P] (P =
`max_predictions(T)`, ascending), "targets": their original ids [b, P], "weights": float32 [b, P]
(0 for unused slots)}, plus "mask": bool [b] in evaluation.
"""

import functools
import sys
from pathlib import Path

import grain
import ml_collections
import numpy as np

from research.data import pipeline, sources, text, text_file, tokenizers
from research.errors import ConfigError, DatasetUnavailable

SELECT_RATE = 0.15  # Section 3.1: "mask 15% of all WordPiece tokens in each sequence at random"
MASK_PROB, RANDOM_PROB = 0.8, 0.1  # of the selected; the remaining 0.1 keep their token
EVAL_SEED = 0  # Evaluation masks: fixed, the same in every run.


def max_predictions(seq_len: int) -> int:
    """P, the predictions per window: 15% of the T - 2 tokens between [CLS] and [SEP]."""
    return max(1, round(SELECT_RATE * (seq_len - 2)))


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    special_ids: np.ndarray,
    mask_id: int,
    vocab_size: int,
    num_predictions: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked ids [T], selected positions [P], weights [P]) for one sequence `ids` [T].

    Positions holding a special id are never selected; round(15%) of the others are (at least
    one, at most P = num_predictions), in increasing order, the rest of the P slots padded with
    position 0 and weight 0. Random replacements are drawn from the non-special ids.
    """
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    positions = np.zeros(num_predictions, np.int32)
    weights = np.zeros(num_predictions, np.float32)
    if len(candidates) == 0:
        return ids.copy(), positions, weights
    count = min(num_predictions, max(1, int(round(SELECT_RATE * len(candidates)))))
    selected = np.sort(rng.choice(candidates, size=count, replace=False))
    positions[:count], weights[:count] = selected, 1.0
    draw = rng.random(count)
    masked = ids.copy()
    masked[selected[draw < MASK_PROB]] = mask_id
    randomized = selected[(draw >= MASK_PROB) & (draw < MASK_PROB + RANDOM_PROB)]
    ordinary = np.setdiff1d(np.arange(vocab_size), special_ids)
    masked[randomized] = rng.choice(ordinary, size=len(randomized))
    return masked, positions, weights


def tokenizer(data_config: ml_collections.ConfigDict) -> tokenizers.WordPieceTokenizer:
    """`data.tokenizer_model`'s vocab.txt, or a vocabulary trained on the train split's text."""
    return _tokenizer(*_tokenizer_key(data_config))


def info(data_config: ml_collections.ConfigDict) -> sources.DatasetInfo:
    """Vocabulary size (as num_classes), the window shape (T,), the number of train tokens."""
    tok = tokenizer(data_config)
    train = _windowable(data_config, data_config.train_split)
    return sources.DatasetInfo(
        num_classes=tok.vocab_size,
        class_names=[],
        input_shape=(data_config.seq_len,),
        num_train=len(train),
        workdir_files={"vocab.txt": tok.to_vocab()},  # Fine-tuning reads it (tokenizer_model).
    )


def train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DatasetIterator:
    """This process's endless masked random windows; resumable with get_state()/set_state()."""
    batch_size = pipeline.per_process_batch_size(global_batch_size, process_count)
    body = data_config.seq_len - 2  # room for [CLS] and [SEP]
    tokens = _windowable(data_config, data_config.train_split)
    make = _example_maker(tokenizer(data_config), data_config.seq_len)
    num_starts = len(tokens) - body + 1

    def random_window(index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del index  # The position seeds `rng`; the window and its mask are all that depend on it.
        start = rng.integers(num_starts)
        return make(tokens[start : start + body], rng)

    ds = grain.MapDataset.range(sys.maxsize).seed(seed).random_map(random_window)
    ds = ds[process_index::process_count].batch(batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset(pipeline.READ_OPTIONS))


def eval_batches(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """This process's share of every non-overlapping window of `split`, masked the same way at
    every evaluation, in padded batches with "mask"."""
    seq_len = data_config.seq_len
    body = seq_len - 2
    tokens = _windowable(data_config, split)
    make = _example_maker(tokenizer(data_config), data_config.seq_len)
    num_windows = len(tokens) // body
    num_predictions = max_predictions(seq_len)
    padding = {
        "tokens": np.zeros(seq_len, np.int32),
        "segments": np.zeros(seq_len, np.int32),
        "positions": np.zeros(num_predictions, np.int32),
        "targets": np.zeros(num_predictions, np.int32),
        "weights": np.zeros(num_predictions, np.float32),
        "mask": np.False_,
    }

    def window_or_padding(index: int) -> dict[str, np.ndarray]:
        if index >= num_windows:
            return padding
        rng = np.random.default_rng((EVAL_SEED, index))
        window = tokens[index * body : (index + 1) * body]
        return {**make(window, rng), "mask": np.True_}

    ds = pipeline.padded_eval(
        num_windows,
        window_or_padding,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return ds.to_iter_dataset(pipeline.READ_OPTIONS)


def _example_maker(tok: tokenizers.WordPieceTokenizer, seq_len: int):
    """(window of ids, rng) -> one masked example [CLS] window [SEP]."""
    special = np.array([tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id], np.int32)
    num_predictions = max_predictions(seq_len)

    def make(window: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.concatenate([[tok.cls_id], window, [tok.sep_id]]).astype(np.int32)
        masked, positions, weights = mask_tokens(
            ids,
            rng,
            special_ids=special,
            mask_id=tok.mask_id,
            vocab_size=tok.vocab_size,
            num_predictions=num_predictions,
        )
        return {
            "tokens": masked,
            "segments": np.zeros_like(ids),
            "positions": positions,
            "targets": ids[positions],
            "weights": weights,
        }

    return make


# -------------------------------------------------------------------------------------------------
# Reading, tokenizer and token streams, cached per process.
# -------------------------------------------------------------------------------------------------


def vocab_digest(path: str) -> str:
    """The content hash of the vocab.txt at `path` ("" for none): part of every cache key, so
    an edited vocabulary is read afresh."""
    if not path:
        return ""
    try:
        return text_file.content_digest(path)
    except OSError as e:
        raise DatasetUnavailable(
            f"data.tokenizer_model={path!r} cannot be read ({e.strerror}); give a WordPiece "
            "vocab.txt (a finished run's workdir has one) or leave it empty to train one"
        ) from None


def read_vocab(path: str) -> tokenizers.WordPieceTokenizer:
    """The WordPiece tokenizer of the vocab.txt at `path`; a bad file is a config error."""
    try:
        return tokenizers.WordPieceTokenizer.from_vocab(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.tokenizer_model={path!r}: {e}") from None


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab: tuple[str, str], source_key: tuple, split: str, vocab_size: int):
    path, _ = vocab
    if path:
        return read_vocab(path)
    lines = text.text_of(source_key, split).splitlines()
    return tokenizers.WordPieceTokenizer.train(lines, vocab_size)


@functools.lru_cache(maxsize=8)
def _tokens(tokenizer_key: tuple, source_key: tuple, split: str) -> np.ndarray:
    tok = _tokenizer(*tokenizer_key)
    lines = text.text_of(source_key, split).splitlines()
    tokens = np.fromiter((i for ids in tok.encode_all(lines) for i in ids), dtype=np.int32)
    tokens.flags.writeable = False  # Shared by every caller of the cache.
    return tokens


def _tokenizer_key(data_config: ml_collections.ConfigDict) -> tuple:
    """What identifies the tokenizer: the vocab file's content, or the text it is trained on."""
    return (
        (data_config.tokenizer_model, vocab_digest(data_config.tokenizer_model)),
        text.source_key(data_config),
        data_config.train_split,
        data_config.tokenizer_vocab_size,
    )


def _windowable(data_config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """The split's WordPiece ids, checked to fill at least one window."""
    if data_config.seq_len < 3:
        raise ConfigError(
            f"data.seq_len={data_config.seq_len} leaves no room for text between [CLS] and [SEP]"
        )
    tokens = _tokens(_tokenizer_key(data_config), text.source_key(data_config), split)
    if len(tokens) < data_config.seq_len - 2:
        raise ConfigError(
            f"split {split!r} has {len(tokens)} WordPiece tokens, too few for one window of "
            f"data.seq_len={data_config.seq_len}; lower data.seq_len or use a longer text"
        )
    return tokens
