"""``minigpt dpo``: preference tuning by Direct Preference Optimization (the book's ch07 bonus).

The book's recipe: the chapter 7 model is both the policy (trained) and the reference (a frozen
copy, loaded a second time); the shipped preference data (1,100 entries with "chosen" and
"rejected"), split 935 / 55 / 110 like chapter 7; batch 8, prompt and padding masked; beta 0.1,
AdamW lr 5e-6, weight decay 0.01, 1 epoch, evaluation every 5 steps over 5 batches. The loss starts
at ln 2; the reward margin on the held-out pairs is reported before and after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minigpt.cli.bench.memory import status_mb
from minigpt.cli.instruct import (
    add_model_arguments,
    answer_test_set,
    load_start_model,
    options,
    settings_from,
)

HELP = ("Tune an instruction-following GPT on preference pairs by DPO, as the book's chapter 7 "
        "bonus does (beta 0.1, AdamW 5e-6, 1 epoch), against a frozen copy of itself.")

EXAMPLES = """\
examples:
  minigpt dpo --model runs/instruct
      the book's run on the chapter 7 model: the reward margin on the 55
      held-out pairs before and after, responses and scores in runs/dpo/
  minigpt dpo --model runs/instruct --beta 0.5 --lr 2e-5 --max-steps 40
      other settings
  minigpt dpo --resume --checkpoint-dir runs/dpo
      continue a stopped run, bit-identical to one never stopped
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    add_model_arguments(p, 5e-6, 0.01, 1, "tune (policy and frozen reference)")
    p.add_argument("--beta", type=float, default=0.1,
                   help="how far the policy may move from the reference (the book: 0.1)")
    p.add_argument("--checkpoint-dir", default="runs/dpo", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    from minigpt.tokenizer import Tokenizer
    from minigpt.training.dpo import (
        DPOObjective,
        PreferenceDataset,
        PreferenceLoader,
        evaluate_dpo_loader,
    )
    from minigpt.training.instruction_data import load_preference_data, split_instruction_data
    from minigpt.training.distributed import refuse_ranks
    from minigpt.training.loop import NonFiniteLossError, set_num_threads, train
    from minigpt.training.optim import AdamW

    refuse_ranks("dpo", "a DPO batch is its chosen rows over its rejected rows, and cutting it "
                 "into one shard per rank would part each pair")
    t_start = time.perf_counter()
    o = options(args)
    if o["threads"]:
        set_num_threads(o["threads"])
    run_dir = Path(o["checkpoint_dir"])
    policy, source = load_start_model(o)
    reference, _ = load_start_model(o)                   # a separate copy, frozen by the objective
    objective = DPOObjective(policy, reference, beta=o["beta"])
    tok = Tokenizer.gpt2()
    data = load_preference_data(o["data"])
    train_data, test_data, val_data = split_instruction_data(data)
    T = min(o["allowed_max_length"], policy.cfg.context_length + 1)
    mk = lambda part: PreferenceDataset(part, tok, o["style"], policy.cfg.context_length)  # noqa: E731
    train_ds, val_ds = mk(train_data), mk(val_data)
    train_loader = PreferenceLoader(train_ds, o["batch_size"], shuffle=True, drop_last=True,
                                    seed=o["seed"], allowed_max_length=T)
    train_eval = PreferenceLoader(train_ds, o["batch_size"], allowed_max_length=T)
    val_loader = PreferenceLoader(val_ds, o["batch_size"], allowed_max_length=T)
    print(f"data: {len(data)} preference pairs -> {len(train_data)} train / {len(val_data)} val / "
          f"{len(test_data)} test; {len(train_loader)} batches of {o['batch_size']} pairs")
    print(f"policy and frozen reference: {source}, {policy.num_params:,} parameters each; "
          f"beta {o['beta']}")
    before = evaluate_dpo_loader(objective, val_loader)
    print(f"held-out pairs before: loss {before['loss']:.6f}, reward margin {before['margin']:.4f} "
          f"(chosen {before['chosen_reward']:.4f}, rejected {before['rejected_reward']:.4f})")
    optimizer = AdamW(policy, lr=o["lr"], weight_decay=o["weight_decay"])
    cli = {k: v for k, v in o.items() if k not in ("resume", "resuming")}
    try:
        res = train(objective, optimizer, train_loader, val_loader, settings=settings_from(o),
                    train_eval_loader=train_eval, resume=bool(o.get("resuming")),
                    extra_state={"cli": cli, "tokenizer": "gpt2"})
    except NonFiniteLossError as e:
        print(f"minigpt dpo: stopped: {e}")
        return 1
    after = evaluate_dpo_loader(objective, val_loader)
    print(f"\n{res.status} after {res.step} steps in {res.train_seconds:.1f} s of training")
    print(f"held-out pairs after:  loss {after['loss']:.6f}, reward margin {after['margin']:.4f} "
          f"(chosen {after['chosen_reward']:.4f}, rejected {after['rejected_reward']:.4f})")
    summary = {"status": res.status, "steps": res.step, "val_before": before, "val_after": after,
               "checkpoint": res.checkpoint}
    if res.status == "done" and o["responses"]:
        summary["scores"] = answer_test_set(policy, tok, test_data, o, run_dir)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["peak_rss_mib"] = round(status_mb("VmHWM"), 1)
    print(f"wall time {summary['wall_seconds']} s, peak memory {summary['peak_rss_mib']} MiB")
    print("summary " + json.dumps(summary))
    return 130 if res.status == "interrupted" else 0


if __name__ == "__main__":
    import sys

    from minigpt.cli import main

    sys.exit(main(["dpo", *sys.argv[1:]]))
