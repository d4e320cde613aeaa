"""The training loop (the book's chapter 5 ``train_model_simple`` + appendix D), made resumable.

One optimizer step is: forward + loss + hand-written backward (``model.loss_and_grads``), optional
global-norm clipping (from the warmup's end on, as appendix D), the scheduled learning rate, AdamW.
Every ``eval_freq`` steps the train and val losses are measured like the book's ``calc_loss_loader``
(the mean of per-batch mean losses over the first ``eval_iter`` batches) and appended to a JSON-lines
log; after each epoch a greedy sample is printed; a PNG of the losses is drawn at the end.

Exact resume. The trajectory depends only on: the parameters, AdamW's m, v and t, the loader's
shuffle state at the start of the current epoch and how many batches of the epoch were used, and the
step counter (the dropout masks are drawn from per-example streams seeded by (seed, step, row of the
global batch), ``minigpt.training.example_rng``). A checkpoint stores all of them, so a run killed at
any moment (even ``kill -9``) and resumed with ``resume=True`` ends with the same bits as a run never
interrupted - given the same seed, dtype, thread settings (BLAS sums in a thread-count-dependent
order), number of ranks and of accumulation steps.

Data parallelism and gradient accumulation. A loader batch is the global batch of a step. Under
``mpirun -n N`` (``minigpt.training.distributed``) each rank takes its own B / N rows of it, cut
further into ``grad_accum`` micro-batches; each micro-batch's gradient is weighted by its share of the
global batch's targets and summed, and one all-reduce sums the ranks' buffers: every rank then holds
the gradient of the mean loss over the global batch and applies the same AdamW step. N ranks, K
micro-batches and one process with the whole batch follow the same trajectory up to the order of the
additions (docs/distributed.md). Rank 0 alone evaluates, prints, samples and writes checkpoints and
the log. A model whose batch rows are not independent examples says so with ``rows_can_be_split =
False`` (``DPOObjective``: row i and row B + i are one pair); it is refused under several ranks or
micro-batches.

Loader protocol: iterating a loader yields ``(inputs, targets)`` int arrays of shape (B, T); ``len``
is the number of batches per epoch; for exact resume of a shuffling loader, ``state_dict()`` taken
before an epoch and ``load_state_dict()`` must make the next iteration repeat the same order
(``minigpt.training.data``'s loaders do). Evaluation never iterates the training loader: it uses
``train_eval_loader`` (unshuffled) so that measuring the loss cannot change the training order.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

import numpy as np

from minigpt.atomic import atomic_path, write_text_atomic
from minigpt.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from minigpt.inference.generate import generate, text_to_token_ids, token_ids_to_text
from minigpt.training.distributed import Communicator, get_communicator, shard
from minigpt.training.example_rng import ExampleRng
from minigpt.training.kernel_cache import assume_warm, check_still_cached, warm_kernel_cache
from minigpt.training.optim import clip_grad_norm_, grad_norm, lr_at

LOG_FILE = "log.jsonl"
PLOT_FILE = "losses.png"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the parameters were not updated with it."""


# --- the book's evaluation helpers -------------------------------------------------------------------
def calc_loss_batch(input_batch: np.ndarray, target_batch: np.ndarray, model: Any) -> float:
    """Mean cross-entropy of one batch (no dropout, no backward).  (B, T), (B, T) -> float"""
    return model.loss(input_batch, target_batch)


def calc_loss_loader(loader: Iterable, model: Any, num_batches: int | None = None) -> float:
    """The mean of per-batch mean losses over the first ``num_batches`` batches (all by default).

    As the book: NaN for an empty loader; ``num_batches`` larger than the loader is capped.
    """
    try:
        n_total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n_total = None
    if n_total == 0:
        return float("nan")
    limit = n_total if num_batches is None else (num_batches if n_total is None else min(num_batches, n_total))
    # a resumable loader remembers where an iteration stopped; put it back so that every
    # evaluation reads the same first batches and training is not disturbed
    state = loader.state_dict() if hasattr(loader, "load_state_dict") else None
    total, count = 0.0, 0
    try:
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            total += calc_loss_batch(x, y, model)
            count += 1
    finally:
        if state is not None:
            loader.load_state_dict(state)
    return total / count if count else float("nan")


def evaluate_model(model: Any, train_loader: Iterable, val_loader: Iterable | None,
                   eval_iter: int) -> tuple[float, float]:
    """(train loss, val loss) over the first ``eval_iter`` batches of each (the book's helper)."""
    train_loss = calc_loss_loader(train_loader, model, num_batches=eval_iter)
    val_loss = calc_loss_loader(val_loader, model, num_batches=eval_iter) if val_loader is not None \
        else float("nan")
    return train_loss, val_loss


def generate_and_print_sample(model: Any, tokenizer: Any, start_context: str,
                              max_new_tokens: int = 50, print_fn: Callable[[str], None] = print) -> str:
    """Greedy continuation of ``start_context`` (the book's helper, KV cache on); prints one line."""
    idx = text_to_token_ids(start_context, tokenizer)
    idx = idx[:, -model.cfg.context_length:]
    out = generate(model, idx, max_new_tokens=max_new_tokens, use_cache=True)
    text = token_ids_to_text(out, tokenizer)
    print_fn(text.replace("\n", " "))
    return text


def plot_losses(steps: list[int], tokens_seen: list[int], train_losses: list[float],
                val_losses: list[float], path: str | os.PathLike) -> Path | None:
    """Loss against optimizer steps, with tokens seen on a top axis; written to ``path`` (PNG).

    Returns None (and draws nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(steps, train_losses, label="training loss")
    ax1.plot(steps, val_losses, linestyle="-.", label="validation loss")
    ax1.set_xlabel("optimizer steps")
    ax1.set_ylabel("loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()  # a second x axis: the same points against tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("tokens seen")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


# --- the book's initialisation -------------------------------------------------------------------
def init_like_torch(model: Any, seed: int | None = 123) -> None:
    """Re-initialise ``model`` in place as PyTorch's default modules initialise the book's ``GPTModel``
    (the same as ``GPTModel(cfg, seed, init="torch")``; the rules are the parameter table's
    ``init_torch`` column, ``minigpt.params``).

    The book builds its model from ``nn.Embedding`` (normal(0, 1)), ``nn.Linear`` (weights and biases
    uniform in +-1/sqrt(fan_in), PyTorch's kaiming_uniform(a=sqrt(5)) default) and ``LayerNorm``
    (ones, zeros); ``GPTModel``'s own initialisation is GPT-2's (normal(0, 0.02)). The difference
    matters for the chapter 5 run: with GPT-2's small embeddings and lr 4e-4, 90 steps leave the model
    on the plateau of the unigram distribution (train loss ~5.9 from step 20 to step 85, measured),
    while the book's large embeddings let it learn and memorise the story (train loss < 1).
    Draws one ``np.random.default_rng(seed)`` stream in buffer order (float64 draws, so float32 and
    float64 models get the same numbers).
    """
    model.init_weights("torch", seed)


# --- threads ------------------------------------------------------------------------------------------
def set_num_threads(n: int) -> dict[str, int | None]:
    """Use ``n`` threads in Numba's parallel kernels and in the dense products, at run time.

    Delegates to ``minigpt.backend.set_threads``: Numba gets ``n`` threads and each large product is
    split into ``n`` single-threaded BLAS calls (BLAS's own spinning threads are not used; see
    ``kernels.blas``). Results are bit-identical only between runs with the same setting.
    Returns what was set.
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    from minigpt import backend

    used = backend.set_threads(int(n))
    return {"numba": used, "openblas": used}


# --- settings and results ------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Everything about a run that is not the model, the optimizer or the data.

    The learning rate follows ``minigpt.training.optim.lr_at``: ``warmup_steps`` of linear warmup from
    ``initial_lr`` (default ``lr / warmup_steps``) to ``lr``, then constant (``min_lr=None``, the book's
    chapter 5) or cosine decay to ``min_lr`` over the run (appendix D). ``clip`` is the max global
    gradient norm (None: no clipping), applied from step ``warmup_steps`` on, as appendix D.
    """

    epochs: int = 10
    max_steps: int | None = None           # stop after this many optimizer steps (overrides epochs)
    lr: float = 4e-4
    min_lr: float | None = None
    warmup_steps: int = 0
    initial_lr: float | None = None
    clip: float | None = None
    eval_freq: int = 5                      # evaluate when step index % eval_freq == 0 (book)
    eval_iter: int = 5                      # batches per loss estimate
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None     # steps; None: only at the end (and on Ctrl-C)
    keep_last: int = 2
    seed: int = 123                         # the dropout streams (ExampleRng)
    grad_accum: int = 1                     # micro-batches per rank per step (same global batch)
    start_context: str = "Every effort moves you"
    sample_tokens: int = 50
    sample_every: int = 1                   # epochs between samples (and always after the last)
    plot: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    track_tokens_seen: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    step: int = 0                   # optimizer steps done
    tokens_seen: int = 0
    train_seconds: float = 0.0      # time inside training steps (this process)
    allreduce_seconds: float = 0.0  # of which in the gradient all-reduce (0 for one process)
    wall_seconds: float = 0.0       # everything, evaluation and checkpoints included (this process)
    status: str = "running"         # "done", "interrupted"
    checkpoint: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self._tokens_this_run / self.train_seconds if self.train_seconds > 0 else float("nan")

    _tokens_this_run: int = 0


# --- the loop ----------------------------------------------------------------------------------------------
class _StopFlag:
    """First Ctrl-C: finish the current step, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self, print_fn: Callable[[str], None]):
        self.requested = False
        self.print_fn = print_fn
        self.previous = None

    def __enter__(self) -> _StopFlag:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.print_fn("\nCtrl-C: finishing this step, then saving a checkpoint "
                      "(press Ctrl-C again to stop without saving)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _log(path: Path | None, record: dict[str, Any]) -> None:
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) < step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    write_text_atomic(path, "".join(k + "\n" for k in keep))


@dataclass
class _Position:
    """Where a run is: everything besides the model and the optimizer that a resume must restore."""

    epoch: int = 0
    batch_in_epoch: int = 0
    loader_state: Any = None


def _total_steps(s: TrainSettings, n_batches: int) -> int:
    """The number of optimizer steps the settings ask for, after checking them."""
    if n_batches == 0:
        raise ValueError("the training loader yields no batches: the text is shorter than one "
                         "batch of windows; use a longer text, a smaller --batch-size or "
                         "--context-length")
    total = s.max_steps if s.max_steps is not None else s.epochs * n_batches
    if total < 1:
        raise ValueError(f"nothing to train: {s.epochs} epochs x {n_batches} batches, max_steps={s.max_steps}")
    if s.eval_freq < 1 or s.eval_iter < 1:
        raise ValueError(f"eval_freq and eval_iter must be >= 1, got {s.eval_freq}, {s.eval_iter}")
    if s.checkpoint_every is not None and s.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 (or None), got {s.checkpoint_every}")
    return total


def _resume(ckpt_dir: Path | None, model: Any, optimizer: Any, train_loader: Any, pos: _Position,
            res: TrainResult, s: TrainSettings, comm: Communicator,
            out: Callable[[str], None]) -> None:
    """Load the latest checkpoint of ``ckpt_dir`` into the model, the optimizer, ``pos`` and ``res``
    (every rank reads it; rank 0 alone trims the log)."""
    if ckpt_dir is None:
        raise ValueError("resume needs a checkpoint directory (--checkpoint-dir)")
    if not list_checkpoints(ckpt_dir):
        out(f"no checkpoint in {ckpt_dir} yet: starting a new run")
        return
    meta = load_checkpoint(ckpt_dir, model, optimizer)
    st = meta["state"]["train"]
    pos.epoch, pos.batch_in_epoch, pos.loader_state = st["epoch"], st["batch_in_epoch"], st["loader_state"]
    if pos.loader_state is not None:
        train_loader.load_state_dict(pos.loader_state)
    res.step, res.tokens_seen = meta["step"], st["tokens_seen"]
    for k in ("train_losses", "val_losses", "track_tokens_seen", "eval_steps"):
        setattr(res, k, list(st[k]))
    if comm.is_root:
        _truncate_log(ckpt_dir / LOG_FILE, res.step)
    out(f"resumed from {meta['path']} at step {res.step} (epoch {pos.epoch + 1}, "
        f"batch {pos.batch_in_epoch}/{len(train_loader)})")
    if "dropout_streams" not in st:
        out("note: this checkpoint predates per-example dropout streams; with dropout on, the "
            "masks from here on differ from those of the run that wrote it")
    saved = (st.get("ranks", 1), st.get("grad_accum", 1))
    if saved != (comm.size, s.grad_accum):
        out(f"note: saved with {saved[0]} rank(s) x {saved[1]} accumulation step(s), resumed with "
            f"{comm.size} x {s.grad_accum}: the same global batch, so the same trajectory up to "
            "rounding (the order of the gradient's additions changes), not to the last bit")


def _checkpoint_state(pos: _Position, res: TrainResult, s: TrainSettings, comm: Communicator,
                      extra_state: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON part of a checkpoint: the run's position, its history and settings."""
    return {
        "train": {
            "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch,
            "loader_state": pos.loader_state, "dropout_streams": "seed, step, row",
            "ranks": comm.size, "grad_accum": s.grad_accum,
            "tokens_seen": res.tokens_seen, "train_losses": res.train_losses,
            "val_losses": res.val_losses, "track_tokens_seen": res.track_tokens_seen,
            "eval_steps": res.eval_steps, "settings": s.to_dict(),
        },
        **(extra_state or {}),
    }


def _n_targets(y: np.ndarray) -> int:
    """The targets a batch's mean loss averages over (-100 marks one left out)."""
    return int(np.count_nonzero(np.asarray(y) != -100))


def batch_gradient(model: Any, x: np.ndarray, y: np.ndarray, seed: int, step: int,
                   comm: Communicator, accum: int = 1) -> tuple[float, float]:
    """This rank's part of the gradient of the global batch (x, y) (B, T), in ``model.flat_grads``.

    Rank r takes rows [r B/N, (r+1) B/N), in ``accum`` micro-batches; micro-batch j's mean loss and
    gradient are weighted by n_j / n (its targets over the global batch's), so that summing over
    micro-batches and ranks gives the mean loss over the whole batch and its gradient. Dropout draws
    from each row's own stream (``ExampleRng``: seed, step, row in the global batch). Returns
    (weighted loss, seconds in the all-reduce); ``flat_grads`` then holds the summed gradient.
    """
    first, rows = shard(len(x), comm, accum)
    n_total, micro = _n_targets(y), rows // accum
    loss, acc = 0.0, None
    for j in range(accum):
        lo = first + j * micro
        xm, ym = x[lo:lo + micro], y[lo:lo + micro]                     # (B / (N K), T)
        w = _n_targets(ym) / n_total if n_total else 0.0
        loss_j, _ = model.loss_and_grads(xm, ym, rng=ExampleRng(seed, step, lo, micro))
        if w != 1.0:                                                    # 1.0: one process, K = 1
            model.flat_grads *= model.flat_grads.dtype.type(w)
        loss += w * loss_j if n_total else loss_j
        if accum > 1:
            acc = model.flat_grads.copy() if acc is None else acc + model.flat_grads
    if acc is not None:
        model.flat_grads[...] = acc
    if comm.size == 1:
        return loss, 0.0
    t0 = time.perf_counter()
    comm.allreduce_sum_(model.flat_grads)
    seconds = time.perf_counter() - t0
    return loss, seconds


def _optimizer_step(model: Any, optimizer: Any, x: np.ndarray, y: np.ndarray, lr: float,
                    clip: float | None, seed: int, comm: Communicator, accum: int,
                    last_good: Callable[[], str | None], step: int,
                    stop_requested: bool) -> tuple[float, float, float, bool]:
    """One update: forward, loss, backward on this rank's shard, the all-reduce, (clipping), AdamW.

    Returns (loss, gradient norm, all-reduce seconds, stop): the loss is the global batch's mean,
    and ``stop`` is true when any rank was asked to stop (Ctrl-C), so that all stop after the same
    step. The global gradient norm (before clipping) is always measured, after the all-reduce: one
    cheap pass that also catches an overflow in the backward while the loss is still finite. A
    non-finite loss or norm on any rank reaches every rank through the sums and raises on every
    rank before AdamW runs, so the weights never see it.
    """
    optimizer.lr = lr
    loss, seconds = batch_gradient(model, x, y, seed, step, comm, accum)
    if comm.size > 1:
        scalars = np.array([loss, float(stop_requested)])            # (2,): one small sum for both
        comm.allreduce_sum_(scalars)
        loss, stop_requested = float(scalars[0]), bool(scalars[1] > 0)
    norm = clip_grad_norm_(model, clip) if clip is not None else grad_norm(model)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteLossError(
            f"the loss became {loss} (gradient norm {norm}) at step {step} (lr {lr:.3g}); the "
            f"parameters were not updated with it. Last good checkpoint: {last_good() or 'none'}. "
            "Try a lower --lr, a warmup (--warmup-steps) or gradient clipping (--clip 1.0)")
    optimizer.step(model.flat_grads)
    return loss, norm, seconds, stop_requested


def _last_good(res: TrainResult, ckpt_dir: Path | None) -> str | None:
    if res.checkpoint:
        return res.checkpoint
    saved = list_checkpoints(ckpt_dir) if ckpt_dir else []
    return str(saved[-1]) if saved else None


def _evaluate(model: Any, eval_loader: Any, val_loader: Any, s: TrainSettings, res: TrainResult,
              step: int, epoch: int, record: dict[str, Any], log_path: Path | None,
              out: Callable[[str], None]) -> None:
    """The book's evaluation: train and val loss over ``eval_iter`` batches, printed and logged."""
    tl, vl = evaluate_model(model, eval_loader, val_loader, s.eval_iter)
    res.train_losses.append(tl)
    res.val_losses.append(vl)
    res.track_tokens_seen.append(res.tokens_seen)
    res.eval_steps.append(step)
    out(f"Ep {epoch + 1} (Step {step:06d}): Train loss {tl:.3f}, Val loss {vl:.3f}")
    _log(log_path, {"step": step, "epoch": epoch + 1, "tokens_seen": res.tokens_seen,
                    "train_loss": tl, "val_loss": vl, **record})


def _batches(train_loader: Any, pos: _Position):
    """The batches of the current epoch not used yet (a resumed run skips the ones it used)."""
    if pos.batch_in_epoch == 0:
        pos.loader_state = train_loader.state_dict() if hasattr(train_loader, "state_dict") else None
    it = iter(train_loader)
    for _ in range(pos.batch_in_epoch):
        next(it)
    return it


def train(
    model: Any,
    optimizer: Any,
    train_loader: Any,
    val_loader: Any = None,
    *,
    settings: TrainSettings | None = None,
    tokenizer: Any = None,
    train_eval_loader: Any = None,
    resume: bool = False,
    extra_state: dict[str, Any] | None = None,
    print_fn: Callable[[str], None] | None = None,
    comm: Communicator | None = None,
) -> TrainResult:
    """Train ``model`` with ``optimizer`` on ``train_loader``; see the module docstring.

    Args:
        settings: a ``TrainSettings`` (defaults: the book's chapter 5 run).
        tokenizer: used for the sample after each epoch (skipped when None).
        train_eval_loader: the training data for loss estimates, unshuffled (default: train_loader,
            which is exact-resume safe only if iterating it does not change its shuffle state).
        resume: continue from ``settings.checkpoint_dir``'s latest checkpoint (start fresh if none).
        extra_state: JSON-able values stored in every checkpoint (the CLI keeps its arguments there).
        comm: the ranks to train with (default: ``distributed.get_communicator()``, MPI under
            ``mpirun``, else one process). Every rank must call ``train`` with the same arguments.
    Raises:
        NonFiniteLossError: the loss or the gradient norm is NaN/inf; nothing is saved over the last
            good checkpoint.
    """
    s = settings or TrainSettings()
    comm = comm or get_communicator()
    root = comm.is_root
    if (comm.size > 1 or s.grad_accum > 1) and not getattr(model, "rows_can_be_split", True):
        raise ValueError(f"{type(model).__name__}'s batches cannot be cut into ranks or "
                         f"micro-batches (its rows are not independent examples; {comm.size} "
                         f"rank(s), grad_accum {s.grad_accum}): train it in one process with "
                         "grad_accum 1")
    n_batches = len(train_loader)
    total_steps = _total_steps(s, n_batches)
    eval_loader = train_eval_loader if train_eval_loader is not None else train_loader
    out = (print_fn or print) if root else _silent
    # every process must run the same (cached) kernel code for an exact resume: kernel_cache.py;
    # the first rank of each machine compiles, the others then load what it cached
    dtype = model.flat_params.dtype.type
    if comm.local_rank == 0:
        cached = warm_kernel_cache(dtype, print_fn=out)
    comm.wait_for_all()
    if comm.local_rank != 0:
        cached = assume_warm(dtype)
    ckpt_dir = Path(s.checkpoint_dir) if s.checkpoint_dir else None
    log_path = ckpt_dir / LOG_FILE if ckpt_dir and root else None
    if ckpt_dir and root:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    pos = _Position()
    pos.loader_state = train_loader.state_dict() if hasattr(train_loader, "state_dict") else None
    res = TrainResult()
    if resume:
        _resume(ckpt_dir, model, optimizer, train_loader, pos, res, s, comm, out)
    elif log_path and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log
    if hasattr(train_loader, "batch_size"):   # refuse a batch that does not split, before any work
        shard(train_loader.batch_size, comm, s.grad_accum)

    def save() -> None:
        """Rank 0 writes the checkpoint while the others wait (sleeping, not spinning)."""
        if ckpt_dir is None:
            return
        comm.check_same(model.flat_params)
        if root:
            res.checkpoint = str(save_checkpoint(ckpt_dir, model, optimizer, step=res.step,
                                                 keep_last=s.keep_last,
                                                 state=_checkpoint_state(pos, res, s, comm, extra_state)))
        comm.wait_for_all()

    bar = _progress_bar(s, total_steps, res.step) if root else None
    out = (print_fn or (bar.write if bar is not None else print)) if root else _silent
    initial_lr = s.initial_lr if s.initial_lr is not None else s.lr / max(1, s.warmup_steps)
    t_start, tokens_this_run = time.perf_counter(), 0
    max_epochs = s.epochs if s.max_steps is None else math.inf
    try:
        with _StopFlag(out) as stop:
            # several ranks stop only after a step in which they agreed to (else one would wait
            # in the next all-reduce for ever); one process stops as soon as it is asked
            agreed = {"stop": False}

            def stopping() -> bool:
                return stop.requested if comm.size == 1 else agreed["stop"]

            while res.step < total_steps and pos.epoch < max_epochs:
                for x, y in _batches(train_loader, pos):
                    if res.step >= total_steps or stopping():
                        break
                    t0 = time.perf_counter()
                    lr = lr_at(res.step, s.lr, total_steps, s.warmup_steps, initial_lr, s.min_lr)
                    clip = s.clip if res.step >= s.warmup_steps else None   # appendix D
                    loss, norm, t_ar, stop_all = _optimizer_step(
                        model, optimizer, x, y, lr, clip, s.seed, comm, s.grad_accum,
                        lambda: _last_good(res, ckpt_dir), res.step, stop.requested)
                    agreed["stop"] = stop_all
                    res.train_seconds += time.perf_counter() - t0
                    res.allreduce_seconds += t_ar
                    res.tokens_seen += int(np.asarray(x).size)
                    tokens_this_run += int(np.asarray(x).size)
                    pos.batch_in_epoch += 1
                    step, res.step = res.step, res.step + 1   # step: the book's 0-based index
                    tok_s = tokens_this_run / max(res.train_seconds, 1e-9)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
                    if step % s.eval_freq == 0:
                        if root:
                            _evaluate(model, eval_loader, val_loader, s, res, step, pos.epoch,
                                      {"lr": lr, "batch_loss": loss, "grad_norm": norm,
                                       "tokens_per_s": tok_s, "ranks": comm.size,
                                       "allreduce_s": res.allreduce_seconds}, log_path, out)
                        comm.wait_for_all()
                    if s.checkpoint_every and res.step % s.checkpoint_every == 0 and res.step < total_steps:
                        save()
                if stopping() or res.step >= total_steps and pos.batch_in_epoch < n_batches:
                    break
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0          # the epoch is complete
                if root and tokenizer is not None and s.sample_tokens > 0 and (
                        pos.epoch % max(1, s.sample_every) == 0 or res.step >= total_steps):
                    generate_and_print_sample(model, tokenizer, s.start_context, s.sample_tokens, out)
                comm.wait_for_all()
            res.status = "interrupted" if stopping() else "done"
            save()
            if stopping():
                out(f"interrupted at step {res.step}; resume with --resume"
                    + (f" (checkpoint {res.checkpoint})" if res.checkpoint else ""))
    finally:
        if bar is not None:
            bar.close()
        res.wall_seconds = time.perf_counter() - t_start
        res._tokens_this_run = tokens_this_run
    if root and s.plot and ckpt_dir is not None and res.eval_steps:
        plot_losses(res.eval_steps, res.track_tokens_seen, res.train_losses, res.val_losses,
                    ckpt_dir / PLOT_FILE)
    if cached:
        check_still_cached(out)
    return res


def _silent(_: str) -> None:
    """Ranks other than 0 print nothing."""


def _progress_bar(s: TrainSettings, total_steps: int, step: int):
    """A tqdm bar over the run's steps (None when ``s.progress`` is off)."""
    if not s.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, initial=min(step, total_steps), unit="step", dynamic_ncols=True,
                leave=True)


def train_model_simple(model: Any, train_loader: Any, val_loader: Any, optimizer: Any,
                       num_epochs: int, eval_freq: int, eval_iter: int, start_context: str,
                       tokenizer: Any) -> tuple[list[float], list[float], list[int]]:
    """The book's signature (without ``device``): returns (train_losses, val_losses, tokens_seen)."""
    s = TrainSettings(epochs=num_epochs, eval_freq=eval_freq, eval_iter=eval_iter,
                      lr=optimizer.lr, start_context=start_context, progress=False, plot=False)
    r = train(model, optimizer, train_loader, val_loader, settings=s, tokenizer=tokenizer)
    return r.train_losses, r.val_losses, r.track_tokens_seen


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluation records of a run's ``log.jsonl`` (a run directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def saved_settings(checkpoint_dir: str | os.PathLike) -> TrainSettings:
    """The ``TrainSettings`` stored in a run's latest checkpoint."""
    return TrainSettings.from_dict(read_state(checkpoint_dir)["state"]["train"]["settings"])
