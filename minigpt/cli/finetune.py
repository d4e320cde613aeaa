"""``minigpt finetune``: finetune a GPT to classify texts (the book's chapter 6; appendix E with
``--lora``), resumable bit for bit after a kill.

The options resolve in layers: the book's chapter 6 run, then what ``--lora`` and ``--init random``
change (lr 8e-4; everything trainable), then what was given. ``--resume`` uses the options saved in
the run's checkpoint; only the length of the run and the logging may change.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.cli.help import HelpFormatter

HELP = ("Finetune a GPT to classify texts, as the book's chapter 6 does (spam or not, on the bundled "
        "SMS Spam Collection) or appendix E (--lora 16): evaluation every 50 steps, accuracy after "
        "each epoch, loss and accuracy plots, checkpoints you can resume exactly. Then "
        "'minigpt classify --checkpoint DIR --text \"...\"'.")

S = argparse.SUPPRESS

# The book's chapter 6 run (GPT-2 124M, last block + ln_f + head trainable, AdamW 5e-5 / 0.1,
# 5 epochs, batch 8, evaluation every 50 steps on 5 batches); pooling: minigpt's default.
BOOK: dict[str, Any] = {
    "data": "sms", "text_column": "text", "label_column": "label", "balance": None,
    "train_frac": 0.7, "val_frac": 0.1, "max_length": None,
    "init": "gpt2", "n_layers": 4, "emb_dim": 128, "n_heads": 4, "context_length": 128,
    "dropout": 0.0, "pooling": None, "trainable": None, "lora": 0, "lora_alpha": None,
    "dtype": "float32", "batch_size": 8, "lr": None, "weight_decay": 0.1, "clip": None,
    "epochs": 5, "max_steps": None, "eval_freq": 50, "eval_iter": 5, "seed": 123,
    "checkpoint_dir": "runs/classifier", "checkpoint_every": None, "keep_last": 2,
    "threads": None, "progress": True, "plot": True, "final_eval": True,
}
RESUMABLE = {"epochs", "max_steps", "eval_freq", "checkpoint_every", "keep_last", "progress", "plot",
             "checkpoint_dir", "resume", "threads", "final_eval"}
TRAINABLE = ("last-block", "last-two", "head", "all")

EXAMPLES = """\
examples:
  minigpt finetune
      the book's chapter 6 run: GPT-2 124M (weights on disk or downloaded once),
      the last block, final layernorm and a new 2-class head trainable
  minigpt finetune --lora 16 --checkpoint-dir runs/lora
      appendix E: LoRA r = 16, alpha 16 on every linear layer and the head,
      lr 8e-4; 2,666,528 parameters train
  minigpt finetune --init random --checkpoint-dir runs/sms-random --epochs 10
      no GPT-2 weights: a small GPT (4 layers, width 128) from random
      initialisation, every parameter trainable (the book's ablation row 10)
  minigpt finetune --data reviews.csv --text-column review --label-column stars
      your own labelled CSV / TSV / JSONL, any number of classes
  minigpt finetune --resume --checkpoint-dir runs/lora
      continue a stopped run; it ends bit-identical to a run never stopped
  minigpt classify --checkpoint runs/classifier --text "You are a winner!"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    p.epilog = EXAMPLES
    d = p.add_argument_group("data")
    d.add_argument("--data", default=S, metavar="sms|PATH",
                   help="'sms': the bundled SMS Spam Collection, balanced and split as the book "
                        "(1,045 / 149 / 300 texts); or a .csv / .tsv (header row) / .jsonl file "
                        "with a text and a label column (default: sms)")
    d.add_argument("--text-column", default=S, help="the text column of a file (default: text)")
    d.add_argument("--label-column", default=S, help="the label column of a file (default: label)")
    d.add_argument("--balance", action=argparse.BooleanOptionalAction, default=S,
                   help="cut every class to the rarest class's size first (default: on for sms, "
                        "as the book; off for a file)")
    d.add_argument("--train-frac", type=float, default=S, help="train share (default: 0.7)")
    d.add_argument("--val-frac", type=float, default=S, help="validation share; the rest tests "
                   "(default: 0.1)")
    d.add_argument("--max-length", type=int, default=S, metavar="T",
                   help="pad and cut texts to T tokens (default: the longest training text, 120 "
                        "for sms, at most the model's context)")
    d.add_argument("--batch-size", type=int, default=S, metavar="B", help="(default: 8)")

    m = p.add_argument_group("model")
    m.add_argument("--init", default=S, metavar="gpt2|NAME|DIR|random",
                   help="the starting weights: gpt2 (124M; also gpt2-medium, -large, -xl) read by "
                        "minigpt.from_pretrained (cached, or downloaded once), a directory of "
                        "weights or a minigpt checkpoint, or 'random': a new small GPT of the "
                        "shape below (default: gpt2)")
    m.add_argument("--n-layers", type=int, default=S, help="--init random only (default: 4)")
    m.add_argument("--emb-dim", type=int, default=S, help="--init random only (default: 128)")
    m.add_argument("--n-heads", type=int, default=S, help="--init random only (default: 4)")
    m.add_argument("--context-length", type=int, default=S, help="--init random only (default: 128)")
    m.add_argument("--dropout", type=float, default=S, help="(default: 0.0, as the book)")
    m.add_argument("--pooling", choices=("last", "last_nonpad", "mean"), default=S,
                   help="which hidden state the head reads: the last real token (last_nonpad, "
                        "the default: padding cannot change a prediction), the last position "
                        "(last, the book's), or the mean over real tokens")
    m.add_argument("--trainable", choices=TRAINABLE, default=S,
                   help="what trains: last-block (the book: the last block, final layernorm and "
                        "head), last-two, head, all (default: last-block; all with --init random; "
                        "with --lora only the adapters)")
    m.add_argument("--lora", type=int, default=S, metavar="R",
                   help="LoRA of rank R on every linear layer and the head, base frozen "
                        "(appendix E uses 16; default: off)")
    m.add_argument("--lora-alpha", type=float, default=S, metavar="A",
                   help="LoRA alpha; updates are scaled by A / R (default: R)")
    m.add_argument("--dtype", choices=("float32", "float64"), default=S, help="(default: float32)")

    o = p.add_argument_group("training (AdamW, the book's settings)")
    o.add_argument("--lr", type=float, default=S, help="(default: 5e-5; 8e-4 with --lora)")
    o.add_argument("--weight-decay", type=float, default=S, help="(default: 0.1)")
    o.add_argument("--clip", type=float, default=S, help="clip the gradient norm (default: off)")
    o.add_argument("--epochs", type=int, default=S, help="(default: 5)")
    o.add_argument("--max-steps", type=int, default=S, help="stop after N steps (default: the epochs)")
    o.add_argument("--eval-freq", type=int, default=S, help="losses every N steps (default: 50)")
    o.add_argument("--eval-iter", type=int, default=S, help="batches per estimate (default: 5)")
    o.add_argument("--seed", type=int, default=S, help="weights, shuffling, dropout (default: 123)")
    o.add_argument("--threads", type=int, default=S, help="BLAS and Numba threads; a resume is "
                   "bit-identical only with the same setting (default: the environment's)")
    o.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    o.add_argument("--no-plot", dest="plot", action="store_false", default=S,
                   help="no loss-plot.png / accuracy-plot.png (drawn only with matplotlib)")
    o.add_argument("--no-final-eval", dest="final_eval", action="store_false", default=S,
                   help="skip the accuracy over the whole train / val / test sets at the end")

    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-dir", default=S, help="(default: runs/classifier)")
    c.add_argument("--checkpoint-every", type=int, default=S, metavar="N",
                   help="also save every N steps (default: at the end and on Ctrl-C)")
    c.add_argument("--keep-last", type=int, default=S, help="(default: 2; 0 keeps all)")
    c.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --checkpoint-dir with its saved options")


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    o = {**BOOK, **given}
    if given.get("resume"):
        from minigpt.training.checkpoint import list_checkpoints, read_state

        if list_checkpoints(o["checkpoint_dir"]):
            saved = read_state(o["checkpoint_dir"])["state"].get("cli")
            if saved is None or saved.get("command") != "finetune":
                raise ValueError(f"{o['checkpoint_dir']} was not written by 'minigpt finetune'")
            changed = sorted(k for k, v in given.items() if k not in RESUMABLE and saved.get(k) != v)
            if changed:
                raise ValueError("these options differ from the run being resumed: "
                                 + ", ".join(f"--{k.replace('_', '-')} (saved {saved.get(k)!r})"
                                             for k in changed)
                                 + "; drop them, or start a new run in another --checkpoint-dir")
            return {**saved, **{k: v for k, v in given.items() if k in RESUMABLE}}
    if o["lora"] and o["lora"] < 0:
        raise ValueError(f"--lora must be a positive rank, got {o['lora']}")
    if o["lora_alpha"] is None and o["lora"]:
        o["lora_alpha"] = float(o["lora"])
    if o["lr"] is None:
        o["lr"] = 8e-4 if o["lora"] else 5e-5
    if o["trainable"] is None:
        o["trainable"] = "lora" if o["lora"] else "all" if o["init"] == "random" else "last-block"
    elif o["lora"]:
        raise ValueError("--trainable and --lora: with LoRA only the adapters train; drop one")
    if o["balance"] is None:
        o["balance"] = o["data"] == "sms"
    o["command"] = "finetune"
    return o


def build_data(o: dict[str, Any], tokenizer, context_length: int):
    """(splits, datasets, loaders, train_eval loader) from the options."""
    from minigpt.training.classification_data import (
        ClassificationLoader,
        classification_datasets,
        classification_loaders,
        create_balanced_dataset,
        load_labelled,
        load_sms_spam,
        random_split,
    )

    if o["data"] == "sms":
        data = load_sms_spam()
    else:
        path = Path(o["data"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--data {o['data']!r} is neither 'sms' nor a file")
        data = load_labelled(path, o["text_column"], o["label_column"])
    if data.num_classes < 2:
        raise ValueError(f"the data holds one label only ({data.label_names}); a classifier needs two")
    if o["balance"]:
        data = create_balanced_dataset(data, seed=o["seed"])
    splits = random_split(data, o["train_frac"], o["val_frac"], seed=o["seed"])
    datasets = classification_datasets(*splits, tokenizer=tokenizer, max_length=o["max_length"],
                                       context_length=context_length)
    loaders = classification_loaders(*datasets, batch_size=o["batch_size"], seed=o["seed"],
                                     with_lengths=True)
    train_eval = ClassificationLoader(datasets[0], o["batch_size"], with_lengths=True)
    return splits, datasets, loaders, train_eval


def build_model(o: dict[str, Any], num_classes: int):
    """A fresh classifier as the options say: the base (GPT-2 weights, a checkpoint, or random), a
    new head, LoRA adapters, the frozen choice."""
    from minigpt.config import GPT_CONFIG_124M
    from minigpt.lora import with_lora
    from minigpt.model import GPTModel
    from minigpt.training.finetune import choose_trainable

    dtype = np.dtype(o["dtype"]).type
    head = {"num_classes": num_classes, "drop_rate": o["dropout"]}
    if o["pooling"] is not None:
        head["pooling"] = o["pooling"]
    if o["init"] == "random":
        cfg = GPT_CONFIG_124M.replace(n_layers=o["n_layers"], emb_dim=o["emb_dim"],
                                      n_heads=o["n_heads"], context_length=o["context_length"], **head)
        model = GPTModel(cfg, seed=o["seed"], dtype=dtype)
    else:
        from minigpt.weights.pretrained import load_model

        try:
            base = load_model(o["init"], dtype=dtype)
        except (OSError, ValueError) as e:
            raise ValueError(f"--init {o['init']}: could not load the weights ({e}). Put GPT-2's "
                             "model.safetensors where minigpt.from_pretrained finds it (see "
                             "docs/pretrained.md), or train without them: --init random") from e
        if base.cfg.num_classes is not None or base.cfg.lora_rank:
            raise ValueError(f"--init {o['init']}: start from a language model, not a classifier "
                             "or a LoRA model")
        cfg = base.cfg.replace(**head)
        model = GPTModel(cfg, seed=None, dtype=dtype, init=None)
        for name, arr in base.params.items():      # the trunk; the LM head, if any, is dropped
            if name in model.params:
                model.params[name][...] = arr
        # the book's new head: nn.Linear(C, n) under torch.manual_seed(123)-like seeding
        from minigpt.params import init_params

        init_params(model.params, [s for s in model.table if s.name.startswith("out_head")],
                    "torch", np.random.default_rng(o["seed"]))
    if o["lora"]:
        model = with_lora(model, o["lora"], o["lora_alpha"], seed=o["seed"])
    choose_trainable(model, o["trainable"])
    return model


def run(args: argparse.Namespace) -> int:
    from minigpt.tokenizer import Tokenizer
    from minigpt.training.checkpoint import list_checkpoints, model_from_checkpoint
    from minigpt.training.finetune import (
        FinetuneSettings,
        calc_accuracy_loader,
        finetune,
    )
    from minigpt.training.distributed import refuse_ranks
    from minigpt.training.loop import NonFiniteLossError, set_num_threads
    from minigpt.training.optim import AdamW

    refuse_ranks("finetune", "its loop, minigpt.training.finetune, does not split a batch over "
                 "ranks")
    t_start = time.perf_counter()
    o = resolve_options(args)
    run_dir = Path(o["checkpoint_dir"])
    resuming = bool(o.get("resume")) and bool(list_checkpoints(run_dir))
    if not resuming and list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume, or choose "
                         "another --checkpoint-dir")
    if o.get("threads"):
        set_num_threads(o["threads"])
    tokenizer = Tokenizer.gpt2()
    if resuming:
        model, _ = model_from_checkpoint(run_dir)
    else:
        model = None
    from minigpt.config import PRETRAINED_CONFIGS

    ctx = model.cfg.context_length if model is not None else o["context_length"] \
        if o["init"] == "random" else PRETRAINED_CONFIGS.get(o["init"], PRETRAINED_CONFIGS["gpt2"]).context_length
    splits, datasets, loaders, train_eval = build_data(o, tokenizer, ctx)
    label_names = datasets[0].label_names
    if model is None:
        model = build_model(o, len(label_names))
        if datasets[0].max_length > model.cfg.context_length:
            raise ValueError(f"texts of {datasets[0].max_length} tokens exceed the model's context "
                             f"{model.cfg.context_length}; pass --max-length")
    train_loader, val_loader, test_loader = loaders
    optimizer = AdamW(model, lr=o["lr"], weight_decay=o["weight_decay"], decay="all")
    settings = FinetuneSettings(epochs=o["epochs"], max_steps=o["max_steps"], lr=o["lr"],
                                clip=o["clip"], eval_freq=o["eval_freq"], eval_iter=o["eval_iter"],
                                checkpoint_dir=str(run_dir), checkpoint_every=o["checkpoint_every"],
                                keep_last=o["keep_last"], seed=o["seed"], plot=o["plot"],
                                progress=o["progress"])
    cfg = model.cfg
    print(f"data: {o['data']}: {len(splits[0]):,} / {len(splits[1]):,} / {len(splits[2]):,} texts "
          f"(train / val / test), labels {label_names}, max_length {datasets[0].max_length}; "
          f"{len(train_loader)} / {len(val_loader)} / {len(test_loader)} batches of {o['batch_size']}")
    print(f"model: {cfg.n_layers} layers, width {cfg.emb_dim}, {cfg.num_classes}-class head, pooling "
          f"{cfg.pooling}" + (f", LoRA r={cfg.lora_rank} alpha={cfg.lora_alpha:g}" if cfg.lora_rank
                              else "") + f" ({o['init']} init, {np.dtype(model.dtype).name})")
    print(f"trainable parameters: {model.num_trainable:,} of {model.num_params:,} "
          f"({o['trainable']})")
    n_steps = o["max_steps"] or o["epochs"] * len(train_loader)
    print(f"{n_steps} steps, AdamW lr {o['lr']:g}, weight decay {o['weight_decay']:g}; "
          f"checkpoints in {run_dir}/")
    cli_state = {k: v for k, v in o.items() if k != "resume"}
    data_state = {"label_names": label_names, "max_length": datasets[0].max_length,
                  "pad_token_id": datasets[0].pad_token_id, "tokenizer": "gpt2"}
    try:
        res = finetune(model, optimizer, train_loader, val_loader, settings=settings,
                       train_eval_loader=train_eval, resume=resuming,
                       extra_state={"cli": cli_state, "data": data_state})
    except NonFiniteLossError as e:
        print(f"minigpt finetune: stopped: {e}")
        return 1
    summary: dict[str, Any] = {"status": res.status, "steps": res.step,
                               "examples_seen": res.examples_seen,
                               "train_seconds": round(res.train_seconds, 2),
                               "trainable": model.num_trainable, "total": model.num_params}
    if o["final_eval"] and res.status == "done":
        from minigpt.training.classification_data import ClassificationLoader

        for name, ds in zip(("train", "val", "test"), datasets, strict=True):
            acc = calc_accuracy_loader(ClassificationLoader(ds, o["batch_size"], with_lengths=True),
                                       model)
            summary[f"{name}_accuracy"] = round(acc, 6)
        print(f"Training accuracy: {summary['train_accuracy'] * 100:.2f}%\n"
              f"Validation accuracy: {summary['val_accuracy'] * 100:.2f}%\n"
              f"Test accuracy: {summary['test_accuracy'] * 100:.2f}%")
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    print(f"{res.status} after {res.step} steps in {summary['wall_seconds']:.1f} s "
          f"(training steps {res.train_seconds:.1f} s); checkpoint: {res.checkpoint}")
    plots = [p for p in ("loss-plot.png", "accuracy-plot.png") if (run_dir / p).exists()]
    if o["plot"] and not plots and res.eval_steps:
        print("plots: skipped (matplotlib is not installed: pip install 'minigpt[plot]')")
    elif plots:
        print("plots: " + ", ".join(str(run_dir / p) for p in plots))
    print(f"classify:   minigpt classify --checkpoint {run_dir} --text \"...\"")
    print("summary " + json.dumps(summary))
    return 130 if res.status == "interrupted" else 0


if __name__ == "__main__":
    import sys

    from minigpt.cli import main

    sys.exit(main(["finetune", *sys.argv[1:]]))
