"""Training: equal to a naive re-implementation of tiktoken._educational.bpe_train (recount every
pair after every merge; ties go to the pair seen first in the text), deterministic, clear errors."""
import collections

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.tokenizer.bpe_merge import bpe_merge_py
from minigpt.tokenizer import GPT2_PATTERN, R50K_PATTERN, Tokenizer



def naive_train(text, vocab_size, pattern=R50K_PATTERN):
    """The educational algorithm, written out: returns the new tokens' bytes in order."""
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in regex.findall(pattern, text)]
    ranks = {bytes([i]): i for i in range(256)}
    new = []
    while len(ranks) < vocab_size:
        stats = collections.Counter()
        for piece in words:
            for pair in zip(piece[:-1], piece[1:], strict=True):
                stats[pair] += 1
        best = max(stats, key=lambda x: stats[x])          # first inserted wins ties
        tb = best[0] + best[1]
        ranks[tb] = len(ranks)
        new.append(tb)
        out = []
        for w in words:
            nw, i = [], 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    nw.append(tb)
                    i += 2
                else:
                    nw.append(w[i])
                    i += 1
            if i == len(w) - 1:
                nw.append(w[i])
            out.append(nw)
        words = out
    return new


def trained_tokens(tok):
    return [b for b, i in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1]) if i >= 256]


def test_equals_educational_on_verdict(verdict):
    tok = Tokenizer.train(verdict, 256 + 150)
    assert trained_tokens(tok) == naive_train(verdict, 256 + 150)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "ab", " ", "  ", "\n", "é", "'s", "x", "aaa"]),
                min_size=2, max_size=60).map("".join))
def test_equals_educational_property(text):
    n_pairs = sum(len(w.encode()) - 1 for w in regex.findall(GPT2_PATTERN, text))
    k = min(12, n_pairs)
    # stop before the text runs out of pairs (the naive trainer would fail there)
    new = naive_train_upto(text, k)
    tok = Tokenizer.train(text, 256 + len(new))
    assert trained_tokens(tok) == new


def naive_train_upto(text, k):
    """naive_train for up to k merges, stopping when no pair is left."""
    out = []
    for n in range(1, k + 1):
        try:
            out = naive_train(text, 256 + n)
        except ValueError:                                  # max() of an empty Counter
            break
    return out


def test_tie_break_first_seen():
    # "cd" and "ab" both occur twice; "cd" is seen first in the text, so it merges first
    tok = Tokenizer.train("cd ab cd ab", 257)
    assert trained_tokens(tok) == [b"cd"]
    tok = Tokenizer.train("ab cd ab cd", 257)
    assert trained_tokens(tok) == [b"ab"]
    # overlapping pairs count twice ("aaa" holds (a, a) twice) and merge left to right
    tok = Tokenizer.train("aaa bb", 258)
    assert trained_tokens(tok) == [b"aa", b"aaa"]


def test_deterministic_and_encodes(verdict):
    a = Tokenizer.train(verdict, 400, special_tokens=["<|endoftext|>"])
    b = Tokenizer.train(verdict, 400, special_tokens=["<|endoftext|>"])
    assert a.merges == b.merges and a.mergeable_ranks == b.mergeable_ranks
    assert a.n_vocab == 401 and a.eot_token == 400
    ids = a.encode(verdict[:2000] + "<|endoftext|>", allowed_special="all")
    assert ids[-1] == 400 and max(ids[:-1]) < 400
    assert a.decode(ids) == verdict[:2000] + "<|endoftext|>"
    # the merge table reproduces BPE of the learned merges: every pre-token by the reference loop
    pieces = a.pre_tokenize(verdict[:2000])
    ref = [i for p in pieces for i in bpe_merge_py(list(p.encode("utf-8")), a._table)]
    assert a.encode_ordinary(verdict[:2000]) == ref
    # training compresses the text it learned from
    assert len(a.encode_ordinary(verdict)) < 0.6 * len(verdict.encode("utf-8"))


def test_special_tokens_are_cut_out_of_training():
    text = "<|endoftext|>" * 30 + "ab ab ab"
    assert trained_tokens(Tokenizer.train(text, 257)) == [b"<|"]
    tok = Tokenizer.train(text, 257, special_tokens=["<|endoftext|>"])
    assert trained_tokens(tok) == [b"ab"]
    assert tok.encode("ab<|endoftext|>", allowed_special="all") == [256, 257]


def test_custom_pattern_and_special_ids():
    tok = Tokenizer.train("hello hello world", 260, pattern=r"\S+|\s+", special_tokens={"<|x|>": 1000})
    assert tok.pattern == r"\S+|\s+" and tok.special_tokens == {"<|x|>": 1000}
    assert tok.n_vocab == 1001


def test_train_errors():
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train("", 300)
    with pytest.raises(ValueError, match="at least 256"):
        Tokenizer.train("abc", 255)
    with pytest.raises(TypeError, match="str"):
        Tokenizer.train(b"abc", 300)
    with pytest.raises(TypeError, match="int"):
        Tokenizer.train("abc", 300.0)
    with pytest.raises(ValueError, match="no more pairs"):
        Tokenizer.train("ab", 258)
    assert Tokenizer.train("abc", 256).n_vocab == 256       # no merges: bytes only


def test_progress_bar(capsys):
    Tokenizer.train("ab ab ab cd", 258, progress=True)
    assert "merge" in capsys.readouterr().err
