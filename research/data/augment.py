"""Random image augmentations: numpy functions on one HWC float image and a `np.random.Generator`.

The pipeline calls them through grain's `random_map`, which hands every example a generator seeded
from (pipeline seed, position in the stream); an augmented batch is therefore a pure function of
its step, so runs are reproducible and resume bitwise. Built from the config section:

    data.augment = dict(crop_padding=4, flip=True)   # He et al. 2016, CIFAR-10 (Sec. 4.2)
    augment_fn = from_config(data.augment)           # (image, rng) -> image

Fields (all off by default; an all-off config is the identity):
    crop_padding: int   zero-pad each side by k pixels, then crop a random HxW window back
    flip: bool          mirror left-right with probability 1/2
    rotate_deg: float   rotate by an angle drawn from [-rotate_deg, rotate_deg] degrees
    scale: float        zoom by a factor drawn from [1 - scale, 1 + scale] (> 1 zooms in)
    translate: float    shift by up to this fraction of the height/width along each axis
    random_resized_crop: bool  Inception-style crop (Szegedy et al. 2015): a random box of
                        crop_area (a fraction of the image's area) and crop_aspect (width /
                        height), resized to the output size; the crop of the ViT recipes
    crop_area: (min, max)     fractions of the area, 0 < min <= max <= 1 (torchvision's 0.08..1)
    crop_aspect: (min, max)   aspect ratios, drawn log-uniformly (torchvision's 3/4..4/3)
    randaugment_layers: int   RandAugment's N: ops per image (research/data/randaugment.py)
    randaugment_magnitude: int  RandAugment's M, on big_vision's 0..10 scale
    mixup_alpha: float  mixup (Zhang et al. 2018) with lambda ~ Beta(alpha, alpha): batch-level
    cutmix_alpha: float cutmix (Yun et al. 2019) with lambda ~ Beta(alpha, alpha): batch-level;
                        with both on, each batch uses one of the two, with probability 1/2 (timm)

Per example, in this order: the output size (a random resized crop, or for a source whose
images are not already data.image_size square, `fit_to_size`), the affine map, the padded crop,
the flip, RandAugment. Rotation, zoom and shift are one combined affine map with a single
bilinear resampling, so the image is interpolated once however many of them are on. Pixels from
outside the image are 0. Evaluation only fits images to the size (`fit_to_size`).

Mixup and cutmix act on a whole batch (`batch_mixer`): each example is mixed with the next one in
the batch (the batch rolled by one, as big_vision), and the batch gains "label_probs" [b, classes],
the soft labels the classification loss then uses; "label" keeps each example's own class.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import PIL.Image
import scipy.ndimage

from research.data.randaugment import randaugment

AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Batch = dict[str, np.ndarray]

# Every augmentation off: the identity, and the declared default of `data.augment`
# (research/config.py `defaults`).
OFF: dict[str, Any] = dict(
    crop_padding=0,
    flip=False,
    rotate_deg=0.0,
    scale=0.0,
    translate=0.0,
    random_resized_crop=False,
    crop_area=(0.08, 1.0),
    crop_aspect=(0.75, 4 / 3),
    randaugment_layers=0,
    randaugment_magnitude=10,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
)

# Evaluation (and training without a random crop) resizes the smaller side to size / 0.875, then
# takes the central size x size: 256 then 224 for ImageNet, as big_vision's
# `resize_small(256)|central_crop(224)` and the usual ResNet evaluation.
EVAL_CROP_FRACTION = 0.875


def random_crop(image: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """Zero-pad height and width by `padding`, then cut a random window of the original size."""
    height, width = image.shape[:2]
    # Equivalent to np.pad then slicing, at a third of the cost: shift the image by (dy, dx) in
    # [-padding, padding] onto a zero canvas.
    dy, dx = rng.integers(-padding, padding + 1, size=2)
    out = np.zeros_like(image)
    if abs(dy) >= height or abs(dx) >= width:  # padding >= image size: the window missed it
        return out
    out[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = image[
        max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)
    ]
    return out


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def random_affine(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    rotate_deg: float = 0.0,
    scale: float = 0.0,
    translate: float = 0.0,
) -> np.ndarray:
    """Rotate, zoom and shift about the image centre in one bilinear resampling."""
    height, width = image.shape[:2]
    angle = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    zoom = rng.uniform(1.0 - scale, 1.0 + scale)
    shift = rng.uniform(-translate, translate, size=2) * (height, width)
    # affine_transform maps *output* coordinates to input ones, so this is the inverse map:
    # input = R(-angle) / zoom (output - centre) + centre - shift.
    cos, sin = np.cos(angle), np.sin(angle)
    spatial = np.array([[cos, sin], [-sin, cos]]) / zoom
    centre = (np.array([height, width]) - 1) / 2
    matrix = np.eye(3)
    matrix[:2, :2] = spatial
    offset = np.zeros(3)
    offset[:2] = centre - spatial @ centre - shift
    return scipy.ndimage.affine_transform(image, matrix, offset=offset, order=1, cval=0.0)


def sample_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of an Inception-style crop, torchvision's sampling
    (RandomResizedCrop.get_params): area uniform in `area` x the image's, aspect ratio
    log-uniform in `aspect`, 10 tries; then the central crop at the nearest allowed ratio."""
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target_area = height * width * rng.uniform(*area)
        ratio = math.exp(rng.uniform(*log_aspect))
        crop_w = round(math.sqrt(target_area * ratio))
        crop_h = round(math.sqrt(target_area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    ratio = width / height
    if ratio < aspect[0]:
        crop_w, crop_h = width, round(width / aspect[0])
    elif ratio > aspect[1]:
        crop_w, crop_h = round(height * aspect[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and clamped edges, no antialiasing: TF's
    tf.image.resize(method="bilinear"), which big_vision's inception crop uses."""
    in_h, in_w = image.shape[:2]
    scale_y, scale_x = in_h / height, in_w / width
    matrix = np.diag([scale_y, scale_x, 1.0])
    offset = np.array([0.5 * scale_y - 0.5, 0.5 * scale_x - 0.5, 0.0])
    return scipy.ndimage.affine_transform(
        image,
        matrix,
        offset=offset,
        output_shape=(height, width, image.shape[2]),
        order=1,
        mode="nearest",
    )


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> np.ndarray:
    """A random box of the image (`sample_crop_box`), resized to size = (height, width)."""
    top, left, crop_h, crop_w = sample_crop_box(*image.shape[:2], rng, area, aspect)
    return resize_bilinear(image[top : top + crop_h, left : left + crop_w], *size)


def fit_to_size(image: np.ndarray, size: int) -> np.ndarray:
    """The image as size x size: itself if it already is (or size is 0); else its smaller side
    area-resized to size / EVAL_CROP_FRACTION, then the central size x size."""
    height, width = image.shape[:2]
    if not size or (height, width) == (size, size):
        return image
    short = round(size / EVAL_CROP_FRACTION)
    new_h, new_w = (
        max(size, round(height * short / min(height, width))),
        max(size, round(width * short / min(height, width))),
    )
    # Area resampling (PIL's box filter, per channel as 32-bit float): big_vision's resize_small.
    resized = np.stack(
        [
            np.asarray(
                PIL.Image.fromarray(image[..., c]).resize((new_w, new_h), PIL.Image.Resampling.BOX)
            )
            for c in range(image.shape[2])
        ],
        axis=-1,
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


# --- batch-level: mixup and cutmix --------------------------------------------------------------


def mixup(images: np.ndarray, rng: np.random.Generator, alpha: float) -> tuple[np.ndarray, float]:
    """Each image blended with the next one in the batch: (lambda x + (1 - lambda) roll(x), lambda).

    lambda ~ Beta(alpha, alpha), then max(lambda, 1 - lambda) so that an example's own image and
    label weigh most (big_vision's utils.get_mixup; Zhang et al. 2018 draw it plainly).
    """
    lam = rng.beta(alpha, alpha)
    lam = max(lam, 1.0 - lam)
    mixed = lam * images + (1.0 - lam) * np.roll(images, 1, axis=0)
    return mixed.astype(images.dtype), float(lam)


def cutmix(images: np.ndarray, rng: np.random.Generator, alpha: float) -> tuple[np.ndarray, float]:
    """The next image's pixels pasted into a random box: (images, 1 - the box's area fraction).

    Yun et al. 2019, Algorithm A1 (as timm): lambda ~ Beta(alpha, alpha), a box of sides
    sqrt(1 - lambda) x (H, W) centred on a uniform pixel and clipped to the image; the returned
    weight of each example's own label is recomputed from the clipped box.
    """
    height, width = images.shape[1:3]
    lam = rng.beta(alpha, alpha)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = np.roll(images, 1, axis=0)[:, top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def batch_mixer(
    augment_config: Mapping[str, Any], num_classes: int
) -> Callable[[Batch, np.random.Generator], Batch] | None:
    """(batch, rng) -> the batch mixed, with "label_probs"; None when mixup and cutmix are off."""
    fields = {**OFF, **augment_config}
    mixup_alpha, cutmix_alpha = float(fields["mixup_alpha"]), float(fields["cutmix_alpha"])
    if not (mixup_alpha or cutmix_alpha):
        return None

    def mix(batch: Batch, rng: np.random.Generator) -> Batch:
        use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or rng.random() < 0.5)
        if use_cutmix:
            images, weight = cutmix(batch["image"], rng, cutmix_alpha)
        else:
            images, weight = mixup(batch["image"], rng, mixup_alpha)
        one_hot = np.eye(num_classes, dtype=np.float32)[batch["label"]]
        probs = weight * one_hot + (1.0 - weight) * np.roll(one_hot, 1, axis=0)
        return {**batch, "image": images, "label_probs": probs.astype(np.float32)}

    return mix


# --- from the config ----------------------------------------------------------------------------


def check(augment_config: Mapping[str, Any] | None) -> None:
    """One-line ValueError for a field no rule alone can judge: unknown names, ranges as pairs."""
    given = dict(augment_config or {})
    unknown = set(given) - set(OFF)
    if unknown:
        raise ValueError(f"unknown data.augment field(s) {sorted(unknown)}; known: {sorted(OFF)}")
    fields = {**OFF, **given}
    area, aspect = tuple(fields["crop_area"]), tuple(fields["crop_aspect"])
    if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
        raise ValueError(
            f"data.augment.crop_area={area} must be (min, max) with 0 < min <= max <= 1"
        )
    if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
        raise ValueError(
            f"data.augment.crop_aspect={aspect} must be (min, max) with 0 < min <= max"
        )


def from_config(augment_config: Mapping[str, Any] | None, image_size: int = 0) -> AugmentFn:
    """Compose the per-example augmentations switched on in `augment_config` (None or all off:
    the identity), producing image_size x image_size images (0: the input's own size)."""
    check(augment_config)
    fields = {**OFF, **(augment_config or {})}

    steps: list[AugmentFn] = []
    if fields["random_resized_crop"]:
        area, aspect = tuple(fields["crop_area"]), tuple(fields["crop_aspect"])
        size = (image_size, image_size) if image_size else None  # None: the input's own
        steps.append(
            lambda image, rng: random_resized_crop(
                image, rng, size or image.shape[:2], area, aspect
            )
        )
    elif image_size:
        steps.append(lambda image, rng: fit_to_size(image, image_size))
    if fields["rotate_deg"] or fields["scale"] or fields["translate"]:
        affine = dict(
            rotate_deg=float(fields["rotate_deg"]),
            scale=float(fields["scale"]),
            translate=float(fields["translate"]),
        )
        steps.append(lambda image, rng: random_affine(image, rng, **affine))
    if fields["crop_padding"]:
        padding = int(fields["crop_padding"])
        steps.append(lambda image, rng: random_crop(image, rng, padding))
    if fields["flip"]:
        steps.append(random_flip)
    if fields["randaugment_layers"]:
        layers, magnitude = (
            int(fields["randaugment_layers"]),
            float(fields["randaugment_magnitude"]),
        )
        steps.append(lambda image, rng: randaugment(image, rng, layers, magnitude))

    def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in steps:
            image = step(image, rng)
        return image

    return augment
