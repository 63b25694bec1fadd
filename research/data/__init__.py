"""Input side: TFDS sources (incl. local builders), grain pipelines, augmentation, tokenizers.

The trainer needs three calls (see pipeline.py, sources.py and text.py for what they guarantee):

    info = research.data.info(config.data)  # classes (vocabulary), input shape, train-set size
    train = research.data.train_iterator(config.data, global_batch_size=128, seed=0,
                                         process_index=0, process_count=1)
    evals = research.data.eval_batches(config.data, "test", global_batch_size=128,
                                       process_index=0, process_count=1)

`config.data.kind` picks who answers them, through KINDS:

    "images"  labelled images (pipeline.py, sources.py): {"image", "label"} batches
    "text"    token windows for language models (text.py): {"inputs", "targets"} batches, from
              text (tokenized here) or nanoGPT's token files (token_files.py)
    "translation"  sentence pairs (translation.py): {"source", "target_in", "target_out", ...}
    "masked_text"  masked WordPiece windows for BERT pre-training (masked_text.py):
                   {"tokens", "segments", "targets", "weights"}
    "text_classification"  labelled texts or text pairs (labelled_text.py):
                   {"tokens", "segments", "label"}
"""

import dataclasses
from collections.abc import Callable

import ml_collections

from research.data import (
    labelled_text,
    masked_text,
    pipeline,
    sources,
    text,
    token_files,
    translation,
)
from research.data.sources import DatasetInfo
from research.errors import ConfigError, DatasetUnavailable


@dataclasses.dataclass(frozen=True)
class Kind:
    """The three functions of one kind of data."""

    info: Callable[..., DatasetInfo]
    train_iterator: Callable
    eval_batches: Callable


KINDS: dict[str, Kind] = {
    "images": Kind(sources.info, pipeline.train_iterator, pipeline.eval_batches),
    "text": Kind(text.info, text.train_iterator, text.eval_batches),
    "translation": Kind(translation.info, translation.train_iterator, translation.eval_batches),
    "masked_text": Kind(masked_text.info, masked_text.train_iterator, masked_text.eval_batches),
    "text_classification": Kind(
        labelled_text.info, labelled_text.train_iterator, labelled_text.eval_batches
    ),
}


def _kind(data_config: ml_collections.ConfigDict) -> Kind:
    name = data_config.kind
    if name not in KINDS:
        raise ConfigError(f"data.kind={name!r} is unknown; choose one of {sorted(KINDS)}")
    return KINDS[name]


def available_offline(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the data needs no download: tfds mock data, or a builder prepared locally."""
    if data_config.name in ("speakers", sources.IMAGE_FOLDER, token_files.NAME):
        return data_config.mock or bool(data_config.path)  # Made from the files at data.path.
    return data_config.mock or data_config.name in sources.LOCAL_BUILDERS


def holds_token_ids(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the data is token ids already (token files): its tokenizer is never run."""
    return data_config.kind == "text" and data_config.name == token_files.NAME


def info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    """Classes (or vocabulary size), example shape and training-set size of the configured data."""
    return _kind(data_config).info(data_config)


def train_iterator(data_config: ml_collections.ConfigDict, **kwargs):
    """This process's endless training batches, resumable with get_state()/set_state().

    Keyword arguments: global_batch_size, seed, process_index, process_count.
    """
    return _kind(data_config).train_iterator(data_config, **kwargs)


def eval_batches(data_config: ml_collections.ConfigDict, split: str, **kwargs):
    """This process's share of every example of `split` once, in padded batches with "mask".

    Keyword arguments: global_batch_size, process_index, process_count.
    """
    return _kind(data_config).eval_batches(data_config, split, **kwargs)


__all__ = [
    "KINDS",
    "DatasetInfo",
    "DatasetUnavailable",
    "available_offline",
    "eval_batches",
    "holds_token_ids",
    "info",
    "train_iterator",
]
