"""``minigpt classify``: the label of a text, from a classifier finetuned by ``minigpt finetune``
(the book's ``classify_review``)."""

from __future__ import annotations

import argparse
import json

from minigpt.cli.help import HelpFormatter

HELP = ("Classify texts with a checkpoint of 'minigpt finetune': prints each text's label and its "
        "probability.")

EXAMPLES = """\
examples:
  minigpt classify --checkpoint runs/classifier \\
      --text "You are a winner you have been specially selected to receive $1000 cash"
  minigpt classify --checkpoint runs/classifier --text "See you at dinner?" --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a run directory of 'minigpt finetune' (its latest checkpoint) or one of "
                        "its step-* directories")
    p.add_argument("--text", action="append", required=True,
                   help="a text to classify (repeat for several)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")


def run(args: argparse.Namespace) -> int:
    from minigpt.tokenizer import Tokenizer
    from minigpt.training.checkpoint import model_from_checkpoint
    from minigpt.training.finetune import classify_review

    model, meta = model_from_checkpoint(args.checkpoint)
    data = meta["state"].get("data")
    if model.cfg.num_classes is None or data is None:
        raise ValueError(f"{args.checkpoint} is not a classifier written by 'minigpt finetune' "
                         "(a language model: use 'minigpt generate')")
    if data.get("tokenizer") != "gpt2":
        raise ValueError(f"{args.checkpoint}: unknown tokenizer {data.get('tokenizer')!r}")
    tokenizer = Tokenizer.gpt2()
    for text in args.text:
        k, p = classify_review(text, model, tokenizer, data["max_length"], data["pad_token_id"])
        label = data["label_names"][k]
        if args.json:
            print(json.dumps({"text": text, "label": label, "probability": round(p, 6)}))
        else:
            print(f"{label}\t{p:.4f}\t{text}")
    return 0
