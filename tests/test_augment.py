"""The augmentations of the ViT recipes (research/data/augment.py, randaugment.py): Inception-style
random resized crops, fitting to a size, mixup and cutmix with their soft labels, RandAugment;
each checked for its defining property, and the pipeline's determinism with all of them on."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research.data as data
from research import config as cfg
from research.data import augment, randaugment
from research.tasks import classification

ALL_NEW = dict(
    random_resized_crop=True,
    crop_area=(0.3, 1.0),
    flip=True,
    randaugment_layers=2,
    randaugment_magnitude=9,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
)


def uint8_image(shape, seed=0) -> np.ndarray:
    """Raw 8-bit pixel values as float32, as the pipeline hands them to augmentation."""
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


# --- random resized crop and fitting to a size --------------------------------------------------


def test_crop_boxes_keep_area_and_aspect_in_range():
    rng = np.random.default_rng(0)
    height, width = 900, 1200
    for _ in range(500):
        top, left, crop_h, crop_w = augment.sample_crop_box(
            height, width, rng, area=(0.08, 0.5), aspect=(3 / 4, 4 / 3)
        )
        assert 0 <= top <= height - crop_h and 0 <= left <= width - crop_w
        # Rounding the sides to whole pixels moves area and ratio by well under 1% here.
        assert 0.08 * 0.99 <= crop_h * crop_w / (height * width) <= 0.5 * 1.01
        assert 3 / 4 * 0.99 <= crop_w / crop_h <= 4 / 3 * 1.01


def test_random_resized_crop_has_the_output_size_and_is_the_identity_at_full_area():
    rng = np.random.default_rng(0)
    for shape in [(32, 32, 3), (47, 17, 3), (500, 375, 3), (8, 8, 1)]:
        out = augment.random_resized_crop(
            uint8_image(shape), rng, (24, 24), (0.05, 1.0), (0.75, 1.33)
        )
        assert out.shape == (24, 24, shape[-1]) and out.dtype == np.float32
    image = uint8_image((16, 16, 3))
    whole = augment.random_resized_crop(image, rng, (16, 16), (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_array_equal(whole, image)
    # Bilinear resizing with half-pixel centres: 2x2 -> 4x4 interpolates, edges clamped (TF).
    small = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[..., None]
    np.testing.assert_allclose(
        augment.resize_bilinear(small, 4, 4)[..., 0],
        [[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]],
    )


def test_fit_to_size_resizes_the_short_side_then_crops_the_centre():
    image = uint8_image((375, 500, 3))
    out = augment.fit_to_size(image, 224)
    assert out.shape == (224, 224, 3)
    already = uint8_image((32, 32, 3))
    assert (
        augment.fit_to_size(already, 32) is already and augment.fit_to_size(already, 0) is already
    )
    # A flat image stays flat; a left-right ramp stays a ramp around its centre.
    np.testing.assert_allclose(
        augment.fit_to_size(np.full((300, 400, 1), 7.0, np.float32), 64), 7.0
    )
    ramp = np.tile(np.arange(400, dtype=np.float32), (300, 1))[..., None]
    fitted = augment.fit_to_size(ramp, 56)[..., 0]
    # 400 x 300 -> 85 x 64 -> the central 56 x 56: centred to within half a resized pixel.
    assert np.all(np.diff(fitted, axis=1) > 0) and abs(fitted.mean() - 199.5) <= 400 / 85 / 2


# --- mixup and cutmix ---------------------------------------------------------------------------


def labelled_batch(size=8, classes=5):
    labels = np.arange(size) % classes  # neighbours always differ
    return {"image": uint8_image((size, 6, 6, 3), seed=4), "label": labels.astype(np.int32)}


def test_mixup_mixes_images_and_labels_with_one_weight():
    batch = labelled_batch()
    mix = augment.batch_mixer(dict(mixup_alpha=0.2), num_classes=5)
    for seed in range(20):
        out = mix(batch, np.random.default_rng(seed))
        probs = out["label_probs"]
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
        lam = probs[np.arange(8), batch["label"]]  # each example's own label's weight
        assert np.all(lam >= 0.5) and np.allclose(lam, lam[0])  # one lambda per batch, >= 1/2
        partner = np.roll(np.arange(8), 1)  # the previous example in the batch
        np.testing.assert_allclose(probs[np.arange(8), batch["label"][partner]], 1 - lam, atol=1e-6)
        expected = lam[0] * batch["image"] + (1 - lam[0]) * batch["image"][partner]
        np.testing.assert_allclose(out["image"], expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(out["label"], batch["label"])


def test_cutmix_label_weight_is_the_pasted_area():
    size = 6
    # Image i is flat at value i + 1, so the pasted box is exactly where pixels changed.
    batch = {
        "image": np.broadcast_to(
            np.arange(1, size + 1, dtype=np.float32)[:, None, None, None], (size, 10, 12, 1)
        ).copy(),
        "label": np.arange(size, dtype=np.int32),
    }
    mix = augment.batch_mixer(dict(cutmix_alpha=1.0), num_classes=size)
    for seed in range(30):
        out = mix(batch, np.random.default_rng(seed))
        pasted = (out["image"] != batch["image"]).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(out["label_probs"].sum(-1), 1.0, rtol=1e-6)
        own = out["label_probs"][np.arange(size), batch["label"]]
        np.testing.assert_allclose(1.0 - own, pasted, atol=1e-6)


def test_mixing_is_off_by_default_and_soft_labels_drive_the_loss():
    assert augment.batch_mixer(augment.OFF, num_classes=10) is None
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    labels = jnp.array([0, 3, 5, 1])
    hard, _ = classification.train_loss(logits, {"label": labels})
    as_probs, _ = classification.train_loss(
        logits, {"label": labels, "label_probs": np.eye(6, dtype=np.float32)[labels]}
    )
    np.testing.assert_allclose(as_probs, hard, rtol=1e-6)
    # Soft labels over 4 data classes, a model with 6 outputs: the cross-entropy of the mixture.
    probs = np.array([[0.7, 0.3, 0, 0], [0, 0.6, 0.4, 0], [0.5, 0, 0, 0.5], [0, 0, 1.0, 0]])
    loss, metrics = classification.train_loss(logits, {"label": labels, "label_probs": probs})
    log_softmax = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(loss, -(probs * log_softmax[:, :4]).sum(-1).mean(), rtol=1e-5)
    assert float(metrics["accuracy"]) == float(np.mean(np.argmax(logits, -1) == labels))


# --- RandAugment --------------------------------------------------------------------------------


def test_randaugment_with_no_layers_is_the_identity():
    image = uint8_image((8, 8, 3)) + 0.25  # not even rounded
    assert randaugment.randaugment(image, np.random.default_rng(0), 0, 10) is image


@pytest.mark.parametrize(
    ("magnitude", "identities"),
    [
        # Zero strength: no rotation, shear or shift, an empty cutout, nothing added.
        (0, ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")),
        # The enhance ops blend with factor 1.8 M / 10 + 0.1: 1 at M = 5 (big_vision's mapping).
        (5, ("Color", "Contrast", "Brightness", "Sharpness")),
        # Solarize inverts pixels >= 256 M / 10: none at M = 10 (the same code's quirk).
        (10, ("Solarize",)),
    ],
)
def test_randaugment_ops_are_the_identity_where_their_mapping_says(magnitude, identities):
    image = uint8_image((12, 10, 3)).astype(np.uint8)
    for name in identities:
        out = randaugment.OPS[name](image, magnitude, np.random.default_rng(0))
        np.testing.assert_array_equal(out, image, err_msg=name)
        # ... and each of them does act at another strength.
        other = 0 if magnitude == 10 else 10
        assert not np.array_equal(
            randaugment.OPS[name](image, other, np.random.default_rng(0)), image
        ), name


def test_randaugment_ops_against_their_definitions():
    image = uint8_image((12, 10, 3)).astype(np.uint8)
    np.testing.assert_array_equal(randaugment.OPS["Invert"](image, 10, None), 255 - image)
    np.testing.assert_array_equal(randaugment.OPS["Posterize"](image, 10, None), image & 0xF0)
    np.testing.assert_array_equal(
        randaugment.OPS["Solarize"](image, 5, None), np.where(image < 128, image, 255 - image)
    )
    contrast = randaugment.autocontrast(np.clip(image // 2 + 40, 0, 255).astype(np.uint8))
    assert contrast.reshape(-1, 3).min(0).tolist() == [0, 0, 0]
    assert contrast.reshape(-1, 3).max(0).tolist() == [255, 255, 255]
    # Shifting by 100 px at 224 moves a 224-px image's content by exactly 100 columns.
    wide = uint8_image((4, 224, 1)).astype(np.uint8)
    shifted = randaugment.translate_x(wide, 100.0)
    np.testing.assert_array_equal(shifted[:, :124], wide[:, 100:])
    assert np.all(shifted[:, 124:] == randaugment.REPLACE)


def test_randaugment_keeps_shape_and_type_and_changes_the_image():
    image = uint8_image((32, 32, 3))
    rng = np.random.default_rng(0)
    outs = [randaugment.randaugment(image, rng, 2, 10) for _ in range(10)]
    assert all(o.shape == image.shape and o.dtype == np.float32 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 8


# --- through the pipeline and the config -------------------------------------------------------


def mock_cifar(**augment_fields):
    config = cfg.defaults().data
    config.update(dict(name="cifar10", mock=True, train_split="train[:45000]"))
    config.augment.update(augment_fields)
    return config


def batches(config, count, seed=0, state=None):
    iterator = data.train_iterator(
        config, global_batch_size=16, seed=seed, process_index=0, process_count=1
    )
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator.get_state()


def test_every_new_augmentation_is_deterministic_and_resumes_bitwise():
    config = mock_cifar(**ALL_NEW)
    first, _ = batches(config, 3)
    again, _ = batches(config, 3)
    for a, b in zip(first, again):
        assert set(a) == {"image", "label", "label_probs"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other, _ = batches(config, 1, seed=1)
    assert not np.array_equal(other[0]["image"], first[0]["image"])
    _, state = batches(config, 2)
    resumed, _ = batches(config, 1, state=state)
    np.testing.assert_array_equal(resumed[0]["image"], first[2]["image"])
    np.testing.assert_array_equal(resumed[0]["label_probs"], first[2]["label_probs"])


def test_evaluation_is_never_augmented():
    def evals(config):
        ds = data.eval_batches(
            config, "test", global_batch_size=64, process_index=0, process_count=1
        )
        return next(iter(ds))

    plain, augmented = evals(mock_cifar()), evals(mock_cifar(**ALL_NEW))
    assert set(augmented) == {"image", "label", "mask"}
    np.testing.assert_array_equal(plain["image"], augmented["image"])


def test_varying_size_images_come_out_at_image_size():
    config = cfg.defaults().data
    config.update(dict(name="imagenet2012", mock=True, image_size=24))
    config.augment.update(dict(random_resized_crop=True, crop_area=(0.05, 1.0)))
    assert data.info(config).input_shape == (24, 24, 3)
    train, _ = batches(config, 1)
    assert train[0]["image"].shape == (16, 24, 24, 3)
    ds = data.eval_batches(
        config, "validation", global_batch_size=8, process_index=0, process_count=1
    )
    assert next(iter(ds))["image"].shape == (8, 24, 24, 3)
    config.image_size = 0
    with pytest.raises(cfg.ConfigError, match="set data.image_size"):
        data.info(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data.augment.crop_area": "(0.5, 1.5)"}, "crop_area=(0.5, 1.5) must be (min, max)"),
        ({"data.augment.crop_area": "(0.5,)"}, "crop_area=(0.5,) must be (min, max)"),
        ({"data.augment.crop_aspect": "(2.0, 1.0)"}, "crop_aspect=(2.0, 1.0) must be (min, max)"),
        ({"data.augment.mixup_alpha": "-1"}, "data.augment.mixup_alpha must be"),
    ],
)
def test_bad_augmentation_settings_are_config_errors(override, message):
    with pytest.raises(cfg.ConfigError, match=re.escape(message)):
        cfg.build_config("experiments/digits_cnn.py:smoke", override)


def test_magnitude_constants_scale_with_the_image():
    # big_vision's pixel constants hold at 224 and shrink in proportion below it.
    at_224 = randaugment._pixels(randaugment.TRANSLATE_PIXELS, 10, np.zeros((224, 224, 3)))
    at_32 = randaugment._pixels(randaugment.TRANSLATE_PIXELS, 10, np.zeros((32, 32, 3)))
    assert at_224 == 100.0 and math.isclose(at_32, 100 * 32 / 224)
