"""Speaker attribution from a play's text: who, of its most frequent speakers, says this speech?

A labelled classification task made from the same text a language model pre-trains on, so that
pre-training's benefit can be measured without another download (experiments/
shakespeare_bert.py). In Karpathy's tinyshakespeare input.txt every speech is a block

    ROMEO:
    But, soft! what light through yonder window breaks?

separated from the next by a blank line. `data.name = "speakers"` with `data.path = FILE` reads
those blocks; the NUM_SPEAKERS speakers with the most speeches are the classes (in tinyshakespeare:
GLOUCESTER 211, DUKE VINCENTIO 189, MENENIUS 161, ROMEO 160, PETRUCHIO 155, CORIOLANUS 148,
KING RICHARD III 137, ISABELLA 127, JULIET 124, LEONTES 124: 1,536 speeches). Their speeches are
split at random, stratified by speaker (scikit-learn, fixed seed), 70% train, 10% validation, 20%
test; the example is the speech without its "NAME:" line.

`data.mock = True` replaces the file by a generated play (`mock_text`: 12 speakers, 30 short
speeches each), for smoke tests without a file.

Two views of one file, both plain in-memory sources (computed in milliseconds from the file, keyed
by its content hash; nothing is prepared on disk):

    labelled(path, split)  [{"text": speech, "label": class index}]: the classification data
    text(path, split)      [{"text": ...}]: for masked-LM pre-training (research/data/text.py).
                           "train" is the whole play except the validation and test speeches,
                           so pre-training never reads a held-out speech; "validation" and "test"
                           are those held-out speeches' blocks, for masked-LM evaluation.
"""

import collections
import dataclasses
import functools
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from research.data import text_file

NUM_SPEAKERS = 10
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SEED = 0  # The split is part of the dataset's definition, not of a run: fixed.


@dataclasses.dataclass(frozen=True)
class Speech:
    speaker: str
    text: str  # The speech without its "NAME:" line.
    block: int  # Its position among the file's blank-line-separated blocks.


@dataclasses.dataclass(frozen=True)
class Play:
    blocks: list[str]  # The file split at blank lines.
    names: list[str]  # The classes: the NUM_SPEAKERS most frequent speakers, most frequent first.
    splits: dict[str, list[Speech]]  # train / validation / test speeches of those speakers.


def speeches(blocks: list[str]) -> list[Speech]:
    """Every block that is a "NAME:" line followed by at least one line of speech."""
    found = []
    for i, block in enumerate(blocks):
        head, _, body = block.partition("\n")
        if head.endswith(":") and body.strip() and head[:-1].strip():
            found.append(Speech(head[:-1].strip(), body, i))
    return found


def parse(text: str) -> Play:
    """The classes and the stratified split of their speeches (see the module docstring)."""
    blocks = text.split("\n\n")
    found = speeches(blocks)
    counts = collections.Counter(s.speaker for s in found)
    if len(counts) < NUM_SPEAKERS:
        raise ValueError(
            f"found {len(counts)} speakers ('NAME:' lines heading blank-line-separated blocks); "
            f"the speaker task needs at least {NUM_SPEAKERS}"
        )
    # Ties broken by name, so the classes do not depend on dictionary order.
    names = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:NUM_SPEAKERS]]
    chosen = [s for s in found if s.speaker in names]
    labels = [s.speaker for s in chosen]
    held_out = 1 - SPLIT_FRACTIONS["train"]
    train, rest = train_test_split(chosen, test_size=held_out, stratify=labels, random_state=SEED)
    test_share = SPLIT_FRACTIONS["test"] / held_out
    validation, test = train_test_split(
        rest, test_size=test_share, stratify=[s.speaker for s in rest], random_state=SEED
    )
    by_block = lambda part: sorted(part, key=lambda s: s.block)  # noqa: E731
    splits = {"train": by_block(train), "validation": by_block(validation), "test": by_block(test)}
    return Play(blocks, names, splits)


def mock_text(num_speakers: int = 12, speeches_each: int = 30, seed: int = 0) -> str:
    """A generated play in tinyshakespeare's layout; each speaker favours words of their own."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)]
    blocks = []
    for turn in range(num_speakers * speeches_each):
        speaker = turn % num_speakers
        own = words[speaker * 4 : speaker * 4 + 4]
        line = " ".join(rng.choice(own if rng.random() < 0.5 else words) for _ in range(8))
        blocks.append(f"SPEAKER {speaker}:\n{line.capitalize()}.")
    return "\n\n".join(blocks) + "\n"


@functools.lru_cache(maxsize=4)
def _play(path: str, digest: str) -> Play:
    del digest  # In the key only: an edited file is parsed afresh.
    if not path:
        return parse(mock_text())
    with open(path, encoding="utf-8") as f:  # universal newlines, as text_file reads it
        return parse(f.read())


def play(path: str | Path | None) -> Play:
    """The parsed play at `path` (cached per content); None or "": the generated `mock_text`."""
    if not path:
        return _play("", "")
    return _play(str(path), text_file.content_digest(path))


def _check_split(split: str) -> None:
    if split not in SPLIT_FRACTIONS:
        raise ValueError(
            f"the speakers data has splits {', '.join(SPLIT_FRACTIONS)}, not {split!r}"
        )


def labelled(path: str | Path | None, split: str) -> list[dict]:
    """[{"text": speech, "label": index into `play(path).names`}] of `split`."""
    _check_split(split)
    parsed = play(path)
    index = {name: i for i, name in enumerate(parsed.names)}
    return [{"text": s.text, "label": index[s.speaker]} for s in parsed.splits[split]]


def text(path: str | Path | None, split: str) -> list[dict]:
    """[{"text": ...}]: "train" is the play without the held-out speeches, the others those
    speeches' blocks (NAME: line included), each block followed by its blank line."""
    _check_split(split)
    parsed = play(path)
    held_out = {s.block for part in ("validation", "test") for s in parsed.splits[part]}
    if split == "train":
        keep = [b for i, b in enumerate(parsed.blocks) if i not in held_out]
    else:
        keep = [parsed.blocks[s.block] for s in parsed.splits[split]]
    return [{"text": block + "\n\n"} for block in keep]
