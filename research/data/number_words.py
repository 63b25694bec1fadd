"""TFDS builder "number_words": numbers written out in English and in another language, no download.

A toy translation task that any machine can prepare in seconds: the source is a number in English
words, the target the same number in words of another language, both written by `num2words`:

    321  "three hundred and twenty-one"  ->  "dreihunderteinundzwanzig"   (config "en-de")

One builder config per language pair, "en-<lang>" for every language num2words 0.5.14 knows
(`LANGUAGES`: "de", "fr", "ja", "pt_BR", ...); `data.source_lang` / `data.target_lang` pick it
(research/data/translation.py), and either side may be the source.

Splits (the same on every machine): the numbers 0 .. 999,999 are put in a random order and cut into
train = the first 50,000, validation = the next 2,000 and test = the next 2,000, so the three are
disjoint. The order is `argsort` of the first 10^6 raw 64-bit outputs of NumPy's PCG64 seeded with
SPLIT_SEED = 0: NumPy keeps a bit generator's raw stream fixed across versions and platforms
(NEP 19), which it does not promise for `Generator.choice` or `permutation`. Within a split the
examples are stored in ascending order of their number (their TFDS key; no TFDS shuffling).

Features:
    number: int64, the number
    "en":   Text, the number in English words
    <lang>: Text, the number in words of the config's other language

Preparing needs num2words, numpy and array_record (no TensorFlow); 54,000 numbers in two languages
take ~5 s (num2words spends ~50 us on a German number).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from num2words import CONVERTER_CLASSES, num2words

SPLIT_SEED = 0
NUM_NUMBERS = 10**6  # Numbers are drawn from [0, NUM_NUMBERS).
SPLIT_SIZES = {"train": 50_000, "validation": 2_000, "test": 2_000}
SOURCE_LANG = "en"
# Every num2words language but English itself and Amharic, whose converter in num2words 0.5.14
# raises TypeError on 1,100.
LANGUAGES = tuple(sorted(set(CONVERTER_CLASSES) - {SOURCE_LANG, "am"}))


def split_numbers() -> dict[str, np.ndarray]:
    """{"train": int64 [50,000], "validation": [2,000], "test": [2,000]}, disjoint, fixed."""
    order = np.argsort(np.random.PCG64(SPLIT_SEED).random_raw(NUM_NUMBERS), kind="stable")
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        splits[name] = order[start : start + size].astype(np.int64)
        start += size
    return splits


def words(number: int, lang: str) -> str:
    """`number` in words of `lang` (a num2words language code)."""
    return num2words(int(number), lang=lang)


@dataclasses.dataclass(eq=False)
class NumberWordsConfig(tfds.core.BuilderConfig):
    """English and one other language."""

    target_lang: str = ""


class NumberWords(tfds.core.GeneratorBasedBuilder):
    """Numbers below a million in English words and in words of another language (num2words)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        NumberWordsConfig(
            name=f"{SOURCE_LANG}-{lang}",
            description=f"English and {lang!r} number words",
            target_lang=lang,
        )
        for lang in LANGUAGES
    ]
    # Nothing is downloaded, so there is no checksums file to look for (see digits.py).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        target = self.builder_config.target_lang
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "number": tfds.features.Scalar(np.int64),
                    SOURCE_LANG: tfds.features.Text(),
                    target: tfds.features.Text(),
                }
            ),
            supervised_keys=(SOURCE_LANG, target),
            homepage="https://github.com/savoirfairelinux/num2words",
            disable_shuffling=True,  # Stored in key (number) order: readable evaluation outputs.
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Generated here: nothing to download.
        return {name: self._generate_examples(numbers) for name, numbers in split_numbers().items()}

    def _generate_examples(self, numbers: np.ndarray):
        target = self.builder_config.target_lang
        for number in numbers:
            yield (
                int(number),
                {
                    "number": number,
                    SOURCE_LANG: words(number, SOURCE_LANG),
                    target: words(number, target),
                },
            )
