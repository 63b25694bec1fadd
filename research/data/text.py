"""Text for language models: token streams per split, nanoGPT's random training windows, and
evaluation over every window once. The same three calls as the image side (see __init__.py).

Sources (`data.kind = "text"`), each a TFDS dataset whose examples have a "text" feature; a
split's token stream is its examples' texts concatenated, then tokenized:

* `data.path` set: a local text file, prepared by the "text_file" builder (text_file.py) into
  `data.data_dir`, keyed by the file's content hash; split train/validation/test 90/5/5.
* otherwise the TFDS dataset `data.name`, e.g. "tiny_shakespeare" (same 90/5/5 layout; TFDS
  downloads it on first use, which needs network access and TensorFlow).
* `data.name = "speakers"` with `data.path`: the play at data.path without the speeches held out
  by the speaker-attribution task (research/data/speakers.py), so a model pre-trained on it has
  never read the task's validation or test speeches; splits train, validation, test.
* `data.mock`: `data.name` through `tfds.testing.mock_data`: 512 random strings over
  " abcdefghij" per split, for smoke tests offline.

Or, already tokenized: `data.name = "token_files"` with `data.path = DIR` reads each split as
DIR/<split>.bin, nanoGPT's uint16 token files, memory-mapped (research/data/token_files.py); the
ids are data.tokenizer's (gpt2) and nothing is tokenized here.

In both layouts "train" is nanoGPT's train split (the first int(0.9 * n) characters) and
"validation+test" (a TFDS split string) its val split, the last 10%.

`data.tokenizer` picks the tokenizer (research/data/tokenizers.py): "char" is fitted on the whole
text, all splits, as nanoGPT's prepare.py does (65 characters for tiny Shakespeare); "gpt2" is
GPT-2's fixed BPE. `data.seq_len` is the window length T.

Training batches are {"inputs": int32 [b, T], "targets": int32 [b, T]}, windows drawn as nanoGPT's
`get_batch` draws them: x = data[i:i+T], y = data[i+1:i+T+1], i uniform in [0, len - T),
independently for every row. Row k of the global stream takes i from a generator seeded by
(seed, k) (grain `random_map`), so batch k is a function of (seed, k) alone, the iterator state is
one integer, and `set_state(get_state())` resumes exactly (see pipeline.py).
"""

import functools
import sys
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from research.data import pipeline, sources, speakers, text_file, token_files, tokenizers
from research.errors import ConfigError, DatasetUnavailable


def tokenizer(data_config: ml_collections.ConfigDict) -> tokenizers.Tokenizer:
    """The configured tokenizer; "char" is fitted on the text of all splits together."""
    if data_config.name == token_files.NAME:  # Ids already: a fixed vocabulary, nothing to fit.
        token_files.vocabulary(data_config)  # Checks that data.tokenizer is one such files hold.
        return tokenizers.TOKENIZERS[data_config.tokenizer].fit("")
    return _tokenizer(source_key(data_config), data_config.tokenizer)


def split_tokens(data_config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """The token stream of `split` (a TFDS split string such as "validation+test"): int32, or
    for token files their uint16 memory map (windows are made int32)."""
    if data_config.name == token_files.NAME:
        return token_files.split_tokens(data_config, split)
    key = source_key(data_config)
    return _tokens(key, data_config.tokenizer, split)


def info(data_config: ml_collections.ConfigDict) -> sources.DatasetInfo:
    """Vocabulary size (as num_classes), window shape (T,) and the number of train tokens."""
    seq_len = _seq_len(data_config)
    if data_config.name == token_files.NAME:  # Without loading the tokenizer's files.
        vocab_size, files = token_files.vocabulary(data_config)
    else:
        tok = tokenizer(data_config)
        # research/sample.py decodes with the saved tokenizer.
        vocab_size, files = tok.vocab_size, {"tokenizer.json": tok.to_json()}
    train = _windowable(data_config, data_config.train_split)
    return sources.DatasetInfo(
        num_classes=vocab_size,
        class_names=[],
        input_shape=(seq_len,),
        num_train=len(train),
        workdir_files=files,
    )


def train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DatasetIterator:
    """This process's endless random windows {"inputs", "targets": int32 [b, T]}, b = global/count.

    Resume with `set_state(get_state())`; the union over processes of their batch k is the global
    batch k, whatever the process count.
    """
    batch_size = pipeline.per_process_batch_size(global_batch_size, process_count)
    seq_len = _seq_len(data_config)
    tokens = _windowable(data_config, data_config.train_split)
    num_starts = len(tokens) - seq_len  # nanoGPT: torch.randint(len(data) - block_size, ...)

    def random_window(index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del index  # The position seeds `rng`; the window is all that depends on it.
        i = rng.integers(num_starts)
        window = np.asarray(tokens[i : i + seq_len + 1], np.int32)  # A copy only from uint16.
        return {"inputs": window[:-1], "targets": window[1:]}

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
    """This process's share of every non-overlapping window of `split`, in order, padded.

    Window k is x = data[kT:(k+1)T], y = data[kT+1:(k+1)T+1], k = 0 .. (len - 1) // T - 1; the
    last (len - 1) % T targets (fewer than T) are not scored. Each window is in exactly one
    process's batches; every process yields the same number of batches, the last ones padded with
    mask=False rows. Batches are {"inputs", "targets": int32 [b, T], "mask": bool [b]}.

    nanoGPT instead averages the loss of 200 random training-style batches (`estimate_loss`,
    eval_iters=200). Both estimate the same quantity, the expected per-token loss over the split;
    this one is exact and deterministic, so evaluations are comparable across runs and steps.
    """
    seq_len = _seq_len(data_config)
    tokens = _windowable(data_config, split)
    num_windows = (len(tokens) - 1) // seq_len
    inputs = tokens[: num_windows * seq_len].reshape(num_windows, seq_len)
    targets = tokens[1 : num_windows * seq_len + 1].reshape(num_windows, seq_len)
    padding = {
        "inputs": np.zeros(seq_len, np.int32),
        "targets": np.zeros(seq_len, np.int32),
        "mask": np.False_,
    }

    def window_or_padding(index: int) -> dict[str, Any]:
        if index >= num_windows:
            return padding
        return {
            "inputs": np.asarray(inputs[index], np.int32),
            "targets": np.asarray(targets[index], np.int32),
            "mask": np.True_,
        }

    ds = pipeline.padded_eval(
        num_windows,
        window_or_padding,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return ds.to_iter_dataset(pipeline.READ_OPTIONS)


# -------------------------------------------------------------------------------------------------
# Reading and tokenizing, cached per process: info, the train stream and every evaluation share
# one read of each split. Keys hold the file's content hash, so an edited file is read afresh.
# -------------------------------------------------------------------------------------------------


def source_key(data_config: ml_collections.ConfigDict) -> tuple:
    """What identifies the text: (name, data_dir, mock, path, content digest)."""
    path, mock = data_config.path, data_config.mock
    digest = ""
    if path and not mock:
        try:
            digest = text_file.content_digest(path)
        except OSError as e:
            raise DatasetUnavailable(
                f"data.path={path!r} cannot be read ({e.strerror}); give an existing text file "
                "(a relative path is relative to the directory you launch from)"
            ) from None
    return (data_config.name, data_config.data_dir, mock, path, digest)


def _open(key: tuple, split: str) -> Sequence[dict[str, Any]]:
    name, data_dir, mock, path, _ = key
    if name == "speakers":  # A local file, or (mock) a generated play: never a download.
        if not (path or mock):
            raise ConfigError(
                "data.name='speakers' is made from a play's text: set --config.data.path=FILE "
                "(e.g. tinyshakespeare's input.txt)"
            )
        try:
            return speakers.text(None if mock else path, split)
        except ValueError as e:
            raise ConfigError(f"data.name='speakers', data.path={path!r}: {e}") from None
    if path and not mock:
        try:
            prepared = text_file.builder(path, data_dir or None)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DatasetUnavailable(
                f"could not prepare data.path={path!r} as a TFDS dataset ({type(e).__name__}: "
                f"{reason}); it must be a UTF-8 text file"
            ) from e
        return prepared.as_data_source(split)
    if not name:
        raise ConfigError(
            "text data needs a source: set data.path=FILE (a local text file) or data.name "
            "(a TFDS dataset with a 'text' feature, e.g. tiny_shakespeare)"
        )
    config = ml_collections.ConfigDict(dict(name=name, data_dir=data_dir, mock=mock))
    return sources.open_split(config, split)


@functools.lru_cache(maxsize=16)
def text_of(key: tuple, split: str) -> str:
    source = _open(key, split)
    if hasattr(source, "dataset_info"):
        sources.require_features(source, ("text",), "text")
    texts = [source[i]["text"] for i in range(len(source))]
    # Prepared TFDS datasets return UTF-8 bytes; tfds's mock data returns str.
    return "".join(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts)


@functools.lru_cache(maxsize=4)
def _tokenizer(key: tuple, kind: str) -> tokenizers.Tokenizer:
    if kind not in tokenizers.TOKENIZERS:
        raise ConfigError(
            f"data.tokenizer={kind!r} is unknown; choose one of {sorted(tokenizers.TOKENIZERS)}"
        )
    try:
        # TFDS's split "all" is every split of the dataset: the char vocabulary of the whole text.
        return tokenizers.TOKENIZERS[kind].fit(text_of(key, "all"))
    except RuntimeError as e:  # GPT-2's BPE files could not be fetched.
        raise DatasetUnavailable(str(e)) from None


@functools.lru_cache(maxsize=16)
def _tokens(key: tuple, kind: str, split: str) -> np.ndarray:
    tokens = _tokenizer(key, kind).encode(text_of(key, split))
    tokens.flags.writeable = False  # Shared by every caller of the cache.
    return tokens


def _seq_len(data_config: ml_collections.ConfigDict) -> int:
    return data_config.seq_len  # A positive integer (research/config.py rules()).


def _windowable(data_config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """split_tokens, checked to hold at least one window of seq_len + 1 tokens."""
    tokens = split_tokens(data_config, split)
    if len(tokens) <= data_config.seq_len:
        raise ConfigError(
            f"split {split!r} has {len(tokens)} tokens, too few for one window of "
            f"data.seq_len={data_config.seq_len} (+1 for the shifted targets); lower data.seq_len "
            "or use a longer text"
        )
    return tokens
