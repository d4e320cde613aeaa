"""Check that tokenizers minigpt trains and saves load in other libraries with the same ids.

    python benchmarks/check_tokenizer_interop.py TRAIN_TEXT [TEST_TEXT ...] [--merges 1000]

Trains ``Tokenizer.train(TRAIN_TEXT, 256 + merges, special_tokens=["<|endoftext|>"])``, saves it as
``hf`` (vocab.json + merges.txt) and ``tiktoken``, loads those with Hugging Face ``tokenizers``
(``models.BPE.from_file`` + ``ByteLevel(add_prefix_space=False)``) and with ``tiktoken.Encoding``
(r50k pattern), and compares ids on every test text (the-verdict.txt when none is given).
Needs tiktoken and tokenizers (not minigpt dependencies). Exit status 1 on any difference.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from minigpt.tokenizer import R50K_PATTERN, Tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("train_text")
    ap.add_argument("test_texts", nargs="*")
    ap.add_argument("--merges", type=int, default=1000)
    args = ap.parse_args()
    import tiktoken
    import tokenizers
    from tiktoken.load import load_tiktoken_bpe
    from tokenizers import decoders, models, pre_tokenizers

    def read(p):
        with open(p, encoding="utf-8", newline="") as f:
            return f.read()
    tests = args.test_texts or [os.path.join(ROOT, "minigpt", "assets", "texts", "the-verdict.txt")]
    tok = Tokenizer.train(read(args.train_text), 256 + args.merges, special_tokens=["<|endoftext|>"])
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        tok.save(d, "hf")
        hf = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        tok.save(d, "tiktoken")
        enc = tiktoken.Encoding("minigpt-trained", pat_str=R50K_PATTERN,
                                mergeable_ranks=load_tiktoken_bpe(os.path.join(d, "tokenizer.tiktoken")),
                                special_tokens=tok.special_tokens)
        for p in tests:
            text = read(p)
            want = tok.encode_ordinary(text)
            for name, got in (("HF tokenizers", hf.encode(text).ids), ("tiktoken", enc.encode_ordinary(text))):
                ok = got == want
                bad += not ok
                print(f"{os.path.basename(p)}: {name} {'EQUAL' if ok else 'DIFFERENT'} ({len(want):,} tokens)")
    print("all equal" if not bad else f"{bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
