"""research.data: the digits builder, grain pipelines and augmentation, on real and mocked data.

Every test reads from a temporary TFDS data dir, never ~/tensorflow_datasets, and needs no network.
"""

import json

import ml_collections
import numpy as np
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds
from sklearn.model_selection import train_test_split

import research.data as data
from research.config import defaults
from research.data import augment, sources

NO_AUGMENT = dict(crop_padding=0, flip=False, rotate_deg=0.0, scale=0.0, translate=0.0)
ALL_AUGMENT = dict(crop_padding=1, flip=True, rotate_deg=15.0, scale=0.1, translate=0.1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def make_config(data_dir: str, name: str = "digits", **overrides) -> ml_collections.ConfigDict:
    """A data config as an experiment file would write it; raw pixel values unless overridden."""
    config = defaults().data
    config.update(dict(name=name, data_dir=data_dir, image_scale=1.0, augment=dict(NO_AUGMENT)))
    config.update(overrides)
    return config


def take(iterator, num_batches: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(num_batches)]


def example_keys(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Sortable identities of examples, to compare collections of them regardless of order."""
    return sorted(
        image.astype(np.float32).tobytes() + np.int32(label).tobytes()
        for image, label in zip(images, labels)
    )


def sklearn_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digits = sklearn.datasets.load_digits()
    train, test = train_test_split(
        np.arange(len(digits.target)), test_size=360, random_state=0, stratify=digits.target
    )
    images = digits.images[..., None]
    return {
        "train": (images[train], digits.target[train]),
        "test": (images[test], digits.target[test]),
    }


# ---------------------------------------------------------------------------------------------
# The digits builder.
# ---------------------------------------------------------------------------------------------


def test_digits_builder_prepares_the_sklearn_split_and_data_source_reads_it(data_dir):
    expected = sklearn_split()
    for split, num_examples in [("train", 1437), ("test", 360)]:
        source = sources.open_split(make_config(data_dir), split)
        assert len(source) == num_examples
        example = source[0]
        assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8
        examples = [source[i] for i in range(len(source))]
        images = np.stack([e["image"] for e in examples])
        labels = np.array([e["label"] for e in examples])
        assert images.max() == 16
        np.testing.assert_array_equal(np.bincount(labels), np.bincount(expected[split][1]))
        # Not just the label counts: exactly scikit-learn's examples.
        assert example_keys(images, labels) == example_keys(*expected[split])
    assert (tmp := tfds.builder("digits", data_dir=data_dir)).is_prepared()
    assert tmp.info.file_format.value == "array_record"


def test_info_describes_digits(data_dir):
    info = data.info(make_config(data_dir))
    assert info == data.DatasetInfo(
        num_classes=10,
        class_names=[str(d) for d in range(10)],
        input_shape=(8, 8, 1),
        num_train=1437,
    )
    assert data.info(make_config(data_dir, train_split="train[:1000]")).num_train == 1000


# ---------------------------------------------------------------------------------------------
# Training stream: determinism, reshuffling, resumption, sharding.
# ---------------------------------------------------------------------------------------------


def train_batches(config, num_batches: int, *, batch_size: int = 32, seed: int = 0, **process):
    process = process or dict(process_index=0, process_count=1)
    iterator = data.train_iterator(config, global_batch_size=batch_size, seed=seed, **process)
    return take(iterator, num_batches)


def test_train_batches_have_the_promised_shapes_and_scale(data_dir):
    config = make_config(data_dir, image_scale=1 / 16, mean=(0.5,), std=(0.25,))
    batch = train_batches(config, 1, batch_size=64, process_index=1, process_count=2)[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    # Raw 0..16 -> 0..1 -> (x - 0.5) / 0.25.
    assert batch["image"].min() == -2.0 and batch["image"].max() == 2.0


def test_same_seed_same_batches_different_seed_different_batches(data_dir):
    config = make_config(data_dir, augment=ALL_AUGMENT)
    first, again = train_batches(config, 3, seed=7), train_batches(config, 3, seed=7)
    other = train_batches(config, 3, seed=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_every_epoch_is_a_new_permutation_of_the_training_set(data_dir):
    config = make_config(data_dir)
    epochs = train_batches(config, 3, batch_size=1437)  # One batch per epoch.
    images, labels = sklearn_split()["train"]
    for epoch in epochs:
        assert example_keys(epoch["image"], epoch["label"]) == example_keys(images, labels)
    assert not np.array_equal(epochs[0]["label"], epochs[1]["label"])
    assert not np.array_equal(epochs[1]["label"], epochs[2]["label"])
    # grain's shuffle(seed) uses seed + epoch; seed 1's epoch 0 must not replay seed 0's epoch 1.
    seed_one = train_batches(config, 1, batch_size=1437, seed=1)[0]
    assert not np.array_equal(seed_one["label"], epochs[1]["label"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_resuming_from_get_state_replays_the_uninterrupted_stream_bitwise(data_dir, process_count):
    config = make_config(data_dir, image_scale=1 / 16, augment=ALL_AUGMENT)
    kwargs = dict(global_batch_size=64, seed=3, process_index=process_count - 1)
    kwargs["process_count"] = process_count
    uninterrupted = take(data.train_iterator(config, **kwargs), 12)

    interrupted = data.train_iterator(config, **kwargs)
    take(interrupted, 5)
    state = json.loads(json.dumps(interrupted.get_state()))  # As a checkpoint would store it.
    resumed = data.train_iterator(config, **kwargs)
    resumed.set_state(state)
    for expected, actual in zip(uninterrupted[5:], take(resumed, 7)):
        np.testing.assert_array_equal(expected["image"], actual["image"])
        np.testing.assert_array_equal(expected["label"], actual["label"])


def test_worker_processes_give_the_in_process_batches_and_states_cross_over(data_dir):
    """data.workers=2 (research/data/workers.py) resumes an in-process state and yields the
    in-process stream from there, batch for batch; its own state resumes in-process, bitwise.
    One start of the workers: each imports research.data, seconds on a loaded machine."""
    config = make_config(data_dir, image_scale=1 / 16, augment=ALL_AUGMENT)
    kwargs = dict(global_batch_size=16, seed=3, process_index=0, process_count=1)
    in_process = take(data.train_iterator(config, **kwargs), 6)

    config.workers = 2
    with_workers = data.train_iterator(config, **kwargs)
    with_workers.set_state({"next_index": 1})  # As a checkpoint of an in-process run holds it.
    try:
        got = take(with_workers, 3)
        saved = json.loads(json.dumps(with_workers.get_state()))
    finally:
        with_workers.close()
    assert saved == {"next_index": 4}  # The in-process iterator's state, whatever the workers.
    config.workers = 0
    resumed = data.train_iterator(config, **kwargs)
    resumed.set_state(saved)
    got += take(resumed, 2)
    for expected, actual in zip(in_process[1:], got, strict=True):
        np.testing.assert_array_equal(expected["image"], actual["image"])
        np.testing.assert_array_equal(expected["label"], actual["label"])


def test_process_shards_are_disjoint_cover_the_data_and_union_to_the_global_batch(data_dir):
    # With augmentation on: each example's augmentation depends on its place in the global stream,
    # not on how many processes share it.
    config = make_config(data_dir, augment=ALL_AUGMENT)
    (whole,) = train_batches(config, 1, batch_size=1437)
    shards = [
        train_batches(config, 1, batch_size=1437, process_index=p, process_count=3)[0]
        for p in range(3)
    ]
    assert all(len(shard["label"]) == 479 for shard in shards)
    images = np.concatenate([shard["image"] for shard in shards])
    labels = np.concatenate([shard["label"] for shard in shards])
    assert example_keys(images, labels) == example_keys(whole["image"], whole["label"])

    # Without augmentation the epoch's three shards are exactly the training set.
    config = make_config(data_dir)
    plain = [
        train_batches(config, 1, batch_size=1437, process_index=p, process_count=3)[0]
        for p in range(3)
    ]
    images = np.concatenate([shard["image"] for shard in plain])
    labels = np.concatenate([shard["label"] for shard in plain])
    assert example_keys(images, labels) == example_keys(*sklearn_split()["train"])


# ---------------------------------------------------------------------------------------------
# Evaluation batches.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_the_split_once_unaugmented_with_padding_masked(data_dir, process_count):
    config = make_config(data_dir, augment=ALL_AUGMENT)  # Augmentation must not apply to evals.
    per_process = [
        list(
            data.eval_batches(
                config,
                "test",
                global_batch_size=128,
                process_index=p,
                process_count=process_count,
            )
        )
        for p in range(process_count)
    ]
    batch_size = 128 // process_count
    assert all(len(batches) == 3 for batches in per_process)  # ceil(360 / 128), on every process.
    images, labels = [], []
    for batches in per_process:
        for index, batch in enumerate(batches):
            assert batch["image"].shape == (batch_size, 8, 8, 1)
            assert batch["mask"].dtype == bool and batch["mask"].shape == (batch_size,)
            if index < len(batches) - 1:
                assert batch["mask"].all()  # Padding only in the last batch.
            images.append(batch["image"][batch["mask"]])
            labels.append(batch["label"][batch["mask"]])
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(labels) == 360
    assert example_keys(images, labels) == example_keys(*sklearn_split()["test"])


# ---------------------------------------------------------------------------------------------
# Augmentation.
# ---------------------------------------------------------------------------------------------


def test_flip_is_an_exact_left_right_reversal_half_the_time():
    image = np.random.default_rng(0).random((5, 6, 3), dtype=np.float32)
    flipped = 0
    for seed in range(100):
        out = augment.random_flip(image, np.random.default_rng(seed))
        if np.array_equal(out, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 30 < flipped < 70


def test_crop_is_the_identity_without_padding_and_a_padded_window_with_it():
    image = np.random.default_rng(0).random((6, 7, 2), dtype=np.float32)
    np.testing.assert_array_equal(augment.random_crop(image, np.random.default_rng(0), 0), image)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    windows = {
        (top, left): padded[top : top + 6, left : left + 7] for top in range(9) for left in range(9)
    }
    for seed in range(20):
        out = augment.random_crop(image, np.random.default_rng(seed), 4)
        assert any(np.array_equal(out, window) for window in windows.values())


def test_all_augmentation_off_is_the_identity():
    image = np.random.default_rng(0).random((8, 8, 1), dtype=np.float32)
    for config in (None, {}, NO_AUGMENT):
        out = augment.from_config(config)(image, np.random.default_rng(0))
        np.testing.assert_array_equal(out, image)


def test_affine_moves_pixels_but_keeps_shape_and_dtype():
    image = np.zeros((9, 9, 1), np.float32)
    image[4, :] = 1.0  # A horizontal bar through the centre.
    out = augment.random_affine(image, np.random.default_rng(0), rotate_deg=90.0)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.allclose(out, image)
    with pytest.raises(ValueError, match="unknown data.augment"):
        augment.from_config(dict(cutout=4))


# ---------------------------------------------------------------------------------------------
# Mock data and errors a user can cause.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shape"), [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_mock_datasets_run_the_real_pipeline_offline(data_dir, name, shape):
    config = make_config(
        data_dir,
        name=name,
        train_split="train[:45000]",
        image_scale=1 / 255,
        augment=dict(NO_AUGMENT, crop_padding=4, flip=True),
        mock=True,
    )
    info = data.info(config)
    assert info.input_shape == shape and info.num_classes == 10
    assert info.num_train == sources.MOCK_NUM_EXAMPLES
    batch = train_batches(config, 1, batch_size=16)[0]
    assert batch["image"].shape == (16, *shape) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert set(np.unique(batch["label"])) <= set(range(10))
    evals = list(
        data.eval_batches(config, "test", global_batch_size=100, process_index=0, process_count=1)
    )
    assert len(evals) == 6 and evals[-1]["mask"].sum() == sources.MOCK_NUM_EXAMPLES - 500


def test_unpreparable_dataset_raises_one_line_saying_what_to_do(data_dir, monkeypatch):
    def no_tensorflow(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    # What preparing CIFAR-10 does on a machine without TensorFlow, minus the download attempt.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_tensorflow)
    with pytest.raises(data.DatasetUnavailable) as error:
        data.info(make_config(data_dir, name="cifar10"))
    message = str(error.value)
    assert "\n" not in message
    assert "pip install tensorflow-cpu" in message and "--file_format=array_record" in message


def test_bad_batch_size_and_normalisation_are_reported(data_dir):
    with pytest.raises(ValueError, match="not divisible"):
        train_batches(make_config(data_dir), 1, batch_size=33, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="one value per channel"):
        train_batches(make_config(data_dir, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)), 1)
