"""Token files: a directory of pre-tokenized token streams in nanoGPT's train.bin / val.bin format.

    data.kind = "text", data.name = "token_files", data.path = DIR   # DIR/train.bin, DIR/val.bin

nanoGPT's data/openwebtext/prepare.py tokenizes each split with GPT-2's BPE, appends
<|endoftext|> (50256) to every document and writes the concatenation as one flat array of uint16
ids, raw bytes in the machine's order (little-endian on x86 and ARM): train.bin ~17 GB
(9,035,582,198 tokens), val.bin ~8.5 MB (4,434,897). A split named S is the file DIR/S.bin, so
data.train_split "train" and data.eval_split = data.test_split "val" name nanoGPT's two files.
Files are read with np.memmap, as nanoGPT's get_batch reads them: nothing is loaded, windows are
sliced out of the page cache.

Batches are what research/data/text.py makes of any token stream: training windows of
data.seq_len + 1 tokens at uniform random offsets, as nanoGPT's get_batch draws them, but from a
generator seeded by (seed, position in the global stream), so batch k is a function of (seed, k)
alone and a resumed run reads exactly the windows an uninterrupted one would; evaluation scores
every non-overlapping window of the split once.

What the ids mean is data.tokenizer's: "gpt2" (50,257 ids), what nanoGPT's prepare.py writes.
Training needs only the vocabulary's size; GPT-2's BPE files (tiktoken) are needed only to turn a
run's samples back into text (`launch.py sample`).

`data.mock`: a generated directory of random ids (MOCK_TOKENS per split, `mock_directory`) read
through the same memmap path, for smoke tests without the files.
"""

import functools
import json
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

from research.errors import ConfigError, DatasetUnavailable

NAME = "token_files"  # data.name
DTYPE = np.uint16  # nanoGPT's prepare.py: "enc.max_token_value == 50256 is < 2**16"
SUFFIX = ".bin"
# The tokenizers whose ids such files hold, by data.tokenizer: their vocabulary's size, and the
# tokenizer.json a run keeps for `launch.py sample` (research/data/tokenizers.py to_json).
VOCABULARIES = {"gpt2": (50257, {"kind": "gpt2", "encoding": "gpt2"})}
MOCK_TOKENS = {"train": 20_000, "val": 2_000}  # Per split of the generated directory.
MOCK_SEED = 0


def split_path(directory: str | Path, split: str) -> Path:
    """The file holding `split`: DIR/<split>.bin."""
    return Path(directory) / f"{split}{SUFFIX}"


def directory(data_config: ml_collections.ConfigDict) -> Path:
    """The configured directory: data.path, or with data.mock a generated one."""
    if data_config.mock:
        return mock_directory(vocabulary(data_config)[0])
    if not data_config.path:
        raise ConfigError(
            f"data.name={NAME!r} reads DIR/<split>{SUFFIX}: set --config.data.path=DIR (e.g. "
            "nanoGPT's data/openwebtext after its prepare.py), or data.mock=true for random ids"
        )
    return Path(data_config.path)


def split_tokens(data_config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """`split`'s token stream, memory-mapped read-only (uint16; windows are converted to int32)."""
    path = split_path(directory(data_config), split)
    try:
        stat = path.stat()
    except OSError:
        present = sorted(p.stem for p in path.parent.glob(f"*{SUFFIX}"))
        raise DatasetUnavailable(
            f"{path} does not exist (splits in {path.parent}: {present or 'none'}); make the "
            "token files with nanoGPT's data/<dataset>/prepare.py, or name another split "
            "(data.train_split, data.eval_split, data.test_split)"
        ) from None
    # The file's size and time are in the key: a rewritten file is mapped afresh.
    return _memmap(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _memmap(path: str, size: int, mtime_ns: int) -> np.ndarray:
    del mtime_ns  # Part of the cache key only.
    itemsize = np.dtype(DTYPE).itemsize
    if size % itemsize:
        raise ConfigError(
            f"{path} has {size} bytes, not a whole number of {np.dtype(DTYPE).name} tokens; "
            "token files are raw uint16 ids as nanoGPT's prepare.py writes them"
        )
    if size == 0:
        return np.zeros(0, DTYPE)  # np.memmap refuses empty files; too short for any window.
    return np.memmap(path, dtype=DTYPE, mode="r")


def vocabulary(data_config: ml_collections.ConfigDict) -> tuple[int, dict[str, str]]:
    """(vocabulary size, files the run keeps in its workdir) of the ids, by data.tokenizer."""
    if data_config.tokenizer not in VOCABULARIES:
        raise ConfigError(
            f"data.tokenizer={data_config.tokenizer!r}: token files hold ids of "
            f"{' or '.join(VOCABULARIES)}; set --config.data.tokenizer to the one they were made with"
        )
    size, record = VOCABULARIES[data_config.tokenizer]
    return size, {"tokenizer.json": json.dumps(record)}


@functools.cache
def mock_directory(vocab_size: int) -> Path:
    """A temporary directory with train.bin and val.bin of random ids below `vocab_size`, the same
    in every process (seeded); removed when the process exits."""
    holder = tempfile.TemporaryDirectory(prefix="token_files_mock_")
    _MOCK_DIRECTORIES.append(holder)  # Kept alive (and removed at exit) with the module.
    rng = np.random.default_rng(MOCK_SEED)
    for split, count in MOCK_TOKENS.items():
        rng.integers(vocab_size, size=count).astype(DTYPE).tofile(split_path(holder.name, split))
    return Path(holder.name)


_MOCK_DIRECTORIES: list[tempfile.TemporaryDirectory] = []
