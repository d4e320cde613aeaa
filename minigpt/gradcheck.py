"""Finite-difference gradient checks: every hand-written backward against central differences.

For an op y = f(x) with a hand-written backward, draw a random upstream gradient g (same shape as y)
and define the scalar L(x) = sum(f(x) * g). Its true gradient is exactly what the backward returns
when fed ``dout = g``. Numerically, for each element x_i (docs/derivations.md, eq. 10.1):

    dL/dx_i  ~  (L(x + h e_i) - L(x - h e_i)) / (2 h),        h = 1e-5, in float64

and the two must agree under the combined criterion (eq. 10.2)

    |analytic - numeric| <= atol + rtol * |numeric|,           atol = 1e-7, rtol = 1e-5.

Why these numbers. The error of a central difference is truncation, h^2 |L'''| / 6, plus round-off,
about eps_mach * |L| / h (eps_mach = 2.2e-16; |L| is up to ~100 for the block checks, a sum over
every output times a random upstream). With h = 1e-6 the round-off term dominates (measured worst
case over the layer checks: 1.9e-8); h = 1e-5 balances the two (measured worst case 1.7e-9 at
T = 5, with truncation h^2/6 ~ 1.7e-11 * |L'''|; 1.0e-8 for the block at T = 33, whose L sums
more outputs and whose gradients are sums over 33 positions). atol = 1e-7 then sits 10x above the
measured noise floor and handles gradients that are exactly zero, like the key bias of attention,
where a relative error means nothing; rtol = 1e-5 covers large gradients, whose round-off grows
with them. A real bug moves a gradient by a sizeable fraction of itself: the negative controls miss
by 5e-3 to 3, far outside. Float64 is required: in float32 eps_mach is 1.2e-7 and the round-off
term alone swamps the gradient.

Training runs attention on other code than a short check would: from T = 32 on (``BLAS_MIN_T``) the
numba path computes it with the BLAS kernels of kernels/attention_blas.py, below it with one fused
Numba kernel. So attention, a block and the whole model are checked at both: T = 5 and T = 33 (odd,
past the switch; ``minigpt gradcheck`` runs each path).

Every check here has a negative control (a deliberately wrong backward) that must FAIL the same
criterion, proving the check can fail: below, NumPy backwards swapped in; in
``minigpt.gradcheck_mutants``, the Numba kernels themselves with one bug each.

The layer checks call the ops through ``minigpt.backend.ops()`` at the moment they run, so
``with backend.use("numba")`` checks the kernels and ``with backend.use("numpy")`` the layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from minigpt import backend
from minigpt.block import block_backward, block_forward
from minigpt.config import GPTConfig
from minigpt.layers.pooling import POOLINGS
from minigpt.model import GPTModel
from minigpt.params import ONES, ZEROS, ParamSpec, block_index, param_table
from kernels.attention import BLAS_MIN_T


class _ActiveOps:
    """``ops.name`` is ``backend.ops().name`` looked up at the call, so the checks follow
    ``backend.use(...)``: the kernels on "numba", the layers on "numpy"."""

    def __getattr__(self, name: str):
        return getattr(backend.ops(), name)


ops = _ActiveOps()

EPS = 1e-5
T_LONG = 33                 # training-shape checks: odd, and >= BLAS_MIN_T so BLAS attention runs
assert T_LONG >= BLAS_MIN_T
ATOL = 1e-7
RTOL = 1e-5


@dataclass
class CheckResult:
    """One tensor's comparison: analytic vs numerical gradient over ``n_checked`` elements."""

    check: str          # which op or model variant
    tensor: str         # which input or parameter
    equation: str       # where docs/derivations.md derives the backward
    n_checked: int
    max_abs_err: float
    max_rel_err: float
    passed: bool


def compare(check: str, tensor: str, analytic: np.ndarray, numeric: np.ndarray, equation: str = "",
            atol: float = ATOL, rtol: float = RTOL) -> CheckResult:
    """Apply the combined criterion (eq. 10.2) element by element."""
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    n = np.asarray(numeric, dtype=np.float64).reshape(-1)
    err = np.abs(a - n)
    denom = np.maximum(np.abs(a), np.abs(n))
    # relative error only where a gradient is above the absolute floor: for exactly-zero gradients
    # (the key bias) both numbers are round-off and their ratio means nothing
    rel = np.divide(err, denom, out=np.zeros_like(err), where=denom > atol)
    passed = bool(np.all(err <= atol + rtol * np.abs(n)))
    return CheckResult(check, tensor, equation, a.size, float(err.max(initial=0.0)),
                       float(rel.max(initial=0.0)), passed)


def numerical_gradient(L: Callable[[], float], x: np.ndarray, indices=None, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar ``L()`` with respect to the elements of ``x`` (eq. 10.1).

    ``x`` is perturbed in place (and restored), so ``L`` must read it. ``indices`` (flat) limits the
    walk to a sample of elements; the default is every element.
    """
    if x.dtype != np.float64:
        raise ValueError(f"gradient checks run in float64 (round-off would swamp a float32 check); "
                         f"got {x.dtype}")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    indices = range(flat.size) if indices is None else indices
    out = np.empty(len(indices))
    for n, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        lp = L()
        flat[i] = old - eps
        lm = L()
        flat[i] = old
        out[n] = (lp - lm) / (2 * eps)
    return out


def check_op(check: str, forward: Callable[..., np.ndarray], backward: Callable[..., dict],
             inputs: dict[str, np.ndarray], equation: str, seed: int = 0) -> list[CheckResult]:
    """Check an op given as ``forward(**inputs) -> y`` and ``backward(g, **inputs) -> {name: dname}``.

    The upstream gradient g is random normal (a fixed seed); every input is checked over every
    element. An input the backward returns no gradient for fails (a gradient of NaN), and a
    gradient for a name that is not an input is an error.
    """
    rng = np.random.default_rng(seed)
    y = forward(**inputs)
    g = rng.standard_normal(np.shape(y))
    analytic = backward(g, **inputs)
    unknown = set(analytic) - set(inputs)
    if unknown:
        raise ValueError(f"{check}: the backward returned gradients for {sorted(unknown)}, which "
                         f"are not inputs ({sorted(inputs)})")

    def L() -> float:
        return float(np.sum(forward(**inputs) * g))

    results = []
    for name, x in inputs.items():
        grad = analytic.get(name)
        if grad is None:                # no gradient at all: NaN, which fails the criterion
            grad = np.full(x.shape, np.nan)
        if np.shape(grad) != x.shape:
            raise ValueError(f"{check}: gradient of {name} has shape {np.shape(grad)}, the input "
                             f"{x.shape}")
        results.append(compare(check, name, grad, numerical_gradient(L, x), equation))
    return results


# --- the layer checks -------------------------------------------------------------------------------
# Each returns (forward, backward, inputs, equation). Shapes are small and odd on purpose.

def _embedding_case(rng, backward=None):
    idx = np.array([[3, 1, 3, 0], [1, 1, 4, 3]])           # repeated ids on purpose (eq. 1.2)
    inputs = {"wte": rng.standard_normal((5, 6)), "wpe": rng.standard_normal((7, 6))}

    def fwd(wte, wpe):
        return ops.embedding_forward(idx, wte, wpe)[0]

    def bwd(g, wte, wpe):
        _, cache = ops.embedding_forward(idx, wte, wpe)
        dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
        (backward or ops.embedding_backward)(g, cache, dwte, dwpe)
        return {"wte": dwte, "wpe": dwpe}
    return fwd, bwd, inputs, "1.2-1.3"


def _layernorm_case(rng, backward=None):
    inputs = {"x": rng.standard_normal((2, 3, 7)) * 2 + 0.5, "w": rng.standard_normal(7),
              "b": rng.standard_normal(7)}

    def fwd(x, w, b):
        return ops.layernorm_forward(x, w, b)[0]

    def bwd(g, x, w, b):
        _, cache = ops.layernorm_forward(x, w, b)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = (backward or ops.layernorm_backward)(g, cache, dw, db)
        return {"x": dx, "w": dw, "b": db}
    return fwd, bwd, inputs, "2.4-2.6"


def _linear_case(rng, bias=True):
    inputs = {"x": rng.standard_normal((2, 3, 5)), "w": rng.standard_normal((5, 4))}
    if bias:
        inputs["b"] = rng.standard_normal(4)

    def fwd(x, w, b=None):
        return ops.linear_forward(x, w, b)[0]

    def bwd(g, x, w, b=None):
        _, cache = ops.linear_forward(x, w, b)
        dw = np.zeros_like(w)
        db = None if b is None else np.zeros_like(b)
        dx = ops.linear_backward(g, cache, dw, db)
        return {"x": dx, "w": dw} | ({} if b is None else {"b": db})
    return fwd, bwd, inputs, "3.2-3.4"


def _gelu_case(rng, backward=None):
    inputs = {"x": rng.standard_normal((3, 11)) * 2}

    def fwd(x):
        return ops.gelu_forward(x)[0]

    def bwd(g, x):
        return {"x": (backward or ops.gelu_backward)(g, ops.gelu_forward(x)[1])}
    return fwd, bwd, inputs, "4.2"


def _dropout_case(rng):
    inputs = {"x": rng.standard_normal((4, 9))}

    def fwd(x):   # a fresh Generator with one seed for every evaluation: one fixed mask
        return ops.dropout_forward(x, 0.3, np.random.default_rng(7))[0]

    def bwd(g, x):
        _, mask = ops.dropout_forward(x, 0.3, np.random.default_rng(7))
        return {"x": ops.dropout_backward(g, mask)}
    return fwd, bwd, inputs, "5.2"


def _softmax_case(rng, backward=None):
    inputs = {"s": rng.standard_normal((3, 6)) * 2}

    def fwd(s):
        return ops.softmax(s)

    def bwd(g, s):
        return {"s": (backward or ops.softmax_backward)(g, ops.softmax(s))}
    return fwd, bwd, inputs, "6.6"


def _attention_case(rng, drop_rate=0.0, n_heads=3, hs=4, T=5, B=2):
    C = n_heads * hs
    inputs = {"qkv": rng.standard_normal((B, T, 3 * C))}

    def fwd(qkv):
        return ops.attention_forward(qkv, n_heads, drop_rate, np.random.default_rng(3))[0]

    def bwd(g, qkv):
        _, cache = ops.attention_forward(qkv, n_heads, drop_rate, np.random.default_rng(3))
        return {"qkv": ops.attention_backward(g, cache)}
    return fwd, bwd, inputs, "6.5-6.7"


def _cross_entropy_case(rng, loss_fn=None):
    targets = np.array([[2, 0, -100, 4], [-100, 1, 1, 3]])   # two ignored positions
    inputs = {"logits": rng.standard_normal((2, 4, 5)) * 3}

    def fwd(logits):
        return np.array((loss_fn or ops.cross_entropy)(logits, targets)[0])

    def bwd(g, logits):
        return {"logits": (loss_fn or ops.cross_entropy)(logits, targets)[1] * g}
    return fwd, bwd, inputs, "7.3"


def _block_params(rng, C, qkv_bias=True):
    """One block's parameters, keyed by their names inside the block, as the table lists them."""
    cfg = GPTConfig(vocab_size=1, context_length=1, emb_dim=C, n_heads=1, n_layers=1, qkv_bias=qkv_bias)
    return {s.name.removeprefix("h.0."): _check_values(s, rng)
            for s in param_table(cfg) if block_index(s.name) == 0}


def _block_case(rng, drop_rate=0.0, n_heads=2, C=8, T=5, B=2):
    inputs = {"x": rng.standard_normal((B, T, C))} | _block_params(rng, C)

    def fwd(x, **p):
        return block_forward(x, p, n_heads, drop_rate, np.random.default_rng(11))[0]

    def bwd(g, x, **p):
        _, cache = block_forward(x, p, n_heads, drop_rate, np.random.default_rng(11))
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dx = block_backward(g, cache, grads)
        return {"x": dx} | grads
    return fwd, bwd, inputs, "8.1-8.3"


LORA_R, LORA_ALPHA = 3, 5.0     # scale 5/3: not 1, so a backward that forgets it is caught


def _lora_linear_case(rng, pairs=1, backward=None):
    """The LoRA linear (eqs. 12.1-12.6) with B drawn nonzero: with B = 0, dA = 0 exactly (eq. 12.4)
    and the check on A would compare zeros. ``pairs`` = 3: c_attn's q / k / v adapters."""
    n_in, n_out, r, scale = 5, 6, LORA_R, LORA_ALPHA / LORA_R
    inputs = {"x": rng.standard_normal((2, 3, n_in)), "w": rng.standard_normal((n_in, n_out)),
              "b": rng.standard_normal(n_out)}
    for j in range(pairs):
        inputs[f"A{j}"] = rng.standard_normal((n_in, r)) / np.sqrt(n_in)
        inputs[f"B{j}"] = rng.standard_normal((r, n_out // pairs)) / np.sqrt(r)

    def split(kw):
        A = tuple(kw[f"A{j}"] for j in range(pairs))
        B = tuple(kw[f"B{j}"] for j in range(pairs))
        return (A[0], B[0]) if pairs == 1 else (A, B)

    def fwd(x, w, b, **kw):
        return ops.lora_linear_forward(x, w, b, *split(kw), scale)[0]

    def bwd(g, x, w, b, **kw):
        _, cache = ops.lora_linear_forward(x, w, b, *split(kw), scale)
        grads = {k: np.zeros_like(v) for k, v in kw.items()}
        dw, db = np.zeros_like(w), np.zeros_like(b)
        if backward is not None:                       # a wrong adapter backward (negative control)
            c_base, c_lora = cache
            dx = ops.linear_backward(g, c_base, dw, db)
            for j, (c, lo, hi) in enumerate(c_lora):
                dx += backward(g[..., lo:hi], c, grads[f"A{j}"], grads[f"B{j}"])
        else:
            dx = ops.lora_linear_backward(g, cache, dw, db, *split(grads))
        return {"x": dx, "w": dw, "b": db} | grads
    return fwd, bwd, inputs, "3.2-3.4, 12.2-12.6"


def _lora_block_case(rng, targets=None, T=5, B=2, n_heads=2, C=8):
    """A block with LoRA on all four linears (default: the book's q / k / v pairs on c_attn)."""
    from minigpt.lora import BOOK_TARGETS, lora_specs

    cfg = GPTConfig(vocab_size=1, context_length=1, emb_dim=C, n_heads=1, n_layers=1,
                    qkv_bias=True, lora_rank=LORA_R, lora_alpha=LORA_ALPHA)
    lora = {s.name.removeprefix("h.0."): _check_values(s, rng)
            for s in lora_specs(cfg, targets or BOOK_TARGETS)}
    inputs = {"x": rng.standard_normal((B, T, C))} | _block_params(rng, C) | lora

    def fwd(x, **p):
        return block_forward(x, p | {"lora_scale": cfg.lora_scale}, n_heads)[0]

    def bwd(g, x, **p):
        _, cache = block_forward(x, p | {"lora_scale": cfg.lora_scale}, n_heads)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dx = block_backward(g, cache, grads)
        return {"x": dx} | grads
    return fwd, bwd, inputs, "8.1-8.3, 12.2-12.6"


LAYER_CASES: dict[str, Callable] = {
    "embedding (repeated ids)": _embedding_case,
    "layernorm": _layernorm_case,
    "linear": _linear_case,
    "linear (no bias)": lambda rng: _linear_case(rng, bias=False),
    "gelu": _gelu_case,
    "dropout (p=0.3, fixed mask)": _dropout_case,
    "softmax": _softmax_case,
    "attention": _attention_case,
    "attention (dropout 0.3)": lambda rng: _attention_case(rng, drop_rate=0.3),
    "cross-entropy (-100 ignored)": _cross_entropy_case,
    "block": _block_case,
    "block (dropout 0.2)": lambda rng: _block_case(rng, drop_rate=0.2),
    # training shapes: on the numba path these run the BLAS attention kernels (T >= BLAS_MIN_T)
    f"attention (T={T_LONG})": lambda rng: _attention_case(rng, T=T_LONG),
    f"attention (T={T_LONG}, dropout 0.3)": lambda rng: _attention_case(rng, 0.3, T=T_LONG),
    f"block (T={T_LONG})": lambda rng: _block_case(rng, T=T_LONG, B=1),
    f"block (T={T_LONG}, dropout 0.2)": lambda rng: _block_case(rng, 0.2, T=T_LONG, B=1),
    # LoRA (appendix E): B nonzero throughout, scale alpha / r = 5/3
    "LoRA linear (B != 0)": _lora_linear_case,
    "LoRA linear (q/k/v pairs)": lambda rng: _lora_linear_case(rng, pairs=3),
    "block (LoRA, q/k/v pairs)": _lora_block_case,          # LoRA on all four linears
    "block (LoRA, fused c_attn)": lambda rng: _lora_block_case(
        rng, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
    f"block (LoRA, T={T_LONG})": lambda rng: _lora_block_case(rng, T=T_LONG, B=1),
}


def check_layer(name: str, seed: int = 0) -> list[CheckResult]:
    fwd, bwd, inputs, eq = LAYER_CASES[name](np.random.default_rng(seed))
    return check_op(name, fwd, bwd, inputs, eq, seed)


# --- the whole model --------------------------------------------------------------------------------

TINY = GPTConfig(vocab_size=13, context_length=8, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0,
                 qkv_bias=True, tie_weights=False)


def _check_values(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    """Non-trivial, well-conditioned values for a gradient check, by the table's GPT-2 rule:
    layernorm scales (ones) near 1, zero-initialised biases nonzero, matrices ~ 1/sqrt(their last
    dimension), so no gradient is degenerate and finite differences stay accurate."""
    if spec.init_gpt2 == ONES:
        return 1 + 0.1 * rng.standard_normal(spec.shape)
    if spec.init_gpt2 == ZEROS:
        return 0.1 * rng.standard_normal(spec.shape)
    return rng.standard_normal(spec.shape) / np.sqrt(spec.shape[-1] if len(spec.shape) == 2 else 1)


def _randomise(model: GPTModel, rng: np.random.Generator) -> None:
    """Every parameter of ``model`` set by ``_check_values``, in buffer order."""
    for spec in model.table:
        model.params[spec.name][...] = _check_values(spec, rng)


def _equation(name: str, cfg: GPTConfig) -> str:
    """Where docs/derivations.md derives the gradient of a model parameter."""
    if ".lora_" in name:
        return "8.3, 12.2-12.6"
    if name == "wte.weight":
        return "1.2, 9.2" if cfg.tie_weights else "1.2"
    if name == "lm_head.weight":
        return "9.1"
    if name == "wpe.weight":
        return "1.3"
    if name.startswith("ln_f"):
        return "2.4-2.5"
    return "8.3, " + {"ln": "2.4-2.5", "at": "3.3-3.4", "ml": "3.3-3.4"}[name.split(".")[2][:2]]


def check_model(cfg: GPTConfig = TINY, seed: int = 0, model_cls=GPTModel, max_per_tensor: int | None = None,
                label: str | None = None, only: str | None = None) -> list[CheckResult]:
    """Check ``loss_and_grads`` against central differences of ``loss`` over the flat parameter
    vector: every element of every parameter (or ``max_per_tensor`` sampled ones; with ``only``,
    just the parameters whose name ends with it).

    The input ids are integers and have no gradient; the model's continuous input is the embedding
    table, whose rows the ids select, so the wte / wpe rows checked here are the input gradient.
    Dropout, when cfg.drop_rate > 0, uses a Generator re-created from one seed at every evaluation.
    The targets include one -100. T = context_length - 1; at training lengths (T >= BLAS_MIN_T)
    one sequence (B = 1) keeps the walk over every element affordable, below it B = 2.
    """
    rng = np.random.default_rng(seed)
    model = model_cls(cfg, seed=seed, dtype=np.float64)
    _randomise(model, rng)
    T = cfg.context_length - 1
    B = 2 if T < BLAS_MIN_T else 1
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    idx[0, :2] = idx[0, 2]                                      # repeated ids
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    targets[-1, 0] = -100

    def L() -> float:
        drop_rng = np.random.default_rng(99) if cfg.drop_rate > 0 else None   # the same masks every time
        return model.loss(idx, targets, rng=drop_rng)

    drop_rng = np.random.default_rng(99) if cfg.drop_rate > 0 else None
    model.loss_and_grads(idx, targets, rng=drop_rng)
    analytic = model.flat_grads.copy()
    label = label or (f"model ({'tied' if cfg.tie_weights else 'untied'}, dropout {cfg.drop_rate})")
    results, offset = [], 0
    for name, shape in model.shapes.items():
        size = int(np.prod(shape))
        if only is not None and not name.endswith(only):
            offset += size
            continue
        if max_per_tensor is None or size <= max_per_tensor:
            local = np.arange(size)
        else:
            local = np.sort(rng.choice(size, max_per_tensor, replace=False))
        numeric = numerical_gradient(L, model.flat_params, offset + local)
        results.append(compare(label, name, analytic[offset + local], numeric, _equation(name, cfg)))
        offset += size
    return results


MODEL_VARIANTS: dict[str, GPTConfig] = {
    "untied": TINY,
    "tied": TINY.replace(tie_weights=True),
    "untied, dropout 0.2": TINY.replace(drop_rate=0.2),
    "tied, dropout 0.2, no qkv bias": TINY.replace(drop_rate=0.2, tie_weights=True, qkv_bias=False),
    # training shapes (T = context_length - 1 = T_LONG): BLAS attention on the numba path
    f"untied, T={T_LONG}": TINY.replace(context_length=T_LONG + 1),
    f"tied, T={T_LONG}, dropout 0.2": TINY.replace(context_length=T_LONG + 1, tie_weights=True,
                                                   drop_rate=0.2),
}


def model_with(**attrs):
    """A ``model_cls`` for ``check_model``: GPTModel with these attributes set, the switches of a
    path a real run can take: ``loss_chunk_rows`` (the LM head and its loss in row chunks,
    ``heads.lm_head_loss``, as a GPT-2 vocabulary runs; a tiny one fits in one chunk) or
    ``recompute_mlp`` (GELU's input recomputed in the backward) or ``recompute_attention``."""
    def build(cfg, seed=0, dtype=np.float64):
        model = GPTModel(cfg, seed=seed, dtype=dtype)
        for name, value in attrs.items():
            if not hasattr(model, name):
                raise ValueError(f"GPTModel has no attribute {name!r} to set")
            setattr(model, name, value)
        return model
    return build


# GELU's input recomputed: name -> cfg (dropout on: the recompute runs between the masks)
RECOMPUTE_MLP_VARIANTS: dict[str, GPTConfig] = {
    "tied, dropout 0.2, GELU input recomputed": TINY.replace(tie_weights=True, drop_rate=0.2),
    f"untied, T={T_LONG}, GELU input recomputed": TINY.replace(context_length=T_LONG + 1),
}


# the attention kept for the backward or recomputed (minigpt/block.py, recompute_attention): name ->
# (cfg, recompute_attention). By default TINY keeps it (H T <= 4 C) and T = T_LONG recomputes it;
# these take the other path at each length, dropout on (the mask kept, or applied again)
ATTENTION_VARIANTS: dict[str, tuple[GPTConfig, bool]] = {
    "tied, dropout 0.2, attention recomputed": (TINY.replace(tie_weights=True, drop_rate=0.2), True),
    f"untied, T={T_LONG}, dropout 0.2, attention kept":
        (TINY.replace(context_length=T_LONG + 1, drop_rate=0.2), False),
}


# the blocks' caches kept in the gradient buffer (minigpt/stash.py), which loss_and_grads always
# does where they fit: 3 blocks and T = 3 (B = 2), so blocks 1 and 2 keep their whole caches
# (and dropout masks) in the slabs of blocks 0 and 1, zeroed before those blocks' backwards
STASH_VARIANTS: dict[str, GPTConfig] = {
    "tied, 3 blocks, dropout 0.2, caches in the gradient buffer":
        TINY.replace(context_length=4, n_layers=3, tie_weights=True, drop_rate=0.2),
}


# the LM head's loss in row chunks: name -> (cfg, rows per chunk). Chunks of 3 rows of B*T = 14
# (B = 2, T = 7; targets[-1, 0] = -100): five chunks, the last of two rows, one with an ignored row
CHUNKED_LOSS_VARIANTS: dict[str, tuple[GPTConfig, int]] = {
    "tied, LM-head loss in row chunks of 3": (TINY.replace(tie_weights=True), 3),
    "untied, dropout 0.2, LM-head loss in row chunks of 4": (TINY.replace(drop_rate=0.2), 4),
}


def lora_model(targets=None):
    """A ``model_cls`` for ``check_model``: GPTModel with LoRA rows on every block (``cfg`` must
    carry lora_rank and lora_alpha)."""
    from minigpt.lora import BOOK_TARGETS, lora_specs

    def build(cfg, seed=0, dtype=np.float64):
        return GPTModel(cfg, seed=seed, dtype=dtype, extra=lora_specs(cfg, targets or BOOK_TARGETS))
    return build


# the whole model with LoRA (every parameter, adapters included, checked; B nonzero by
# _check_values): name -> (cfg, targets)
LORA_MODEL_VARIANTS: dict[str, tuple[GPTConfig, tuple[str, ...] | None]] = {
    "LoRA, q/k/v pairs": (TINY.replace(lora_rank=LORA_R, lora_alpha=LORA_ALPHA), None),
    "LoRA, fused c_attn, tied, dropout 0.2": (
        TINY.replace(lora_rank=LORA_R, lora_alpha=LORA_ALPHA, tie_weights=True, drop_rate=0.2),
        ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
}


# --- negative controls: deliberately wrong backwards that the checker must catch --------------------

def _layernorm_backward_no_mean(dout, cache, dw, db):
    """BUG: drops the -mean(g) term of eq. 2.6 (forgets that mu depends on every x)."""
    xhat, w, rstd = cache
    C = xhat.shape[-1]
    dw += (dout * xhat).reshape(-1, C).sum(axis=0)
    db += dout.reshape(-1, C).sum(axis=0)
    g = dout * w
    return rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))


def _embedding_backward_fancy_index(dout, cache, dwte, dwpe):
    """BUG: ``dwte[idx] += dout`` - fancy-index assignment keeps only one of a repeated id's rows."""
    idx, t0 = cache
    dwte[idx] += dout
    dwpe[t0:t0 + idx.shape[1]] += dout.sum(axis=0)


def _softmax_backward_no_jacobian(da, a):
    """BUG: treats softmax like an elementwise op, ds = a * da, without the -a a^T part."""
    return a * da


def _gelu_backward_no_tanh_derivative(dout, cache):
    """BUG: keeps only 0.5 (1 + tanh u), as if tanh(u) did not depend on x."""
    x, th = cache
    return dout * x.dtype.type(0.5) * (1 + th)


def _cross_entropy_counts_ignored(logits, targets):
    """BUG: the loss averages over counted positions, but the gradient divides by every position,
    ignored ones included (N too large in eq. 7.3)."""
    loss, dlogits = ops.cross_entropy(logits, targets)
    n_counted, n_all = int((targets != -100).sum()), targets.size
    return loss, dlogits * n_counted / n_all


def _lora_backward_unscaled(dout, cache, dA, dB):
    """BUG: eqs. 12.2-12.3 without the scale s = alpha / r (the book's printed alpha-only
    convention would be a different s; forgetting s altogether is this)."""
    x, A, B, u, scale = cache
    x2, d2 = x.reshape(-1, A.shape[0]), dout.reshape(-1, B.shape[1])
    du = d2 @ B.T
    dB += u.T @ d2
    dA += x2.T @ du
    return (du @ A.T).reshape(*dout.shape[:-1], A.shape[0]) * scale   # dx still right


class _HeadGradientLost(GPTModel):
    """BUG: a tied head that keeps only the embedding's gradient, dropping the head's use."""

    def _head_grad(self):
        return np.zeros_like(self.params["wte.weight"])


NEGATIVE_CONTROLS: dict[str, Callable[[], list[CheckResult]]] = {
    "layernorm backward without its mean term": lambda: check_op(
        "NEG layernorm", *_layernorm_case(np.random.default_rng(0), _layernorm_backward_no_mean)),
    "embedding backward that loses repeated ids": lambda: check_op(
        "NEG embedding", *_embedding_case(np.random.default_rng(0), _embedding_backward_fancy_index)),
    "softmax backward without its Jacobian": lambda: check_op(
        "NEG softmax", *_softmax_case(np.random.default_rng(0), _softmax_backward_no_jacobian)),
    "GELU backward without the tanh derivative": lambda: check_op(
        "NEG gelu", *_gelu_case(np.random.default_rng(0), _gelu_backward_no_tanh_derivative)),
    "cross-entropy that counts ignored targets": lambda: check_op(
        "NEG cross-entropy", *_cross_entropy_case(np.random.default_rng(0), _cross_entropy_counts_ignored)),
    "LoRA backward without its scale alpha / r": lambda: check_op(
        "NEG LoRA", *_lora_linear_case(np.random.default_rng(0), backward=_lora_backward_unscaled)),
    "tied head that takes only one of its two gradients": lambda: check_model(
        TINY.replace(tie_weights=True), model_cls=_HeadGradientLost, label="NEG tied head"),
}


# --- the heads: pooling and the classification head (chapter 6) -----------------------------------
# Kept in one section (the layer cases and negative controls are added to the dicts above).

LENGTHS = np.array([5, 2, 1])    # rows with no padding, some, and all but one token padding


def _pooling_case(rng, mode, backward=None):
    inputs = {"x": rng.standard_normal((3, 5, 4))}

    def fwd(x):
        return ops.pooling_forward(x, mode, LENGTHS)[0]

    def bwd(g, x):
        _, cache = ops.pooling_forward(x, mode, LENGTHS)
        return {"x": (backward or ops.pooling_backward)(g, cache)}
    return fwd, bwd, inputs, "11.4" if mode == "mean" else "11.3"


LAYER_CASES.update({f"pooling ({mode}, rows of 5, 2, 1 tokens)": partial(_pooling_case, mode=mode)
                    for mode in POOLINGS})


def check_classifier_model(pooling: str, seed: int = 0, max_per_tensor: int | None = None,
                           label: str | None = None, lora: bool = False,
                           freeze=None, model_cls=GPTModel) -> list[CheckResult]:
    """Check ``loss_and_grads`` of the tiny model with a classification head (3 classes, the given
    pooling) against central differences of ``loss``: every element of every parameter, or
    ``max_per_tensor`` sampled ones of the trunk's tensors (the head's are always all checked).

    ``lora``: the book's appendix E model, adapters on every linear layer, the head included (B
    drawn nonzero). ``freeze``: parameters to freeze (names or patterns, ``GPTModel.freeze``); a
    frozen parameter's gradient is not computed, so it is not compared with finite differences:
    its result checks that its gradient buffer holds exact zeros (``n_checked`` its size,
    equation "frozen").

    Four right-padded rows of 7, 4, 2 and 5 real tokens (pad id 0), labels with one -100.
    """
    cfg = TINY.replace(num_classes=3, pooling=pooling)
    rng = np.random.default_rng(seed)
    model = model_cls(cfg, seed=seed, dtype=np.float64)
    if lora:
        from minigpt.lora import with_lora
        model = with_lora(model, LORA_R, LORA_ALPHA, freeze_base=False)
    _randomise(model, rng)
    if freeze is not None:
        model.freeze(freeze)
    frozen = set(model.frozen_names())
    B, T = 4, cfg.context_length - 1
    lengths = np.array([7, 4, 2, 5])
    idx = rng.integers(1, cfg.vocab_size, (B, T))
    idx[np.arange(T)[None, :] >= lengths[:, None]] = 0                     # right padding
    labels = np.array([2, 0, 1, -100])

    model.loss_and_grads(idx, labels, lengths=lengths)
    analytic = model.flat_grads.copy()
    label = label or f"classifier ({pooling}{', LoRA' if lora else ''})"
    results, offset = [], 0
    for name, shape in model.shapes.items():
        size = int(np.prod(shape))
        if name in frozen:     # not computed: the buffer must hold exact zeros
            nonzero = float(np.abs(analytic[offset:offset + size]).max())
            results.append(CheckResult(label, name, "frozen", size, nonzero, 0.0, nonzero == 0.0))
            offset += size
            continue
        if max_per_tensor is None or size <= max_per_tensor or name.startswith("out_head"):
            local = np.arange(size)
        else:
            local = np.sort(rng.choice(size, max_per_tensor, replace=False))
        numeric = numerical_gradient(lambda: model.loss(idx, labels, lengths=lengths),
                                     model.flat_params, offset + local)
        eq = "11.6, 12.2-12.5" if name.startswith("out_head.lora") else "11.6" \
            if name.startswith("out_head") else _equation(name, cfg)
        results.append(compare(label, name, analytic[offset + local], numeric, eq))
        offset += size
    return results


# the book's two finetuning set-ups on the tiny classifier (L = 2): frozen parts not computed
# (exact zeros), every trainable element against finite differences
CLASSIFIER_FROZEN_VARIANTS = {
    "classifier, ch06 freezing": (           # the last block, ln_f, the head train
        {}, lambda n: not n.startswith(("h.1.", "ln_f.", "out_head."))),
    "classifier, LoRA + head, base frozen": (  # appendix E: every linear and the head
        {"lora": True}, lambda n: ".lora_" not in n),
}


class _FrozenGradientComputed(GPTModel):
    """BUG: hands the backward every gradient view, frozen or not (the behaviour before frozen
    weights were skipped): frozen buffers are written, and the trainable ones are still right."""

    def _active_grads(self) -> None:
        self._blocks_g = [{} for _ in range(self.cfg.n_layers)]
        for name, g in self.grads.items():
            i = block_index(name)
            if i is not None:
                self._blocks_g[i][name.split(".", 2)[2]] = g
        self._top_g = {n: g for n, g in self.grads.items() if block_index(n) is None}


def _pooling_backward_reads_padding(dout, cache):
    """BUG: off by one, sends the gradient to position lengths[b] (the first padding token) instead
    of lengths[b] - 1, the last real one the forward read (eq. 11.3)."""
    mode, pos, shape = cache
    dx = np.zeros(shape, dtype=dout.dtype)
    dx[np.arange(shape[0]), np.minimum(pos + 1, shape[1] - 1)] = dout
    return dx


def _mean_pooling_backward_divides_by_T(dout, cache):
    """BUG: divides by the padded length T instead of each row's lengths[b] (eq. 11.4)."""
    mode, w, shape = cache
    real = w > 0                                                           # (B, T)
    return real[:, :, None] * dout[:, None, :] / shape[1]


def _chunked_head_overwrites_dw():
    """BUG: the LM head's loss in row chunks where each chunk's dW_head overwrites the gradient
    instead of adding to it (only the last chunk's rows would count)."""
    from minigpt import heads
    real = heads.lm_head_backward

    def overwrite(dlogits, cache, dw_head):
        if dw_head is not None:
            dw_head[...] = 0
        return real(dlogits, cache, dw_head)

    heads.lm_head_backward = overwrite
    try:
        cfg, rows = CHUNKED_LOSS_VARIANTS["tied, LM-head loss in row chunks of 3"]
        return check_model(cfg.replace(tie_weights=False), model_cls=model_with(loss_chunk_rows=rows),
                           label="NEG chunked head", only="lm_head.weight")
    finally:
        heads.lm_head_backward = real


def _stash_not_zeroed():
    """BUG: a block's cache kept in the slab of the block below is not zeroed after its backward,
    so the block below adds its gradients to the activations left there."""
    from minigpt.stash import Stash
    real = Stash.clear

    def forget(self):
        self.used = 0

    Stash.clear = forget
    try:
        cfg = next(iter(STASH_VARIANTS.values()))
        return check_model(cfg, label="NEG stash", only="attn.c_attn.weight")
    finally:
        Stash.clear = real


def _kept_attention_without_its_mask():
    """BUG: the backward of a kept attention gets its weights without the dropout mask."""
    from minigpt import block
    real = block._attention_again

    def no_mask(ops, att):
        a, c = real(ops, att)
        return (a, (*c[:4], None, c[5])) if isinstance(att, block.KeptAttention) else (a, c)

    block._attention_again = no_mask
    try:
        cfg, _ = ATTENTION_VARIANTS[f"untied, T={T_LONG}, dropout 0.2, attention kept"]
        return check_model(cfg, model_cls=model_with(recompute_attention=False),
                           label="NEG kept attention", only="h.0.attn.c_attn.weight")
    finally:
        block._attention_again = real


NEGATIVE_CONTROLS.update({
    "kept attention whose backward forgets the dropout mask": _kept_attention_without_its_mask,
    "LM-head loss in row chunks whose dW_head overwrites": _chunked_head_overwrites_dw,
    "block caches in the gradient buffer that are not zeroed after use": _stash_not_zeroed,
    "last_nonpad pooling backward into a padding position": lambda: check_op(
        "NEG pooling", *_pooling_case(np.random.default_rng(0), "last_nonpad",
                                      _pooling_backward_reads_padding)),
    "frozen weights whose gradients are still computed": lambda: check_classifier_model(
        "last_nonpad", lora=True, freeze=lambda n: ".lora_" not in n,
        model_cls=_FrozenGradientComputed, label="NEG frozen", max_per_tensor=4),
    "mean pooling backward that divides by T": lambda: check_op(
        "NEG mean pooling", *_pooling_case(np.random.default_rng(0), "mean",
                                           _mean_pooling_backward_divides_by_T)),
})


def run_all(include_model: bool = True, include_negative: bool = True):
    """Every layer check, the model variants and the negative controls.

    Returns (results, negatives) where negatives maps each control to (caught, its results,
    error). On the numba path the kernel controls of ``minigpt.gradcheck_mutants`` run too (named
    "kernel: ..."); one that would prove nothing (its edit no longer matches the kernel, or the
    layers never call the kernel it replaces) is not caught, with its ``MutantError`` as error.
    """
    from minigpt import backend, gradcheck_mutants

    results: list[CheckResult] = []
    for name in LAYER_CASES:
        results += check_layer(name)
    if include_model:
        for key, cfg in MODEL_VARIANTS.items():
            results += check_model(cfg, label=f"model ({key})")
        for pooling in POOLINGS:
            results += check_classifier_model(pooling)
        for key, (kw, freeze) in CLASSIFIER_FROZEN_VARIANTS.items():
            results += check_classifier_model("last_nonpad", freeze=freeze, label=key, **kw)
        for key, (cfg, targets) in LORA_MODEL_VARIANTS.items():
            results += check_model(cfg, model_cls=lora_model(targets), label=f"model ({key})")
        for key, (cfg, rows) in CHUNKED_LOSS_VARIANTS.items():
            results += check_model(cfg, model_cls=model_with(loss_chunk_rows=rows),
                                   label=f"model ({key})")
        for key, cfg in RECOMPUTE_MLP_VARIANTS.items():
            results += check_model(cfg, model_cls=model_with(recompute_mlp=True),
                                   label=f"model ({key})")
        for key, (cfg, again) in ATTENTION_VARIANTS.items():
            results += check_model(cfg, model_cls=model_with(recompute_attention=again),
                                   label=f"model ({key})")
        for key, cfg in STASH_VARIANTS.items():
            results += check_model(cfg, label=f"model ({key})")
    negatives = {}
    if include_negative:
        for name, run in NEGATIVE_CONTROLS.items():
            res = run()
            negatives[name] = (not all(r.passed for r in res), res, None)
        if backend.numba_enabled():
            for control in gradcheck_mutants.KERNEL_CONTROLS:
                try:
                    res = gradcheck_mutants.run_control(control)
                except gradcheck_mutants.MutantError as e:
                    negatives[f"kernel: {control.name}"] = (False, [], str(e))
                    continue
                negatives[f"kernel: {control.name}"] = (not all(r.passed for r in res), res, None)
    return results, negatives
