"""Labelled text for sequence classification: single sentences or sentence pairs, BERT's input.

`data.kind = "text_classification"`. Sources:

* a TFDS dataset `data.name` whose examples hold the text features `data.text_features` and an
  integer "label" (a ClassLabel), e.g. "glue/sst2" with ("sentence",), "glue/mnli" with
  ("premise", "hypothesis"); TFDS downloads it on first use (network and TensorFlow);
* `data.name = "speakers"` with `data.path = FILE`: speaker attribution in a play
  (research/data/speakers.py), text feature ("text",), no download;
* `data.mock`: `data.name` through tfds.testing.mock_data (random strings and labels).

Tokenization (Devlin et al. 2019, Section 3 and Figure 2): WordPiece, read from
`data.tokenizer_model` (a vocab.txt: fine-tuning must use its pre-training run's vocabulary) or
trained on the train split's texts. One text is [CLS] a [SEP] with segment ids 0; a pair is
[CLS] a [SEP] b [SEP] with segment ids 0 up to the first [SEP] and 1 after. Texts longer than
`data.seq_len` lose tokens from the end of the longer of the two, one at a time (the original's
`_truncate_seq_pair`); shorter ones are padded with [PAD] (id pad_id), which the model masks.

Batches: {"tokens", "segments": int32 [b, T], "label": int32 [b]}, plus "mask": bool [b] in
evaluation. Training shuffles every epoch and repeats forever, as the image pipeline (pipeline.py):
batch k is a function of (seed, k), so resume is exact.
"""

import functools
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

# TFDS registers its GLUE builder only when this module is imported (it is not in the package's
# lazy catalog): without it "glue/sst2" would be an unknown dataset.
import tensorflow_datasets.text.glue  # noqa: F401

from research.data import masked_text, pipeline, sources, speakers, text_file, tokenizers
from research.errors import ConfigError, DatasetUnavailable


def encode_pair(
    a: list[int], b: list[int] | None, tok: tokenizers.WordPieceTokenizer, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segments) int32 [seq_len] of one text (b None) or a pair, truncated and padded."""
    a, b = list(a), (list(b) if b is not None else None)
    room = seq_len - (3 if b is not None else 2)
    if room < 1:
        raise ConfigError(f"data.seq_len={seq_len} leaves no room for text between the markers")
    while len(a) + len(b or []) > room:  # Trim the longer side, from its end.
        (a if b is None or len(a) >= len(b) else b).pop()
    ids = [tok.cls_id, *a, tok.sep_id]
    segments = [0] * len(ids)
    if b is not None:
        ids += [*b, tok.sep_id]
        segments += [1] * (len(b) + 1)
    tokens = np.full(seq_len, tok.pad_id, np.int32)
    segment_ids = np.zeros(seq_len, np.int32)
    tokens[: len(ids)], segment_ids[: len(ids)] = ids, segments
    return tokens, segment_ids


def tokenizer(data_config: ml_collections.ConfigDict) -> tokenizers.WordPieceTokenizer:
    """`data.tokenizer_model`'s vocab.txt, or a vocabulary trained on the train split's texts."""
    path = data_config.tokenizer_model
    return _tokenizer(_key(data_config), path, masked_text.vocab_digest(path))


def info(data_config: ml_collections.ConfigDict) -> sources.DatasetInfo:
    """Classes and their names, the input shape (T,), the number of training examples."""
    tok = tokenizer(data_config)
    train = _encoded(data_config, data_config.train_split)
    return sources.DatasetInfo(
        num_classes=len(train.class_names),
        class_names=list(train.class_names),
        input_shape=(data_config.seq_len,),
        num_train=len(train.labels),
        workdir_files={"vocab.txt": tok.to_vocab()},
    )


def train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DatasetIterator:
    """This process's endless shuffled batches {"tokens", "segments", "label"}."""
    batch_size = pipeline.per_process_batch_size(global_batch_size, process_count)
    train = _encoded(data_config, data_config.train_split)
    ds = grain.MapDataset.source(train).seed(seed).shuffle().repeat()
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
    """This process's share of every example of `split` once, in order, padded, with "mask"."""
    examples = _encoded(data_config, split)
    seq_len = data_config.seq_len
    padding = {
        "tokens": np.zeros(seq_len, np.int32),
        "segments": np.zeros(seq_len, np.int32),
        "label": np.int32(0),
        "mask": np.False_,
    }

    def example_or_padding(index: int) -> dict[str, Any]:
        return padding if index >= len(examples) else {**examples[index], "mask": np.True_}

    ds = pipeline.padded_eval(
        len(examples),
        example_or_padding,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return ds.to_iter_dataset(pipeline.READ_OPTIONS)


# -------------------------------------------------------------------------------------------------
# Reading, tokenizing and encoding, cached per process.
# -------------------------------------------------------------------------------------------------


class Encoded(Sequence):
    """A split's examples encoded: tokens and segments [N, T], labels [N]; indexable by grain."""

    def __init__(self, tokens: np.ndarray, segments: np.ndarray, labels: np.ndarray, names):
        self.tokens, self.segments, self.labels, self.class_names = tokens, segments, labels, names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {
            "tokens": self.tokens[index],
            "segments": self.segments[index],
            "label": self.labels[index],
        }


def _key(data_config: ml_collections.ConfigDict) -> tuple:
    """What identifies the examples: the source, its text features, the train split."""
    path = data_config.path
    digest = ""
    if path and not data_config.mock:
        try:
            digest = text_file.content_digest(path)
        except OSError as e:
            raise DatasetUnavailable(
                f"data.path={path!r} cannot be read ({e.strerror}); give an existing text file"
            ) from None
    return (
        data_config.name,
        data_config.data_dir,
        data_config.mock,
        path,
        digest,
        tuple(data_config.text_features),
        data_config.train_split,
        data_config.tokenizer_vocab_size,
    )


@functools.lru_cache(maxsize=8)
def _read(key: tuple, split: str) -> tuple[list[tuple[str, ...]], np.ndarray, tuple[str, ...]]:
    """(texts per example, labels, class names) of `split`."""
    name, data_dir, mock, path, _, features, *_ = key
    if name == "speakers":  # A local file, or (mock) a generated play: never a download.
        path = None if mock else path
        if not (path or mock):
            raise ConfigError(
                "data.name='speakers' is made from a play's text: set --config.data.path=FILE "
                "(e.g. tinyshakespeare's input.txt)"
            )
        if features != ("text",):
            raise ConfigError(
                "data.name='speakers' has the one text feature: data.text_features=('text',)"
            )
        try:
            examples = speakers.labelled(path, split)
            names = tuple(speakers.play(path).names)
        except ValueError as e:
            raise ConfigError(f"data.name='speakers', data.path={path!r}: {e}") from None
        texts = [(e["text"],) for e in examples]
        return texts, np.array([e["label"] for e in examples], np.int32), names
    if not name:
        raise ConfigError(
            "text classification needs a source: data.name (a TFDS dataset such as glue/sst2), "
            "or data.name='speakers' with data.path=FILE"
        )
    config = ml_collections.ConfigDict(dict(name=name, data_dir=data_dir, mock=mock))
    source = sources.open_split(config, split)
    sources.require_features(source, (*features, "label"), "text_classification")
    label_feature = source.dataset_info.features["label"]
    names = tuple(getattr(label_feature, "names", None) or ())
    if not names:
        raise ConfigError(f"{name!r}'s label is not a class label; text_classification needs one")
    texts, labels = [], []
    for i in range(len(source)):
        example = source[i]
        texts.append(tuple(_str(example[f]) for f in features))
        labels.append(int(example["label"]))
    return texts, np.array(labels, np.int32), names


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=4)
def _tokenizer(key: tuple, vocab_path: str, vocab_digest: str) -> tokenizers.WordPieceTokenizer:
    del vocab_digest  # In the key only: an edited vocab.txt is read afresh.
    if vocab_path:
        return masked_text.read_vocab(vocab_path)
    texts, _, _ = _read(key, key[6])
    vocab_size = key[7]
    return tokenizers.WordPieceTokenizer.train((t for row in texts for t in row), vocab_size)


@functools.lru_cache(maxsize=8)
def _encoded_cached(key: tuple, vocab_path: str, vocab_digest: str, split: str, seq_len: int):
    tok = _tokenizer(key, vocab_path, vocab_digest)
    texts, labels, names = _read(key, split)
    if len(labels) == 0:
        raise ConfigError(f"split {split!r} of {key[0]!r} has no examples")
    columns = [tok.encode_all([row[j] for row in texts]) for j in range(len(texts[0]))]
    tokens = np.zeros((len(labels), seq_len), np.int32)
    segments = np.zeros((len(labels), seq_len), np.int32)
    for i in range(len(labels)):
        second = columns[1][i] if len(columns) > 1 else None
        tokens[i], segments[i] = encode_pair(columns[0][i], second, tok, seq_len)
    if labels.max() >= len(names) or labels.min() < 0:
        raise ConfigError(f"split {split!r} has labels outside the {len(names)} classes")
    return Encoded(tokens, segments, labels, names)


def _encoded(data_config: ml_collections.ConfigDict, split: str) -> Encoded:
    vocab_path = data_config.tokenizer_model
    digest = masked_text.vocab_digest(vocab_path)
    return _encoded_cached(_key(data_config), vocab_path, digest, split, data_config.seq_len)
