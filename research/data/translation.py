"""Translation: sentence pairs per split, one shared SentencePiece vocabulary, packed training rows,
and every pair of a split once for evaluation. The same three calls as the other kinds (see
__init__.py).

Sources (`data.kind = "translation"`), each giving (source, target) texts per split:

* `data.path` (+ `data.target_path`): local parallel text, two files aligned line by line or one
  TSV (source<TAB>target), prepared by the "parallel_file" builder (parallel_file.py) into
  `data.data_dir`. Splits: the last 1% of the pairs (at least one) "test", the 1% before them
  "validation", the rest "train", in file order. `data.source_lang` / `target_lang` are labels.
* `data.name = "number_words"`: a number in English words -> the same number in the words of the
  other language (number_words.py: config "en-<lang>", either side may be the source); splits
  train / validation / test of 50,000 / 2,000 / 2,000 disjoint numbers below a million.
* any other `data.name`: a TFDS translation dataset such as "wmt14_translate/de-en", whose
  features are language codes; `data.source_lang` / `data.target_lang` pick the direction.
* `data.mock`: `data.name` through `tfds.testing.mock_data` (sources.py): 512 random strings over
  " abcdefghij" per language, the same for every split.

Tokenizer: `data.tokenizer = "sentencepiece"` (tokenizers.py), trained on the training split's
source and target texts together, one shared vocabulary (Vaswani et al. 2017, Sec. 5.1; the flax
WMT example): the split's first pairs up to TOKENIZER_TRAINING_CHARS characters (flax's
`maxchars`), at most `data.tokenizer_vocab_size` pieces. Or `data.tokenizer_model`: a trained
.model file with ids pad 0, unk 1, bos 2, eos 3. The run keeps it as tokenizer.model.

Token rows (L = `data.seq_len`, pad id 0): a pair's source is its tokens + EOS, its target_in
BOS + target tokens and its target_out target tokens + EOS (so target_in[1:] == target_out[:-1]).

Training (`train_iterator`): pairs whose source or target has more than L - 1 tokens are dropped
(a warning counts them). An epoch is the kept pairs in an order drawn from (seed, epoch); with
`data.pack` (default) they are packed several to a row, greedily, each into the first of the
OPEN_ROWS most recent rows with room on both sides (the flax WMT example packs its rows too,
through T2T's `pack_dataset`, with the same segment and position ids); without it, one per row. No pair is split; rows run on across epochs
and batch k is rows kB .. kB + B - 1 of that global stream (B = global batch size): a function of
(seed, k) alone, resumed by `set_state(get_state())`. Process p of P takes rows kB + p, kB + p + P,
... as text.py does. Batches are

    {"source", "target_in", "target_out",
     "source_segments", "source_positions", "target_segments", "target_positions": int32 [b, L]}

segments numbering a row's pairs 1, 2, ... (0 on padding), positions counting from 0 in each pair.

Evaluation (`eval_batches`): every pair of the split once, in order, one pair per row, source and
target cut to L - 1 tokens before EOS/BOS: {"source", "target_in", "target_out": int32 [b, L],
"mask": bool [b], "index": int32 [b]}, index = the pair's position in the split (whose raw texts
`info.texts(split)` gives).

Each split is read, tokenized and (per epoch) packed once per process and cached, so `info`,
training and every evaluation share one tokenizer training. Reading costs ~35 us a pair (WMT14
en-de's 4.5M training pairs: minutes); training SentencePiece on number words' 100,000 texts ~10 s;
packing an epoch of them well under a second.
"""

import bisect
import dataclasses
import functools
import hashlib
import itertools
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tensorflow_datasets.translate  # noqa: F401  (registers wmt14_translate & co. with TFDS)

from research.data import number_words, parallel_file, pipeline, sources, tokenizers
from research.errors import ConfigError, DatasetUnavailable

log = logging.getLogger(__name__)

# flax examples/wmt/tokenizer.py trains SentencePiece on at most 1e7 characters (`maxchars`).
TOKENIZER_TRAINING_CHARS = 10**7
# First fit looks for room in this many of the most recently opened rows (older ones are closed):
# most of first fit's density at a bounded cost per pair.
OPEN_ROWS = 8
Tokenizer = tokenizers.SentencePieceTokenizer
PAD, BOS, EOS = Tokenizer.PAD_ID, Tokenizer.BOS_ID, Tokenizer.EOS_ID
TRAIN_KEYS = (
    "source",
    "target_in",
    "target_out",
    "source_segments",
    "source_positions",
    "target_segments",
    "target_positions",
)


def info(data_config: ml_collections.ConfigDict) -> sources.DatasetInfo:
    """Vocabulary size (as num_classes), row shape (L,) and the number of training pairs kept.

    Checks everything a user can get wrong (files, languages, splits, tokenizer) in one line.
    """
    source = _source(data_config)
    tok = tokenizer(data_config)
    kept = kept_pairs(data_config)
    if not len(kept):
        raise ConfigError(
            f"no training pair of {data_config.train_split!r} fits data.seq_len="
            f"{data_config.seq_len} tokens per side (with EOS); raise data.seq_len"
        )
    for split in (data_config.eval_split, data_config.test_split):
        _open(source, split)  # A split that does not exist fails now, not at the first eval.
    return sources.DatasetInfo(
        num_classes=tok.vocab_size,
        class_names=[],
        input_shape=(data_config.seq_len,),
        num_train=len(kept),
        workdir_files={"tokenizer.model": tok.to_bytes()},
        decode_text=functools.partial(decode_text, tok),
        texts=functools.partial(_split_texts, source),
    )


def train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DatasetIterator:
    """This process's endless training rows (see the module docstring), b = global/count per batch.

    Resume with `set_state(get_state())`; the union over processes of their batch k is the global
    batch k, whatever the process count.
    """
    batch_size = pipeline.per_process_batch_size(global_batch_size, process_count)
    source, tok_key = _source(data_config), _tokenizer_key(data_config)
    split = data_config.train_split
    rows = RowStream(
        *_encoded(source, tok_key, split),
        kept=_kept(source, tok_key, split, data_config.seq_len),
        seq_len=data_config.seq_len,
        seed=seed,
        pack=data_config.pack,
    )
    ds = grain.MapDataset.range(sys.maxsize).map(rows.row)
    ds = ds[process_index::process_count].batch(batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset(pipeline.READ_OPTIONS))


def eval_batches(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """This process's share of every pair of `split` once, in order, one per row, padded.

    Each pair is in exactly one process's batches; every process yields the same number of
    batches, the last ones padded with mask=False rows (index 0).
    """
    seq_len = data_config.seq_len
    source_tokens, target_tokens = _encoded(
        _source(data_config), _tokenizer_key(data_config), split
    )
    num_pairs = len(source_tokens)
    padding = {
        **{key: np.zeros(seq_len, np.int32) for key in ("source", "target_in", "target_out")},
        "mask": np.False_,
        "index": np.int32(0),
    }

    def pair_or_padding(index: int) -> dict[str, Any]:
        if index >= num_pairs:
            return padding
        row = _empty_row(seq_len)
        # Cut to L - 1 tokens, so that EOS (source, target_out) and BOS (target_in) fit.
        source, target = source_tokens[index][: seq_len - 1], target_tokens[index][: seq_len - 1]
        _put(row, 0, 0, source, target, segment=1)
        return {
            "source": row["source"],
            "target_in": row["target_in"],
            "target_out": row["target_out"],
            "mask": np.True_,
            "index": np.int32(index),
        }

    ds = pipeline.padded_eval(
        num_pairs,
        pair_or_padding,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return ds.to_iter_dataset(pipeline.READ_OPTIONS)


def tokenizer(data_config: ml_collections.ConfigDict) -> Tokenizer:
    """The configured SentencePiece tokenizer: trained on the train split, or data.tokenizer_model."""
    return _tokenizer(_source(data_config), *_tokenizer_key(data_config))


def texts(data_config: ml_collections.ConfigDict, split: str) -> tuple[list[str], list[str]]:
    """The raw (sources, targets) of `split`, in split order."""
    return _split_texts(_source(data_config), split)


def kept_pairs(data_config: ml_collections.ConfigDict) -> np.ndarray:
    """Positions in data.train_split of the training pairs that fit data.seq_len (int64)."""
    source, tok_key = _source(data_config), _tokenizer_key(data_config)
    return _kept(source, tok_key, data_config.train_split, data_config.seq_len)


def decode_text(tok: Tokenizer, ids: Any) -> str:
    """The text of token ids up to the first EOS; pad and BOS are skipped."""
    ids = np.asarray(ids).reshape(-1)
    ends = np.flatnonzero(ids == EOS)
    ids = ids[: ends[0]] if ends.size else ids
    return tok.decode(ids[(ids != PAD) & (ids != BOS)])


# -------------------------------------------------------------------------------------------------
# Rows: a pair's tokens laid into a row, first-fit packing, and the endless stream of epochs.
# -------------------------------------------------------------------------------------------------


def _empty_row(seq_len: int) -> dict[str, np.ndarray]:
    return {key: np.zeros(seq_len, np.int32) for key in TRAIN_KEYS}


def _put(row: dict, at_source: int, at_target: int, source, target, segment: int) -> None:
    """Lay one pair into `row` from the given offsets: source + EOS, BOS + target, target + EOS."""
    n, m = len(source) + 1, len(target) + 1
    row["source"][at_source : at_source + n - 1] = source
    row["source"][at_source + n - 1] = EOS
    row["source_segments"][at_source : at_source + n] = segment
    row["source_positions"][at_source : at_source + n] = np.arange(n)
    row["target_in"][at_target] = BOS
    row["target_in"][at_target + 1 : at_target + m] = target
    row["target_out"][at_target : at_target + m - 1] = target
    row["target_out"][at_target + m - 1] = EOS
    row["target_segments"][at_target : at_target + m] = segment
    row["target_positions"][at_target : at_target + m] = np.arange(m)


def pack(source_lengths: Sequence[int], target_lengths: Sequence[int], seq_len: int) -> np.ndarray:
    """Row of each item (in the given order): first fit into the OPEN_ROWS most recent rows.

    Item i needs source_lengths[i] source and target_lengths[i] target positions of the seq_len in
    a row (both already counting EOS/BOS, each <= seq_len). Rows are numbered in opening order; an
    item that fits no open row opens a new one, closing the oldest when OPEN_ROWS are open.
    """
    row_of = np.empty(len(source_lengths), np.int64)
    open_rows: list[list[int]] = []  # [row, source room, target room], oldest first
    num_rows = 0
    for item, (need_source, need_target) in enumerate(zip(source_lengths, target_lengths)):
        for room in open_rows:
            if need_source <= room[1] and need_target <= room[2]:
                room[1] -= need_source
                room[2] -= need_target
                row_of[item] = room[0]
                break
        else:
            if len(open_rows) == OPEN_ROWS:
                open_rows.pop(0)
            open_rows.append([num_rows, seq_len - need_source, seq_len - need_target])
            row_of[item] = num_rows
            num_rows += 1
    return row_of


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token ids of many texts end to end: text i is ids[starts[i]:starts[i + 1]]."""

    ids: np.ndarray  # int32
    starts: np.ndarray  # int64 [n + 1]

    @classmethod
    def of(cls, encoded: list[list[int]]) -> "Tokens":
        lengths = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, count=int(starts[-1]))
        ids.flags.writeable = False  # Shared by every caller of the cache.
        return cls(ids, starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.ids[self.starts[index] : self.starts[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


class RowStream:
    """The global stream of training rows: epoch after epoch of the kept pairs.

    `row(g)` is global row g. Epoch e's layout (which pairs, in which rows) is computed from
    (seed, e) when first needed; finding the epoch of row g needs the row counts of the epochs
    before it, so resuming late in a run packs each earlier epoch once more.
    """

    def __init__(
        self,
        source: Tokens,
        target: Tokens,
        *,
        kept: np.ndarray,
        seq_len: int,
        seed: int,
        pack: bool,
    ):
        self.source, self.target, self.kept = source, target, kept
        self.seq_len, self.seed, self.pack = seq_len, seed, pack
        self._ends: list[int] = []  # Global row just past each laid-out epoch.
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # Two, in insertion order.
        self._lock = threading.Lock()  # grain maps rows on several threads.

    def layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(pairs, starts): row r of `epoch` holds pairs[starts[r]:starts[r + 1]], in order."""
        order = np.random.default_rng((self.seed, epoch)).permutation(self.kept)
        if not self.pack:
            return order, np.arange(len(order) + 1)
        row_of = pack(self.source.lengths[order] + 1, self.target.lengths[order] + 1, self.seq_len)
        by_row = np.argsort(row_of, kind="stable")  # Within a row, pairs keep the epoch's order.
        starts = np.searchsorted(row_of[by_row], np.arange(row_of.max() + 2))
        return order[by_row], starts

    def _find(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(pairs, starts) of the epoch holding global row `index`, and the row within it."""
        with self._lock:
            while not self._ends or self._ends[-1] <= index:
                epoch = len(self._ends)
                pairs, starts = self._remember(epoch)
                self._ends.append((self._ends[-1] if self._ends else 0) + len(starts) - 1)
            epoch = bisect.bisect_right(self._ends, index)
            pairs, starts = self._layouts.get(epoch) or self._remember(epoch)
            return pairs, starts, index - (self._ends[epoch - 1] if epoch else 0)

    def _remember(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        self._layouts[epoch] = self.layout(epoch)
        while len(self._layouts) > 2:  # The current epoch and the one before are enough.
            del self._layouts[next(iter(self._layouts))]
        return self._layouts[epoch]

    def row(self, index: int) -> dict[str, np.ndarray]:
        """Global row `index`: its pairs laid end to end, segments 1, 2, ..."""
        pairs, starts, row = self._find(index)
        out = _empty_row(self.seq_len)
        at_source = at_target = 0
        for segment, pair in enumerate(pairs[starts[row] : starts[row + 1]], start=1):
            source, target = self.source[pair], self.target[pair]
            _put(out, at_source, at_target, source, target, segment)
            at_source, at_target = at_source + len(source) + 1, at_target + len(target) + 1
        return out


# -------------------------------------------------------------------------------------------------
# Reading, tokenizing and selecting, cached per process. Keys hold the content hashes of local
# files (data and tokenizer model), so an edited file is read afresh.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """What identifies the pairs: a TFDS dataset (with config) or local file(s), and the direction."""

    name: str  # TFDS name such as "number_words/en-de"; "" for local files
    data_dir: str
    mock: bool
    path: str
    target_path: str
    digest: str  # Of the local file(s).
    source_lang: str
    target_lang: str


def _source(data_config: ml_collections.ConfigDict) -> Source:
    if data_config.tokenizer != Tokenizer.kind:
        raise ConfigError(
            f"data.kind='translation' needs data.tokenizer='sentencepiece' (its pad/bos/eos ids), "
            f"not {data_config.tokenizer!r}"
        )
    path, target_path, mock = data_config.path, data_config.target_path, data_config.mock
    name, langs = data_config.name, (data_config.source_lang, data_config.target_lang)
    if langs[0] == langs[1]:
        raise ConfigError(
            f"data.source_lang and data.target_lang are both {langs[0]!r}; name two languages"
        )
    digest = ""
    if path and not mock:
        name, digest = "", parallel_file.content_digest(path, target_path)
    elif not name:
        raise ConfigError(
            "translation data needs a source: set data.path=FILE (parallel text: a TSV, or with "
            "data.target_path two aligned files), or data.name (number_words, or a TFDS "
            "translation dataset such as wmt14_translate/de-en)"
        )
    elif name == "number_words":
        name = f"number_words/{_number_words_config(*langs)}"
    return Source(name, data_config.data_dir, mock, path, target_path, digest, *langs)


def _number_words_config(source_lang: str, target_lang: str) -> str:
    english = number_words.SOURCE_LANG
    other = target_lang if source_lang == english else source_lang
    if english not in (source_lang, target_lang) or other not in number_words.LANGUAGES:
        raise ConfigError(
            f"number_words pairs English ({english!r}) with one of {list(number_words.LANGUAGES)}; "
            f"got data.source_lang={source_lang!r}, data.target_lang={target_lang!r}"
        )
    return f"{english}-{other}"


# Opening a TFDS split costs seconds (builder, metadata); info() opens every split and each
# launch in one process (tests, sweeps' planning) would open them again. Read-only sources.
@functools.lru_cache(maxsize=16)
def _open(source: Source, split: str) -> Sequence[dict[str, Any]]:
    if not source.name:
        try:
            prepared = parallel_file.builder(
                source.path, source.target_path or None, source.data_dir or None
            )
        except (ConfigError, DatasetUnavailable):
            raise
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DatasetUnavailable(
                f"could not prepare data.path={source.path!r} as a TFDS dataset "
                f"({type(e).__name__}: {reason})"
            ) from e
        try:
            return prepared.as_data_source(split)
        except ValueError as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"split {split!r} of data.path: {reason} (it has train, validation and test)"
            ) from None
    config = ml_collections.ConfigDict(
        dict(name=source.name, data_dir=source.data_dir, mock=source.mock)
    )
    return sources.open_split(config, split)


def _fields(source: Source, split_source: Any) -> tuple[str, str]:
    """The features holding the source and target texts; checks the dataset has them."""
    if not source.name:
        return "source", "target"
    features = split_source.dataset_info.features
    texts = sorted(k for k in features if isinstance(features[k], tfds.features.Text))
    langs = (source.source_lang, source.target_lang)
    if not set(langs) <= set(texts):
        raise ConfigError(
            f"data.name={source.name!r} has the text features (languages) {texts}, not "
            f"data.source_lang={langs[0]!r} and data.target_lang={langs[1]!r}; choose two of them"
            f"{_configs_hint(source.name, langs)}"
        )
    return langs


def _configs_hint(name: str, langs: tuple[str, str]) -> str:
    """ ", or name a config: wmt14_translate/de-en" when a config of `name` has both languages."""
    base = name.partition("/")[0]
    try:
        configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
    except Exception:  # Not a registered builder: nothing to suggest.
        return ""
    matching = [c for c in configs if set(langs) <= set(c.split("-"))]
    return f", or name a config: {base}/{matching[0]}" if matching else ""


@functools.lru_cache(maxsize=16)
def _texts(source: Source, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    split_source = _open(source, split)
    source_key, target_key = _fields(source, split_source)
    examples = (split_source[i] for i in range(len(split_source)))
    # Prepared TFDS datasets return UTF-8 bytes; tfds's mock data returns str.
    as_str = lambda t: t.decode("utf-8") if isinstance(t, bytes) else str(t)
    pairs = [(as_str(e[source_key]), as_str(e[target_key])) for e in examples]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _split_texts(source: Source, split: str) -> tuple[list[str], list[str]]:
    source_texts, target_texts = _texts(source, split)
    return list(source_texts), list(target_texts)


def _tokenizer_key(data_config: ml_collections.ConfigDict) -> tuple:
    """(train split, vocabulary size, model file, its content digest)."""
    path = data_config.tokenizer_model
    digest = ""
    if path:
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise DatasetUnavailable(
                f"data.tokenizer_model={path!r} cannot be read ({e.strerror}); give a "
                "SentencePiece .model file, or '' to train one on the training split"
            ) from None
    return (data_config.train_split, data_config.tokenizer_vocab_size, path, digest)


@functools.lru_cache(maxsize=4)
def _tokenizer(source: Source, split: str, vocab_size: int, path: str, digest: str) -> Tokenizer:
    if path:
        with open(path, "rb") as f:
            model = f.read()
        try:
            return Tokenizer.from_bytes(model)
        except ValueError as e:
            raise ConfigError(f"data.tokenizer_model={path!r}: {e}") from None
    source_texts, target_texts = _texts(source, split)
    sentences, chars = [], 0
    for pair in zip(source_texts, target_texts):
        if chars >= TOKENIZER_TRAINING_CHARS:
            break
        sentences.extend(pair)
        chars += len(pair[0]) + len(pair[1])
    try:
        return Tokenizer.train(sentences, vocab_size)
    except ValueError as e:
        raise ConfigError(
            f"data.tokenizer_vocab_size={vocab_size} on {split!r} of {source.name or source.path!r}"
            f": {e}"
        ) from None


@functools.lru_cache(maxsize=8)
def _encoded(source: Source, tok_key: tuple, split: str) -> tuple[Tokens, Tokens]:
    tok = _tokenizer(source, *tok_key)
    source_texts, target_texts = _texts(source, split)
    return Tokens.of(tok.encode_all(list(source_texts))), Tokens.of(
        tok.encode_all(list(target_texts))
    )


@functools.lru_cache(maxsize=8)
def _kept(source: Source, tok_key: tuple, split: str, seq_len: int) -> np.ndarray:
    source_tokens, target_tokens = _encoded(source, tok_key, split)
    fits = (source_tokens.lengths < seq_len) & (target_tokens.lengths < seq_len)  # + EOS/BOS
    kept = np.flatnonzero(fits)
    kept.flags.writeable = False
    if dropped := len(fits) - len(kept):
        log.warning(
            "dropped %d of %d training pairs (%.2f%%) of %s: longer than data.seq_len=%d tokens "
            "with EOS on either side",
            dropped,
            len(fits),
            100 * dropped / len(fits),
            split,
            seq_len,
        )
    return kept
