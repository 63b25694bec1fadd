"""Tokenizers: char round trips and JSON; the GPT-2 BPE wrapper on a small offline BPE and,
when tiktoken's files are available, on GPT-2's own encoding."""

import json

import numpy as np
import pytest
import tiktoken

from research.data import tokenizers

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_char_vocab_is_sorted_unique_characters():
    tok = tokenizers.CharTokenizer.fit(TEXT)
    assert tok.chars == sorted(set(TEXT))
    assert tok.vocab_size == len(set(TEXT)) == 30
    assert tok.chars[0] == "\n" and tok.stoi["\n"] == 0 and tok.itos[1] == " "


def test_char_round_trip():
    tok = tokenizers.CharTokenizer.fit(TEXT)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.shape == (len(TEXT),)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids.tolist()) == TEXT
    assert tok.encode("").shape == (0,) and tok.decode([]) == ""


def test_char_json_round_trip():
    tok = tokenizers.CharTokenizer.fit(TEXT)
    text = tok.to_json()
    assert json.loads(text) == {"kind": "char", "chars": sorted(set(TEXT))}
    for restored in (tokenizers.CharTokenizer.from_json(text), tokenizers.from_json(text)):
        assert isinstance(restored, tokenizers.CharTokenizer)
        assert restored.stoi == tok.stoi and restored.itos == tok.itos
        np.testing.assert_array_equal(restored.encode(TEXT), tok.encode(TEXT))


def test_char_unknown_character_is_a_clear_error():
    tok = tokenizers.CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match="'z' is not in this 3-character vocabulary"):
        tok.encode("abz")


def test_table_and_unknown_kind():
    assert sorted(tokenizers.TOKENIZERS) == ["char", "gpt2", "sentencepiece", "wordpiece"]
    assert tokenizers.TOKENIZERS["char"] is tokenizers.CharTokenizer
    assert tokenizers.TOKENIZERS["gpt2"] is tokenizers.GPT2Tokenizer
    assert tokenizers.TOKENIZERS["wordpiece"] is tokenizers.WordPieceTokenizer
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
        tokenizers.from_json('{"kind": "bpe"}')
    wordpiece = tokenizers.WordPieceTokenizer.train(["to be or not to be"] * 5, vocab_size=40)
    assert tokenizers.from_json(wordpiece.to_json()).vocab == wordpiece.vocab


def _small_bpe() -> tiktoken.Encoding:
    """A byte-level BPE with a few merges and GPT-2's split pattern, built without any download."""
    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"sp", b"ea", b"spea", b"speak", b" s", b" speak"):
        ranks[merge] = len(ranks)
    pat_str = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding(
        name="small_bpe",
        pat_str=pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


def test_bpe_wrapper_on_a_small_offline_bpe():
    tok = tokenizers.GPT2Tokenizer(_small_bpe())
    assert tok.vocab_size == 256 + 6 + 1 and tok.eot_token == 262
    ids = tok.encode("speak speak")
    assert ids.dtype == np.int32
    assert ids.tolist() == [259, 261]  # "speak", " speak": merges applied
    text = "Speak, speak. Ünïcödé ✓" + "<|endoftext|>"
    ids = tok.encode(text)
    assert ids[-1] == tok.eot_token
    assert tok.decode(ids) == text
    assert json.loads(tok.to_json()) == {"kind": "gpt2", "encoding": "small_bpe"}


def _gpt2_or_skip() -> tokenizers.GPT2Tokenizer:
    try:
        return tokenizers.GPT2Tokenizer()
    except RuntimeError as e:
        pytest.skip(f"tiktoken's GPT-2 BPE files are unavailable offline, so skipped: {e}")


def test_gpt2_bpe_round_trip():
    tok = _gpt2_or_skip()
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encode("Hello world").tolist() == [15496, 995]  # GPT-2's own ids
    ids = tok.encode(TEXT + "<|endoftext|>")
    assert ids[-1] == 50256 and ids.max() < 50257
    assert tok.decode(ids) == TEXT + "<|endoftext|>"
    restored = tokenizers.from_json(tok.to_json())
    assert isinstance(restored, tokenizers.GPT2Tokenizer)
    np.testing.assert_array_equal(restored.encode(TEXT), tok.encode(TEXT))
