"""Chapter 7 of "Build a Large Language Model (From Scratch)": finetuning to follow instructions.

    python examples/ch07_instruction_finetuning.py            # the book's deterministic numbers
    python examples/ch07_instruction_finetuning.py --small    # + an offline run of a small model
    python examples/ch07_instruction_finetuning.py --book     # + the book's run (gpt2-medium on disk)

Without options it checks, in a second or two, every number of the chapter that does not depend on
PyTorch's random numbers (book-notes §7): the 1,100 entries and their 935 / 55 / 110 split, the
Alpaca template, the collate toy, the cross-entropy toy with -100, the first example's token ids;
and the Phi-3 template and instruction masking of exercises 7.1 and 7.2. Each check prints [ok] or
MISMATCH; the script exits non-zero on a mismatch.

--small trains a new 4-block GPT-2-vocabulary model (random weights, so the answers stay poor) for
one epoch on the training split with lr 1e-3 and shows the loss falling (``minigpt instruct
--from-scratch``); --book runs ``minigpt instruct`` with the book's settings on gpt2-medium (355M)
and checks the validation loss before finetuning, 3.7619 in the book.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from minigpt import Tokenizer, backend
from minigpt.training.instruction_data import (
    InstructionDataset,
    InstructionLoader,
    custom_collate_fn,
    format_input,
    format_response,
    load_instruction_data,
    split_instruction_data,
)

FAILED: list[str] = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (book: {want})"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="also run the small offline finetuning")
    ap.add_argument("--book", action="store_true", help="also run the book's recipe (gpt2-medium)")
    ap.add_argument("--threads", type=int, default=None, help="threads for BLAS and Numba")
    args = ap.parse_args(argv)
    FAILED.clear()

    # 7.2 the data set and its split (cells 11, 25)
    data = load_instruction_data()
    check("entries", len(data), 1100)
    train, test, val = split_instruction_data(data)
    check("split train / val / test", (len(train), len(val), len(test)), (935, 55, 110))
    check("data[50]['input']", data[50]["input"], "Ocassion")
    check("data[999] has no input", data[999]["input"], "")
    print(format_input(data[50]) + format_response(data[50]["output"]))

    # 7.3 the collate toy (cells 36-46)
    inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    check("collate inputs", inputs.tolist(),
          [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]])
    check("collate targets", targets.tolist(),
          [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]])

    # the cross-entropy toy (cells 48-52): -100 leaves a row out of the mean
    ce = backend.ops().cross_entropy
    z = np.array([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
    check("cross-entropy, 2 rows", round(ce(z[:2], np.array([0, 1]))[0], 4), 1.1269)
    check("cross-entropy, 3 rows", round(ce(z, np.array([0, 1, 1]))[0], 4), 0.7936)
    check("cross-entropy, third target -100", round(ce(z, np.array([0, 1, -100]))[0], 4), 1.1269)

    # 7.4 the first training example's ids (cell 68), the loaders of batch 8
    tok = Tokenizer.gpt2()
    ds = InstructionDataset(train, tok)
    check("first example's ids", ds[0][1][:10],
          [21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430])
    loader = InstructionLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    lengths = [x.shape[1] for x, _ in loader]
    check("train batches of 8", len(lengths), 116)
    print(f"      batch lengths {min(lengths)}-{max(lengths)} tokens (book, its shuffle: 57-91)")

    # exercises 7.1 (Phi-3 prompt) and 7.2 (instruction masking)
    check("exercise 7.1 prompt", format_input(data[50], "phi3") + format_response("x", "phi3"),
          "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
          "\n<|assistant|>:\nx")
    _, masked = custom_collate_fn([[0, 1, 2, 3, 4]], prompt_lengths=[3])
    check("exercise 7.2 masked targets", masked.tolist(), [[-100, -100, 3, 4, 50256]])

    status = 0
    if args.small or args.book:
        from minigpt.cli import main as cli

        common = ["--no-progress"] + (["--threads", str(args.threads)] if args.threads else [])
        if args.small:
            status |= cli(["instruct", "--from-scratch", "--lr", "1e-3", "--max-steps", "116",
                           "--eval-freq", "20", "--test-limit", "10", "--max-new-tokens", "64",
                           "--checkpoint-dir", "runs/ch07-small", *common])
        if args.book:
            status |= cli(["instruct", "--checkpoint-dir", "runs/ch07-book", *common])
    print(f"\n{'all numbers match the book' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    return 1 if FAILED or status else 0


if __name__ == "__main__":
    sys.exit(main())
