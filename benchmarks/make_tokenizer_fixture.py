"""Write tests/fixtures/tokenizer_gpt2_cases.json: (text, ids) pairs encoded ONCE by tiktoken, and
fuzz minigpt's GPT-2 tokenizer against tiktoken on random strings.

    python benchmarks/make_tokenizer_fixture.py [--out tests/fixtures/tokenizer_gpt2_cases.json]
                                                [--fuzz 20000] [--seed 0] [--all-codepoints]

Needs tiktoken (not a minigpt dependency; the tests read the JSON and never import tiktoken).
tiktoken is built offline from minigpt/assets/gpt2/gpt2.tiktoken with the r50k pattern.
--fuzz N: N random strings from a mixed alphabet (ASCII, whitespace variants, apostrophes, digits of
several scripts, CJK, combining marks, emoji, lone surrogates) are encoded by both; prints mismatches.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

CASES = [
    # book (book-notes §2, §9.1) and the rasbt issues #558 ("Hello,") and #944 (several spaces)
    "Hello, world. Is this-- a test?", "Hello,", "Hello, I am", "Hello,world", "Hello ,  world",
    "This is some text", "Every effort moves you", "Akwirw ier",
    "Hello, do you like tea? In the sunlit terraces of someunknownPlace.",
    "  Hello", "   Hello   world  ", "\tHello\t\tworld", "Hello\n\n  World\n",
    "    return x", "        if x:\n            y = 1\n", "a    ", "a \n", "a  \n\n  ",
    # whitespace flavours
    "\u2028line\u2029para", "ideo\u3000space", "v\x0btab\x0cfeed", "next\x85line", "\r\n\r\n  \r\n",
    "x \u00a0 y", " \u200b ", "\u3000\u3000a",
    # contractions and apostrophes
    "'S 'T 'RE 'VE 'M 'LL 'D", "''s'''t'", "'ll've're", "O'Neil's", "can't've", " 's", "x's's",
    "’s ’t ’re", "`s", "don't\n's",
    # numbers
    "12345678901234567890", "1,000,000.00", "v1.2.3-rc4", "٣٤٥ ७८९ 三四五", "½¾⅓", "x1y2z3",
    "0x1F 0b1010 1e+10", "²³ ⁴⁵", " 1 2  3   4",
    # scripts and symbols
    "Ελληνικά κείμενο", "עברית טקסט", "ไทย ภาษา", "한국어 텍스트", "中文文本，标点。", "देवनागरी",
    "a\u0301e\u0300i\u0302", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "🏳️‍🌈 👩🏽‍💻 1️⃣", "\U0001f600\U0001f601x",
    "∀x∈ℝ: x²≥0", "→←↑↓", "©®™", "<<>>!!??", "...---...", "#!/usr/bin/env python3",
    "\x00", "\x7f\x80", "\ufeffBOM", "\uffff\ufffd", "\U0010ffff",
    # special-looking text (ordinary path)
    "<|endoftext|>", "<|endoftext|><|endoftext|>", "x<|endoftext|>y", "<|endoftext|", "|endoftext|>",
    "<|im_start|>user", "< |endoftext| >",
    # surrogates: tiktoken replaces lone ones with U+FFFD (and joins a split pair)
    "a\ud800b", "\udfff", "x\ud83d\ude00y", "\ud83d",
    # long runs
    "a" * 3000, " " * 2000, "\n" * 500, "ab" * 1000, "😀" * 300, "-=" * 500, "a " * 1000,
    "The quick brown fox jumps over the lazy dog. " * 20,
]


def make_tiktoken(assets: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(os.path.join(assets, "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-offline", pat_str=R50K, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789") + list(" " * 12) + list("\n\t\r\x0b\x0c")
            + list("'''’`\".,;:!?-_()[]{}<>|/\\@#$%^&*+=~") + ["\u00a0", "\u3000", "\u2028", "\x85", "\u200b"]
            + list("éüñçøßÆ") + list("٣७三½²") + list("日本語中文한국") + ["\u0301", "\u0300"]
            + ["😀", "👍", "\u200d", "🏽"] + ["<|endoftext|>", "'s", "'ll", "'VE", "\ud800", "\udc00"])


def random_text(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 5, 8, 13, 30, 80, 200])
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "tokenizer_gpt2_cases.json"))
    ap.add_argument("--fuzz", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all-codepoints", action="store_true",
                    help="compare on every code point (no surrogates) in 5 separator contexts")
    args = ap.parse_args()
    assets = os.path.join(ROOT, "minigpt", "assets", "gpt2")
    enc = make_tiktoken(assets)
    import tiktoken

    # every 97th vocabulary token whose bytes are valid UTF-8, as text (the token's own text)
    vocab_texts = []
    for i in range(0, 50256, 97):
        try:
            vocab_texts.append(enc.decode_single_token_bytes(i).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    cases = [{"text": t, "ids": enc.encode_ordinary(t)} for t in CASES]
    cases.append({"text": "".join(vocab_texts), "ids": enc.encode_ordinary("".join(vocab_texts))})
    special = ["Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.",
               "<|endoftext|>", "a<|endoftext|><|endoftext|>b", " <|endoftext|> ", "\n<|endoftext|>\n",
               "x  <|endoftext|>  y", "<|endoftext|>'s"]
    scases = [{"text": t, "ids": enc.encode(t, allowed_special={"<|endoftext|>"})} for t in special]
    doc = {
        "_header": ("Generated ONCE by benchmarks/make_tokenizer_fixture.py with tiktoken "
                    f"{tiktoken.__version__} (gpt2 / r50k_base built offline from "
                    "minigpt/assets/gpt2/gpt2.tiktoken). 'ordinary' = encode_ordinary, 'special' = "
                    "encode(allowed_special={'<|endoftext|>'}). Texts with lone surrogates are stored "
                    "with JSON \\ud800-style escapes."),
        "ordinary": cases, "special": scases,
    }
    with open(args.out, "w", encoding="utf-8") as f:            # one case per line
        f.write('{"_header": ' + json.dumps(doc["_header"]) + ",\n")
        for key in ("ordinary", "special"):
            rows = [json.dumps(c, ensure_ascii=True) for c in doc[key]]
            f.write(f' "{key}": [\n  ' + ",\n  ".join(rows) + "\n ]" + (",\n" if key == "ordinary" else "\n"))
        f.write("}\n")
    print(f"wrote {len(cases)} ordinary + {len(scases)} special cases to {args.out}")

    if args.all_codepoints:
        from minigpt.tokenizer import Tokenizer
        tok = Tokenizer.gpt2()
        chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        bad = 0
        for k in range(0, len(chars), 2000):
            for sep in (" ", "a", "1", "!", "  "):
                s = sep.join(chars[k:k + 2000]) + sep
                if enc.encode_ordinary(s) != tok.encode_ordinary(s):
                    bad += 1
                    print("MISMATCH in code point block", hex(ord(chars[k])), "separator", repr(sep))
        print(f"all code points: {len(chars):,} characters x 5 contexts, {bad} mismatching blocks")
        if bad:
            return 1
    if args.fuzz:
        from minigpt.tokenizer import Tokenizer
        tok = Tokenizer.gpt2()
        rng = random.Random(args.seed)
        bad = 0
        for _ in range(args.fuzz):
            s = random_text(rng)
            want = enc.encode_ordinary(s)
            got = tok.encode_ordinary(s)
            if want != got:
                bad += 1
                if bad <= 5:
                    print("MISMATCH ordinary", repr(s), want, got)
            want = enc.encode(s, allowed_special="all")
            got = tok.encode(s, allowed_special="all")
            if want != got:
                bad += 1
                if bad <= 5:
                    print("MISMATCH special", repr(s), want, got)
            if "\ud800" not in s and "\udc00" not in s and tok.decode(got) != s:
                bad += 1
                print("ROUNDTRIP", repr(s))
        print(f"fuzz: {args.fuzz} random strings, {bad} mismatches")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
