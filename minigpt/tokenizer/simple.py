"""The book's chapter 2 word tokenizers: a regex split and a vocabulary of the pieces.

    pieces = split_words(text)                    # 4,690 pieces for the-verdict.txt
    vocab = build_vocab(pieces)                   # 1,130 distinct pieces -> ids, sorted
    tok = SimpleTokenizerV1(vocab)
    tok.encode('"It\'s the last he painted, you know,"')

V2 adds ``<|endoftext|>`` and ``<|unk|>`` (ids 1130 and 1131 for the-verdict) and maps unknown
words to ``<|unk|>``. These are teaching tools; GPT-2 uses :class:`minigpt.Tokenizer` (BPE).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

SPLIT_RE = re.compile(r'([,.:;?_!"()\']|--|\s)')
UNK = "<|unk|>"
EOT = "<|endoftext|>"


def split_words(text: str) -> list[str]:
    """The book's ``re.split(r'([,.:;?_!"()\\']|--|\\s)', text)``, stripped, empty pieces dropped."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return [p.strip() for p in SPLIT_RE.split(text) if p.strip()]


def build_vocab(pieces: Iterable[str], extra: Iterable[str] = ()) -> dict[str, int]:
    """Sorted distinct pieces -> ids 0..n-1, then the ``extra`` tokens (e.g. ``[EOT, UNK]``)."""
    words = sorted(set(pieces))
    words += [e for e in extra if e not in words]
    return {w: i for i, w in enumerate(words)}


class SimpleTokenizerV1:
    """Word tokenizer over a fixed vocabulary; an unknown word raises ValueError."""

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in vocab.items()}

    def encode(self, text: str) -> list[int]:
        ids = []
        for p in split_words(text):
            if p not in self.str_to_int:
                raise ValueError(f"the word {p!r} is not in the vocabulary; SimpleTokenizerV2 maps "
                                 f"unknown words to {UNK}")
            ids.append(self.str_to_int[p])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        try:
            text = " ".join(self.int_to_str[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"id {e.args[0]!r} is not in the vocabulary (0..{len(self.int_to_str) - 1})") from None
        return re.sub(r'\s+([,.?!"()\'])', r"\1", text)       # no space before punctuation


class SimpleTokenizerV2(SimpleTokenizerV1):
    """V1 plus ``<|unk|>`` for unknown words (the vocabulary must hold ``<|unk|>``)."""

    def __init__(self, vocab: dict[str, int]):
        if UNK not in vocab:
            raise ValueError(f"SimpleTokenizerV2 needs {UNK!r} in the vocabulary; build it with "
                             f"build_vocab(pieces, extra=[{EOT!r}, {UNK!r}])")
        super().__init__(vocab)

    def encode(self, text: str) -> list[int]:
        unk = self.str_to_int[UNK]
        return [self.str_to_int.get(p, unk) for p in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        try:
            text = " ".join(self.int_to_str[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"id {e.args[0]!r} is not in the vocabulary (0..{len(self.int_to_str) - 1})") from None
        return re.sub(r'\s+([,.:;?!"()\'])', r"\1", text)     # V2 also covers : and ;
