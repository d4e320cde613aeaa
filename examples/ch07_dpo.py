"""The book's chapter 7 bonus: preference tuning with Direct Preference Optimization (DPO).

    python examples/ch07_dpo.py                           # the deterministic numbers
    python examples/ch07_dpo.py --small runs/ch07-small   # + DPO on a chapter 7 run (offline demo)

Without options it checks, in a few seconds: the 1,100 preference entries and their split, the
book's DPO collate (prompt + 2 tokens and padding masked), and that the loss of the first training
batch is exactly ln 2 = 0.693147 with reward margin 0 when the policy is the reference (a fresh
GPT-2-vocabulary model here; the numbers do not depend on the weights). Then one hand example of
the loss: a policy log-ratio 10 above the reference's gives -log sigmoid(0.1 * 10) = 0.313262.

--small RUN runs ``minigpt dpo`` on a chapter 7 run directory (written by
``examples/ch07_instruction_finetuning.py --small``) with beta 0.1 and lr 1e-4 for 40 steps, and
prints the reward margin on the 55 held-out pairs before and after.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from minigpt import GPTConfig, GPTModel, Tokenizer
from minigpt.layers.dpo import dpo_loss_forward
from minigpt.training.dpo import (
    DPOObjective,
    PreferenceDataset,
    PreferenceLoader,
    preference_collate_fn,
)
from minigpt.training.instruction_data import load_preference_data, split_instruction_data

FAILED: list[str] = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (expected: {want})"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", metavar="RUN", default=None,
                    help="also run DPO on this chapter 7 run directory (offline demo)")
    ap.add_argument("--threads", type=int, default=None, help="threads for BLAS and Numba")
    args = ap.parse_args(argv)
    FAILED.clear()

    data = load_preference_data()
    check("preference entries", len(data), 1100)
    train, test, val = split_instruction_data(data)
    check("split train / val / test", (len(train), len(val), len(test)), (935, 55, 110))

    # the book's collate: common length = longest + 1; mask off the prompt + 2 and the padding
    toy = [{"prompt": [1, 2], "chosen": [1, 2, 3, 4, 5], "rejected": [1, 2, 3, 6, 7, 8]}]
    b = preference_collate_fn(toy, pad_token_id=0)
    check("collate chosen / mask", (b["chosen"].tolist(), b["chosen_mask"].astype(int).tolist()),
          ([[1, 2, 3, 4, 5, 0, 0]], [[0, 0, 0, 0, 1, 0, 0]]))
    check("collate rejected / mask", (b["rejected"].tolist(), b["rejected_mask"].astype(int).tolist()),
          ([[1, 2, 3, 6, 7, 8, 0]], [[0, 0, 0, 0, 1, 1, 0]]))

    # step 0: the policy is the reference -> ln 2, margins 0, on the first two real pairs
    tok = Tokenizer.gpt2()
    cfg = GPTConfig(vocab_size=50257, context_length=256, emb_dim=16, n_heads=2, n_layers=1,
                    drop_rate=0.0, qkv_bias=True, tie_weights=True)
    policy, reference = GPTModel(cfg, seed=123), GPTModel(cfg, seed=123)
    objective = DPOObjective(policy, reference, beta=0.1)
    x, y = next(iter(PreferenceLoader(PreferenceDataset(train[:2], tok), batch_size=2)))
    print(f"      first pairs: {x.shape[0] // 2}, {x.shape[1]} tokens, "
          f"{int((y != -100).sum())} response targets")
    out = objective.evaluate(x, y)
    check("step-0 loss == ln 2", (round(out.loss, 6), out.loss == math.log(2)), (0.693147, True))
    check("step-0 rewards and margin", (out.chosen_reward, out.rejected_reward, out.margin),
          (0.0, 0.0, 0.0))
    hand, _ = dpo_loss_forward(np.array([-1.0]), np.array([-11.0]), np.array([-2.0]),
                               np.array([-2.0]), beta=0.1)
    check("loss at beta * (log-ratio gap) = 1", round(hand.loss, 6), 0.313262)

    status = 0
    if args.small:
        from minigpt.cli import main as cli

        status = cli(["dpo", "--model", args.small, "--lr", "1e-4", "--max-steps", "40",
                      "--eval-freq", "10", "--test-limit", "10", "--max-new-tokens", "64",
                      "--checkpoint-dir", "runs/ch07-dpo-small", "--no-progress"]
                     + (["--threads", str(args.threads)] if args.threads else []))
    print(f"\n{'all numbers match' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    return 1 if FAILED or status else 0


if __name__ == "__main__":
    sys.exit(main())
