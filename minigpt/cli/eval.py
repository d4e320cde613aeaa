"""``minigpt eval``: the book's loss and perplexity of a model on a text (chapter 5, exercise 5.5).

    minigpt eval --model gpt2 --text the-verdict
    -> train loss 3.7547 (perplexity 42.73), val loss 3.5596 (perplexity 35.15)   [book-notes §5]

Exactly the book's procedure: split the text 90/10 by characters, tokenize each part with GPT-2's
BPE, cut 256-token windows with stride 256 (``GPTDatasetV1``), batch them by 2, and report
``calc_loss_loader``: the mean of the per-batch mean cross-entropies, and ``exp`` of it. Batches
are taken in order (the book shuffles the training loader, which changes nothing here: with
``drop_last`` every batch has 2 x 256 tokens, so the mean is the same in any order, as long as no
window is dropped; with an odd number of training windows the book drops a random one, this
command drops the last).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = ("Loss and perplexity of a model on a text, the book's way (chapter 5): 90/10 character "
        "split, 256-token windows, batches of 2, mean of per-batch mean losses. --model takes a "
        "GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a Hugging Face directory or "
        ".safetensors file, or a training checkpoint.")

BUNDLED_TEXTS = {"the-verdict": "the-verdict.txt"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl (downloaded once), or a path: a "
                        "Hugging Face directory or .safetensors file, the book's converted file, "
                        "OpenAI's TensorFlow folder (gpt2/124M), a training run")
    p.add_argument("--text", required=True,
                   help="a UTF-8 text file, or 'the-verdict' for the book's short story (bundled)")
    p.add_argument("--max-length", type=int, default=256, help="window length in tokens")
    p.add_argument("--stride", type=int, default=0, help="window stride (0: the window length)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per batch")
    p.add_argument("--train-ratio", type=float, default=0.9, help="character split point")
    p.add_argument("--num-batches", type=int, default=0,
                   help="evaluate only the first N batches of each split (0: all)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="the model's precision")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS and the Numba kernels (default: as the environment sets "
                        "them; 1 can be faster on a busy machine)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--offline", action="store_true",
                   help="never download (same as MINIGPT_OFFLINE=1)")


def read_text(spec: str) -> tuple[str, str]:
    """(text, label) from a path or a bundled text's name."""
    path = Path(spec).expanduser()
    if not path.exists() and spec in BUNDLED_TEXTS:
        path = Path(__file__).resolve().parents[1] / "assets" / "texts" / BUNDLED_TEXTS[spec]
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {spec} (bundled texts: {', '.join(BUNDLED_TEXTS)})")
    try:
        return path.read_text(encoding="utf-8"), path.name
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def evaluate_text(model: Any, text: str, tokenizer: Any, *, max_length: int = 256,
                  stride: int | None = None, batch_size: int = 2, train_ratio: float = 0.9,
                  num_batches: int | None = None) -> dict[str, Any]:
    """The book's train/val loss of ``model`` on ``text``; returns a dict of figures.

    Keys: train_loss, val_loss, train_perplexity, val_perplexity, train_tokens, val_tokens,
    train_windows, val_windows, train_batches, val_batches (the batches evaluated),
    train_batches_total, val_batches_total (the batches the loader has).
    """
    from minigpt.training.data import DataLoader, train_val_split, windows
    from minigpt.training.loop import calc_loss_loader

    stride = max_length if stride is None else stride
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be at least 1 (or None for all), got {num_batches}")
    if max_length > model.cfg.context_length:
        raise ValueError(f"--max-length {max_length} exceeds the model's context_length "
                         f"{model.cfg.context_length}")
    out: dict[str, Any] = {}
    for split, part, drop_last in zip(("train", "val"), train_val_split(text, train_ratio),
                                      (True, False), strict=True):
        ids = np.asarray(tokenizer.encode(part, allowed_special={"<|endoftext|>"}), np.int64)
        if len(ids) and ids.max() >= model.cfg.vocab_size:
            raise ValueError(f"the {split} text has token id {int(ids.max())}, outside the model's "
                             f"vocabulary of {model.cfg.vocab_size}: model and tokenizer differ")
        if len(ids) <= max_length:
            raise ValueError(f"the {split} split has {len(ids)} tokens, too few for one window of "
                             f"{max_length} (+1 for the target); use a longer text or a smaller "
                             f"--max-length")
        x, y = windows(ids, max_length, stride)                          # (N, T) each
        loader = DataLoader(x, y, batch_size=batch_size, shuffle=False, drop_last=drop_last)
        if len(loader) == 0:
            raise ValueError(f"the {split} split gives {len(x)} window(s), fewer than one batch of "
                             f"{batch_size}; use a longer text or a smaller --batch-size")
        loss = calc_loss_loader(loader, model, num_batches)
        used = len(loader) if num_batches is None else min(num_batches, len(loader))
        out.update({f"{split}_loss": loss, f"{split}_perplexity": math.exp(loss),
                    f"{split}_tokens": int(len(ids)), f"{split}_windows": int(len(x)),
                    f"{split}_batches": used, f"{split}_batches_total": len(loader)})
    return out


def run(args) -> int:
    from minigpt.weights.pretrained import load_model
    from minigpt.tokenizer import Tokenizer

    if args.threads:
        from minigpt.training.loop import set_num_threads

        set_num_threads(args.threads)
    text, label = read_text(args.text)
    kwargs = {"offline": True} if args.offline else {}
    t0 = time.perf_counter()
    model = load_model(args.model, dtype=np.dtype(args.dtype).type, **kwargs)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = evaluate_text(model, text, Tokenizer.gpt2(), max_length=args.max_length,
                      stride=args.stride or None, batch_size=args.batch_size,
                      train_ratio=args.train_ratio, num_batches=args.num_batches or None)
    t_eval = time.perf_counter() - t0
    cfg = model.cfg
    if args.json:
        print(json.dumps({"model": str(args.model), "text": label, "characters": len(text),
                          "dtype": args.dtype, **r}))
        return 0
    print(f"model {args.model}: {model.num_params:,} parameters (V={cfg.vocab_size} "
          f"T={cfg.context_length} C={cfg.emb_dim} H={cfg.n_heads} L={cfg.n_layers}), "
          f"{args.dtype}, loaded in {t_load:.1f} s")
    print(f"text {label}: {len(text):,} characters, split {args.train_ratio:g} by characters -> "
          f"train {r['train_tokens']:,} tokens, val {r['val_tokens']:,} tokens")
    def n(k: int, word: str) -> str:
        return f"{k} {word}" + ("" if k == 1 else ("es" if word.endswith("ch") else "s"))

    def batches(split: str) -> str:
        used, total = r[f"{split}_batches"], r[f"{split}_batches_total"]
        return n(used, "batch") if used == total else f"{used} of {n(total, 'batch')}"

    print(f"windows of {args.max_length} tokens, stride {args.stride or args.max_length}, batch "
          f"{args.batch_size}: train {batches('train')} ({n(r['train_windows'], 'window')}), "
          f"val {batches('val')} ({n(r['val_windows'], 'window')})")
    print(f"train loss {r['train_loss']:.4f}  perplexity {r['train_perplexity']:.2f}")
    print(f"val   loss {r['val_loss']:.4f}  perplexity {r['val_perplexity']:.2f}")
    print(f"({t_eval:.1f} s)")
    return 0
