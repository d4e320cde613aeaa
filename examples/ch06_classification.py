"""Chapter 6 of "Build a Large Language Model (From Scratch)": finetuning for classification.

    python examples/ch06_classification.py               # the numbers, then the book's run if
                                                         # GPT-2's weights are on disk
    python examples/ch06_classification.py --no-train    # the numbers only (a few seconds)
    python examples/ch06_classification.py --offline-run # no weights needed: a small GPT from
                                                         # random initialisation (docs/classification.md)

First the chapter's numbers that do not depend on PyTorch's random numbers (book-notes §6): the SMS
Spam Collection read as the book reads it (5,572 texts: 4,825 ham / 747 spam), balanced to 1,494,
split 1,045 / 149 / 300, padded to max_length 120 with 50256, 130 / 19 / 38 batches of 8, the ids
of "Do you have time", and the parameter counts of GPT-2 124M with the 2-class head (124,441,346;
the trainable part under the book's freezing). Exits non-zero on a mismatch.

Then, when GPT-2 124M's weights are on disk (minigpt.from_pretrained finds them; nothing is
downloaded here), the book's recipe through ``minigpt finetune``: pooling "last" (the book's
``model(x)[:, -1, :]``), the last block, the final layernorm and the head trainable, AdamW 5e-5 /
0.1, 5 epochs. The book reports test accuracy 95.67% (its random numbers: the head's init, the
shuffling, differ here, so the figure is printed beside the book's, not checked).
"""
from __future__ import annotations

import argparse
import sys

import minigpt
from minigpt import Tokenizer
from minigpt.config import PRETRAINED_CONFIGS
from minigpt.params import count, param_table
from minigpt.training.classification_data import book_sms_spam, load_sms_spam

FAILED: list[str] = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (book: {want})"))


def gpt2_on_disk() -> bool:
    """True when minigpt.from_pretrained('gpt2') would read GPT-2 124M without the network."""
    from minigpt.weights import download

    try:
        download.model_dir("gpt2", offline=True)
        return True
    except (FileNotFoundError, ValueError):
        return False


def numbers() -> None:
    tok = Tokenizer.gpt2()
    raw = load_sms_spam()
    n_spam = int(raw.labels.sum())
    check("messages (ham / spam)", (len(raw), len(raw) - n_spam, n_spam), (5572, 4825, 747))
    data = book_sms_spam(tok)
    train, val, test = data.splits
    check("balanced", len(train) + len(val) + len(test), 1494)
    check("split (train / validation / test)", (len(train), len(val), len(test)), (1045, 149, 300))
    check("max_length", data.datasets[0].max_length, 120)
    check("padding token id", data.datasets[0].pad_token_id, 50256)
    check("batches of 8", tuple(len(loader) for loader in data.loaders), (130, 19, 38))
    check("'Do you have time'", tok.encode("Do you have time"), [5211, 345, 423, 640])
    cfg = PRETRAINED_CONFIGS["gpt2"].replace(num_classes=2)
    table = param_table(cfg)
    check("GPT-2 124M with the 2-class head, trainable before freezing", f"{count(table):,}",
          "124,441,346")
    L = cfg.n_layers
    keep = (f"h.{L - 1}.", "ln_f.", "out_head.")
    print(f"trainable after the book's freezing (block {L - 1}, final layernorm, head): "
          f"{count(table, lambda s: s.name.startswith(keep)):,}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-train", action="store_true", help="print and check the numbers only")
    ap.add_argument("--offline-run", action="store_true",
                    help="train the small random-init GPT of docs/classification.md instead")
    ap.add_argument("--checkpoint-dir", default="runs/ch06", help="(default: runs/ch06)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    numbers()
    print(f"\nminigpt {minigpt.__version__}: "
          f"{'all numbers match the book' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    if FAILED or args.no_train:
        return 1 if FAILED else 0
    from minigpt.cli import main as cli

    common = ["--checkpoint-dir", args.checkpoint_dir, "--threads", str(args.threads)]
    if args.offline_run:
        return cli(["finetune", "--init", "random", *OFFLINE, *common])
    if not gpt2_on_disk():
        print("\nGPT-2 124M's weights are not on disk, so the book's run is skipped. Put "
              "model.safetensors where minigpt finds it (docs/pretrained.md), or run the offline "
              "path: python examples/ch06_classification.py --offline-run")
        return 0
    print("\nthe book's run (book: train 97.21%, val 97.32%, test 95.67%):")
    return cli(["finetune", "--init", "gpt2", "--pooling", "last", *common])


# the offline run of docs/classification.md: a 4-layer, 128-wide GPT from random initialisation,
# every parameter trainable (the book's ablation row 10 does this at 124M: 93.67%)
OFFLINE = ["--n-layers", "4", "--emb-dim", "128", "--n-heads", "4", "--context-length", "128",
           "--lr", "1e-3", "--epochs", "10", "--eval-freq", "50"]


if __name__ == "__main__":
    sys.exit(main())
