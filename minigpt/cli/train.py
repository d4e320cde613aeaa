"""``minigpt train``: train a GPT on a text from scratch (the book's chapter 5), resumable.

Every option has a default; ``--quick`` swaps in a small preset that trains in about 30 s.
The options are resolved in three layers: the book's chapter 5 run, then the ``--quick`` preset,
then whatever was given on the command line. With ``--resume`` the options saved in the checkpoint
are used, and only the length of the run and the logging may change.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.cli.help import HelpFormatter

HELP = ("Train a GPT from scratch on a text, as the book's chapter 5 does: evaluation every few "
        "steps, a sample after each epoch, checkpoints you can resume exactly. Start with "
        "'minigpt train --quick' (a small model on the bundled short story, about 30 s on 2 "
        "cores), then 'minigpt generate --checkpoint runs/quick'.")

S = argparse.SUPPRESS  # options left out of the namespace unless given, so presets can fill them

# The book's chapter 5 run (GPT_CONFIG_124M at context 256, AdamW 4e-4 / 0.1, 10 epochs, batch 2).
BOOK: dict[str, Any] = {
    "text": "the-verdict", "size": "gpt2", "vocab": None, "context_length": 256, "emb_dim": None,
    "n_heads": None, "n_layers": None, "dropout": 0.1, "qkv_bias": False, "tie_weights": False,
    "init": "torch",
    "dtype": "float32", "tokenizer": "gpt2", "batch_size": 2, "stride": None, "train_ratio": 0.9,
    "lr": 4e-4, "min_lr": None, "warmup_steps": 0, "weight_decay": 0.1, "decay": "all", "clip": None,
    "epochs": 10, "max_steps": None, "eval_freq": 5, "eval_iter": 5, "checkpoint_dir": None,
    "checkpoint_every": None, "keep_last": 2, "seed": 123, "start_context": "Every effort moves you",
    "sample_tokens": 50, "sample_every": 1, "progress": True, "plot": True, "threads": None,
    "grad_accum": 1, "recompute_mlp": False, "recompute_attention": None,
}

# --quick: a 2,048-token BPE trained on the story (a 50,257-row LM head would be 90% of a small model
# and of its compute; with 1,024 tokens most words are split and the samples glue pieces into
# non-words), a 4-layer model of width 192, warmup + cosine, clipping; one thread (its
# matrices are too small to gain from two, and two pools of spinning threads lose badly on a busy
# machine - see docs/training.md).
QUICK: dict[str, Any] = {
    "size": None, "tokenizer": "2048", "context_length": 64, "emb_dim": 192, "n_heads": 6,
    "n_layers": 4, "init": "gpt2", "dropout": 0.0, "batch_size": 16, "stride": 32, "lr": 2e-3, "min_lr": 2e-4,
    "warmup_steps": 10, "clip": 1.0, "epochs": 16, "eval_freq": 20, "eval_iter": 2,
    "sample_every": 4, "checkpoint_dir": "runs/quick", "checkpoint_every": 50, "threads": 1,
}

# What may differ from the saved options when resuming (the rest would change the trajectory;
# --grad-accum and the number of MPI ranks keep the global batch, so they change only the rounding).
RESUMABLE = {"epochs", "max_steps", "eval_freq", "checkpoint_every", "keep_last", "progress", "plot",
             "sample_tokens", "sample_every", "checkpoint_dir", "resume", "quick", "threads",
             "grad_accum", "recompute_mlp", "recompute_attention"}

SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

EXAMPLES = """\
examples:
  minigpt train --quick
      the quick start: a small model on the bundled story (about 30 s), then
      minigpt generate --checkpoint runs/quick
  minigpt train
      the book's chapter 5 run: GPT_CONFIG_124M at context 256 (163M
      parameters), 10 epochs of 9 steps; 6-10 minutes on 2 cores
  minigpt train notes.txt --tokenizer 2048 --n-layers 6 --emb-dim 256 \\
      --n-heads 8 --context 128 --batch-size 8 --epochs 5
      your own text (run directory runs/notes), a BPE vocabulary trained on it,
      a model size of your choice
  minigpt train --lr 1e-3 --warmup-steps 27 --min-lr 1e-5 --clip 1.0 --epochs 15
      appendix D: linear warmup, cosine decay, gradient clipping
  minigpt train --resume --checkpoint-dir runs/the-verdict
      continue a stopped run (Ctrl-C saves; after a crash or kill the latest
      checkpoint is used); it ends bit-identical to a run never stopped
  mpirun -n 2 minigpt train --quick --checkpoint-dir runs/quick-mpi
      data parallel over MPI (pip install -e '.[mpi]'): 2 processes, each
      computing half of every batch of 16; see docs/distributed.md

A run directory holds the checkpoints (step-*/), log.jsonl (one line per
evaluation) and losses.png (when matplotlib is installed). See docs/training.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("text", nargs="?", default=S,
                   help="what to train on: a bundled text ('the-verdict', Edith Wharton's short story "
                        "from the book, 20 kB) or the path of any UTF-8 text file (default: the-verdict)")
    p.add_argument("--quick", action="store_true", default=S,
                   help="the quick-start preset: a 2,048-token BPE vocabulary trained on the text, a "
                        "4-layer 192-wide model (2.6M parameters), context 64, batch 16, 16 epochs "
                        "(144 steps) with warmup + cosine decay, one thread; writes runs/quick. Any "
                        "option given as well overrides the preset")

    m = p.add_argument_group("model (default: the book's GPT_CONFIG_124M at context 256)")
    m.add_argument("--size", choices=SIZES, default=S,
                   help="a GPT-2 shape: gpt2 (124M: 12 layers, width 768, 12 heads), gpt2-medium "
                        "(355M), gpt2-large (774M), gpt2-xl (1558M); change single fields with "
                        "--emb-dim, --n-heads, --n-layers (default: gpt2)")
    m.add_argument("--vocab", type=int, default=S, metavar="V",
                   help="vocabulary size V (default: the tokenizer's, 50,257 for GPT-2)")
    m.add_argument("--context-length", "--context", dest="context_length", type=int, default=S,
                   metavar="T",
                   help="tokens per training window, also the model's context length (default: 256)")
    m.add_argument("--emb-dim", type=int, default=S, metavar="C",
                   help="width of the residual stream (default: 768 for gpt2)")
    m.add_argument("--n-heads", type=int, default=S, metavar="H",
                   help="attention heads; C must divide by H (default: 12 for gpt2)")
    m.add_argument("--n-layers", type=int, default=S, metavar="L",
                   help="transformer blocks (default: 12 for gpt2)")
    m.add_argument("--dropout", type=float, default=S, metavar="P", help="dropout rate (default: 0.1)")
    m.add_argument("--qkv-bias", action="store_true", default=S,
                   help="give q, k, v a bias (GPT-2 does; the book's run does not)")
    m.add_argument("--tie-weights", action="store_true", default=S,
                   help="share the LM head with the token embedding (GPT-2 does; the book does not)")
    m.add_argument("--init", choices=("torch", "gpt2"), default=S,
                   help="initial weights: torch = PyTorch's defaults, as the book's model (embeddings "
                        "normal(0, 1), linear layers uniform(+-1/sqrt(fan_in))); gpt2 = normal(0, "
                        "0.02), GPT-2's. The book's run stalls near loss 5.9 with gpt2 (default: "
                        "torch; --quick: gpt2)")
    m.add_argument("--dtype", choices=("float32", "float64"), default=S, help="(default: float32)")

    d = p.add_argument_group("data")
    d.add_argument("--tokenizer", default=S, metavar="gpt2|N|DIR",
                   help="'gpt2' (OpenAI's 50,257-token BPE, the default), a number N (train an N-token "
                        "byte-level BPE on the training split and save it with the checkpoints), or "
                        "the directory of a tokenizer saved by minigpt.Tokenizer.save")
    d.add_argument("--batch-size", type=int, default=S, metavar="B",
                   help="windows per optimizer step, the global batch: under mpirun -n N each rank "
                        "computes B/N of them (default: 2)")
    d.add_argument("--grad-accum", type=int, default=S, metavar="K",
                   help="gradient accumulation: compute each rank's part of the batch in K "
                        "micro-batches (less memory; the same step up to rounding) (default: 1)")
    d.add_argument("--stride", type=int, default=S, metavar="N",
                   help="tokens between window starts (default: the context length, no overlap)")
    d.add_argument("--train-ratio", type=float, default=S, metavar="F",
                   help="the first fraction of the characters trains, the rest validates (default: 0.9)")

    o = p.add_argument_group("optimizer and schedule (AdamW, PyTorch semantics)")
    o.add_argument("--lr", type=float, default=S, help="peak learning rate (default: 4e-4)")
    o.add_argument("--min-lr", type=float, default=S, metavar="LR",
                   help="decay the learning rate to this with a cosine over the run (default: no "
                        "decay, as chapter 5)")
    o.add_argument("--warmup-steps", type=int, default=S, metavar="N",
                   help="linear warmup steps before the peak (appendix D; default: 0)")
    o.add_argument("--weight-decay", type=float, default=S, metavar="WD", help="decoupled weight decay (default: 0.1)")
    o.add_argument("--decay", choices=("all", "matrices"), default=S,
                   help="which parameters decay: all (the book) or only matrices and embeddings "
                        "(GPT-2 practice) (default: all)")
    o.add_argument("--clip", type=float, default=S, metavar="NORM",
                   help="clip the global gradient norm to this from the end of the warmup on "
                        "(appendix D uses 1.0; default: no clipping)")

    r = p.add_argument_group("run length, evaluation, samples")
    r.add_argument("--epochs", type=int, default=S, metavar="N", help="passes over the training windows (default: 10)")
    r.add_argument("--max-steps", type=int, default=S, metavar="N", help="stop after this many optimizer steps instead (default: the epochs decide)")
    r.add_argument("--eval-freq", type=int, default=S, metavar="N",
                   help="measure train and val loss every N steps (default: 5)")
    r.add_argument("--eval-iter", type=int, default=S, metavar="N",
                   help="batches per loss measurement (default: 5)")
    r.add_argument("--start-context", default=S, metavar="TEXT",
                   help="the prompt of the samples printed during training (default: 'Every effort "
                        "moves you')")
    r.add_argument("--sample-tokens", type=int, default=S, metavar="N",
                   help="tokens per sample, 0 for none (default: 50)")
    r.add_argument("--sample-every", type=int, default=S, metavar="N", help="print a sample every N epochs (default: 1)")
    r.add_argument("--seed", type=int, default=S,
                   help="seeds the weights, the shuffling and the dropout (default: 123)")
    r.add_argument("--threads", type=int, default=S, metavar="N",
                   help="threads for BLAS and the Numba kernels, per process (default: as the "
                        "environment sets them; under mpirun, the cores divided by the ranks on "
                        "the machine; 1 is often faster on a busy 2-core machine). A resumed run is "
                        "bit-identical to an uninterrupted one only with the same setting")
    r.add_argument("--recompute-mlp", dest="recompute_mlp", action="store_true", default=S,
                   help="less memory for a little more time: the blocks do not keep GELU's input "
                        "(B, T, 4C) for the backward but recompute it, one more product per block "
                        "(GPT-2 124M, batch 4 x 128: 72 MiB less, about 5%% slower; the same bits)")
    r.add_argument("--recompute-attention", dest="recompute_attention", action="store_true",
                   default=S,
                   help="less memory for a little more time: the blocks recompute the attention "
                        "in the backward at every length (by default only where its weights "
                        "(B, H, T, T) would be larger than GELU's input, H T > 4 C; the same bits)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no progress bar (for logs)")
    r.add_argument("--no-plot", dest="plot", action="store_false", default=S,
                   help="do not draw losses.png (it is drawn only when matplotlib is installed)")

    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-dir", default=S, metavar="DIR",
                   help="where checkpoints, log.jsonl and losses.png go (default: runs/<text name>)")
    c.add_argument("--checkpoint-every", type=int, default=S, metavar="N",
                   help="also save every N steps (default: only at the end and on Ctrl-C)")
    c.add_argument("--keep-last", type=int, default=S, metavar="N", help="checkpoints kept (default: 2; 0 keeps all)")
    c.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --checkpoint-dir exactly where its latest checkpoint "
                        "left it, with its saved options (start it if there is no checkpoint yet)")


# --- option resolution -----------------------------------------------------------------------------
def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Book defaults <- --quick preset <- explicit options; or the saved ones when resuming."""
    given = _explicit(args)
    opts = dict(BOOK)
    if given.get("quick"):
        opts.update(QUICK)
    opts.update(given)
    if opts["checkpoint_dir"] is None:
        opts["checkpoint_dir"] = str(Path("runs") / Path(str(opts["text"])).stem)
    if given.get("resume"):
        from minigpt.training.checkpoint import list_checkpoints, read_state

        if list_checkpoints(opts["checkpoint_dir"]):
            saved = read_state(opts["checkpoint_dir"])["state"].get("cli")
            if saved is None:
                raise ValueError(f"{opts['checkpoint_dir']} was not written by 'minigpt train'; "
                                 "resume it with minigpt.training.loop.train(..., resume=True)")
            changed = sorted(k for k, v in given.items() if k not in RESUMABLE and saved.get(k) != v)
            if changed:
                raise ValueError(
                    "these options differ from the run being resumed and would change its result: "
                    + ", ".join(f"--{k.replace('_', '-')} (saved {saved.get(k)!r})" for k in changed)
                    + "; drop them, or start a new run in another --checkpoint-dir")
            opts = {**saved, **{k: v for k, v in given.items() if k in RESUMABLE}}
    return opts


def load_text(name_or_path: str) -> str:
    """A bundled text by name ('the-verdict') or any UTF-8 text file."""
    bundled = files("minigpt") / "assets" / "texts" / f"{name_or_path}.txt"
    if bundled.is_file():
        return bundled.read_text(encoding="utf-8")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a bundled text (the-verdict) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from e
    if not text.strip():
        raise ValueError(f"{path} is empty: there is nothing to train on")
    return text


def make_tokenizer(spec: str, train_text: str, run_dir: Path, resume: bool, save: bool = True):
    """(tokenizer, how a checkpoint refers to it): 'gpt2', or a directory saved in the run
    (saved when ``save``; under MPI rank 0 trains and saves it, the others then load it)."""
    from minigpt.tokenizer import Tokenizer

    spec = str(spec)
    if spec == "gpt2":
        return Tokenizer.gpt2(), "gpt2"
    tok_dir = run_dir / "tokenizer"
    if resume and (tok_dir / "tokenizer_config.json").is_file():
        return Tokenizer.load(str(tok_dir)), "tokenizer"
    if spec.isdigit():
        n = int(spec)
        if n < 257:
            raise ValueError(f"--tokenizer {n}: a byte-level BPE needs at least 257 tokens (256 bytes "
                             "+ <|endoftext|>)")
        tok = Tokenizer.train(train_text, n - 1, special_tokens=["<|endoftext|>"])
    elif Path(spec).is_dir():
        tok = Tokenizer.load(spec)
    else:
        raise ValueError(f"--tokenizer must be 'gpt2', a number, or a saved tokenizer directory; got {spec!r}")
    if save:
        tok.save(str(tok_dir))
    return tok, "tokenizer"


def build_config(o: dict[str, Any], n_vocab: int):
    from minigpt.config import (
        GPT_CONFIG_124M,
        GPT_CONFIG_LARGE,
        GPT_CONFIG_MEDIUM,
        GPT_CONFIG_XL,
        GPTConfig,
    )

    base = {None: GPT_CONFIG_124M, "gpt2": GPT_CONFIG_124M, "gpt2-medium": GPT_CONFIG_MEDIUM,
            "gpt2-large": GPT_CONFIG_LARGE, "gpt2-xl": GPT_CONFIG_XL}[o["size"]]
    vocab = o["vocab"] if o["vocab"] is not None else n_vocab
    if vocab < n_vocab:
        raise ValueError(f"--vocab {vocab} is smaller than the tokenizer's {n_vocab} tokens")
    fields = {"vocab_size": vocab, "context_length": o["context_length"], "drop_rate": o["dropout"],
              "qkv_bias": bool(o["qkv_bias"]), "tie_weights": bool(o["tie_weights"])}
    for k in ("emb_dim", "n_heads", "n_layers"):
        if o[k] is not None:
            fields[k] = o[k]
    return GPTConfig.from_dict({**base.to_dict(), **fields})


def build_loaders(tokenizer, text: str, o: dict[str, Any]):
    from minigpt.training.data import DataLoader, train_val_split, windows

    T, B = o["context_length"], o["batch_size"]
    stride = o["stride"] or T
    if B < 1 or T < 1 or stride < 1:
        raise ValueError(f"--batch-size, --context-length and --stride must be >= 1, got {B}, {T}, {stride}")
    train_text, val_text = train_val_split(text, o["train_ratio"])
    train_ids = tokenizer.encode(train_text, allowed_special={"<|endoftext|>"})
    x, y = windows(train_ids, T, stride)
    train_loader = DataLoader(x, y, batch_size=B, shuffle=True, drop_last=True, seed=o["seed"])
    train_eval = DataLoader(x, y, batch_size=B, shuffle=False, drop_last=True)
    val_loader, n_val = None, 0
    val_ids = tokenizer.encode(val_text, allowed_special={"<|endoftext|>"})
    if len(val_ids) > T:
        vx, vy = windows(val_ids, T, T)
        val_loader, n_val = DataLoader(vx, vy, batch_size=B, shuffle=False, drop_last=False), len(vx)
    return train_loader, train_eval, val_loader, len(train_ids), len(val_ids), len(x), n_val


# --- the command -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from minigpt.training.checkpoint import list_checkpoints
    from minigpt.model import GPTModel
    from minigpt.training.optim import AdamW
    from minigpt.training.loop import NonFiniteLossError, TrainSettings, train

    from minigpt.training.distributed import default_threads, get_communicator, shard

    t_start = time.perf_counter()
    comm = get_communicator()
    say = print if comm.is_root else _quiet     # rank 0 alone prints
    o = resolve_options(args)
    run_dir = Path(o["checkpoint_dir"])
    resuming = bool(o.get("resume")) and bool(list_checkpoints(run_dir))
    if not resuming and list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume, or choose "
                         "another --checkpoint-dir (or delete that one)")
    shard(o["batch_size"], comm, o.get("grad_accum", 1))    # a batch that does not split: refused
    comm.wait_for_all()     # every rank has looked at run_dir before rank 0 writes into it
    threads = o.get("threads") or (default_threads(comm) if comm.size > 1 else None)
    if threads:
        from minigpt.training.loop import set_num_threads

        set_num_threads(threads)
    if comm.size > 1:
        _say_layout(say, comm, o)
    text = load_text(o["text"])
    from minigpt.training.data import train_val_split

    if comm.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
    train_text = train_val_split(text, o["train_ratio"])[0]
    if comm.is_root:
        tokenizer, tok_ref = make_tokenizer(o["tokenizer"], train_text, run_dir, resuming)
    comm.wait_for_all()
    if not comm.is_root:   # load the BPE rank 0 trained (or, on another machine, train the same)
        tokenizer, tok_ref = make_tokenizer(o["tokenizer"], train_text, run_dir, True, save=False)
    cfg = build_config(o, tokenizer.n_vocab)
    if o["context_length"] > cfg.context_length:
        raise ValueError("the context length exceeds the model's")
    train_loader, train_eval, val_loader, n_tr, n_va, n_win, n_vwin = build_loaders(tokenizer, text, o)
    dtype = np.dtype(o["dtype"]).type
    # a resumed run loads its weights over these
    model = GPTModel(cfg, seed=o["seed"], dtype=dtype, init=o.get("init", "gpt2"))
    model.recompute_mlp = bool(o.get("recompute_mlp"))
    model.recompute_attention = o.get("recompute_attention")     # None: where the weights are large
    optimizer = AdamW(model, lr=o["lr"], weight_decay=o["weight_decay"], decay=o["decay"])
    settings = TrainSettings(
        epochs=o["epochs"], max_steps=o["max_steps"], lr=o["lr"], min_lr=o["min_lr"],
        warmup_steps=o["warmup_steps"], clip=o["clip"], eval_freq=o["eval_freq"],
        eval_iter=o["eval_iter"], checkpoint_dir=str(run_dir), checkpoint_every=o["checkpoint_every"],
        keep_last=o["keep_last"], seed=o["seed"], start_context=o["start_context"],
        sample_tokens=o["sample_tokens"], sample_every=o["sample_every"], plot=o["plot"],
        progress=o["progress"], grad_accum=o.get("grad_accum", 1),
    )
    n_steps = o["max_steps"] or o["epochs"] * len(train_loader)
    say(f"text: {o['text']} ({len(text):,} characters) -> {n_tr:,} train / {n_va:,} val tokens "
        f"({'GPT-2 BPE' if tok_ref == 'gpt2' else f'a {tokenizer.n_vocab}-token BPE trained on the text'})")
    say(f"windows of {o['context_length']} tokens: {n_win} train ({len(train_loader)} batches of "
        f"{o['batch_size']}), {n_vwin} val" + ("" if val_loader else " (val text shorter than one "
                                                 "window: no val loss)"))
    say(f"model: {cfg.n_layers} layers, width {cfg.emb_dim}, {cfg.n_heads} heads, vocab "
        f"{cfg.vocab_size:,}, {model.num_params:,} parameters ({np.dtype(dtype).name}, "
        f"{o.get('init', 'gpt2')} initialisation)")
    say(f"{n_steps} steps, AdamW lr {o['lr']:g}" + (f" -> {o['min_lr']:g} (cosine)" if o["min_lr"] is not None
                                                    else "") + f", checkpoints in {run_dir}/")
    cli_state = {k: v for k, v in o.items() if k not in ("resume", "quick")}
    try:
        res = train(model, optimizer, train_loader, val_loader, settings=settings, tokenizer=tokenizer,
                    train_eval_loader=train_eval, resume=resuming,
                    extra_state={"cli": cli_state, "tokenizer": tok_ref}, comm=comm)
    except NonFiniteLossError as e:
        say(f"minigpt train: stopped: {e}")
        return 1
    if not comm.is_root:            # rank 0 reports for all
        return 130 if res.status == "interrupted" else 0
    wall = time.perf_counter() - t_start
    summary = {
        "status": res.status, "steps": res.step, "tokens_seen": res.tokens_seen,
        "train_loss": res.train_losses[-1] if res.train_losses else None,
        "val_loss": res.val_losses[-1] if res.val_losses else None,
        "train_seconds": round(res.train_seconds, 2), "wall_seconds": round(wall, 2),
        "tokens_per_second": round(res.tokens_per_second, 1), "checkpoint": res.checkpoint,
        "ranks": comm.size, "allreduce_seconds": round(res.allreduce_seconds, 3),
    }
    say(f"\n{res.status} after {res.step} steps, {res.tokens_seen:,} tokens seen; last train loss "
        f"{summary['train_loss']:.3f}" + (f", val loss {summary['val_loss']:.3f}" if val_loader else "")
        + f"\nwall time {wall:.1f} s (training steps {res.train_seconds:.1f} s, "
        f"{res.tokens_per_second:,.0f} tokens/s)")
    say(f"checkpoint: {res.checkpoint}\nlog: {run_dir / 'log.jsonl'}"
        + (f"\nplot: {run_dir / 'losses.png'}" if (run_dir / "losses.png").exists() else ""))
    say(f"generate:   minigpt generate --checkpoint {run_dir} --prompt \"{o['start_context']}\"")
    say("summary " + json.dumps(summary))
    return 130 if res.status == "interrupted" else 0


def _say_layout(say, comm, o: dict[str, Any]) -> None:
    """The start-up line of a data-parallel run: ranks, hosts, threads, how the batch is cut, and a
    warning when mpirun bound a rank to fewer cores than its threads (collective: every rank calls)."""
    import os

    from minigpt import backend

    threads = backend.get_threads()
    cores = min(comm.allgather(len(os.sched_getaffinity(0))))
    per_rank = o["batch_size"] // comm.size
    accum = o.get("grad_accum", 1)
    say(f"data parallel: {comm.describe()}, {threads} thread(s) per rank ("
        f"{'--threads' if o.get('threads') else 'default: cores / ranks on the host'}); global "
        f"batch {o['batch_size']} = {comm.size} ranks x {per_rank} windows"
        + (f" in {accum} micro-batches of {per_rank // accum}" if accum > 1 else ""))
    if cores < threads:
        say(f"warning: mpirun bound each rank to {cores} core(s) but it runs {threads} threads; "
            f"start it with --bind-to none, or --map-by slot:PE={threads}")


def _quiet(*args, **kwargs) -> None:
    """print for ranks other than 0."""


# for `python -m minigpt.cli.train` (tests run it as a subprocess)
if __name__ == "__main__":
    import sys

    from minigpt.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

