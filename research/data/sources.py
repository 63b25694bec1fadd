"""TFDS splits as random-access sources, through `tfds.data_source` (ArrayRecord, no TensorFlow).

`data.name` is a TFDS name. "digits" and "number_words" are our local builders
(research/data/digits.py, number_words.py), prepared on first use from what packages ship
(scikit-learn's digits, num2words); "image_folder" prepares the class-per-directory tree of images
at `data.path` (research/data/image_folder.py); every other name ("mnist", "cifar10", ...) is
TFDS's own.
Preparing those downloads the data and PNG-encodes images through TensorFlow, so on a machine
without it `open_split` raises `DatasetUnavailable` with the one command that fixes it. Reading a
prepared ArrayRecord dataset never needs TensorFlow (images are decoded with PIL).

`data.mock=True` swaps every read for `tfds.testing.mock_data`, which in this TFDS version patches
`DatasetBuilder.as_data_source` (hence `tfds.data_source`): the returned source has
`MOCK_NUM_EXAMPLES` random examples with the dataset's real feature shapes and dtypes, known
from the builder's code without any files. Every split, whatever its slice, gets the same examples.
The rest of the pipeline (grain, augmentation, batching) runs unchanged, so smoke tests of
"cifar10" exercise the real code path offline.
"""

import dataclasses
import difflib
import functools
import importlib.util
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

# Imported to register the "digits" and "number_words" builders with TFDS.
from research.data import digits, image_folder, number_words  # noqa: F401
from research.errors import ConfigError, DatasetUnavailable

MOCK_NUM_EXAMPLES = 512

# Builders prepared here from files a package ships (no download): available on any machine.
LOCAL_BUILDERS = ("digits", "number_words")
# The builder made from the files at data.path (prepared per tree, so not by name alone).
IMAGE_FOLDER = "image_folder"
# Where TFDS's own downloads come from; reaching it in a few seconds means the network works.
_PROBE_HOST, _PROBE_TIMEOUT_S = ("storage.googleapis.com", 443), 5.0

# Splits up to this size are decoded into memory once (CIFAR-10's train split is 150 MB, MNIST's
# 47 MB): reading and decoding one example from ArrayRecord costs ~50 us (more for PNG), several
# times everything else the pipeline does to it. Larger splits are read lazily.
IN_MEMORY_MAX_BYTES = 2 * 2**30

# ArrayRecord is the TFDS format with random access, which grain's global shuffle needs.
_BUILDER_KWARGS = dict(file_format="array_record")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset."""

    num_classes: int  # Classes, or the tokenizer's vocabulary size for text.
    class_names: list[str]
    input_shape: tuple[int, ...]  # One example: (height, width, channels), or (tokens,).
    num_train: int  # Examples (or tokens) in data.train_split.
    # Files the run keeps in its workdir to be usable later, e.g. {"tokenizer.json": ...}: str
    # values are written as text, bytes as they are ({"tokenizer.model": ...}).
    workdir_files: dict[str, str | bytes] = dataclasses.field(default_factory=dict)
    # Translation (research/data/translation.py), for the seq2seq task: token ids -> text (up to
    # the first EOS; pad and BOS skipped), and a split's raw (sources, targets) in split order.
    decode_text: Callable[[np.ndarray], str] | None = None
    texts: Callable[[str], tuple[list[str], list[str]]] | None = None


def open_split(data_config: ml_collections.ConfigDict, split: str) -> Sequence[dict[str, Any]]:
    """Random-access source of `split`, a TFDS split string such as "train[:90%]"."""
    name = data_config.name
    data_dir = data_config.data_dir or None  # None: TFDS's default, ~/tensorflow_datasets.
    if name == IMAGE_FOLDER:
        return _image_folder_split(data_config.path, data_dir, split)
    check_available(name, data_dir, mock=data_config.mock)
    if data_config.mock:
        # Mock data has no split metadata: every split name reads the same random examples, so
        # only the split's syntax can be checked.
        try:
            tfds.core.ReadInstruction.from_spec(split)
        except ValueError as e:
            _raise_if_bad_split(e, name, split)
        # USE_CODE: feature shapes from the builder's code; never look for metadata files.
        with tfds.testing.mock_data(
            num_examples=MOCK_NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE
        ):
            return tfds.data_source(name, split=split, builder_kwargs=_BUILDER_KWARGS)

    read = dict(split=split, data_dir=data_dir, builder_kwargs=_BUILDER_KWARGS)
    try:
        return tfds.data_source(
            name,
            download=True,  # a no-op once prepared
            # TFDS's hosted copies are TFRecord only, so asking for them costs a network round trip
            # (or a timeout offline) and never yields ArrayRecord.
            download_and_prepare_kwargs=dict(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            ),
            **read,
        )
    except Exception as prepare_error:
        _raise_if_bad_split(prepare_error, name, split)
        # Two processes preparing into one data_dir race to rename their temporary directories;
        # the loser's rename fails, but the winner's dataset is there to read.
        try:
            return tfds.data_source(name, download=False, **read)
        except Exception as read_error:
            _raise_if_bad_split(read_error, name, split)
            message = _unavailable_message(name, split, data_dir, prepare_error)
            raise DatasetUnavailable(message) from prepare_error


def _image_folder_split(root: str, data_dir: str | None, split: str) -> Sequence[dict[str, Any]]:
    """`split` of the image folder at `root`, prepared into data_dir on first use."""
    if not root:
        raise ConfigError(
            "data.name='image_folder' reads the images under data.path: set "
            "--config.data.path=ROOT (ROOT/train/<class>/*.jpg, ROOT/val/<class>/...)"
        )
    folder = image_folder.builder(root, data_dir)
    try:
        return folder.as_data_source(split)
    except Exception as e:
        _raise_if_bad_split(e, IMAGE_FOLDER, split)
        raise


def _raise_if_bad_split(error: Exception, name: str, split: str) -> None:
    """A split TFDS cannot parse or does not have is a config error, not missing data."""
    if isinstance(error, ValueError) and "split" in str(error).lower():
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"split {split!r} of {name!r}: {reason} (data.train_split, data.eval_split and "
            "data.test_split take TFDS split strings such as train[:90%])"
        ) from None


def check_available(name: str, data_dir: str | None, *, mock: bool = False) -> None:
    """Fail in seconds, in one line, if `name` cannot be read or prepared here.

    Unknown names are config errors. A dataset neither prepared in data_dir nor local needs
    TensorFlow (TFDS prepares through it) and the network; without either we say so at once,
    instead of letting the download retry for minutes.
    """
    if not name:
        raise ConfigError(
            "data.name is empty; name a TFDS dataset (e.g. mnist, cifar10) or digits (local)"
        )
    base = name.partition(":")[0].partition("/")[0]
    known = _catalog()
    if base not in known:
        close = difflib.get_close_matches(base, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"data.name={name!r} is not a TFDS dataset; {hint}"
            "`python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'` lists them"
        )
    if data_dir and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ConfigError(f"data.data_dir={data_dir!r} is a file; give a directory")
    if mock or base in LOCAL_BUILDERS:
        return
    prepared = tfds.builder(name, data_dir=data_dir, **_BUILDER_KWARGS).is_prepared()
    if prepared:
        return
    where = data_dir or tfds.core.constants.DATA_DIR
    if importlib.util.find_spec("tensorflow") is None:
        missing = "TensorFlow, which TFDS needs to prepare it, is not installed"
    elif not _online():
        missing = f"this machine cannot reach the network ({_PROBE_HOST[0]})"
    else:
        return  # Preparable: open_split downloads and prepares it.
    raise DatasetUnavailable(
        f"TFDS dataset {name!r} is not prepared in {where} and {missing}. Prepare it once on a "
        "machine with network access: `pip install tensorflow-cpu importlib_resources && tfds "
        f"build {base} --file_format=array_record --data_dir=DIR`, then set "
        "--config.data.data_dir=DIR (or --config.data.mock=true for a smoke test on random data)"
    )


@functools.cache
def _catalog() -> list[str]:
    return tfds.list_builders(with_community_datasets=False)


def _online() -> bool:
    """Whether a TCP connection to TFDS's download host opens within a few seconds."""
    result = []

    def probe() -> None:
        try:
            socket.create_connection(_PROBE_HOST, timeout=_PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            pass

    # A thread, because name resolution itself ignores socket timeouts.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 1)
    return bool(result)


class _NoNews(logging.Filter):
    """Drops TFDS notes that repeat on every run and tell the user nothing: that a mock or a
    not-yet-prepared dataset has no metadata, and that a local text file is a custom config."""

    MESSAGES = ("has no dataset_info.json", "Using custom data configuration")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.getMessage() for m in self.MESSAGES)


logging.getLogger("absl").addFilter(_NoNews())


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split decoded into memory: the same examples as its TFDS source, at numpy-indexing cost."""

    images: np.ndarray  # [N, H, W, C]
    labels: np.ndarray  # [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}


def in_memory(source: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """`source` decoded into an `ArraySource` if it fits IN_MEMORY_MAX_BYTES, else `source`."""
    image_feature = source.dataset_info.features["image"]
    if None in image_feature.shape:  # Images of varying size (imagenet2012) stay lazy.
        return source
    image_bytes = np.prod(image_feature.shape) * np.dtype(image_feature.np_dtype).itemsize
    if len(source) * image_bytes > IN_MEMORY_MAX_BYTES:
        return source
    images = np.empty((len(source), *image_feature.shape), image_feature.np_dtype)
    labels = np.empty((len(source),), np.int64)
    # One example at a time: tfds's mock sources do not implement batched reads (__getitems__).
    for index in range(len(source)):
        example = source[index]
        images[index], labels[index] = example["image"], example["label"]
    return ArraySource(images, labels)


def image_shape(source: Sequence[dict[str, Any]], size: int = 0) -> tuple[int, ...]:
    """(height, width, channels) of the pipeline's images from a source from `open_split`:
    (size, size, channels) for data.image_size = size > 0, else the source's fixed shape."""
    shape = tuple(source.dataset_info.features["image"].shape)
    if size:
        return (size, size, shape[-1])
    if None in shape:
        raise ConfigError(
            f"TFDS dataset {source.dataset_info.name!r} has images of varying size {shape}; "
            "set data.image_size (e.g. 224) to crop or resize them to one"
        )
    return shape


def require_features(source: Any, names: Sequence[str], kind: str) -> None:
    """Raise ConfigError if the dataset lacks the features that data.kind=`kind` reads."""
    have = set(source.dataset_info.features.keys())
    if not set(names) <= have:
        raise ConfigError(
            f"data.name={source.dataset_info.name!r} has features {sorted(have)}, but "
            f"data.kind={kind!r} reads {list(names)}; choose a dataset of that kind"
        )


def info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    """Classes, example shape and training-set size of the configured dataset."""
    train = open_split(data_config, data_config.train_split)
    require_features(train, ("image", "label"), "images")
    # The prepared dataset's own info: it carries the class names found while preparing
    # (TFDS's cifar10 code, for one, only knows them as "0".."9").
    label = train.dataset_info.features["label"]
    return DatasetInfo(
        num_classes=label.num_classes,
        class_names=list(label.names),
        input_shape=image_shape(train, data_config.image_size),
        num_train=len(train),
    )


def _unavailable_message(name: str, split: str, data_dir: str | None, error: Exception) -> str:
    where = data_dir or tfds.core.constants.DATA_DIR
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where} and could not be "
        f"prepared here ({type(error).__name__}: {reason}). Prepare it once on a machine with "
        "network access: `pip install tensorflow-cpu importlib_resources && tfds build "
        f"{name} --file_format=array_record --data_dir=DIR`, then set --config.data.data_dir=DIR "
        "(or --config.data.mock=true for a smoke test on random data)."
    )
