"""AdamW, the warmup + cosine learning-rate schedule, and global-norm gradient clipping.

All three work on the model's *flat* buffers (``GPTModel.flat_params`` / ``flat_grads``): every
parameter lives in one 1-D array, so the optimizer update is one vectorised pass over three arrays
(params, m, v) instead of a loop over 150 tensors (llm.c's ``gpt2_update``).

The update is PyTorch's ``torch.optim.AdamW`` (the book's optimizer, chapter 5), step t = 1, 2, ...:

    p <- p * (1 - lr * wd)                         # decoupled weight decay (Loshchilov & Hutter)
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

written in that order, so float32 results follow PyTorch's to rounding. The book decays *all*
parameters (``AdamW(model.parameters(), weight_decay=0.1)``); GPT-2 practice (nanoGPT) decays only
matrices and embeddings, never biases or layernorm gains: ``decay="matrices"``.

The update itself is ``ops.adamw_step`` (``ops = minigpt.backend.ops()``), called once per run of
parameters that decay or not: the chunked NumPy passes of ``minigpt/layers/adamw.py`` on the
"numpy" path, one fused Numba pass (``kernels/adamw.py``, held to the layer by the kernel tests)
on "numba", the default.

The schedule is appendix D's: linear warmup from ``initial_lr`` to ``peak_lr`` over ``warmup_steps``,
then cosine decay to ``min_lr`` at the last step. Clipping is ``torch.nn.utils.clip_grad_norm_``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minigpt import backend
from minigpt.layers.adamw import CHUNK  # elements per chunk of the vectorised passes
from minigpt.params import runs


# --- flat-buffer plumbing --------------------------------------------------------------------------
def _root(a: np.ndarray) -> np.ndarray:
    while a.base is not None and isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _as_flat(obj: Any, what: str) -> tuple[np.ndarray, dict[str, tuple[int, int, tuple[int, ...]]]]:
    """Find the 1-D buffer behind ``obj`` and the (start, stop, shape) of every named view in it.

    ``obj`` is a model (with ``flat_params``/``params``), a dict of views into one flat buffer (the
    model's ``params`` or ``grads``), or a 1-D array (then it has one unnamed "parameter").
    """
    if hasattr(obj, "flat_params") and hasattr(obj, "params"):
        flat, named = obj.flat_params, obj.params
    elif isinstance(obj, np.ndarray):
        if obj.ndim != 1 or not obj.flags.c_contiguous:
            raise ValueError(f"{what}: a bare array must be 1-D and contiguous, got shape {obj.shape}")
        return obj, {"": (0, obj.size, obj.shape)}
    elif isinstance(obj, dict):
        if not obj:
            raise ValueError(f"{what}: the parameter dict is empty")
        named = obj
        roots = {id(_root(a)): _root(a) for a in obj.values()}
        if len(roots) != 1:
            raise ValueError(
                f"{what}: the arrays are not views into one flat buffer; pass model.params "
                "(GPTModel keeps all parameters in model.flat_params) or a 1-D array"
            )
        flat = next(iter(roots.values()))
    else:
        raise ValueError(f"{what}: expected a GPTModel, a dict of parameter views or a 1-D array, "
                         f"got {type(obj).__name__}")
    if flat.ndim != 1 or not flat.flags.c_contiguous:
        raise ValueError(f"{what}: the flat buffer must be 1-D and contiguous, got shape {flat.shape}")
    base = flat.__array_interface__["data"][0]
    layout = {}
    for name, a in named.items():
        if not a.flags.c_contiguous or a.dtype != flat.dtype:
            raise ValueError(f"{what}: parameter {name!r} is not a contiguous view of the flat buffer")
        start = (a.__array_interface__["data"][0] - base) // flat.itemsize
        if not (0 <= start and start + a.size <= flat.size):
            raise ValueError(f"{what}: parameter {name!r} lies outside the flat buffer")
        layout[name] = (int(start), int(start + a.size), tuple(a.shape))
    return flat, layout


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --- AdamW -----------------------------------------------------------------------------------------
class AdamW:
    """PyTorch-compatible AdamW over one flat parameter buffer.

    Args:
        params: a ``GPTModel`` (preferred), its ``params`` dict (views into ``flat_params``), or a
            1-D array of parameters. Updated in place.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (its defaults: 1e-3, (0.9, 0.999),
            1e-8, 0.01; the book passes lr=4e-4, weight_decay=0.1).
        decay: ``"all"`` (the book: every parameter decays) or ``"matrices"`` (the parameter
            table's decay group: the weight matrices and embeddings; biases and layernorm do not.
            For a dict or an array, without a table: the views with ndim >= 2, the same rule).

    Frozen parameters (a model's ``freeze``): only the trainable ranges of the flat buffer are
    updated or decayed, and the moments ``m``, ``v`` cover only them (``m.size ==
    model.num_trainable``), packed run after run in buffer order. The ranges are fixed when the
    optimizer is built (or loads a state); freezing or unfreezing afterwards is refused at the
    next step.

    ``opt.lr`` may be changed between steps (the schedule does); ``opt.t`` counts steps taken.
    State: ``m``, ``v`` (the trainable elements, in the flat buffer's dtype) and ``t``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay: str = "all",
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
        if decay not in ("all", "matrices"):
            raise ValueError(f"AdamW: decay must be 'all' (the book) or 'matrices' (GPT-2 practice), "
                             f"got {decay!r}")
        self.flat, self.layout = _as_flat(params, "AdamW")
        if not np.issubdtype(self.flat.dtype, np.floating):
            raise ValueError(f"AdamW: parameters must be floating point, got {self.flat.dtype}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay = decay
        self.model = params if hasattr(params, "flat_grads") else None
        self.t = 0
        self._set_ranges()

    def _set_ranges(self) -> None:
        """Read the trainable ranges and the decay group (from the model's parameter table when
        there is one) and size the moments to the trainable elements."""
        table = getattr(self.model, "table", None)
        if table is not None:
            self.trainable = tuple(self.model.trainable_ranges())
            self.decay_ranges = runs(table, lambda s: s.decay)
        else:
            self.trainable = tuple(_merge([(a, b) for a, b, _ in self.layout.values()]))
            self.decay_ranges = _merge([(a, b) for a, b, shape in self.layout.values() if len(shape) >= 2])
        if self.decay == "all":
            self.decay_ranges = list(self.trainable)
        self.segments = self._segments()
        n = sum(b - a for a, b in self.trainable)
        self.m = np.zeros(n, dtype=self.flat.dtype)  # first moment of the trainable elements
        self.v = np.zeros(n, dtype=self.flat.dtype)  # second moment

    def _segments(self) -> list[tuple[int, int, int, bool]]:
        """The trainable ranges cut where decay starts or stops: (start, stop, the start of its
        moments in m and v, decays) runs, in buffer order."""
        cuts = sorted({x for r in self.decay_ranges for x in r})
        segs, pos = [], 0
        for a, b in self.trainable:
            points = [a] + [c for c in cuts if a < c < b] + [b]
            for lo, hi in zip(points[:-1], points[1:], strict=True):
                decays = any(da <= lo and hi <= db for da, db in self.decay_ranges)
                segs.append((lo, hi, pos, decays))
                pos += hi - lo
        return segs

    def decay_mask(self) -> np.ndarray:
        """A boolean mask over the flat buffer: True where weight decay applies (trainable only)."""
        mask = np.zeros(self.flat.size, dtype=bool)
        for a, b, _, decays in self.segments:
            mask[a:b] = decays
        return mask

    def _check_frozen_unchanged(self) -> None:
        if self.model is not None and getattr(self.model, "table", None) is not None \
                and tuple(self.model.trainable_ranges()) != self.trainable:
            raise ValueError("AdamW: the model's frozen parameters changed after this optimizer was "
                             "built; build a new AdamW after freeze()/unfreeze() (it keeps moments "
                             "for the trainable parameters only)")

    def _grad_flat(self, grads: Any) -> np.ndarray:
        if grads is None:
            if self.model is None:
                raise ValueError("AdamW.step: pass the gradients (built without a model to take them from)")
            grads = self.model.flat_grads
        if isinstance(grads, dict):
            g, layout = _as_flat(grads, "AdamW.step")
            if layout.keys() != self.layout.keys() or any(
                layout[k][:2] != self.layout[k][:2] for k in layout
            ):
                raise ValueError("AdamW.step: the gradient views do not match the parameter layout")
        else:
            g = grads
        if not isinstance(g, np.ndarray) or g.shape != self.flat.shape:
            raise ValueError(f"AdamW.step: gradients must have shape {self.flat.shape}, got "
                             f"{getattr(g, 'shape', type(g).__name__)}")
        return g

    def step(self, grads: Any = None) -> None:
        """One AdamW update with ``self.lr``; ``grads`` defaults to the model's ``flat_grads``.
        Only the trainable ranges are read and written."""
        self._check_frozen_unchanged()
        g = self._grad_flat(grads)
        self.t += 1
        lr, (b1, b2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        p, m, v = self.flat, self.m, self.v
        if g.dtype != p.dtype or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=p.dtype)
        ops = backend.ops()
        # one pass per run of (decayed | not decayed) trainable parameters; m and v hold the
        # trainable elements only, packed: the run [a, b) of p has its moments at [s, s + b - a)
        for a, b, s, decays in self.segments:
            ops.adamw_step(p[a:b], g[a:b], m[s:s + b - a], v[s:s + b - a], lr, b1, b2, eps,
                           wd if decays else 0.0, self.t)

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Arrays ``m``, ``v`` (copies, the trainable elements only) and JSON-able scalars, with the
        trainable ranges they cover; round-trips through ``load_state_dict``."""
        return {
            "m": self.m.copy(), "v": self.v.copy(), "t": self.t, "lr": self.lr,
            "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
            "decay": self.decay, "ranges": [list(r) for r in self.trainable],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``. With a model, the trainable ranges are read from it again
        first (a checkpoint restores the model's frozen flags before the optimizer's state), and
        must be the ones the state was saved with."""
        if state.get("decay", self.decay) != self.decay:
            raise ValueError(f"AdamW.load_state_dict: the checkpoint used decay={state['decay']!r}, "
                             f"this optimizer decay={self.decay!r}")
        self._set_ranges()
        saved = state.get("ranges")  # absent in states saved before frozen parameters existed
        if saved is not None and [tuple(r) for r in saved] != list(self.trainable):
            raise ValueError(f"AdamW.load_state_dict: the state covers the trainable ranges "
                             f"{saved[:4]}..., this optimizer {list(self.trainable)[:4]}...: the "
                             "model's frozen parameters differ from the run that saved it")
        for key in ("m", "v"):
            arr = np.asarray(state[key])
            if arr.shape != self.m.shape:
                raise ValueError(f"AdamW.load_state_dict: {key} has shape {arr.shape}, this "
                                 f"optimizer's {self.m.shape} (its trainable elements): the "
                                 "checkpoint belongs to a different model")
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.t = int(state["t"])
        self.lr = float(state.get("lr", self.lr))
        self.betas = tuple(float(b) for b in state.get("betas", self.betas))  # type: ignore[assignment]
        self.eps = float(state.get("eps", self.eps))
        self.weight_decay = float(state.get("weight_decay", self.weight_decay))


# --- schedule --------------------------------------------------------------------------------------
def lr_at(
    step: int,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    initial_lr: float = 0.0,
    min_lr: float | None = None,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based), appendix D's schedule.

    - ``step < warmup_steps``: linear warmup ``initial_lr + step * (peak_lr - initial_lr) / warmup_steps``
      (step 0 uses ``initial_lr``; step ``warmup_steps`` reaches ``peak_lr``).
    - afterwards: cosine decay ``min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * progress))`` with
      ``progress = (step - warmup_steps) / (total_steps - warmup_steps)``, clamped to [0, 1].
    - ``min_lr=None`` means no decay: ``peak_lr`` after the warmup (the book's chapter 5 run).
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"lr_at: warmup_steps ({warmup_steps}) and total_steps ({total_steps}) must be >= 0")
    if step < warmup_steps:
        return initial_lr + step * (peak_lr - initial_lr) / warmup_steps
    if min_lr is None:
        return peak_lr
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- clipping --------------------------------------------------------------------------------------
def _grad_ranges(grads: Any, what: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The flat gradient buffer and the ranges that count: a model's trainable ranges (frozen
    parameters have no say in the norm, as PyTorch's ``clip_grad_norm_`` over the optimizer's
    parameters), else all of it."""
    if hasattr(grads, "flat_grads"):
        g = grads.flat_grads
        ranges = grads.trainable_ranges() if hasattr(grads, "trainable_ranges") else [(0, g.size)]
        return g, list(ranges)
    g = _as_flat(grads, what)[0]
    return g, [(0, g.size)]


def grad_norm(grads: Any) -> float:
    """The global L2 norm of the gradients (accumulated in float64, chunk by chunk): of a model's
    trainable parameters, or of every element of a dict of views / a 1-D array."""
    g, ranges = _grad_ranges(grads, "grad_norm")
    total = 0.0
    for a0, b0 in ranges:
        for a in range(a0, b0, CHUNK):
            c = g[a : min(a + CHUNK, b0)].astype(np.float64)
            total += float(c @ c)
    return math.sqrt(total)


def clip_grad_norm_(grads: Any, max_norm: float) -> float:
    """Scale the gradients in place so their global L2 norm is at most ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_``: ``g *= min(1, max_norm / (norm + 1e-6))``. Returns the
    norm *before* clipping (inf or nan when a gradient is not finite; nothing is scaled then). For a
    model, the norm and the scaling cover its trainable parameters only (``grad_norm``).
    """
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be > 0, got {max_norm}")
    g, ranges = _grad_ranges(grads, "clip_grad_norm_")
    norm = grad_norm(grads)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for a, b in ranges:
            g[a:b] *= g.dtype.type(coef)
    return norm
