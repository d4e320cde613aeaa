"""``minigpt generate``: continue a prompt with a trained checkpoint or OpenAI's GPT-2 weights."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from minigpt.cli.help import HelpFormatter

HELP = ("Continue a prompt with a model: a training run ('--checkpoint runs/quick', written by "
        "'minigpt train') or OpenAI's GPT-2 ('--model gpt2'). Greedy by default; --temperature and "
        "--top-k sample instead (seeded, so a command repeats its output).")


EXAMPLES = """\
examples:
  minigpt generate --checkpoint runs/quick
      greedy continuation of "Every effort moves you" by the quick-start model
  minigpt generate --checkpoint runs/quick --prompt "I had always" \\
      --temperature 0.8 --top-k 40 --num-samples 3 --seed 7
      three different samples side by side; the same seed gives the same text
  minigpt generate --model gpt2 --prompt "Every effort moves you" -n 30
      OpenAI's GPT-2 124M (downloaded once, about 500 MB)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    p.epilog = EXAMPLES
    src = p.add_argument_group("the model (give one)")
    one = src.add_mutually_exclusive_group(required=True)
    one.add_argument("--checkpoint", metavar="DIR",
                     help="a run directory of 'minigpt train' (its latest checkpoint is used) or one "
                          "of its step-* checkpoint directories")
    one.add_argument("--model", metavar="NAME|PATH",
                     help="gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded once), or a Hugging "
                          "Face GPT-2 directory or .safetensors file")

    t = p.add_argument_group("what to generate")
    t.add_argument("--prompt", default="Every effort moves you",
                   help="the text to continue (default: 'Every effort moves you')")
    t.add_argument("--max-new-tokens", "-n", type=int, default=50, metavar="N",
                   help="tokens to add at most (default: 50)")
    t.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="continuations generated side by side as one batch (default: 1)")
    t.add_argument("--no-eos", action="store_true",
                   help="keep going past <|endoftext|> (default: each sample ends at its own "
                        "<|endoftext|>, independently of the others)")

    s = p.add_argument_group("sampling (default: greedy, the most likely token every time)")
    s.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 = greedy; > 0 samples from softmax(logits / T): below 1 is more "
                        "conservative, above 1 wilder; 0.7-1.0 is a good start (default: 0)")
    s.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sample only among the K most likely tokens (every token tied with the K-th "
                        "is kept) (default: all tokens)")
    s.add_argument("--seed", type=int, default=123,
                   help="the sampling seed: the same seed, prompt and options give the same text "
                        "(default: 123)")

    e = p.add_argument_group("speed and precision")
    e.add_argument("--context-size", type=int, default=None, metavar="N",
                   help="the model sees at most the last N tokens (default: its context length)")
    e.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context at every step instead of keeping the keys and "
                        "values of earlier tokens (KV cache); same tokens, slower")
    e.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: float32)")
    e.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for BLAS and the Numba kernels (default: the --threads the "
                        "checkpoint's run was trained with, else as the environment sets them)")


def load_tokenizer_for_checkpoint(path: str | Path):
    """The tokenizer a training run used: GPT-2's, or the one saved in the run directory."""
    from minigpt.training.checkpoint import read_state, resolve
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
    from minigpt.inference.generate import generate

    threads = args.threads
    if threads is None and args.checkpoint:  # the run's own setting (--quick trains on one thread)
        from minigpt.training.checkpoint import read_state

        threads = (read_state(args.checkpoint)["state"].get("cli") or {}).get("threads")
    if threads:
        from minigpt.training.loop import set_num_threads

        set_num_threads(threads)
    dtype = np.dtype(args.dtype).type
    t0 = time.perf_counter()
    if args.checkpoint:
        from minigpt.training.checkpoint import model_from_checkpoint

        model, meta = model_from_checkpoint(args.checkpoint, dtype=dtype)
        tokenizer = load_tokenizer_for_checkpoint(args.checkpoint)
        source = f"{meta['path']} (step {meta['step']})"
    else:
        from minigpt.weights.pretrained import load_model
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
    sys.stdout.flush()  # the text before the timing line on stderr, also when piped
    n_new = out.shape[1] - len(ids)
    print(f"[{source}: loaded in {t1 - t0:.1f} s; {n_new} tokens x {args.num_samples} in "
          f"{t2 - t1:.2f} s, {n_new * args.num_samples / max(t2 - t1, 1e-9):.1f} tokens/s, "
          f"KV cache {'off' if args.no_cache else 'on'}]", file=sys.stderr)
    return 0
