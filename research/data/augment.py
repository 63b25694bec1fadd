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

Rotation, zoom and shift are one combined affine map with a single bilinear resampling, so the
image is interpolated once however many of them are on. Pixels from outside the image are 0.
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.ndimage

AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Every augmentation off: the identity, and the declared default of `data.augment`
# (research/config.py `defaults`).
OFF: dict[str, Any] = dict(crop_padding=0, flip=False, rotate_deg=0.0, scale=0.0, translate=0.0)


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


def from_config(augment_config: Mapping[str, Any] | None) -> AugmentFn:
    """Compose the augmentations switched on in `augment_config` (None or all off: identity)."""
    given = dict(augment_config or {})
    unknown = set(given) - set(OFF)
    if unknown:
        raise ValueError(f"unknown data.augment field(s) {sorted(unknown)}; known: {sorted(OFF)}")
    fields = {**OFF, **given}

    steps: list[AugmentFn] = []
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

    def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in steps:
            image = step(image, rng)
        return image

    return augment
