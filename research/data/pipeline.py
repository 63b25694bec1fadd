"""grain pipelines for image classification: an endless augmented train stream, padded evals.

Training, as one global stream that every process slices its share from:

    source -> shuffle (reseeded every epoch) -> repeat forever -> to float -> augment
           -> take elements process_index, process_index + process_count, ... -> batch -> normalise

Every stage is a `grain.MapDataset`, i.e. a pure function of the element's position, so

* batch k is fixed by (seed, k) alone, and an iterator's state is one integer: `get_state()`
  gives {"next_index": k}; `set_state` on a fresh iterator resumes bit-for-bit;
* augmentation draws from a generator seeded by (seed, position in the global stream), so the
  union of all processes' batch k is the same set of augmented examples whatever process_count;
* epochs reshuffle because grain folds the epoch number into the shuffle seed; batches run on
  across epoch boundaries, so no example is dropped for good.

Pixels are multiplied by `data.image_scale` (1/255 for uint8 images, 1/16 for digits), then
normalised per channel with `data.mean` / `data.std` (empty: no normalisation). Augmentation
(research/data/augment.py) runs before that, on raw pixel values, so padding and fill are black.
Images come out `data.image_size` square (0: the source's own fixed size): a random resized crop
makes them so in training, `augment.fit_to_size` (resize, central crop) otherwise and always at
evaluation; sources of varying size (imagenet2012) need data.image_size.

Mixup and cutmix (`augment.batch_mixer`) mix each of this process's batches after batching, from
a generator seeded by (seed, batch index), and add "label_probs" [b, classes]. They pair examples
within a process's batch, so with them on, batch k is a function of (seed, k, process_count).

With data.workers = N > 0 every stage above runs in N grain worker processes, each computing
whole batches (research/data/workers.py); the batches and the iterator's state are the same.

Evaluation visits every example of a split once, in source order, across all processes; every
process yields the same number of batches (collectives stay in step), the last ones padded with
`mask=False` examples.
"""

import math
from collections.abc import Callable
from typing import Any

import grain
import ml_collections
import numpy as np

from research.data import augment, sources, workers
from research.errors import ConfigError

Batch = dict[str, np.ndarray]

# Background threads compute whole batches while the trainer's step runs (XLA releases the GIL):
# with a 20 ms step, digits/cifar10 batches of 128 went from 55/67 ms per step without prefetch
# to 21/24 ms with it (2 CPU cores). Two batches in flight bound memory; grain's default buffer
# of 500 batches would be 1.5 GB of CIFAR-10 batches.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DatasetIterator | workers.WorkerIterator:
    """This process's endless shuffled augmented batches {"image": f32 [b,H,W,C], "label": i32 [b]},
    plus "label_probs": f32 [b, classes] with mixup or cutmix on.

    b = global_batch_size // process_count. Resume with `set_state(get_state())` (see above).
    """
    batch_size = per_process_batch_size(global_batch_size, process_count)
    source = sources.open_split(data_config, data_config.train_split)
    channels = sources.image_shape(source, data_config.image_size)[-1]
    normalize = _normalizer(data_config, channels=channels)
    augment_fn = augment.from_config(data_config.augment, data_config.image_size)
    num_classes = source.dataset_info.features["label"].num_classes
    mix = augment.batch_mixer(data_config.augment, num_classes)

    def augment_example(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**example, "image": augment_fn(example["image"], rng)}

    # `.seed` derives independent seeds for shuffle and augmentation; shuffle(seed) itself would
    # reuse seed + epoch, making run seed=1 replay run seed=0's orders one epoch behind.
    ds = grain.MapDataset.source(sources.in_memory(source)).seed(seed).shuffle().repeat()
    ds = ds.map(_to_float).random_map(augment_example)
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True)
    if mix is not None:  # Mixup / cutmix, from a generator seeded by (seed, batch index).
        ds = ds.random_map(mix)
    ds = ds.map(normalize)
    if data_config.workers:  # Everything above runs in worker processes (research/data/workers.py).
        return workers.WorkerIterator(ds, data_config.workers, READ_OPTIONS)
    return iter(ds.to_iter_dataset(READ_OPTIONS))


def eval_batches(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """This process's share of `split`, unaugmented and in fixed order, in padded batches.

    Batches are {"image", "label", "mask": bool [b]}; iterate the result again for another pass.
    """
    source = sources.open_split(data_config, split)
    image_shape = sources.image_shape(source, data_config.image_size)
    normalize = _normalizer(data_config, channels=image_shape[-1])
    source = sources.in_memory(source)
    num_examples = len(source)
    padding = {
        "image": np.zeros(image_shape, np.float32),
        "label": np.int32(0),
        "mask": np.False_,
    }

    def example_or_padding(index: int) -> dict[str, Any]:
        if index >= num_examples:
            return padding
        example = _to_float(source[index])
        image = augment.fit_to_size(example["image"], data_config.image_size)
        return {**example, "image": image, "mask": np.True_}

    ds = padded_eval(
        num_examples,
        example_or_padding,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return ds.map(normalize).to_iter_dataset(READ_OPTIONS)


def _to_float(example: dict[str, Any]) -> dict[str, Any]:
    # Drop the features a classifier does not use (cifar10's "id", ...).
    return {
        "image": np.asarray(example["image"], np.float32),
        "label": np.int32(example["label"]),
    }


def _normalizer(data_config: ml_collections.ConfigDict, channels: int) -> Callable[[Batch], Batch]:
    """Batch -> batch with pixels scaled by data.image_scale, then standardised by data.mean/std."""
    scale = np.float32(data_config.image_scale)
    mean = np.asarray(data_config.mean or (0.0,) * channels, np.float32)
    std = np.asarray(data_config.std or (1.0,) * channels, np.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ConfigError(
            f"data.mean={tuple(mean)} and data.std={tuple(std)} need one value per channel "
            f"({channels}) for {data_config.name!r}, or () for none"
        )

    def normalize(batch: Batch) -> Batch:
        return {**batch, "image": (batch["image"] * scale - mean) / std}

    return normalize


def padded_eval(
    num_examples: int,
    example_or_padding: Callable[[int], dict[str, Any]],
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """This process's batches of examples 0 .. num_examples - 1, each once, in order, for every
    kind of data's evaluation: the global stream is padded to whole global batches (indices past
    the end are the caller's padding, mask=False), so every process yields the same number of
    batches and collectives stay in step."""
    batch_size = per_process_batch_size(global_batch_size, process_count)
    num_batches = math.ceil(num_examples / global_batch_size)
    ds = grain.MapDataset.range(num_batches * global_batch_size)
    return ds[process_index::process_count].map(example_or_padding).batch(batch_size)


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {process_count} processes"
        )
    return global_batch_size // process_count
