"""Tokenizers: text <-> int token ids, serializable so a run's workdir can decode its samples.

    tok = TOKENIZERS["char"].fit(text)   # or TOKENIZERS["gpt2"].fit(text): nothing to fit
    ids = tok.encode("To be")            # np.ndarray int32
    tok.decode(ids)                      # "To be"
    tok = from_json(tok.to_json())       # {"kind": "char", ...} -> the right class

    tok = SentencePieceTokenizer.train(sentences, vocab_size=8000)   # translation's tokenizer
    tok = SentencePieceTokenizer.from_bytes(tok.to_bytes())          # its .model file

- "char": one token per distinct character of the training text, in sorted order (nanoGPT's
  data/shakespeare_char/prepare.py: 65 tokens for tiny Shakespeare).
- "gpt2": GPT-2's byte-level BPE (Radford et al. 2019) through tiktoken: 50,257 tokens, the
  last, 50256, being <|endoftext|>. tiktoken downloads its two BPE files on first use and
  caches them; offline, copy them into the cache first (see `GPT2Tokenizer.load_encoding`).
- "wordpiece": BERT's WordPiece (Devlin et al. 2019, Section 3; Wu et al. 2016) through Hugging
  Face `tokenizers`: BERT's normaliser (lower case, accents stripped) and pre-tokeniser, trained on
  a text at first use or read from a BERT `vocab.txt`. The special tokens are looked up by name
  ([PAD], [UNK], [CLS], [SEP], [MASK]), as their ids differ between vocabularies (Google's
  uncased vocab.txt has [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103; ours put them first).
  Serialised as its vocab.txt.
- "sentencepiece": a unigram SentencePiece model (Kudo 2018) trained on sentences, e.g. both sides
  of a translation corpus for one shared vocabulary (research/data/translation.py), with fixed ids
  pad 0, unk 1, bos 2, eos 3. Serialised as SentencePiece's own .model bytes.
"""

import base64
import io
import json
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import sentencepiece
import tiktoken
import tokenizers as hf_tokenizers


class Tokenizer(Protocol):
    """What the data pipeline and the sampler rely on."""

    kind: str  # key in TOKENIZERS, stored in the JSON

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> str: ...


class CharTokenizer:
    """One id per character: the sorted set of a text's characters (nanoGPT shakespeare_char)."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        """The vocabulary of `text`."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of `text`; a character outside the vocabulary is a ValueError."""
        try:
            return np.array([self.stoi[ch] for ch in text], dtype=np.int32)
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this {self.vocab_size}-character vocabulary; "
                "fit the tokenizer on text that contains it"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`."""
        return "".join(self.itos[int(i)] for i in ids)

    def to_json(self) -> str:
        """{"kind": "char", "chars": [...]}; the list order is the id order."""
        return json.dumps({"kind": self.kind, "chars": self.chars})

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        """Inverse of `to_json`."""
        return cls(json.loads(text)["chars"])


class GPT2Tokenizer:
    """GPT-2's byte-level BPE via tiktoken's "gpt2" encoding; 50,257 ids, eot_token = 50256."""

    kind = "gpt2"

    def __init__(self, encoding: tiktoken.Encoding | None = None):
        # `encoding` defaults to GPT-2's; tests pass a small offline BPE to exercise this class.
        self.encoding = encoding if encoding is not None else self.load_encoding()

    @staticmethod
    def load_encoding() -> tiktoken.Encoding:
        """tiktoken's "gpt2" encoding, or a one-line RuntimeError saying how to get its files."""
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken surfaces network failures as requests/urllib errors
            raise RuntimeError(
                "tiktoken could not load the 'gpt2' BPE files (vocab.bpe, encoder.json); they "
                "download on first use and are cached in $TIKTOKEN_CACHE_DIR (default "
                "<tmp>/data-gym-cache): run once with network access or copy that cache here "
                f"({type(e).__name__})"
            ) from e

    @classmethod
    def fit(cls, text: str) -> "GPT2Tokenizer":
        """GPT-2's fixed vocabulary; `text` is ignored (same call as CharTokenizer.fit)."""
        del text
        return cls()

    @property
    def vocab_size(self) -> int:
        """50,257 for GPT-2."""
        return self.encoding.n_vocab

    @property
    def eot_token(self) -> int:
        """<|endoftext|>, which GPT-2 training data puts between documents."""
        return self.encoding.eot_token

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of `text`; <|endoftext|> in the text is encoded as the special token."""
        return np.array(self.encoding.encode(text, allowed_special="all"), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.encoding.decode([int(i) for i in ids])

    def to_json(self) -> str:
        """{"kind": "gpt2", "encoding": "gpt2"}: the vocabulary is tiktoken's, by name."""
        return json.dumps({"kind": self.kind, "encoding": self.encoding.name})

    @classmethod
    def from_json(cls, text: str) -> "GPT2Tokenizer":
        """Inverse of `to_json` (for GPT-2's own encoding)."""
        name = json.loads(text)["encoding"]
        if name != "gpt2":
            raise ValueError(f"GPT2Tokenizer stores tiktoken's 'gpt2' encoding, not {name!r}")
        return cls()


class SentencePieceTokenizer:
    """A SentencePiece model: pad 0, unk 1, bos 2, eos 3, then the trained pieces.

    Trained as the flax WMT example trains its vocabulary (examples/wmt/tokenizer.py): a unigram
    model with character_coverage=1.0 and SentencePiece's default NFKC-based normalisation
    ("nmt_nfkc": runs of spaces become one, so decode(encode(x)) == x for text with single
    spaces). `vocab_size` is a soft limit (hard_vocab_limit=False): a corpus too small for it
    (number words have under a thousand useful pieces) gets a smaller vocabulary, not an error.

    Training is deterministic: the same sentences give the same model bytes. We hand SentencePiece
    every sentence (no sampling, so no random seed is involved) and fix num_threads=1; its EM
    sums over threads, so models trained with different thread counts differ in their scores.
    """

    kind = "sentencepiece"
    PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
    TRAINER_OPTIONS = dict(
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        minloglevel=2,  # SentencePiece's progress lines: warnings and errors only.
    )

    def __init__(self, model: bytes):
        """`model`: the bytes of a SentencePiece .model file with our four special ids."""
        self.model = bytes(model)
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.model)
        except RuntimeError:
            raise ValueError("these bytes are not a SentencePiece model (.model file)") from None
        ids = {
            "pad": self.processor.pad_id(),
            "unk": self.processor.unk_id(),
            "bos": self.processor.bos_id(),
            "eos": self.processor.eos_id(),
        }
        wanted = dict(zip(ids, (self.PAD_ID, self.UNK_ID, self.BOS_ID, self.EOS_ID)))
        if ids != wanted:
            raise ValueError(
                f"this SentencePiece model has special ids {ids}; we need {wanted} (train it with "
                "--pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3)"
            )

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int) -> "SentencePieceTokenizer":
        """A model of at most `vocab_size` pieces trained on `sentences` (one text each).

        Raises ValueError, with SentencePiece's reason, when it cannot train (no text, or a
        vocabulary too small for the characters of the text).
        """
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                vocab_size=vocab_size,
                **cls.TRAINER_OPTIONS,
            )
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [""])[-1]
            raise ValueError(f"SentencePiece could not train a vocabulary: {reason}") from None
        return cls(model.getvalue())

    @classmethod
    def fit(cls, text: str) -> "SentencePieceTokenizer":
        """Not for a token stream: SentencePiece is trained on sentences (see `train`).

        RuntimeError, which research/data/text.py reports in one line.
        """
        del text
        raise RuntimeError(
            "data.tokenizer='sentencepiece' is trained on the sentences of data.kind='translation'; "
            "for data.kind='text' choose char or gpt2"
        )

    @property
    def vocab_size(self) -> int:
        """Pieces, the four special ids included."""
        return self.processor.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of `text`, without bos/eos."""
        return np.array(self.processor.encode(text), dtype=np.int32)

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """The ids of many texts at once (SentencePiece encodes them in parallel)."""
        return self.processor.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; pad, bos and eos decode to nothing, unk to " ⁇ "."""
        return self.processor.decode([int(i) for i in ids])

    def to_bytes(self) -> bytes:
        """The .model file: what `spm_encode --model=...` and `from_bytes` read."""
        return self.model

    @classmethod
    def from_bytes(cls, model: bytes) -> "SentencePieceTokenizer":
        """Inverse of `to_bytes`."""
        return cls(model)

    def to_json(self) -> str:
        """{"kind": "sentencepiece", "model": base64 of the .model bytes}."""
        return json.dumps({"kind": self.kind, "model": base64.b64encode(self.model).decode()})

    @classmethod
    def from_json(cls, text: str) -> "SentencePieceTokenizer":
        """Inverse of `to_json`."""
        return cls(base64.b64decode(json.loads(text)["model"]))


class WordPieceTokenizer:
    """BERT's WordPiece vocabulary and its uncased text pipeline, via Hugging Face `tokenizers`.

    `train` learns a vocabulary from texts (tokenizers' WordPieceTrainer: the five special tokens
    first, then the characters, then merged pieces, up to `vocab_size`); `from_vocab` reads a
    vocab.txt, one piece per line, id = line number, as Google's BERT releases ship it.
    """

    kind = "wordpiece"
    SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, vocab: list[str]):
        """`vocab`: the pieces in id order; it must contain the five special tokens."""
        self.vocab = list(vocab)
        ids = {piece: i for i, piece in enumerate(self.vocab)}
        missing = [t for t in self.SPECIAL_TOKENS if t not in ids]
        if missing or len(ids) != len(self.vocab):
            raise ValueError(
                f"a WordPiece vocabulary needs each of {', '.join(self.SPECIAL_TOKENS)} once and "
                f"no repeated piece; this one lacks {missing or 'nothing'} and has "
                f"{len(self.vocab) - len(ids)} repeats"
            )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            ids[t] for t in self.SPECIAL_TOKENS
        )
        tokenizer = hf_tokenizers.Tokenizer(
            hf_tokenizers.models.WordPiece(vocab=ids, unk_token="[UNK]")
        )
        self.tokenizer = self._with_bert_pipeline(tokenizer)

    @staticmethod
    def _with_bert_pipeline(tokenizer: hf_tokenizers.Tokenizer) -> hf_tokenizers.Tokenizer:
        tokenizer.normalizer = hf_tokenizers.normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = hf_tokenizers.decoders.WordPiece()
        return tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "WordPieceTokenizer":
        """A vocabulary of at most `vocab_size` pieces learned from `texts` (deterministic)."""
        tokenizer = cls._with_bert_pipeline(
            hf_tokenizers.Tokenizer(hf_tokenizers.models.WordPiece(unk_token="[UNK]"))
        )
        trainer = hf_tokenizers.trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(cls.SPECIAL_TOKENS), show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer)
        vocab = tokenizer.get_vocab()
        return cls(sorted(vocab, key=vocab.__getitem__))

    @classmethod
    def fit(cls, text: str) -> "WordPieceTokenizer":
        """Not for a plain token stream: masked-LM and classification data train it on their
        splits with data.tokenizer_vocab_size (research/data/masked_text.py, labelled_text.py)."""
        del text
        raise RuntimeError(
            "data.tokenizer='wordpiece' serves data.kind='masked_text' and 'text_classification'; "
            "for data.kind='text' choose char or gpt2"
        )

    @property
    def vocab_size(self) -> int:
        """Pieces, the special tokens included."""
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of `text`, without [CLS]/[SEP]."""
        return np.array(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """The ids of many texts at once (tokenizers encodes them in parallel)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The (lower-cased) text of `ids`, special tokens skipped."""
        return self.tokenizer.decode([int(i) for i in ids])

    def to_vocab(self) -> str:
        """vocab.txt: one piece per line, in id order."""
        return "".join(f"{piece}\n" for piece in self.vocab)

    @classmethod
    def from_vocab(cls, text: str) -> "WordPieceTokenizer":
        """Inverse of `to_vocab` (also reads Google's and Hugging Face's BERT vocab.txt)."""
        return cls(text.splitlines())

    def to_json(self) -> str:
        """{"kind": "wordpiece", "vocab": [...]}."""
        return json.dumps({"kind": self.kind, "vocab": self.vocab})

    @classmethod
    def from_json(cls, text: str) -> "WordPieceTokenizer":
        """Inverse of `to_json`."""
        return cls(json.loads(text)["vocab"])


TOKENIZERS: dict[str, type] = {
    "char": CharTokenizer,
    "gpt2": GPT2Tokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "wordpiece": WordPieceTokenizer,
}


def from_json(text: str) -> Tokenizer:
    """Rebuild whichever tokenizer `to_json` wrote (it records its "kind")."""
    kind = json.loads(text)["kind"]
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].from_json(text)
