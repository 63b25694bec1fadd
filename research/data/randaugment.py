"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a
reduced search space"), as big_vision applies it: `randaug(2, 10)` in its ViT recipes.

Each of `num_layers` times, one of the 16 ops below is drawn uniformly and applied at the shared
`magnitude` M (on big_vision's scale, where 10 is _MAX_LEVEL). The ops and their level-to-argument
maps are big_vision's pp/archive/autoaugment.py (forked from the TPU EfficientNet code), written
here in numpy and scipy on 8-bit pixels. That code's quirks are kept, because they define what
`randaug(2, 10)` means in the recipes that cite it:
  - the enhance ops (Color, Contrast, Brightness, Sharpness) blend with factor 1.8 M/10 + 0.1:
    identity at M = 5, not at M = 0;
  - Solarize inverts pixels >= 256 M/10, so it is the identity at M = 10 and inverts all at 0;
  - Posterize keeps int(4 M/10) bits: 4 at M = 10, none (a black image) at M = 0.
Rotate, shear and translate are signed at random; geometric ops and Cutout fill with gray (128)
and sample nearest-neighbour, as tfa.image does by default. Translate (100 px) and Cutout (a
square of side 2 * 40 px) are big_vision's pixel constants at 224 x 224, scaled here to the
image's size (a 32 x 32 image shifts by up to 14 px), as timm expresses translate as a fraction.

Images arrive as float32 raw pixel values and are rounded to uint8 first: RandAugment is for
8-bit images (every TFDS image dataset stores them); the 0..16 digits are not its domain.
"""

from collections.abc import Callable

import numpy as np
import scipy.ndimage

MAX_LEVEL = 10.0  # big_vision's _MAX_LEVEL: magnitude 10 is the "full" strength of every op.
REPLACE = 128  # gray fill for pixels a geometric op or Cutout leaves empty
REFERENCE_SIZE = 224  # the image side big_vision's pixel constants below were set for
TRANSLATE_PIXELS = 100  # big_vision HParams(translate_const=100) for RandAugment
CUTOUT_PIXELS = 40  # big_vision HParams(cutout_const=40)
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])  # tf.image.rgb_to_grayscale


# --- helpers ------------------------------------------------------------------------------------


def blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
    """image1 + factor * (image2 - image1), clipped to 0..255 and truncated to uint8 (as TF)."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    mixed = image1.astype(np.float32) + factor * (
        image2.astype(np.float32) - image1.astype(np.float32)
    )
    return np.clip(mixed, 0.0, 255.0).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W, C] -> [H, W, C] of the luma repeated (tf.image.rgb_to_grayscale, then to RGB)."""
    if image.shape[-1] == 1:
        return image
    luma = (image.astype(np.float32) / 255.0) @ GRAY_WEIGHTS.astype(np.float32)
    gray = np.clip(luma * 255.5, 0, 255).astype(np.uint8)  # convert_image_dtype's rounding
    return np.repeat(gray[..., None], image.shape[-1], axis=-1)


def _transform(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample with the 2x2 `matrix` mapping output (row, col) to input, about the origin
    offset given in matrix[:, 2]; nearest neighbour, gray outside (tfa.image.transform)."""
    full = np.eye(3)
    full[:2, :2] = matrix[:, :2]
    offset = np.zeros(3)
    offset[:2] = matrix[:, 2]
    return scipy.ndimage.affine_transform(
        image, full, offset=offset, order=0, mode="constant", cval=REPLACE
    )


# --- the ops: (uint8 image [H, W, C], argument) -> uint8 image ---------------------------------


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Stretch each channel's [min, max] to [0, 255]; flat channels are left alone."""
    out = image.copy()
    for c in range(image.shape[-1]):
        channel = image[..., c].astype(np.float32)
        lo, hi = channel.min(), channel.max()
        if hi > lo:  # (x - lo) * 255 / (hi - lo), exact at both ends, then truncated (as TF)
            stretched = (channel.astype(np.float64) - lo) * 255.0 / (hi - lo)
            out[..., c] = np.clip(stretched, 0, 255).astype(np.uint8)
    return out


def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalization per channel (PIL's ImageOps.equalize, as the TF port computes it)."""
    out = image.copy()
    for c in range(image.shape[-1]):
        channel = image[..., c]
        histogram = np.bincount(channel.ravel(), minlength=256)
        nonzero = histogram[histogram != 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            continue
        lut = (np.cumsum(histogram) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255).astype(np.uint8)
        out[..., c] = lut[channel]
    return out


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the image centre (tfa.image.rotate)."""
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    spatial = np.array([[cos, sin], [-sin, cos]])
    centre = (np.array(image.shape[:2]) - 1) / 2
    return _transform(image, np.column_stack([spatial, centre - spatial @ centre]))


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    shift = 8 - bits
    return ((image >> shift) << shift).astype(np.uint8) if shift < 8 else np.zeros_like(image)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    added = np.clip(image.astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return np.where(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    """Saturation: blend from the grayscale image (PIL ImageEnhance.Color)."""
    return blend(grayscale(image), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend from a flat image at the mean luma (PIL ImageEnhance.Contrast)."""
    mean = grayscale(image)[..., 0].astype(np.float32).mean()
    degenerate = np.full_like(image, np.uint8(np.clip(mean, 0, 255)))
    return blend(degenerate, image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend from PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13; border kept)."""
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = image.copy()
    if min(image.shape[:2]) >= 3:
        pixels = image.astype(np.float32)
        filtered = sum(
            kernel[dy, dx] * pixels[dy : dy + image.shape[0] - 2, dx : dx + image.shape[1] - 2]
            for dy in range(3)
            for dx in range(3)
        )
        smooth[1:-1, 1:-1] = np.clip(filtered, 0, 255).astype(np.uint8)
    return blend(smooth, image, factor)


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
    """Output (row y, col x) reads input (y, x + level * y) (tfa transform [1, level, 0, 0, 1, 0])."""
    return _transform(image, np.array([[1.0, 0.0, 0.0], [level, 1.0, 0.0]]))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
    """Output (y, x) reads input (y + level * x, x)."""
    return _transform(image, np.array([[1.0, level, 0.0], [0.0, 1.0, 0.0]]))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
    """Shift the content left by `pixels` (tfa translate by [-pixels, 0])."""
    return _transform(image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, pixels]]))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
    return _transform(image, np.array([[1.0, 0.0, pixels], [0.0, 1.0, 0.0]]))


def cutout(image: np.ndarray, pad_size: int, rng: np.random.Generator) -> np.ndarray:
    """Gray out a (2 pad_size)^2 square centred on a uniformly drawn pixel (DeVries & Taylor 2017)."""
    height, width = image.shape[:2]
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    out = image.copy()
    out[max(0, cy - pad_size) : cy + pad_size, max(0, cx - pad_size) : cx + pad_size] = REPLACE
    return out


# --- magnitude -> op ----------------------------------------------------------------------------


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value  # _randomly_negate_tensor


def _enhance(level: float) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


# name -> (image, magnitude, rng) -> image, with big_vision's level_to_arg for each op. Pixel
# constants scale with the smaller image side relative to 224.
Op = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _pixels(constant: int, level: float, image: np.ndarray) -> float:
    return level / MAX_LEVEL * constant * min(image.shape[:2]) / REFERENCE_SIZE


OPS: dict[str, Op] = {
    "AutoContrast": lambda im, m, rng: autocontrast(im),
    "Equalize": lambda im, m, rng: equalize(im),
    "Invert": lambda im, m, rng: invert(im),
    "Rotate": lambda im, m, rng: rotate(im, _signed(m / MAX_LEVEL * 30.0, rng)),
    "Posterize": lambda im, m, rng: posterize(im, int(m / MAX_LEVEL * 4)),
    "Solarize": lambda im, m, rng: solarize(im, int(m / MAX_LEVEL * 256)),
    "Color": lambda im, m, rng: color(im, _enhance(m)),
    "Contrast": lambda im, m, rng: contrast(im, _enhance(m)),
    "Brightness": lambda im, m, rng: brightness(im, _enhance(m)),
    "Sharpness": lambda im, m, rng: sharpness(im, _enhance(m)),
    "ShearX": lambda im, m, rng: shear_x(im, _signed(m / MAX_LEVEL * 0.3, rng)),
    "ShearY": lambda im, m, rng: shear_y(im, _signed(m / MAX_LEVEL * 0.3, rng)),
    "TranslateX": lambda im, m, rng: translate_x(
        im, _signed(_pixels(TRANSLATE_PIXELS, m, im), rng)
    ),
    "TranslateY": lambda im, m, rng: translate_y(
        im, _signed(_pixels(TRANSLATE_PIXELS, m, im), rng)
    ),
    "Cutout": lambda im, m, rng: cutout(im, int(_pixels(CUTOUT_PIXELS, m, im)), rng),
    "SolarizeAdd": lambda im, m, rng: solarize_add(im, int(m / MAX_LEVEL * 110)),
}


def randaugment(
    image: np.ndarray, rng: np.random.Generator, num_layers: int, magnitude: float
) -> np.ndarray:
    """Apply `num_layers` ops drawn uniformly from OPS at `magnitude` to a float raw-pixel image."""
    if num_layers == 0:
        return image
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    names = list(OPS)
    for _ in range(num_layers):
        pixels = OPS[names[rng.integers(len(names))]](pixels, magnitude, rng)
    return pixels.astype(np.float32)
