"""TFDS builder "text_file": a local UTF-8 text file as train/validation/test splits, no download.

    builder = text_file.builder("input.txt", data_dir=None)   # prepares on first use
    builder.as_data_source("train")[0]["text"]                 # the first 90% of the file

The splits are laid out as TFDS's own `tiny_shakespeare` builder lays out its download (one
example per split with a "text" feature): train is the first 90% of the characters, validation
and test halve the remaining 10%. So on Karpathy's tinyshakespeare input.txt this builder gives
the same three texts as `tfds.load("tiny_shakespeare")`, and both agree with nanoGPT's
data/shakespeare_char/prepare.py: its train split is `data[:int(n * 0.9)]` (our "train") and its
val split the rest (our "validation+test", contiguous, in order).

Each distinct file content is its own builder config, named `<file stem>_<first 16 hex digits of
the SHA-256 of its bytes>`, so editing the file prepares a new dataset instead of silently reading
the stale one. The file is read as Python's `open(path)` reads it (UTF-8, universal newlines), as
nanoGPT does. Preparing needs neither network nor TensorFlow.
"""

import dataclasses
import hashlib
import re
from pathlib import Path

import tensorflow_datasets as tfds

TRAIN_FRACTION = 0.9  # nanoGPT's prepare.py and TFDS tiny_shakespeare
# ArrayRecord is the TFDS format with random access (what `tfds.data_source` reads).
FILE_FORMAT = "array_record"


def split_text(text: str) -> dict[str, str]:
    """{"train": first 90%, "validation": next 5%, "test": last 5%}, by characters, contiguous.

    The same arithmetic as TFDS tiny_shakespeare's `_split_generators`.
    """
    i = int(len(text) * TRAIN_FRACTION)
    train, rest = text[:i], text[i:]
    j = int(len(rest) * 0.5)
    return {"train": train, "validation": rest[:j], "test": rest[j:]}


def content_digest(path: str | Path) -> str:
    """SHA-256 hex digest of the file's bytes: the key of its prepared dataset."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass(eq=False)
class TextFileConfig(tfds.core.BuilderConfig):
    """One file content: `path` to read it from, `digest` (SHA-256) to check it is unchanged."""

    path: str = ""
    digest: str = ""


class TextFile(tfds.core.GeneratorBasedBuilder):
    """A local text file split 90/5/5 into train/validation/test (one example each)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so there is no checksums file to look for next to this module (the
    # lookup would also need `importlib_resources`; see research/data/digits.py).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # A local file: nothing to download.
        config = self.builder_config
        if content_digest(config.path) != config.digest:
            raise RuntimeError(f"{config.path} changed while being prepared; run again")
        with open(config.path, encoding="utf-8") as f:  # universal newlines, as nanoGPT reads it
            text = f.read()
        return {name: self._generate_examples(part) for name, part in split_text(text).items()}

    def _generate_examples(self, text: str):
        yield 0, {"text": text}


def builder(path: str | Path, data_dir: str | None = None) -> TextFile:
    """The builder for the current content of `path`, prepared (a no-op once it is)."""
    path = Path(path)
    digest = content_digest(path)
    stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "text"
    config = TextFileConfig(
        name=f"{stem}_{digest[:16]}",
        description=f"{path.name}, sha256 {digest}",
        path=str(path.resolve()),
        digest=digest,
    )
    text_builder = TextFile(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    try:
        text_builder.download_and_prepare()
    except Exception:
        # Processes preparing into one data_dir race to rename their temporary directories; the
        # loser's rename fails, but the winner's dataset is there to read.
        text_builder = TextFile(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
        if not text_builder.is_prepared():
            raise
    return text_builder
