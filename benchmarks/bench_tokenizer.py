"""Tokenizer speed: minigpt vs tiktoken vs Hugging Face tokenizers, one thread, same run.

    python benchmarks/bench_tokenizer.py CORPUS.txt [CORPUS.txt ...] [--repeat 5] [--lines]
           [--train-corpus corpus_prose_1MB.txt] [--merges 1000] [--edu-json edu_merges.json]

Corpora: build them with `bash ../shared/tools/make_corpus.sh /work/corpus` (not in the repo);
without arguments the-verdict.txt (20 kB) is used. Each corpus is read with newline="" and encoded
as ONE string (encode_ordinary). Rows:
- minigpt warm: the tokenizer's pre-token cache kept between repeats (what a long-lived tokenizer
  sees); minigpt cold: the cache emptied before every repeat (every distinct word merged once;
  with --lines, emptied once before each pass over the lines) - the fair row against tiktoken,
  which keeps no cache;
  minigpt readable path: regex.findall + dict cache + batched merges (use_fast=False), warm;
- tiktoken / HF tokenizers: when installed (they are not minigpt dependencies), built offline from
  minigpt's shipped GPT-2 files; their ids are checked against minigpt's before timing.
Repeats alternate between the implementations so machine load hits all alike; the table shows
median MB/s (wall clock), min..max over repeats, median MB per CPU-second of this process (steady
on a machine shared with other jobs, where wall-clock rates drop for everyone), and the ratio
minigpt/peer of the medians, wall clock and [CPU time].
Training: Tokenizer.train(first file, 256 + merges), median time; with --edu-json (written by
benchmarks/edu_train_reference.py) the learned tokens are compared with tiktoken's educational
trainer, token by token; HF tokenizers' BpeTrainer (1 thread) is timed too when installed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")           # HF tokenizers: one thread
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")            # minigpt's kernels are serial anyway

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from minigpt.tokenizer import R50K_PATTERN, Tokenizer  # noqa: E402

ASSETS = os.path.join(ROOT, "minigpt", "assets", "gpt2")


def peers(tok: Tokenizer, tmp: str) -> dict:
    out = {}
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        enc = tiktoken.Encoding("gpt2-offline", pat_str=R50K_PATTERN,
                                mergeable_ranks=load_tiktoken_bpe(os.path.join(ASSETS, "gpt2.tiktoken")),
                                special_tokens={"<|endoftext|>": 50256})
        out[f"tiktoken {tiktoken.__version__}"] = enc.encode_ordinary
    except ImportError:
        print("# tiktoken not installed: no tiktoken row")
    try:
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers
        tok.save(tmp, format="hf")
        hf = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(tmp, "vocab.json"),
                                                       os.path.join(tmp, "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        out[f"HF tokenizers {tokenizers.__version__}"] = lambda s: hf.encode(s).ids
    except ImportError:
        print("# tokenizers not installed: no HF row")
    return out


def bench_encode(path: str, tok: Tokenizer, others: dict, repeat: int, lines: bool) -> None:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6
    want = tok.encode_ordinary(text)
    impls = {"minigpt warm": tok.encode_ordinary}

    def cold(s, _t=tok):
        _t.clear_cache()
        return _t.encode_ordinary(s)
    impls["minigpt cold"] = cold
    readable = Tokenizer.gpt2()
    readable.use_fast = False
    impls["minigpt readable path"] = readable.encode_ordinary
    if readable.encode_ordinary(text) != want:
        print("# minigpt readable path: ids DIFFERENT from the compiled path")
    if lines:
        items = text.splitlines(keepends=True)

        def per_line(fn):
            return lambda s: [fn(x) for x in items]

        def cold_lines(s, _t=tok):                        # the cache emptied once per pass
            _t.clear_cache()
            return [_t.encode_ordinary(x) for x in items]
        impls = {k: (cold_lines if k == "minigpt cold" else per_line(v)) for k, v in impls.items()}
        others = {k: per_line(v) for k, v in others.items()}
    if lines:
        want = [i for ids in impls["minigpt warm"](text) for i in ids]
    for name, fn in others.items():
        got = fn(text)
        if lines:
            got = [i for ids in got for i in ids]
        ok = got == want
        print(f"# {name}: ids {'EQUAL' if ok else 'DIFFERENT'} to minigpt ({len(got):,} vs {len(want):,} tokens)")
        impls[name] = fn
    times = {k: [] for k in impls}
    cpu = {k: [] for k in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(text)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    how = f"line by line ({len(text.splitlines()):,} lines)" if lines else "whole string"
    print(f"\n{os.path.basename(path)}: {mb:.2f} MB, {len(want):,} tokens, {how}, {repeat} repeats")
    print(f"{'implementation':<28} {'MB/s median':>12} {'min..max':>14} {'MB/CPU-s':>9}   "
          "ratio minigpt (warm, cold) / this: wall [CPU]")
    med = {k: mb / statistics.median(v) for k, v in times.items()}
    mcpu = {k: mb / max(statistics.median(v), 1e-9) for k, v in cpu.items()}

    def r(a, b):
        return f"{med[a] / med[b]:.2f} [{mcpu[a] / mcpu[b]:.2f}]"
    for name, ts in times.items():
        lo, hi = mb / max(ts), mb / min(ts)
        ratio = "" if name.startswith("minigpt") else \
            f"   warm {r('minigpt warm', name)}" + (f"  cold {r('minigpt cold', name)}" if "minigpt cold" in med else "")
        print(f"{name:<28} {med[name]:>12.2f} {lo:>6.2f}..{hi:<6.2f} {mcpu[name]:>9.2f}{ratio}")


def bench_train(path: str, merges: int, repeat: int, edu_json: str | None) -> None:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    ts = []
    tok = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        tok = Tokenizer.train(text, 256 + merges, progress=False)
        ts.append(time.perf_counter() - t0)
    print(f"\ntraining {merges} merges on {os.path.basename(path)} ({len(text.encode()) / 1e6:.2f} MB): "
          f"minigpt median {statistics.median(ts):.2f} s (min {min(ts):.2f}, max {max(ts):.2f}, {repeat} runs)")
    mine = [b for b, i in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1]) if i >= 256]
    if edu_json:
        with open(edu_json) as f:
            edu = json.load(f)
        ref = [bytes.fromhex(h) for h in edu["tokens"]]
        n = min(len(ref), len(mine))
        first = next((i for i in range(n) if ref[i] != mine[i]), None)
        status = "IDENTICAL, in order" if first is None and len(ref) == len(mine) else \
            f"DIFFERENT at token {first}: educational {ref[first]!r}, minigpt {mine[first]!r}"
        print(f"tokens vs tiktoken._educational.bpe_train ({len(ref)} tokens, its run took "
              f"{edu['seconds']:.0f} s): {status}")
    try:
        import tokenizers
        from tokenizers import models, pre_tokenizers, trainers
        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tr = trainers.BpeTrainer(vocab_size=256 + merges, show_progress=False,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t0 = time.perf_counter()
        hf.train_from_iterator([text], trainer=tr)
        print(f"HF tokenizers BpeTrainer (1 thread): {time.perf_counter() - t0:.2f} s")
    except ImportError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus", nargs="*")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train-corpus", default=None, help="text for the training benchmark")
    ap.add_argument("--merges", type=int, default=1000)
    ap.add_argument("--train-repeat", type=int, default=3)
    ap.add_argument("--edu-json", default=None)
    ap.add_argument("--lines", action="store_true", help="also time line-by-line encoding")
    args = ap.parse_args()
    import numba
    print(f"# python {platform.python_version()}, numba {numba.__version__}, {os.cpu_count()} cpus, "
          f"one thread everywhere")
    t0 = time.perf_counter()
    tok = Tokenizer.gpt2()
    tok.encode_ordinary("warm up the kernel")
    print(f"# Tokenizer.gpt2() + first encode: {time.perf_counter() - t0:.2f} s")
    corpora = args.corpus or [os.path.join(ROOT, "minigpt", "assets", "texts", "the-verdict.txt")]
    with tempfile.TemporaryDirectory() as tmp:
        others = peers(tok, tmp)
        for path in corpora:
            bench_encode(path, tok, others, args.repeat, lines=False)
            if args.lines:
                bench_encode(path, tok, others, args.repeat, lines=True)
    if args.train_corpus:
        bench_train(args.train_corpus, args.merges, args.train_repeat, args.edu_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
