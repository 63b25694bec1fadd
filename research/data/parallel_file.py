"""TFDS builder "parallel_file": local parallel text as train/validation/test pairs, no download.

    builder = parallel_file.builder("corpus.en", "corpus.de")   # two files aligned line by line
    builder = parallel_file.builder("pairs.tsv")                # or one TSV: source<TAB>target
    builder.as_data_source("train")[0]   # {"source": b"Hello.", "target": b"Hallo."}

Two files: line i of the target file translates line i of the source file; both must have the same
number of lines (empty lines are kept, as pairs, to keep the alignment). One TSV: each non-empty
line is source<TAB>target; further columns (Tatoeba's attribution, say) are ignored, empty lines
are skipped, and a line without a tab is an error that names it. Files are read as UTF-8 with
universal newlines; a line's text is kept as is, without its newline.

Splits, contiguous and in file order (the file's order is the split's order): of n pairs, the last
n_eval = max(1, n // 100) are "test", the n_eval before them "validation", and the rest "train":
98% / 1% / 1% for a large corpus. Nothing is shuffled, so a file with held-out pairs at its end
keeps them held out.

Each distinct content is its own builder config, named `<stem>_<first 16 hex digits of a SHA-256
over the bytes of the file(s)>`, as research/data/text_file.py does, so an edited file is prepared
afresh. Preparing needs neither network nor TensorFlow.
"""

import dataclasses
import hashlib
import re
from pathlib import Path

import tensorflow_datasets as tfds

from research.errors import ConfigError, DatasetUnavailable

EVAL_FRACTION = 0.01  # Of the pairs, for validation and again for test.
FILE_FORMAT = "array_record"  # The TFDS format with random access (`tfds.data_source`).


def split_sizes(num_pairs: int) -> dict[str, int]:
    """{"train": n - 2 n_eval, "validation": n_eval, "test": n_eval}, n_eval = max(1, n // 100)."""
    num_eval = max(1, int(num_pairs * EVAL_FRACTION))
    return {"train": num_pairs - 2 * num_eval, "validation": num_eval, "test": num_eval}


def _unreadable(path: str | Path, field: str, error: OSError) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"{field}={str(path)!r} cannot be read ({error.strerror or error}); give an existing file "
        "(a relative path is relative to the directory you launch from)"
    )


def _read(path: str | Path, field: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:  # Universal newlines: "\r\n" and "\r" end lines.
            return f.read()
    except OSError as e:
        raise _unreadable(path, field, e) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{field}={str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines would also split on form feeds and U+2028 and break the
    # alignment of two files.
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_pairs(path: str | Path, target_path: str | Path | None = None) -> list[tuple[str, str]]:
    """The (source, target) pairs of two aligned files, or of one TSV when target_path is None.

    Errors a user can fix are one line: DatasetUnavailable for a file that cannot be read,
    ConfigError for one that is not UTF-8, a TSV line without a tab, files of different lengths,
    or fewer than 3 pairs (one per split).
    """
    if target_path:
        sources = _lines(_read(path, "data.path"))
        targets = _lines(_read(target_path, "data.target_path"))
        if len(sources) != len(targets):
            raise ConfigError(
                f"data.path={str(path)!r} has {len(sources):,} lines but data.target_path="
                f"{str(target_path)!r} has {len(targets):,}; they must be aligned line by line"
            )
        pairs = list(zip(sources, targets))
    else:
        pairs = []
        for number, line in enumerate(_lines(_read(path, "data.path")), start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ConfigError(
                    f"line {number} of data.path={str(path)!r} has no tab; a TSV needs "
                    "source<TAB>target on every line (or set data.target_path to a second file "
                    "aligned with it line by line)"
                )
            source, target = line.split("\t")[:2]
            pairs.append((source, target))
    if len(pairs) < 3:
        raise ConfigError(
            f"data.path={str(path)!r} has {len(pairs)} pairs; it needs at least 3 (one each for "
            "train, validation and test)"
        )
    return pairs


def content_digest(path: str | Path, target_path: str | Path | None = None) -> str:
    """SHA-256 (hex) identifying the content: of the TSV's bytes, or of both files' digests."""
    digests = []
    for field, file in (("data.path", path), ("data.target_path", target_path)):
        if file:
            try:
                digests.append(hashlib.sha256(Path(file).read_bytes()).hexdigest())
            except OSError as e:
                raise _unreadable(file, field, e) from None
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


@dataclasses.dataclass(eq=False)
class ParallelFileConfig(tfds.core.BuilderConfig):
    """One content: where to read it, and its `content_digest` to check it is unchanged."""

    path: str = ""
    target_path: str = ""  # "" = `path` is a TSV.
    digest: str = ""


class ParallelFile(tfds.core.GeneratorBasedBuilder):
    """Local parallel text split 98/1/1 (at least one pair each) into train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so there is no checksums file to look for (see digits.py).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
            disable_shuffling=True,  # Keys are line numbers: splits stay in file order.
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Local files: nothing to download.
        config = self.builder_config
        if content_digest(config.path, config.target_path) != config.digest:
            raise RuntimeError(f"{config.path} changed while being prepared; run again")
        pairs = read_pairs(config.path, config.target_path)
        generators, start = {}, 0
        for name, size in split_sizes(len(pairs)).items():
            generators[name] = self._generate_examples(pairs, start, start + size)
            start += size
        return generators

    def _generate_examples(self, pairs: list[tuple[str, str]], start: int, stop: int):
        for index in range(start, stop):
            yield index, {"source": pairs[index][0], "target": pairs[index][1]}


def builder(
    path: str | Path, target_path: str | Path | None = None, data_dir: str | None = None
) -> ParallelFile:
    """The builder for the current content of the file(s), prepared (a no-op once it is).

    The files are checked (`read_pairs`) before anything is written to data_dir.
    """
    digest = content_digest(path, target_path)
    stem = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_") or "parallel"
    config = ParallelFileConfig(
        name=f"{stem}_{digest[:16]}",
        description=f"{' + '.join(Path(p).name for p in (path, target_path) if p)}, sha256 {digest}",
        path=str(Path(path).resolve()),
        target_path=str(Path(target_path).resolve()) if target_path else "",
        digest=digest,
    )
    file_builder = ParallelFile(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    if file_builder.is_prepared():
        return file_builder
    read_pairs(path, target_path)  # One-line errors for the user, before TFDS writes anything.
    try:
        file_builder.download_and_prepare()
    except Exception:
        # Processes preparing into one data_dir race to rename their temporary directories; the
        # loser's rename fails, but the winner's dataset is there to read.
        file_builder = ParallelFile(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
        if not file_builder.is_prepared():
            raise
    return file_builder
