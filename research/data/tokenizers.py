"""Tokenizers: text <-> int token ids, serializable so a run's workdir can decode its samples.

    tok = TOKENIZERS["char"].fit(text)   # or TOKENIZERS["gpt2"].fit(text): nothing to fit
    ids = tok.encode("To be")            # np.ndarray int32
    tok.decode(ids)                      # "To be"
    tok = from_json(tok.to_json())       # {"kind": "char", ...} -> the right class

- "char": one token per distinct character of the training text, in sorted order (nanoGPT's
  data/shakespeare_char/prepare.py: 65 tokens for tiny Shakespeare).
- "gpt2": GPT-2's byte-level BPE (Radford et al. 2019) through tiktoken: 50,257 tokens, the
  last, 50256, being <|endoftext|>. tiktoken downloads its two BPE files on first use and
  caches them; offline, copy them into the cache first (see `GPT2Tokenizer.load_encoding`).
"""

import json
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import tiktoken


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


TOKENIZERS: dict[str, type[CharTokenizer] | type[GPT2Tokenizer]] = {
    "char": CharTokenizer,
    "gpt2": GPT2Tokenizer,
}


def from_json(text: str) -> Tokenizer:
    """Rebuild whichever tokenizer `to_json` wrote (it records its "kind")."""
    kind = json.loads(text)["kind"]
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].from_json(text)
