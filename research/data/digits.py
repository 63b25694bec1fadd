"""TFDS builder "digits": scikit-learn's bundled 8x8 handwritten digits, needing no download.

The data are the 1,797 images of `sklearn.datasets.load_digits` (the test part of the UCI "Optical
Recognition of Handwritten Digits" set: 32x32 bitmaps counted into 4x4 blocks, so every pixel is an
integer in 0..16). Having it as a TFDS dataset lets it flow through exactly the same
`tfds.data_source` -> grain path as MNIST or CIFAR-10, on a machine with no network.

Splits are fixed: `train_test_split(test_size=360, random_state=0, stratify=labels)` gives
train 1,437 / test 360 with every class in the same proportion in both.

Features:
    image: uint8 Tensor (8, 8, 1), raw values 0..16 (scale by 1/16, not 1/255)
    label: ClassLabel, 10 classes named "0".."9"

Preparing needs only numpy and array_record (no TensorFlow): a `Tensor` feature is serialised
by TFDS's own numpy example writer, unlike `Image`, whose PNG encoding goes through TensorFlow.
Importing this module registers the name, after which
`tfds.data_source("digits", builder_kwargs=dict(file_format="array_record"))` prepares it on first
use (under a second) and reads it back.
"""

import numpy as np
import sklearn.datasets
import tensorflow_datasets as tfds
from sklearn.model_selection import train_test_split

NUM_TEST = 360
SPLIT_SEED = 0


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits; a stratified 1,437 / 360 train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS looks for a download-checksums file next to the builder's code, and on the way calls
    # `importlib_resources`, which tfds 4.9.10 needs on Python >= 3.9 but declares only for < 3.9.
    # Nothing is downloaded here, so there is no checksums file to find.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        # `dataset_info_from_configs` would look for metadata files next to this module; the
        # plain constructor needs none.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation="Alpaydin & Kaynak (1998), Optical Recognition of Handwritten Digits, UCI.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Bundled with scikit-learn: nothing to download.
        digits = sklearn.datasets.load_digits()
        train, test = train_test_split(
            np.arange(len(digits.target)),
            test_size=NUM_TEST,
            random_state=SPLIT_SEED,
            stratify=digits.target,
        )
        return {
            "train": self._generate_examples(digits.images, digits.target, train),
            "test": self._generate_examples(digits.images, digits.target, test),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        # Keyed by the index in load_digits() so an example can be traced back to scikit-learn.
        for index in indices:
            image = images[index].astype(np.uint8)[..., None]
            yield int(index), {"image": image, "label": int(labels[index])}
