"""``minigpt generate``: continue a prompt with a trained checkpoint or OpenAI's GPT-2 weights."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HELP = ("Continue a prompt with a model: a training run ('--checkpoint runs/quick', written by "
        "'minigpt train') or OpenAI's GPT-2 ('--model gpt2'). Greedy by default; --temperature and "
        "--top-k sample instead (seeded, so a command repeats its output).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="a run directory of 'minigpt train' (its latest checkpoint) or one "
                          "step-* checkpoint directory")
    src.add_argument("--model", metavar="NAME_OR_PATH",
                     help="gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded once), or a Hugging "
                          "Face GPT-2 directory / .safetensors file")
    p.add_argument("--prompt", default="Every effort moves you", help="the text to continue")
    p.add_argument("--max-new-tokens", "-n", type=int, default=50, help="tokens to add at most")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (always the most likely token); e.g. 0.8 samples, higher is wilder")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only among the k most likely tokens (ties at the k-th kept)")
    p.add_argument("--seed", type=int, default=123, help="the sampling seed")
    p.add_argument("--num-samples", type=int, default=1,
                   help="continuations to generate side by side (a batch; each stops at its own "
                        "<|endoftext|>)")
    p.add_argument("--no-eos", action="store_true",
                   help="do not stop at <|endoftext|> (default: each sample stops there)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context each step instead of using the KV cache "
                        "(same tokens, slower)")
    p.add_argument("--context-size", type=int, default=None,
                   help="the model sees at most the last N tokens (default: its context length)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS and the Numba kernels (default: as the environment sets them)")


def load_tokenizer_for_checkpoint(path: str | Path):
    """The tokenizer a training run used: GPT-2's, or the one saved in the run directory."""
    from minigpt.checkpoint import read_state, resolve
    from minigpt.tokenizer import Tokenizer

    ckpt = resolve(path)
    ref = read_state(ckpt)["state"].get("tokenizer", "gpt2")
    if ref == "gpt2":
        return Tokenizer.gpt2()
    for d in (ckpt.parent / ref, ckpt / ref):
        if (d / "tokenizer_config.json").is_file():
            return Tokenizer.load(str(d))
    raise FileNotFoundError(f"the run's tokenizer directory '{ref}' is missing next to {ckpt}")


def run(args: argparse.Namespace) -> int:
    from minigpt.generate import generate

    if args.threads:
        from minigpt.train import set_num_threads

        set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    t0 = time.perf_counter()
    if args.checkpoint:
        from minigpt.checkpoint import model_from_checkpoint

        model, meta = model_from_checkpoint(args.checkpoint, dtype=dtype)
        tokenizer = load_tokenizer_for_checkpoint(args.checkpoint)
        source = f"{meta['path']} (step {meta['step']})"
    else:
        from minigpt.pretrained import load_model
        from minigpt.tokenizer import Tokenizer

        model = load_model(args.model, dtype=dtype)
        tokenizer = Tokenizer.gpt2()
        source = args.model
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not args.prompt:
        raise ValueError("--prompt is empty: give at least one character to continue")
    ids = tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"})
    ctx = args.context_size or model.cfg.context_length
    ids = ids[-ctx:]
    idx = np.tile(np.asarray(ids, dtype=np.int64), (args.num_samples, 1))  # (B, T)
    eos = None
    if not args.no_eos and "<|endoftext|>" in tokenizer.special_tokens:
        eos = tokenizer.eot_token
        if eos >= model.cfg.vocab_size:
            eos = None
    t1 = time.perf_counter()
    out = generate(model, idx, args.max_new_tokens, context_size=args.context_size,
                   temperature=args.temperature, top_k=args.top_k, eos_id=eos,
                   use_cache=not args.no_cache, seed=args.seed)
    t2 = time.perf_counter()
    for row in out:
        new = [int(t) for t in row[len(ids):]]
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        if args.num_samples > 1:
            print("-" * 40)
        print(args.prompt + tokenizer.decode(new))
    n_new = out.shape[1] - len(ids)
    print(f"[{source}: loaded in {t1 - t0:.1f} s; {n_new} tokens x {args.num_samples} in "
          f"{t2 - t1:.2f} s, {n_new * args.num_samples / max(t2 - t1, 1e-9):.1f} tokens/s, "
          f"KV cache {'off' if args.no_cache else 'on'}]", file=sys.stderr)
    return 0
