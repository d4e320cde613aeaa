"""GPT-2 tokenizer: ids equal to tiktoken's gpt2 (via known ids and a tiktoken-made fixture), special
tokens, bad input, the Numba merge kernel against the readable reference, and round-trip properties."""
import json
import os
import random

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.tokenizer.bpe_merge import bpe_merge_batch, bpe_merge_py
from minigpt.tokenizer import GPT2_PATTERN, R50K_PATTERN, Tokenizer

HERE = os.path.dirname(__file__)
FIXTURE = os.path.join(HERE, "fixtures", "tokenizer_gpt2_cases.json")


# ------------------------------------------------------------------ known answers (book-notes §2, §9.1)

KNOWN = [
    ("Every effort moves you", [6109, 3626, 6100, 345]),
    ("Hello, I am", [15496, 11, 314, 716]),
    ("Akwirw ier", [33901, 86, 343, 86, 220, 959]),
    ("This is some text", [1212, 318, 617, 2420]),
    ("hello   world", [31373, 220, 220, 995]),          # needs \s+(?!\S): not [.., 220, 6894]
    ("    return x", [220, 220, 220, 1441, 2124]),       # GPT-2 has no multi-space tokens
    (" and established himself in", [290, 4920, 2241, 287]),
    ("Hello, world", [15496, 11, 995]),                  # rasbt #558: "Hello," is 15496, 11
]


@pytest.mark.parametrize("text,ids", KNOWN)
def test_known_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


# rasbt/LLMs-from-scratch #558 (a merge-list BPE loaded from encoder.json + vocab.bpe gave "Hello,"
# -> [1544, 18798, 11]) and #944 (several leading spaces came back moved after decode). Ids from
# tiktoken's gpt2 (benchmarks/fuzz_tokenizer_tiktoken.py builds the same encoding offline).
RASBT_REGRESSIONS = [
    ("Hello", [15496]), ("Hello,", [15496, 11]), (",", [11]),                     # #558
    ("Implementation, done.", [3546, 32851, 11, 1760, 13]),                          # #558
    ("  Hello World.", [220, 18435, 2159, 13]),                                       # #944
    (" Hello  World.", [18435, 220, 2159, 13]),                                       # #944
    ("Hello   World.\n\n   Bye", [15496, 220, 220, 2159, 13, 628, 220, 220, 47843]),  # #944
]


@pytest.mark.parametrize("loader", ["gpt2", "openai_files"])
def test_rasbt_558_944_regressions(tok, loader):
    if loader == "openai_files":                           # the merge-list rule of #558's tokenizer
        assets = os.path.join(HERE, "..", "minigpt", "assets", "gpt2")
        t = _openai_files_tok(assets)
    else:
        t = tok
    for text, ids in RASBT_REGRESSIONS:
        assert t.encode(text) == ids, text
        assert t.decode(t.encode(text)) == text


_OPENAI = []


def _openai_files_tok(assets):
    if not _OPENAI:
        _OPENAI.append(Tokenizer.from_openai_files(os.path.join(assets, "encoder.json"),
                                                   os.path.join(assets, "vocab.bpe")))
    return _OPENAI[0]


def test_book_special_example(tok):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces" "of someunknownPlace."
    want = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
            1659, 617, 34680, 27271, 13]                 # notebook cell 74 ("terracesof": 1659)
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == want
    assert tok.decode(want) == text


def test_verdict(tok, verdict):
    assert len(verdict) == 20_479
    ids = tok.encode(verdict)
    assert len(ids) == 5_145
    assert ids[50:54] == [290, 4920, 2241, 287]
    assert ids[:5] == [40, 367, 2885, 1464, 1807]
    assert tok.decode(ids) == verdict


def test_vocab_facts(tok):
    assert tok.n_vocab == 50_257
    assert tok.eot_token == 50_256
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert tok.decode([50256]) == "<|endoftext|>"
    assert tok.token_bytes(220) == b" " and tok.token_bytes(198) == b"\n"


# ------------------------------------------------------------------ the tiktoken-made fixture

def _fixture():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


def test_fixture_ordinary(tok):
    doc = _fixture()
    assert len(doc["ordinary"]) > 50
    for case in doc["ordinary"]:
        assert tok.encode_ordinary(case["text"]) == case["ids"], repr(case["text"][:60])


def test_fixture_special(tok):
    for case in _fixture()["special"]:
        assert tok.encode(case["text"], allowed_special={"<|endoftext|>"}) == case["ids"], case["text"]


def test_fixture_line_by_line_and_cold_cache(tok):
    """Cases again with an empty cache (misses go through the kernel in one batch) and per line."""
    fresh = Tokenizer.gpt2()
    cases = _fixture()["ordinary"]
    joined = "".join(c["text"] for c in cases if "\ud800" not in c["text"])
    assert fresh.encode_ordinary(joined) == tok.encode_ordinary(joined)
    for line in joined.splitlines(keepends=True)[:200]:
        assert fresh.encode_ordinary(line) == tok.encode_ordinary(line)


def test_cache_bound(tok, verdict, monkeypatch):
    """Past the cache bound the cache is emptied, keeping only the words of the current text."""
    import minigpt.tokenizer.bpe as T
    monkeypatch.setattr(T, "_CACHE_MAX", 50)
    small = Tokenizer.gpt2()
    small.use_fast = False                                 # the readable path's dict cache
    for chunk in (verdict[:5000], verdict[5000:12000], verdict):
        assert small.encode_ordinary(chunk) == tok.encode_ordinary(chunk)
    assert len(small._cache) <= len(set(small.pre_tokenize(verdict)))


def test_fast_cache_reset(tok, verdict, monkeypatch):
    """The compiled encoder's cache starts over when full; ids stay exact."""
    import minigpt.tokenizer.bpe_fast as F
    monkeypatch.setattr(F, "_MAX_ENTRIES", 64)
    small = Tokenizer.gpt2()
    assert small._fast.c_meta.shape[0] == 64
    for chunk in (verdict[:5000], verdict, verdict[100:9000]):
        assert small.encode_ordinary(chunk) == tok.encode_ordinary(chunk)
    assert 0 < small._fast.c_n[0] <= 64
    monkeypatch.setattr(F, "_MAX_ENTRIES", 1 << 10)
    monkeypatch.setattr(F, "_KEY_BYTES", 40)              # arenas smaller than some pre-tokens
    monkeypatch.setattr(F, "_VAL_IDS", 8)
    tiny = Tokenizer.gpt2()
    text = verdict[:3000] + " " + "x" * 100 + " supercalifragilisticexpialidocious" * 3
    assert tiny.encode_ordinary(text) == tok.encode_ordinary(text)
    assert tiny._fast.c_n[1] <= 40 and tiny._fast.c_n[2] <= 8


# ------------------------------------------------------------------ the compiled path vs the readable one

def _regex_path(text):
    ref = _shared_regex()
    return ref.encode_ordinary(text)


_REGEX = []


def _shared_regex():
    if not _REGEX:
        t = Tokenizer.gpt2()
        t.use_fast = False
        _REGEX.append(t)
    return _REGEX[0]


def test_fast_equals_regex_path(tok, verdict):
    assert tok.use_fast
    for c in _fixture()["ordinary"]:
        assert tok.encode_ordinary(c["text"]) == _regex_path(c["text"]), repr(c["text"][:50])
    assert tok.encode_ordinary(verdict) == _regex_path(verdict)
    for line in verdict.splitlines(keepends=True)[:300]:
        assert tok.encode_ordinary(line) == _regex_path(line)


RICH = (list("ab Z1\n\t\r\x0b\x0c\x1c\x85'’`\".,;!?-_()<>|") + ["\u00a0", "\u3000", "\u2028", "\u200b",
        "é", "ß", "٣", "७", "½", "²", "日", "한", "\u0301", "😀", "\u200d", "🏽", "\U0010ffff", "\ufffd"]
        + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "<|endoftext|>", "  ", "\r\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(RICH), max_size=40).map("".join))
def test_fast_pre_tokenizer_equals_regex(s):
    tok = _shared()
    tok.encode_ordinary("")                                # make sure the compiled encoder exists
    assert tok._fast.pre_tokenize(s) == regex.findall(GPT2_PATTERN, s)
    assert tok.encode_ordinary(s) == _regex_path(s)


def test_category_table_matches_regex():
    from minigpt.tokenizer.bpe_fast import LETTER, NUMBER, OTHER, SPACE, category_table
    cat = category_table()
    rng = np.random.default_rng(0)
    cps = [c for c in rng.integers(0, 0x110000, 3000).tolist() if not 0xD800 <= c <= 0xDFFF]
    cps += list(range(0, 0x3000))
    for c in cps:
        ch = chr(c)
        want = (LETTER if regex.match(r"\p{L}", ch) else NUMBER if regex.match(r"\p{N}", ch)
                else SPACE if regex.match(r"\s", ch) else OTHER)
        assert cat[c] == want, hex(c)


# ------------------------------------------------------------------ special tokens

def test_ordinary_treats_special_as_text(tok):
    ids = tok.encode_ordinary("<|endoftext|>")
    assert ids == [27, 91, 437, 1659, 5239, 91, 29]
    assert 50256 not in ids
    assert tok.decode(ids) == "<|endoftext|>"


def test_disallowed_special_raises(tok):
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("hi <|endoftext|>")
    with pytest.raises(ValueError, match="endoftext"):
        tok.encode("<|endoftext|>", allowed_special=set())


def test_special_opt_outs(tok):
    text = "a <|endoftext|> b"
    assert tok.encode(text, disallowed_special=()) == tok.encode_ordinary(text)
    assert tok.encode(text, allowed_special="all") == [64, 220, 50256, 275]
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [64, 220, 50256, 275]
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="'all'"):
        tok.encode(text, allowed_special="some")


# ------------------------------------------------------------------ bad input

def test_bad_input_types(tok):
    with pytest.raises(TypeError, match="decode bytes first"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="str"):
        tok.encode_ordinary(123)
    with pytest.raises(TypeError, match="sequence of int"):
        tok.decode("abc")
    with pytest.raises(TypeError, match="int ids"):
        tok.decode([1, "x"])


def test_decode_ids_outside_vocab(tok):
    with pytest.raises(ValueError, match="50257 is not in the vocabulary"):
        tok.decode([1, 50257])
    with pytest.raises(ValueError, match="-1 is not in the vocabulary"):
        tok.decode([-1])                                    # no silent Python negative indexing
    assert tok.decode(np.array([15496, 11], dtype=np.int32)) == "Hello,"
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


def test_decode_cut_utf8(tok):
    ids = tok.encode("😀")                                  # 4 bytes, several tokens
    assert len(ids) > 1
    assert tok.decode(ids[:1]) == "\ufffd"                 # documented: replacement character
    assert tok.decode_bytes(ids[:1]) + tok.decode_bytes(ids[1:]) == "😀".encode()
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids[:1], errors="strict")


def test_lone_surrogates_become_replacement_char(tok):
    """Documented behaviour (tiktoken's): a lone surrogate is encoded as U+FFFD."""
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.decode(tok.encode("\udfff")) == "\ufffd"
    assert tok.encode("\ud83d\ude00") == tok.encode("😀")   # a split surrogate pair is joined


# ------------------------------------------------------------------ pattern, kernel

def test_patterns_agree_on_verdict_and_fixture(verdict):
    texts = [verdict] + [c["text"] for c in _fixture()["ordinary"]]
    for t in texts:
        assert regex.findall(GPT2_PATTERN, t) == regex.findall(R50K_PATTERN, t)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab 1\n\t'sltdmvre!.\u00a0\u3000é日") + ["'s", "'ll", "  "]),
                max_size=40).map("".join))
def test_patterns_agree_property(s):
    assert regex.findall(GPT2_PATTERN, s) == regex.findall(R50K_PATTERN, s)


def test_kernel_matches_reference(tok, verdict):
    rng = random.Random(0)
    pieces = list(dict.fromkeys(tok.pre_tokenize(verdict)))
    pieces += ["".join(rng.choice("abcé日😀 '") for _ in range(rng.randint(1, 30))) for _ in range(300)]
    pieces += ["a" * 257, "ab" * 100]
    bs = [p.encode("utf-8") for p in pieces]
    data = np.frombuffer(b"".join(bs), dtype=np.uint8)
    offsets = np.zeros(len(bs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in bs], out=offsets[1:])
    out, off = bpe_merge_batch(data, offsets, tok._byte_ids, tok._csr)
    table = tok._table
    for k, b in enumerate(bs):
        want = bpe_merge_py([int(tok._byte_ids[x]) for x in b], table)
        assert out[off[k]:off[k + 1]].tolist() == want, pieces[k]


def test_long_run_is_fast_and_exact(tok):
    s = "a" * 200_000                                      # one pre-token: the O(n log n) heap path
    ids = Tokenizer.gpt2().encode_ordinary(s)
    assert tok.decode(ids) == s
    assert ids[:3] == tok.encode_ordinary("a" * 3000)[:3]


# ------------------------------------------------------------------ properties

@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_roundtrip_any_text(s):
    tok = _shared()
    assert tok.decode(tok.encode_ordinary(s)) == s
    assert tok.decode(tok.encode(s, disallowed_special=())) == s


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_concatenation_at_pretoken_boundary(a, b):
    """When the cut between a and b is a pre-token boundary of a+b (the pre-tokens of a+b are those
    of a, then those of b), encode(a + b) == encode(a) + encode(b)."""
    tok = _shared()
    pieces = tok.pre_tokenize(a + b)
    if pieces == tok.pre_tokenize(a) + tok.pre_tokenize(b):
        assert tok.encode_ordinary(a + b) == tok.encode_ordinary(a) + tok.encode_ordinary(b)
    # always: the ids of a text are the ids of its pre-tokens, concatenated
    assert tok.encode_ordinary(a + b) == [i for p in pieces for i in tok.encode_ordinary(p)]


def test_concatenation_at_boundaries_of_verdict(tok, verdict):
    pieces = tok.pre_tokenize(verdict)
    cuts = np.cumsum([len(p) for p in pieces])[:-1]
    whole = tok.encode_ordinary(verdict)
    checked = 0
    for k in random.Random(1).sample(cuts.tolist(), 40):
        a, b = verdict[:k], verdict[k:]
        if tok.pre_tokenize(a) + tok.pre_tokenize(b) == pieces:
            assert tok.encode_ordinary(a) + tok.encode_ordinary(b) == whole
            checked += 1
    assert checked >= 30                                   # most cuts are clean boundaries


_SHARED = []


def _shared():
    if not _SHARED:
        _SHARED.append(Tokenizer.gpt2())
    return _SHARED[0]
