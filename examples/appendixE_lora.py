"""Appendix E of "Build a Large Language Model (From Scratch)": parameter-efficient finetuning
with LoRA.

    python examples/appendixE_lora.py               # the numbers, then the book's LoRA run if
                                                    # GPT-2's weights are on disk
    python examples/appendixE_lora.py --no-train    # the numbers only

The numbers that do not depend on PyTorch's random numbers (book-notes §8): GPT-2 124M with the
2-class head has 124,441,346 trainable parameters before freezing, 0 after, and 2,666,528 LoRA
parameters at rank 16 with the book's ``replace_linear_with_lora`` (every linear layer: W_query,
W_key, W_value, out_proj, the two feed-forward layers, and the head). A LoRA model starts as its
base model (B = 0), checked on a small model. Exits non-zero on a mismatch.

With GPT-2 124M on disk, the book's run through ``minigpt finetune --lora 16 --lora-alpha 16``
(AdamW 8e-4 / 0.1, 5 epochs, pooling "last"); the book reports test accuracy 96.67%.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import minigpt
from minigpt import GPTModel
from minigpt.config import PRETRAINED_CONFIGS, GPTConfig
from minigpt.lora import head_lora_specs, lora_specs, with_lora
from minigpt.params import count, param_table

FAILED: list[str] = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (book: {want})"))


def numbers() -> None:
    cfg = PRETRAINED_CONFIGS["gpt2"].replace(num_classes=2, lora_rank=16, lora_alpha=16)
    base = param_table(cfg.replace(lora_rank=0, lora_alpha=0))
    check("trainable before freezing", f"{count(base):,}", "124,441,346")
    check("trainable after freezing", f"{count(base, lambda s: False):,}", "0")
    blocks, head = lora_specs(cfg), head_lora_specs(cfg)
    check("LoRA parameters, r = 16 (every linear and the head)", f"{count(blocks + head):,}",
          "2,666,528")
    print(f"  of which the blocks {count(blocks):,} and the head 16 x (768 + 2) = {count(head):,}")
    # B = 0 at the start: the LoRA model is the base model (on a small one, float64)
    small = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                      drop_rate=0.0, num_classes=2)
    m = GPTModel(small, seed=1, dtype=np.float64)
    lm = with_lora(m, 16, 16)
    x, n = np.arange(12).reshape(2, 6), np.array([6, 4])
    check("with B = 0 the LoRA model's logits are the base model's",
          bool(np.array_equal(lm.forward(x, lengths=n), m.forward(x, lengths=n))), True)
    check("only A and B train", all(".lora_" in k for k in lm.trainable_names()), True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-train", action="store_true", help="print and check the numbers only")
    ap.add_argument("--checkpoint-dir", default="runs/appendixE", help="(default: runs/appendixE)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    numbers()
    print(f"\nminigpt {minigpt.__version__}: "
          f"{'all numbers match the book' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    if FAILED or args.no_train:
        return 1 if FAILED else 0
    from minigpt.weights import download

    try:
        download.model_dir("gpt2", offline=True)
    except (FileNotFoundError, ValueError):
        print("\nGPT-2 124M's weights are not on disk, so the book's run is skipped (see "
              "docs/pretrained.md; 'minigpt finetune --init random --lora 16' runs without them)")
        return 0
    from minigpt.cli import main as cli

    print("\nthe book's LoRA run (book: train 99.81%, val 97.99%, test 96.67%):")
    return cli(["finetune", "--init", "gpt2", "--pooling", "last", "--lora", "16", "--lora-alpha",
                "16", "--checkpoint-dir", args.checkpoint_dir, "--threads", str(args.threads)])


if __name__ == "__main__":
    sys.exit(main())
