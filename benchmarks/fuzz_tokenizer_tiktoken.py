"""Property-based fuzzing of minigpt's tokenizer against tiktoken (text the corpora lack).

    python benchmarks/fuzz_tokenizer_tiktoken.py [--examples 3000] [--train-examples 150] [--seed 0]
           [--edu-file FILE [--edu-file FILE2]] [--edu-bytes 100000] [--edu-merges 300]

Needs tiktoken and hypothesis (tiktoken is NOT a minigpt dependency, so this is a benchmark-side
check, never a test). tiktoken's gpt2 is built offline from minigpt/assets/gpt2/gpt2.tiktoken.
Hypothesis generates (deterministically for a given --seed):
- multilingual text: words of 20 scripts (Latin with diacritics, Greek, Cyrillic, Arabic, Hebrew,
  Devanagari, Thai, CJK, Hangul, ...), combining marks, digits of several scripts;
- emoji: ZWJ families, skin tones, flags, keycaps, variation selectors;
- whitespace-heavy text: every character ``\\s`` matches (NBSP, U+2000..U+200A, U+3000, U+0085,
  U+2028/9, U+001C..U+001F, ...) in runs, plus zero-width characters that are NOT whitespace;
- arbitrary Unicode (hypothesis' own ``text()``), lone surrogates, ``<|endoftext|>`` pieces;
and checks, per string: ``encode_ordinary`` ids; ``encode`` with ``allowed_special="all"`` ids;
``encode`` with the default raising exactly when tiktoken raises; ``decode(encode(s)) == s``.
Random id lists: ``decode_bytes``/``decode`` equal to tiktoken's ``decode_bytes``/``decode``.
Training: random small texts, ``Tokenizer.train`` tokens equal to ``tiktoken._educational.bpe_train``
(in order). Exit status 0 when every check held; the first counter-example is printed otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minigpt.tokenizer import R50K_PATTERN, Tokenizer  # noqa: E402

WORDS = [
    "naïve", "café", "Straße", "Ærø", "façade", "jalapeño", "Łódź", "İstanbul", "ǅemal",    # Latin
    "Ελληνικά", "λόγος", "Привет", "мир", "Ёлка", "Україна", "Ქართული", "Հայերեն",          # Greek, Cyrillic, ...
    "مرحبا", "بالعالم", "שלום", "עולם", "नमस्ते", "दुनिया", "স্বাগতম", "தமிழ்", "ไทย", "ภาษา",
    "日本語", "テキスト", "ひらがな", "中文", "文本", "한국어", "텍스트", "ᠮᠣᠩᠭᠣᠯ", "ኢትዮጵያ",
    "Z̤͔ͧ̑̓ä͖̭̈̇", "e\u0301", "a\u0308\u0301", "ﬁ", "Ⅻ", "ＡＢＣ", "ｶﾀｶﾅ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𐍈",
    "٣٤٥", "७८९", "三四五", "½", "²³", "١٢", "𝟙𝟚", "１２３", "0x1F", "3.14",
    "'s", "'T", "'ll", "'VE", "’s", "don't", "O'Neil's",
]
EMOJI = [
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇩🇪", "🇯🇵", "1️⃣", "#️⃣", "❤️", "☺︎",
    "🧑🏿\u200d💻", "🫠", "👩🏻\u200d🤝\u200d👨🏾", "\U0001fae8", "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f",
              "\x85", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004",
              "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029",
              "\u202f", "\u205f", "\u3000"]
NOT_WHITESPACE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u180e"]   # zero-width, not \s
OTHER = ["<|endoftext|>", "<|endoftext|", "|endoftext|>", "<|", "|>", "--", "...", "!?", "“", "”",
         "«", "»", "—", "·", "\x00", "\x7f", "\ufffd", "\U0010ffff"]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00"]

atoms = st.one_of(
    st.sampled_from(WORDS), st.sampled_from(EMOJI), st.sampled_from(WHITESPACE),
    st.lists(st.sampled_from(WHITESPACE), min_size=2, max_size=12).map("".join),   # whitespace runs
    st.sampled_from(NOT_WHITESPACE), st.sampled_from(OTHER),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=4),                  # any code point
    st.text("ab '.1\n", min_size=1, max_size=6),
)
texts = st.one_of(
    st.lists(atoms, max_size=40).map("".join),
    st.text(max_size=80),                                                            # hypothesis' own
    st.lists(st.one_of(atoms, st.sampled_from(SURROGATES)), max_size=20).map("".join),
)


def make_tiktoken():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(os.path.join(ROOT, "minigpt", "assets", "gpt2", "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-offline", pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def runs_text(seed_: int, n_bytes: int) -> str:
    """A text of letter runs and alternations ("aaaa", "ababab", "aabaab", ...): overlapping pairs,
    merges next to merges - the cases a trainer's local count updates can get wrong."""
    import random
    rng = random.Random(seed_)
    parts, n = [], 0
    while n < n_bytes:
        p = rng.choice(["a", "b", "ab", "ba", "aab", " ", "é"]) * rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 17])
        p += rng.choice([" ", "\n", "  ", "", "x"])
        parts.append(p)
        n += len(p.encode())
    return "".join(parts)


def outcome(fn, s):
    """ids, or the exception type (ValueError both sides = same behaviour)."""
    try:
        return fn(s)
    except ValueError:
        return "ValueError"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=3000, help="generated strings (encode/decode)")
    ap.add_argument("--train-examples", type=int, default=150, help="generated training texts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edu-file", action="append", default=[],
                    help="also train on the first --edu-bytes of this file (repeatable; 'runs' = a "
                         "generated text of letter runs) and compare --edu-merges tokens with the "
                         "educational trainer (slow: it recounts every pair after every merge)")
    ap.add_argument("--edu-bytes", type=int, default=100_000)
    ap.add_argument("--edu-merges", type=int, default=300)
    args = ap.parse_args()
    import tiktoken
    from tiktoken._educational import bpe_train as edu_train

    enc = make_tiktoken()
    tok = Tokenizer.gpt2()
    counts = {"strings": 0, "chars": 0, "special_raises": 0, "surrogate_strings": 0, "id_lists": 0,
              "train_texts": 0, "train_merges": 0,
              "train_duplicates": 0}
    common = dict(database=None, deadline=None, derandomize=False, print_blob=True,
                  suppress_health_check=list(HealthCheck))

    @seed(args.seed)
    @settings(max_examples=args.examples, **common)
    @given(texts)
    def check_encode(s):
        counts["strings"] += 1
        counts["chars"] += len(s)
        assert tok.encode_ordinary(s) == enc.encode_ordinary(s), "encode_ordinary"
        assert tok.encode(s, allowed_special="all") == enc.encode(s, allowed_special="all"), "allowed=all"
        mine, theirs = outcome(tok.encode, s), outcome(enc.encode, s)
        assert mine == theirs, f"default encode: minigpt {mine!r}, tiktoken {theirs!r}"
        counts["special_raises"] += mine == "ValueError"
        if any("\ud800" <= c <= "\udfff" for c in s):
            counts["surrogate_strings"] += 1
        else:
            assert tok.decode(tok.encode_ordinary(s)) == s, "round trip"

    @seed(args.seed)
    @settings(max_examples=args.examples, **common)
    @given(st.lists(st.integers(0, 50256), max_size=30))
    def check_decode(ids):
        counts["id_lists"] += 1
        assert tok.decode_bytes(ids) == enc.decode_bytes(ids)
        assert tok.decode(ids) == enc.decode(ids)

    train_text = st.lists(st.one_of(st.sampled_from(WORDS + EMOJI + WHITESPACE + ["the", " the", "aaa", "ab"]),
                                    st.text("abc \n", min_size=1, max_size=5)),
                          min_size=5, max_size=80).map("".join)

    @seed(args.seed)
    @settings(max_examples=args.train_examples, **common)
    @given(train_text, st.integers(1, 40))
    def check_train(text, k):
        n_pairs = sum(len(w.encode()) - 1 for w in __import__("regex").findall(R50K_PATTERN, text))
        k = min(k, n_pairs)
        if k == 0:
            return
        # the educational trainer fails (max of an empty Counter) when the pairs run out: step down
        while k > 0:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ranks = edu_train(text, 256 + k, R50K_PATTERN, visualise=None)
                break
            except ValueError:
                k -= 1
        if k == 0:
            return
        want = [b for b, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
        learned = [a + b for a, b in Tokenizer.train(text, 256 + k, progress=False).merges]
        if len(learned) != len(set(learned)):
            # two pairs spelled the same bytes: the educational trainer moves that token to the
            # later rank, minigpt keeps its first id (docs/tokenizer.md); compare the learned order
            counts["train_duplicates"] += 1
        got = [t for i, t in enumerate(learned) if t not in learned[i + 1:]]
        assert got == want, f"train: first difference at {next(i for i in range(len(want)) if got[i] != want[i])}"
        counts["train_texts"] += 1
        counts["train_merges"] += len(learned)

    print(f"# tiktoken {tiktoken.__version__}, seed {args.seed}")
    ok = True
    for name, fn in (("encode", check_encode), ("decode", check_decode), ("train", check_train)):
        t0 = time.perf_counter()
        try:
            fn()
            status = "PASS"
        except Exception as e:                                   # hypothesis printed the example
            ok = False
            status = f"FAIL ({type(e).__name__}: {str(e)[:300]})"
        print(f"{name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"strings {counts['strings']:,} ({counts['chars']:,} characters; {counts['surrogate_strings']:,} "
          f"with lone surrogates; {counts['special_raises']:,} where encode() raised on both sides); "
          f"id lists {counts['id_lists']:,}; training texts {counts['train_texts']:,} "
          f"({counts['train_merges']:,} merges compared, {counts['train_duplicates']} with a token learned twice)")
    for path in args.edu_file:
        if path == "runs":
            text = runs_text(args.seed, args.edu_bytes)
        else:
            with open(path, "rb") as f:
                text = f.read(args.edu_bytes).decode("utf-8", errors="ignore")
        t0 = time.perf_counter()
        ranks = edu_train(text, 256 + args.edu_merges, R50K_PATTERN, visualise=None)
        t_edu = time.perf_counter() - t0
        want = [b for b, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
        t0 = time.perf_counter()
        learned = [a + b for a, b in Tokenizer.train(text, 256 + args.edu_merges, progress=False).merges]
        t_mine = time.perf_counter() - t0
        got = [t for i, t in enumerate(learned) if t not in learned[i + 1:]]
        same = got == want
        ok &= same
        first = "" if same else f" first difference at token {next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])}"
        print(f"train on {os.path.basename(path)}[:{len(text.encode()):,} B], {args.edu_merges} merges: "
              f"{'IDENTICAL, in order' if same else 'DIFFERENT'}{first} (educational {t_edu:.1f} s, "
              f"minigpt {t_mine:.2f} s)", flush=True)
    print("ALL EQUAL" if ok else "MISMATCH FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
