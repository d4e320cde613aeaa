"""Run tiktoken's educational BPE trainer once and save its tokens, for comparison with minigpt.

    python benchmarks/edu_train_reference.py CORPUS_1MB.txt OUT.json [--merges 1000]

Needs tiktoken (NOT a minigpt dependency). It takes about 4 minutes for 1,000 merges on 1 MB:
tiktoken._educational.bpe_train recounts every pair after every merge. The output JSON holds
the pattern, the seconds taken, and "tokens": the bytes (hex) of ranks 256, 257, ... in order.
benchmarks/bench_tokenizer.py --edu-json OUT.json compares minigpt's Tokenizer.train with it.
"""
from __future__ import annotations

import argparse
import json
import time

R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--merges", type=int, default=1000)
    args = ap.parse_args()
    from tiktoken._educational import bpe_train

    with open(args.corpus, encoding="utf-8", newline="") as f:
        text = f.read()
    t0 = time.perf_counter()
    ranks = bpe_train(text, 256 + args.merges, R50K_PAT, visualise=None)
    dt = time.perf_counter() - t0
    tokens = [b.hex() for b, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
    with open(args.out, "w") as f:
        json.dump({"corpus": args.corpus, "n_bytes": len(text.encode("utf-8")),
                   "merges": args.merges, "pattern": R50K_PAT, "seconds": dt,
                   "tokens": tokens}, f, indent=0)
    print(f"tiktoken._educational.bpe_train: {args.merges} merges in {dt:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
