"""The chapter 2 word tokenizers against the book's numbers (book-notes §2)."""
import os

import pytest

from minigpt.tokenizer.simple import EOT, UNK, SimpleTokenizerV1, SimpleTokenizerV2, build_vocab, split_words

VERDICT = os.path.join(os.path.dirname(__file__), "..", "minigpt", "assets", "texts", "the-verdict.txt")


@pytest.fixture(scope="module")
def pieces():
    with open(VERDICT, encoding="utf-8", newline="") as f:
        return split_words(f.read())


def test_split_and_vocab(pieces):
    assert len(pieces) == 4_690
    assert pieces[:6] == ["I", "HAD", "always", "thought", "Jack", "Gisburn"]
    vocab = build_vocab(pieces)
    assert len(vocab) == 1_130
    v2 = build_vocab(pieces, extra=[EOT, UNK])
    assert len(v2) == 1_132 and v2[EOT] == 1130 and v2[UNK] == 1131


def test_v1_book_ids(pieces):
    tok = SimpleTokenizerV1(build_vocab(pieces))
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = tok.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    assert tok.decode(ids) == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    with pytest.raises(ValueError, match="'Hello' is not in the vocabulary"):
        tok.encode("Hello, do you like tea?")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([99999])


def test_v2_book_ids(pieces):
    tok = SimpleTokenizerV2(build_vocab(pieces, extra=[EOT, UNK]))
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    ids = tok.encode(text)
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert tok.decode(ids) == ("<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of "
                               "the <|unk|>.")
    assert tok.decode(tok.encode("Xq: Yq; Zq")) == "<|unk|>: <|unk|>; <|unk|>"   # V2 also fixes ":" ";"


def test_v2_needs_unk(pieces):
    with pytest.raises(ValueError, match="<\\|unk\\|>"):
        SimpleTokenizerV2(build_vocab(pieces))
    with pytest.raises(TypeError, match="str"):
        split_words(b"bytes")
