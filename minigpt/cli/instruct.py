"""``minigpt instruct``: instruction finetuning, the book's chapter 7, resumable.

The book's recipe: gpt2-medium (355M, dropout 0, qkv bias), the 1,100-entry instruction data in the
Alpaca template, split 935 / 55 / 110 in order, batch 8 with the -100 collate, AdamW lr 5e-5 and
weight decay 0.1, 2 epochs, evaluation every 5 steps over 5 batches; then greedy responses for the
110 test entries (256 new tokens at most, the end-of-text stops), written to
instruction-data-with-response.json, and scores: the loss on the reference responses, exact match,
word F1 and ROUGE-L (a judge: ``minigpt judge``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.cli.bench.memory import status_mb
from minigpt.cli.help import HelpFormatter

HELP = ("Finetune a GPT to follow instructions, as the book's chapter 7 does (Alpaca template, "
        "AdamW 5e-5, 2 epochs), then answer the test set and score the answers. Offline start: "
        "'minigpt instruct --from-scratch --max-steps 60'.")

EXAMPLES = """\
examples:
  minigpt instruct
      the book's run: gpt2-medium (when its weights are on disk), 2 epochs of
      116 steps, responses and scores in runs/instruct/
  minigpt instruct --model gpt2 --checkpoint-dir runs/sft-124m
      GPT-2 124M instead (downloaded unless cached); any run directory or
      safetensors file works as --model
  minigpt instruct --from-scratch --max-steps 60 --test-limit 10
      offline: a small GPT-2-vocabulary model from random weights (the loss falls,
      the answers stay poor)
  minigpt instruct --data mine.jsonl --style phi3 --mask-instruction
      your own entries ({"instruction", "input", "output"} per line), the Phi-3
      prompt style (exercise 7.1), the prompt's targets masked (exercise 7.2)
  minigpt instruct --resume --checkpoint-dir runs/instruct
      continue a stopped run, bit-identical to one never stopped
  mpirun -n 2 minigpt instruct --from-scratch --max-steps 60
      data parallel over MPI (pip install -e '.[mpi]'): each rank computes half
      of every batch; rank 0 alone prints and writes; see docs/distributed.md
"""

# the small model of --from-scratch: GPT-2's vocabulary, 4 blocks of width 128
SCRATCH = {"vocab_size": 50257, "context_length": 256, "emb_dim": 128, "n_heads": 4,
           "n_layers": 4, "drop_rate": 0.0, "qkv_bias": True, "tie_weights": True}
RESUMABLE = {"epochs", "max_steps", "progress", "plot", "threads", "checkpoint_every", "keep_last",
             "responses", "test_limit", "resume", "checkpoint_dir"}


def add_model_arguments(p: argparse.ArgumentParser, default_lr: float, default_wd: float,
                        default_epochs: int, what: str) -> None:
    p.formatter_class = HelpFormatter
    m = p.add_argument_group("the model")
    m.add_argument("--model", default=None, metavar="NAME|PATH|RUN",
                   help=f"the model to {what}: a GPT-2 name (gpt2, gpt2-medium, ...), a Hugging Face "
                        "directory or .safetensors file, or a run directory (default: gpt2-medium "
                        "when its weights are on disk)")
    m.add_argument("--from-scratch", action="store_true",
                   help="a small GPT-2-vocabulary model from random weights (4 blocks, width 128, "
                        "context 256): runs offline, for trying the pipeline")
    m.add_argument("--dropout", type=float, default=0.0, metavar="P",
                   help="dropout rate during finetuning (default: 0.0, the book's)")
    m.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, metavar="FILE",
                   help="a .json list or .jsonl file of entries (default: the book's, shipped)")
    d.add_argument("--style", choices=("alpaca", "phi3"), default="alpaca",
                   help="prompt template: alpaca (the book) or phi3 (exercise 7.1)")
    d.add_argument("--batch-size", type=int, default=8, metavar="B")
    d.add_argument("--allowed-max-length", type=int, default=1024, metavar="T",
                   help="cut batches to this many tokens (the book: 1024; at most the context)")
    o = p.add_argument_group("optimizer and run")
    o.add_argument("--lr", type=float, default=default_lr, help="AdamW learning rate")
    o.add_argument("--weight-decay", type=float, default=default_wd, metavar="WD")
    o.add_argument("--epochs", type=int, default=default_epochs, metavar="N")
    o.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after N optimizer steps (default: the epochs decide)")
    o.add_argument("--eval-freq", type=int, default=5, metavar="N",
                   help="evaluate every N steps")
    o.add_argument("--eval-iter", type=int, default=5, metavar="N", help="batches per evaluation")
    o.add_argument("--seed", type=int, default=123, help="the shuffling (and dropout) seed")
    o.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for BLAS and the Numba kernels")
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--no-plot", dest="plot", action="store_false",
                   help="do not draw losses.png (drawn only when matplotlib is installed)")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also save every N steps (default: at the end and on Ctrl-C)")
    c.add_argument("--keep-last", type=int, default=2, metavar="N")
    c.add_argument("--resume", action="store_true",
                   help="continue the run in --checkpoint-dir from its latest checkpoint, with its "
                        "saved options")
    r = p.add_argument_group("test-set responses")
    r.add_argument("--no-responses", dest="responses", action="store_false",
                   help="skip the test-set responses and their scores")
    r.add_argument("--test-limit", type=int, default=None, metavar="N",
                   help="answer only the first N test entries")
    r.add_argument("--max-new-tokens", type=int, default=256, metavar="N")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    add_model_arguments(p, 5e-5, 0.1, 2, "finetune")
    p.add_argument("--mask-instruction", action="store_true",
                   help="also mask the targets of the prompt's tokens (exercise 7.2)")
    p.add_argument("--checkpoint-dir", default="runs/instruct", metavar="DIR")


# --------------------------------------------------------------------------------- shared steps
def options(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options, or, with --resume and a checkpoint, the saved ones (run length and
    logging may change)."""
    from minigpt.training.checkpoint import list_checkpoints, read_state

    o = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    if o.get("resume") and list_checkpoints(o["checkpoint_dir"]):
        saved = read_state(o["checkpoint_dir"])["state"].get("cli")
        if saved is None:
            raise ValueError(f"{o['checkpoint_dir']} was not written by 'minigpt {args.command}'")
        # only what was given on this command line overrides the saved options, not the defaults
        parser = argparse.ArgumentParser()
        importlib.import_module(f"minigpt.cli.{args.command}").add_arguments(parser)
        defaults = vars(parser.parse_args([]))
        given = {k: v for k, v in o.items() if k in RESUMABLE and v != defaults.get(k)}
        changed = sorted(k for k, v in o.items() if k not in RESUMABLE and k in defaults
                         and v != defaults[k] and v != saved.get(k))
        if changed:
            raise ValueError("these options differ from the run being resumed and would change its "
                             "result: " + ", ".join(f"--{k.replace('_', '-')} (saved "
                                                    f"{saved.get(k)!r})" for k in changed)
                             + "; drop them, or start a new run in another --checkpoint-dir")
        o = {**saved, "checkpoint_dir": o["checkpoint_dir"], **given}
        o["resuming"] = True
    elif list_checkpoints(o["checkpoint_dir"]):
        raise ValueError(f"{o['checkpoint_dir']} already holds a run; continue it with --resume, "
                         "or choose another --checkpoint-dir")
    return o


def load_start_model(o: dict[str, Any]):
    """(model, description): --model, --from-scratch, or gpt2-medium when it is on disk."""
    from minigpt.config import GPTConfig
    from minigpt.model import GPTModel
    from minigpt.weights import download
    from minigpt.weights.pretrained import load_model

    dtype = np.dtype(o["dtype"]).type
    if o["from_scratch"]:
        if o["model"]:
            raise ValueError("give --model or --from-scratch, not both")
        model = GPTModel(GPTConfig(**SCRATCH), seed=o["seed"], dtype=dtype)
        source = "a new 4-block GPT-2-vocabulary model (random weights)"
    else:
        name = o["model"]
        if name is None:
            try:
                download.model_dir("gpt2-medium", offline=True, progress=False)
            except (FileNotFoundError, ValueError, OSError) as e:
                raise ValueError("gpt2-medium's weights (the book's model) are not on disk: give "
                                 "--model (gpt2-medium downloads them; a run directory or a "
                                 ".safetensors file), or --from-scratch for an offline try") from e
            name = "gpt2-medium"
        model = load_model(name, dtype=dtype)
        source = str(name)
    model.cfg = replace(model.cfg, drop_rate=float(o["dropout"]))
    return model, source


def settings_from(o: dict[str, Any]):
    from minigpt.training.loop import TrainSettings

    return TrainSettings(epochs=o["epochs"], max_steps=o["max_steps"], lr=o["lr"],
                         eval_freq=o["eval_freq"], eval_iter=o["eval_iter"],
                         checkpoint_dir=o["checkpoint_dir"], checkpoint_every=o["checkpoint_every"],
                         keep_last=o["keep_last"], seed=o["seed"], sample_tokens=0,
                         plot=o["plot"], progress=o["progress"])


def answer_test_set(model, tokenizer, test_data, o: dict[str, Any], run_dir: Path) -> dict:
    """Responses for the test entries, written to the run directory, and the offline scores."""
    from minigpt.training.instruction_eval import (
        RESPONSE_FILE,
        automatic_scores,
        generate_responses,
        response_loss,
        write_responses,
    )

    test = test_data[:o["test_limit"]] if o["test_limit"] else test_data
    t0 = time.perf_counter()
    rows = generate_responses(model, tokenizer, test, o["max_new_tokens"], o["style"])
    path = write_responses(rows, run_dir / RESPONSE_FILE)
    scores = automatic_scores(rows)
    scores["response_loss"] = response_loss(model, tokenizer, test, o["style"])
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    for row in rows[:3]:
        print(f"\n>> {row['instruction']} {row['input']}".rstrip())
        print(f"   reference: {row['output']}\n   model:     {row['model_response']}")
    print(f"\n{len(rows)} responses -> {path}")
    print(f"scores vs the references (0-100): exact match {scores['exact_match']:.1f}, word F1 "
          f"{scores['word_f1']:.1f}, ROUGE-L {scores['rouge_l']:.1f}; loss on the reference "
          f"responses {scores['response_loss']:.3f}   (a judge: minigpt judge {path})")
    return scores


# --------------------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    """Under ``mpirun -n N`` the training loop splits every batch over the ranks
    (``minigpt.training.distributed``); rank 0 alone loads a model first (a download happens once),
    prints, measures the loss before, answers the test set and writes the responses."""
    from minigpt.tokenizer import Tokenizer
    from minigpt.training.distributed import default_threads, get_communicator, shard
    from minigpt.training.instruction_data import (
        InstructionDataset,
        InstructionLoader,
        load_instruction_data,
        split_instruction_data,
    )
    from minigpt.training.loop import NonFiniteLossError, calc_loss_loader, set_num_threads, train
    from minigpt.training.optim import AdamW

    t_start = time.perf_counter()
    comm = get_communicator()
    say = print if comm.is_root else _quiet             # rank 0 alone prints
    o = options(args)
    shard(o["batch_size"], comm, 1)                     # a batch that does not split: refused
    threads = o["threads"] or (default_threads(comm) if comm.size > 1 else None)
    if threads:
        set_num_threads(threads)
    run_dir = Path(o["checkpoint_dir"])
    model, source = root_first(comm, lambda: load_start_model(o))
    tok = Tokenizer.gpt2()
    data = load_instruction_data(o["data"])
    train_data, test_data, val_data = split_instruction_data(data)
    T = min(o["allowed_max_length"], model.cfg.context_length)
    kw = {"allowed_max_length": T, "mask_instruction": o["mask_instruction"]}
    mk = lambda part: InstructionDataset(part, tok, o["style"], model.cfg.context_length)  # noqa: E731
    train_ds, val_ds = mk(train_data), mk(val_data)
    train_loader = InstructionLoader(train_ds, o["batch_size"], shuffle=True, drop_last=True,
                                     seed=o["seed"], **kw)
    train_eval = InstructionLoader(train_ds, o["batch_size"], **kw)
    val_loader = InstructionLoader(val_ds, o["batch_size"], **kw) if len(val_ds) else None
    if comm.size > 1:
        ranks = comm.describe()                         # collective: every rank calls it
        say(f"data parallel: {ranks}, {threads} thread(s) per rank; global batch "
            f"{o['batch_size']} = {comm.size} ranks x {o['batch_size'] // comm.size} entries")
    say(f"data: {len(data)} entries -> {len(train_data)} train / {len(val_data)} val / "
        f"{len(test_data)} test; {len(train_loader)} batches of {o['batch_size']} per epoch")
    say(f"model: {source}: {model.cfg.n_layers} layers, width {model.cfg.emb_dim}, "
        f"{model.num_params:,} parameters ({o['dtype']})")
    if not o.get("resuming") and comm.is_root:
        vl = calc_loss_loader(val_loader, model, 5) if val_loader else float("nan")
        say(f"before finetuning: val loss {vl:.4f} over 5 batches (book, gpt2-medium: 3.7619)")
    comm.wait_for_all()
    optimizer = AdamW(model, lr=o["lr"], weight_decay=o["weight_decay"])
    cli = {k: v for k, v in o.items() if k not in ("resume", "resuming")}
    try:
        res = train(model, optimizer, train_loader, val_loader, settings=settings_from(o),
                    train_eval_loader=train_eval, resume=bool(o.get("resuming")),
                    extra_state={"cli": cli, "tokenizer": "gpt2"}, comm=comm)
    except NonFiniteLossError as e:
        say(f"minigpt instruct: stopped: {e}")
        return 1
    if not comm.is_root:                                # rank 0 answers and reports for all
        comm.wait_for_all()
        return 130 if res.status == "interrupted" else 0
    say(f"\n{res.status} after {res.step} steps in {res.train_seconds:.1f} s of training; last "
        f"train loss {res.train_losses[-1]:.3f}, val loss {res.val_losses[-1]:.3f}"
        if res.train_losses else f"{res.status} after {res.step} steps")
    summary = {"status": res.status, "steps": res.step,
               "train_loss": res.train_losses[-1] if res.train_losses else None,
               "val_loss": res.val_losses[-1] if res.val_losses else None,
               "checkpoint": res.checkpoint}
    if comm.size > 1:
        summary["ranks"] = comm.size
    if res.status == "done" and o["responses"]:
        summary["scores"] = answer_test_set(model, tok, test_data, o, run_dir)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["peak_rss_mib"] = round(status_mb("VmHWM"), 1)
    say(f"wall time {summary['wall_seconds']} s, peak memory {summary['peak_rss_mib']} MiB")
    say("summary " + json.dumps(summary))
    comm.wait_for_all()
    return 130 if res.status == "interrupted" else 0


def root_first(comm, load):
    """``load()`` on rank 0, then on the other ranks: a download or a cache is written once."""
    if not comm.is_root:
        comm.wait_for_all()
    out = load()
    if comm.is_root:
        comm.wait_for_all()
    return out


def _quiet(*_args, **_kwargs) -> None:
    """print for ranks other than 0."""

if __name__ == "__main__":
    import sys

    from minigpt.cli import main

    sys.exit(main(["instruct", *sys.argv[1:]]))
