"""Finetuning a classifier: the book's chapter 6 ``train_classifier_simple`` (and appendix E, which
runs it on a LoRA model), made resumable like ``minigpt.training.loop.train``.

    model = ...                                   # a GPTModel with cfg.num_classes (and LoRA rows)
    choose_trainable(model, "last-block")         # the book: the last block, ln_f and the head
    opt = AdamW(model, lr=5e-5, weight_decay=0.1)
    res = finetune(model, opt, train_loader, val_loader, settings=FinetuneSettings())
    calc_accuracy_loader(test_loader, model)      # the book's final numbers

Batches are ``(input_ids (B, T), labels (B,), lengths (B,))``: the ``ClassificationLoader`` with
``with_lengths=True`` (``minigpt.training.classification_data``). ``lengths`` feeds the pooling
(the last real token by default, ``GPTConfig.pooling``).

One optimizer step is ``model.loss_and_grads`` (frozen weights' gradients are not computed), the
AdamW step over the trainable parameters only. Every ``eval_freq`` steps the train and val losses
over ``eval_iter`` batches are logged (the book's ``evaluate_model``); after every epoch the
accuracies over ``eval_iter`` batches (the book's ``calc_accuracy_loader(..., num_batches=eval_iter)``).
At the end, loss and accuracy plots as the book draws them (``plot_values``; PNG, matplotlib only).

Exact resume, as the pretraining loop: a checkpoint (``minigpt.training.checkpoint``, written
atomically) holds the parameters with their extra rows (LoRA A and B), the frozen flags, AdamW's
state, the dropout RNG, the loader's shuffle state and position in the epoch, and the history; a run
killed at any moment (``kill -9``) and resumed ends with the same bits as one never stopped. The
run's bookkeeping (Ctrl-C handling, the log, the progress bar, the checkpoint state) is
``loop.py``'s, reused here; only the step, the evaluation and the plots are the classifier's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.atomic import atomic_path
from minigpt.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from minigpt.training.kernel_cache import check_still_cached, warm_kernel_cache
from minigpt.training.loop import (
    LOG_FILE,
    NonFiniteLossError,
    _log,
    _Position,
    _progress_bar,
    _StopFlag,
    _truncate_log,
)
from minigpt.training.optim import clip_grad_norm_, grad_norm


@dataclass
class _FinetunePosition(_Position):
    """The loop's position plus the one generator that draws the dropout masks of a finetuning
    run (classification batches are not split over ranks, so one stream per run suffices)."""

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

LOSS_PLOT, ACCURACY_PLOT = "loss-plot.png", "accuracy-plot.png"

# --trainable: which parameters train (the book's ablation table, ch06/02_bonus_additional-experiments)
TRAINABLE = ("last-block", "last-two", "head", "all", "lora")


def choose_trainable(model: Any, choice: str) -> list[str]:
    """Freeze ``model`` as the book's choices do; returns the trainable names.

    "last-block" (the book's default): the last transformer block, the final layernorm and the
    head. "last-two": the last two blocks, ln_f and the head (ablation row 4). "head": the head
    alone ("last layer", row 3). "all": nothing frozen (row 5). "lora": only the LoRA adapters
    (appendix E; the model must have them, ``minigpt.lora.with_lora``).
    """
    L = model.cfg.n_layers
    keep = {
        "last-block": [f"h.{L - 1}.*", "ln_f.*", "out_head.*"],
        "last-two": [f"h.{max(L - 2, 0)}.*", f"h.{L - 1}.*", "ln_f.*", "out_head.*"],
        "head": ["out_head.*"],
        "all": None,
        "lora": ["*.lora_*"],
    }
    if choice not in keep:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {choice!r}")
    if choice == "lora" and not model.cfg.lora_rank:
        raise ValueError("trainable 'lora' needs a model with LoRA adapters (--lora R)")
    model.unfreeze()
    if keep[choice] is not None:
        model.freeze()
        model.unfreeze(keep[choice])
    if choice != "lora" and model.cfg.lora_rank:     # LoRA rows train with the other choices too
        model.unfreeze("*.lora_*")
    return model.trainable_names()


# --- the book's helpers ---------------------------------------------------------------------------
def _unpack(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, y) or (x, y, lengths) -> all three (lengths None when the loader gives none)."""
    x, y, *rest = batch
    return x, y, (rest[0] if rest else None)


def _first_batches(loader: Iterable, num_batches: int | None):
    """The first ``num_batches`` batches (all by default), leaving a resumable loader's position
    where it was (evaluation must not change the training order)."""
    state = loader.state_dict() if hasattr(loader, "load_state_dict") else None
    try:
        for i, batch in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            yield _unpack(batch)
    finally:
        if state is not None:
            loader.load_state_dict(state)


def calc_loss_batch(batch, model: Any) -> float:
    """The book's ``calc_loss_batch`` for a classifier: mean cross-entropy of one batch."""
    x, y, lengths = _unpack(batch)
    return model.loss(x, y, lengths=lengths)


def calc_loss_loader(loader: Iterable, model: Any, num_batches: int | None = None) -> float:
    """The mean of per-batch mean losses over the first ``num_batches`` batches (NaN if none)."""
    losses = [model.loss(x, y, lengths=n) for x, y, n in _first_batches(loader, num_batches)]
    return float(np.mean(losses)) if losses else float("nan")


def calc_accuracy_loader(loader: Iterable, model: Any, num_batches: int | None = None) -> float:
    """The book's ``calc_accuracy_loader``: the fraction of texts whose argmax logit is their label,
    over the first ``num_batches`` batches (all by default)."""
    correct = total = 0
    for x, y, n in _first_batches(loader, num_batches):
        pred = np.argmax(model.forward(x, lengths=n), axis=-1)                 # (B, n) -> (B,)
        correct += int((pred == y).sum())
        total += len(y)
    return correct / total if total else float("nan")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classify_review(text: str, model: Any, tokenizer: Any, max_length: int | None = None,
                    pad_token_id: int = 50256) -> tuple[int, float]:
    """The book's ``classify_review``: (label id, its probability) for one text.

    The text is encoded, cut to ``max_length`` (default: the model's context length; the book's
    ``pos_emb.weight.shape[0]``) and right-padded to it with ``pad_token_id`` as in training;
    the pooling reads the text's last real token (or the last position, with pooling "last").
    """
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: there is nothing to classify")
    T = model.cfg.context_length if max_length is None else min(max_length, model.cfg.context_length)
    ids = ids[:T]
    x = np.full((1, T), pad_token_id, dtype=np.int64)
    x[0, :len(ids)] = ids
    probs = softmax(model.forward(x, lengths=np.array([len(ids)])).astype(np.float64))[0]
    k = int(np.argmax(probs))
    return k, float(probs[k])


def plot_values(epochs_seen, examples_seen, train_values, val_values, label: str,
                path: str | Path) -> Path | None:
    """The book's ``plot_values``: train and validation ``label`` against epochs, with examples
    seen on a second x axis. PNG; None (nothing drawn) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


# --- settings and results -------------------------------------------------------------------------
@dataclass
class FinetuneSettings:
    """The book's chapter 6 run: 5 epochs, AdamW lr 5e-5 (8e-4 with LoRA, appendix E), evaluation
    every 50 steps over 5 batches. ``max_steps`` stops early (tests, quick runs)."""

    epochs: int = 5
    max_steps: int | None = None
    lr: float = 5e-5
    clip: float | None = None
    eval_freq: int = 50
    eval_iter: int = 5
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep_last: int = 2
    seed: int = 123                    # the dropout RNG
    plot: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class FinetuneResult:
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_examples: list[int] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)     # one per epoch (eval_iter batches)
    val_accs: list[float] = field(default_factory=list)
    step: int = 0
    examples_seen: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    status: str = "running"
    checkpoint: str | None = None

    HISTORY = ("train_losses", "val_losses", "eval_steps", "eval_examples", "train_accs", "val_accs")


# --- the loop ----------------------------------------------------------------------------------------
def _step(model: Any, optimizer: Any, batch, clip: float | None, rng: np.random.Generator,
          step: int) -> float:
    """One update: forward, loss, backward (frozen weights skipped), (clipping), AdamW."""
    x, y, lengths = _unpack(batch)
    loss, _ = model.loss_and_grads(x, y, rng=rng, lengths=lengths)
    norm = clip_grad_norm_(model, clip) if clip is not None else grad_norm(model)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteLossError(f"the loss became {loss} (gradient norm {norm}) at step {step}; "
                                 "the parameters were not updated with it. Try a lower --lr")
    optimizer.step(model.flat_grads)
    return loss


def _resume(ckpt_dir: Path, model, optimizer, train_loader, pos: _FinetunePosition, res: FinetuneResult,
            out: Callable[[str], None]) -> None:
    if not list_checkpoints(ckpt_dir):
        out(f"no checkpoint in {ckpt_dir} yet: starting a new run")
        return
    meta = load_checkpoint(ckpt_dir, model, optimizer)
    st = meta["state"]["finetune"]
    set_rng_state(pos.rng, st["rng"])
    pos.epoch, pos.batch_in_epoch, pos.loader_state = st["epoch"], st["batch_in_epoch"], st["loader_state"]
    if pos.loader_state is not None:
        train_loader.load_state_dict(pos.loader_state)
    res.step, res.examples_seen = meta["step"], st["examples_seen"]
    for k in FinetuneResult.HISTORY:
        setattr(res, k, list(st[k]))
    _truncate_log(ckpt_dir / LOG_FILE, res.step)
    out(f"resumed from {meta['path']} at step {res.step} (epoch {pos.epoch + 1}, "
        f"batch {pos.batch_in_epoch}/{len(train_loader)})")


def _state(pos: _FinetunePosition, res: FinetuneResult, s: FinetuneSettings, extra: dict | None) -> dict:
    return {"finetune": {"epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch,
                         "loader_state": pos.loader_state, "rng": rng_state(pos.rng),
                         "examples_seen": res.examples_seen, "settings": s.to_dict(),
                         **{k: getattr(res, k) for k in FinetuneResult.HISTORY}},
            **(extra or {})}


def finetune(model: Any, optimizer: Any, train_loader: Any, val_loader: Any = None, *,
             settings: FinetuneSettings | None = None, train_eval_loader: Any = None,
             resume: bool = False, extra_state: dict[str, Any] | None = None,
             print_fn: Callable[[str], None] | None = None) -> FinetuneResult:
    """Finetune the classifier ``model`` (the book's ``train_classifier_simple``); see the module
    docstring. ``train_eval_loader``: the training data for the loss and accuracy estimates,
    unshuffled (default: ``train_loader``). ``resume``: continue from ``settings.checkpoint_dir``'s
    latest checkpoint (start fresh if there is none)."""
    s = settings or FinetuneSettings()
    if model.cfg.num_classes is None:
        raise ValueError("finetune trains a classifier: build the model with GPTConfig(num_classes=n)")
    n_batches = len(train_loader)
    if n_batches == 0:
        raise ValueError("the training loader yields no batches: fewer texts than one batch; use "
                         "more data or a smaller --batch-size")
    total = s.max_steps if s.max_steps is not None else s.epochs * n_batches
    if total < 1 or s.eval_freq < 1 or s.eval_iter < 1:
        raise ValueError(f"need steps, eval_freq and eval_iter >= 1, got {total}, {s.eval_freq}, "
                         f"{s.eval_iter}")
    eval_loader = train_eval_loader if train_eval_loader is not None else train_loader
    out = print_fn or print
    cached = warm_kernel_cache(model.flat_params.dtype.type, print_fn=out)
    ckpt_dir = Path(s.checkpoint_dir) if s.checkpoint_dir else None
    log_path = ckpt_dir / LOG_FILE if ckpt_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    pos = _FinetunePosition(rng=np.random.default_rng(s.seed))
    pos.loader_state = train_loader.state_dict() if hasattr(train_loader, "state_dict") else None
    res = FinetuneResult()
    if resume:
        if ckpt_dir is None:
            raise ValueError("resume needs a checkpoint directory (--checkpoint-dir)")
        _resume(ckpt_dir, model, optimizer, train_loader, pos, res, out)
    elif log_path and log_path.exists():
        log_path.unlink()

    def save() -> None:
        if ckpt_dir is not None:
            res.checkpoint = str(save_checkpoint(ckpt_dir, model, optimizer, step=res.step,
                                                 keep_last=s.keep_last,
                                                 state=_state(pos, res, s, extra_state)))

    bar = _progress_bar(s, total, res.step)
    out = print_fn or (bar.write if bar is not None else print)
    optimizer.lr = s.lr
    t_start = time.perf_counter()
    max_epochs = s.epochs if s.max_steps is None else math.inf
    try:
        with _StopFlag(out) as stop:
            while res.step < total and pos.epoch < max_epochs:
                if pos.batch_in_epoch == 0:
                    pos.loader_state = train_loader.state_dict() if hasattr(train_loader, "state_dict") else None
                it = iter(train_loader)
                for _ in range(pos.batch_in_epoch):      # a resumed run skips the batches it used
                    next(it)
                for batch in it:
                    if res.step >= total or stop.requested:
                        break
                    t0 = time.perf_counter()
                    loss = _step(model, optimizer, batch, s.clip, pos.rng, res.step)
                    res.train_seconds += time.perf_counter() - t0
                    res.examples_seen += len(batch[1])
                    pos.batch_in_epoch += 1
                    step, res.step = res.step, res.step + 1      # step: the book's 0-based index
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}")
                    if step % s.eval_freq == 0:
                        tl = calc_loss_loader(eval_loader, model, s.eval_iter)
                        vl = calc_loss_loader(val_loader, model, s.eval_iter) if val_loader is not None \
                            else float("nan")
                        res.train_losses.append(tl)
                        res.val_losses.append(vl)
                        res.eval_steps.append(step)
                        res.eval_examples.append(res.examples_seen)
                        out(f"Ep {pos.epoch + 1} (Step {step:06d}): Train loss {tl:.3f}, Val loss {vl:.3f}")
                        _log(log_path, {"step": step, "epoch": pos.epoch + 1, "examples_seen":
                                        res.examples_seen, "train_loss": tl, "val_loss": vl,
                                        "batch_loss": loss})
                    if s.checkpoint_every and res.step % s.checkpoint_every == 0 and res.step < total:
                        save()
                if stop.requested or res.step >= total and pos.batch_in_epoch < n_batches:
                    break
                # the epoch is complete: the book's per-epoch accuracies over eval_iter batches
                ta = calc_accuracy_loader(eval_loader, model, s.eval_iter)
                va = calc_accuracy_loader(val_loader, model, s.eval_iter) if val_loader is not None \
                    else float("nan")
                res.train_accs.append(ta)
                res.val_accs.append(va)
                out(f"Training accuracy: {ta * 100:.2f}% | Validation accuracy: {va * 100:.2f}%")
                _log(log_path, {"step": res.step, "epoch": pos.epoch + 1, "train_accuracy": ta,
                                "val_accuracy": va})
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
            res.status = "interrupted" if stop.requested else "done"
            save()
            if stop.requested:
                out(f"interrupted at step {res.step}; resume with --resume")
    finally:
        if bar is not None:
            bar.close()
        res.wall_seconds = time.perf_counter() - t_start
    if s.plot and ckpt_dir is not None and res.eval_steps:
        draw_plots(res, n_batches, ckpt_dir)
    if cached:
        check_still_cached(out)
    return res


def draw_plots(res: FinetuneResult, n_batches: int, directory: Path) -> list[Path]:
    """The book's two figures: loss against epochs (one point per evaluation) and accuracy (one
    point per epoch). Returns the files written ([] without matplotlib)."""
    written = []
    epochs = [st / n_batches for st in res.eval_steps]
    p = plot_values(epochs, res.eval_examples, res.train_losses, res.val_losses, "loss",
                    directory / LOSS_PLOT)
    if p is not None:
        written.append(p)
    if res.train_accs:
        n = len(res.train_accs)
        ex = [res.examples_seen * (k + 1) / n for k in range(n)]
        p = plot_values(list(range(1, n + 1)), ex, res.train_accs, res.val_accs, "accuracy",
                        directory / ACCURACY_PLOT)
        if p is not None:
            written.append(p)
    return written
