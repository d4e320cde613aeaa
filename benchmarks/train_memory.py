"""Peak resident memory of training, and what it is made of.

    python benchmarks/train_memory.py                     # the book's run: 124M shape, 2 x 256
    python benchmarks/train_memory.py --steps 3 --threads 2
    python benchmarks/train_memory.py --n-layers 2 --steps 2   # a quick look at a smaller model
    python benchmarks/train_memory.py --compare --side before=/work/benchvenv/bin/python:minigpt \
        --side after=.venv/bin/python:minigpt --side torch=/work/peer/bin/python:torch

Runs ``--steps`` AdamW training steps (forward, backward, optimizer; dropout 0.1 as the book) of a
randomly initialised model and reads the peak resident set size (VmHWM in /proc/self/status, Linux)
after each stage. Then it builds the breakdown from the model itself:

- parameters, gradients, AdamW m and v: the ``nbytes`` of the four flat buffers;
- activation caches: the ``nbytes`` of every array kept by one training forward for the backward
  (walking the cache tuples, counting each underlying buffer once and leaving out the parameter
  views a cache refers to), per kind of layer;
- the logits the loss holds at once and their gradient: since the LM head runs in row chunks
  (``heads.lm_head_loss``) the largest chunk (rows, V), in an older checkout the whole (B, T, V);
  one buffer when the loss writes the gradient over the logits (both checked on the model's own
  call).

The sum of the parts is compared with the measured peak; the rest is the interpreter, NumPy, Numba's
compiled kernels, and the transient arrays of the backward.

``--compare``: the peak of a training step of a bench config (``--config``: "gpt2", GPT-2 124M with
qkv bias and a tied head, batch 4 x 128; or "long", 4 layers of width 256 with GPT-2's vocabulary,
batch 2 x 1024; ``--batch-size`` / ``--context-length`` / ``--n-layers`` override the config's;
dropout ``--dropout``, default 0 as the bench) in fresh processes, one per
``--side NAME=PYTHON:KIND`` and round: KIND ``minigpt`` (that interpreter's installed minigpt, e.g.
the main checkout's venv against this branch's: each saving measured as the difference) or ``torch``
(a plain PyTorch process that never imports minigpt; the children are those of
``benchmarks/train_speed_ab.py``), or ``minigpt-recompute-mlp`` (``GPTModel.recompute_mlp``). Prints each side's peak (VmHWM) and RSS after imports, and each
minigpt side's peak over the torch side's.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict

import numpy as np

MiB = 1024 * 1024


def proc_status(key: str) -> float:
    """A memory line of /proc/self/status in MiB (VmHWM: peak resident, VmRSS: current); NaN if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def cache_bytes(caches, exclude: list[np.ndarray]) -> dict[str, int]:
    """Bytes of the arrays held in a training forward's caches, by layer kind, each buffer once.

    ``caches`` is ``GPTModel._forward(..., keep_caches=True)[1]``: (embedding, dropout, [block caches],
    final layernorm, head). Arrays sharing memory with ``exclude`` (the parameters) are not counted.
    """
    c_emb, c_drop, c_blocks, c_lnf, c_head = caches[:5]
    # the block cache's ten slots; the recomputed activations (minigpt/block.py) changed what four
    # of them hold, so a run of an older checkout prints its own sizes under the same names
    block_names = ("ln_1 (xhat; since the recompute: its input x)",
                   "attn.c_attn (input; none since the recompute)",
                   "attention (q, k, v, weights, dropout mask; since the recompute: qkv, mask)",
                   "attn.c_proj (input; none since the attention recompute)", "dropout 1 (mask)",
                   "ln_2 (xhat; since the recompute: its input x)",
                   "mlp.c_fc (input; none since the recompute)",
                   "gelu (input u; + tanh before the recompute)",
                   "mlp.c_proj (input; none since the recompute)", "dropout 2 (mask)")
    seen: set[int] = set()
    out: dict[str, int] = defaultdict(int)

    def walk(obj, name: str) -> None:
        if isinstance(obj, np.ndarray):
            root = _root(obj)
            if id(root) in seen or any(np.shares_memory(root, e) for e in exclude):
                return
            seen.add(id(root))
            out[name] += root.nbytes
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                walk(o, name)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o, name)

    walk(c_emb, "embedding")
    walk(c_drop, "embedding dropout (mask)")
    for c in c_blocks:
        for part, name in zip(c, block_names, strict=True):
            walk(part, "block: " + name)
    walk(c_lnf, "ln_f")
    walk(c_head, "lm head (input)")
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: 2 (with --compare: the --config's batch)")
    ap.add_argument("--context-length", type=int, default=None,
                    help="default: 256 (with --compare: the --config's tokens per sequence)")
    ap.add_argument("--n-layers", type=int, default=None, help="default: the 124M shape's 12")
    ap.add_argument("--dropout", type=float, default=None,
                    help="default: 0.1 as the book (with --compare: 0 as the bench)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", action="store_true",
                    help="peaks of fresh processes per --side (the --config's model and batch)")
    ap.add_argument("--config", choices=("gpt2", "long"), default="gpt2",
                    help="with --compare: gpt2 (124M, batch 4 x 128) or long (V 50257, C 256, "
                    "4 layers, batch 2 x 1024)")
    ap.add_argument("--side", action="append", default=[], help="with --compare: NAME=PYTHON:KIND")
    ap.add_argument("--rounds", type=int, default=1, help="with --compare: rounds of all sides")
    args = ap.parse_args(argv)
    if args.compare:
        args.dropout = args.dropout if args.dropout is not None else 0.0
        return compare(args)
    if args.config != "gpt2":
        ap.error("--config chooses the model of --compare; without it the model is the 124M "
                 "shape (--n-layers changes its depth)")
    args.batch_size = args.batch_size or 2
    args.context_length = args.context_length or 256
    args.dropout = args.dropout if args.dropout is not None else 0.1

    hwm0 = proc_status("VmHWM")
    import minigpt
    from minigpt import GPT_CONFIG_124M, GPTModel
    from minigpt.training.optim import AdamW
    from minigpt.training.loop import set_num_threads

    threads = set_num_threads(args.threads)
    print(f"minigpt {minigpt.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
          f"threads {threads}")
    cfg = GPT_CONFIG_124M.replace(context_length=args.context_length, drop_rate=args.dropout)
    if args.n_layers is not None:
        cfg = cfg.replace(n_layers=args.n_layers)
    B, T, V = args.batch_size, cfg.context_length, cfg.vocab_size
    dtype = np.dtype(args.dtype)
    hwm_import = proc_status("VmHWM")

    model = GPTModel(cfg, seed=123, dtype=dtype.type)
    hwm_model = proc_status("VmHWM")
    opt = AdamW(model, lr=4e-4, weight_decay=0.1)
    hwm_opt = proc_status("VmHWM")
    rng = np.random.default_rng(123)
    data = np.random.default_rng(0).integers(0, V, size=(args.steps, 2, B, T))
    step_seconds, hwm_steps = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        model.loss_and_grads(data[i, 0], data[i, 1], rng=rng)
        opt.step(model.flat_grads)
        step_seconds.append(time.perf_counter() - t0)
        hwm_steps.append(proc_status("VmHWM"))
    peak = proc_status("VmHWM")

    print(f"model: {cfg.n_layers} layers, width {cfg.emb_dim}, {cfg.n_heads} heads, vocab {V:,}, "
          f"context {T}; {model.num_params:,} parameters ({dtype.name}); batch {B} x {T}; "
          f"dropout {cfg.drop_rate}")
    print(f"{args.steps} training steps, {np.median(step_seconds):.1f} s each (median)")
    print("\npeak resident memory (VmHWM) after each stage:")
    print(f"  interpreter at start        {hwm0:9,.0f} MiB")
    print(f"  + imports (numpy, numba)    {hwm_import:9,.0f} MiB")
    print(f"  + model (params + grads)    {hwm_model:9,.0f} MiB")
    print(f"  + AdamW (m, v)              {hwm_opt:9,.0f} MiB")
    for i, h in enumerate(hwm_steps):
        print(f"  after training step {i + 1:<3d}    {h:9,.0f} MiB")
    print(f"  peak                        {peak:9,.0f} MiB")

    # --- the breakdown, from the objects themselves -------------------------------------------------
    logits, caches = model._forward(data[0, 0], np.random.default_rng(1), keep_caches=True)
    acts = cache_bytes(caches, [model.flat_params, model.flat_grads])
    del caches
    del logits
    # the largest logits the loss holds at once (a row chunk, or the whole (B, T, V) in an older
    # checkout), and does it write dlogits over them (one buffer) or into a new one?
    from minigpt import backend

    ops = backend.ops()
    real_ce, seen = ops.cross_entropy, {}

    def spy(logits, *a, **kw):
        loss, d = real_ce(logits, *a, **kw)
        seen["bytes"] = max(seen.get("bytes", 0), logits.nbytes)
        if d is not None:
            seen["shared"] = np.shares_memory(d, logits)
        return loss, d

    ops.cross_entropy = spy
    try:
        model.loss_and_grads(data[0, 0], data[0, 1], rng=np.random.default_rng(1))
    finally:
        ops.cross_entropy = real_ce
    state = {
        "parameters (flat buffer)": model.flat_params.nbytes,
        "gradients (flat buffer)": model.flat_grads.nbytes,
        "AdamW m": opt.m.nbytes,
        "AdamW v": opt.v.nbytes,
    }
    act_total = sum(acts.values())
    logits_bytes = seen.get("bytes", 0)
    transient = {"logits (largest row chunk of the loss)": logits_bytes}
    if seen.get("shared"):
        transient["dlogits: written over the logits"] = 0
    else:
        transient["dlogits"] = logits_bytes
    print("\nwhat it is made of (nbytes):")
    for k, v in state.items():
        print(f"  {k:48s} {v / MiB:9,.0f} MiB")
    print(f"  {'= model + optimizer state':48s} {sum(state.values()) / MiB:9,.0f} MiB")
    print(f"  activation caches of one forward ({cfg.n_layers} blocks):")
    for k, v in sorted(acts.items(), key=lambda kv: -kv[1]):
        print(f"    {k:52s} {v / MiB:9,.1f} MiB")
    print(f"  {'= activation caches':48s} {act_total / MiB:9,.0f} MiB "
          f"({act_total / cfg.n_layers / MiB:.1f} MiB per block incl. its share of the rest)")
    for k, v in transient.items():
        print(f"  {k:48s} {v / MiB:9,.0f} MiB")
    accounted = sum(state.values()) + act_total + sum(transient.values())
    print(f"  {'= accounted for':48s} {accounted / MiB:9,.0f} MiB")
    print(f"  {'measured peak - accounted (interpreter, libraries, temporaries)':48s} "
          f"{peak - accounted / MiB:9,.0f} MiB")
    share = sum(state.values()) / (peak * MiB)
    print(f"\nparameters + gradients + AdamW m, v = {share:.0%} of the peak "
          f"(4 x {model.num_params:,} x {dtype.itemsize} bytes)")
    return 0


def compare(args) -> int:
    """Peak RSS of one training config per side, each in its own fresh process."""
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_speed_ab import CONFIGS, run_side

    if not args.side:
        raise ValueError("--compare needs at least one --side NAME=PYTHON:KIND")
    V, ctx, C, H, L, B, T = CONFIGS[args.config]
    cfg = (V, ctx, C, H, args.n_layers or L, args.batch_size or B, args.context_length or T)
    peaks: dict[str, list[float]] = defaultdict(list)
    bases: dict[str, list[float]] = defaultdict(list)
    kinds = {}
    for r in range(args.rounds):
        for side in args.side:
            name, rest = side.split("=", 1)
            python, kind = rest.rsplit(":", 1)
            python = os.path.abspath(python) if os.sep in python else python
            kinds[name] = kind
            res = run_side(python, kind, cfg, args.threads, 1, max(1, args.steps - 1), args.dropout)
            peaks[name].append(res["peak_mb"])
            bases[name].append(res["base_mb"])
            print(f"round {r + 1}: {name:10s} peak {res['peak_mb']:8,.0f} MiB  after imports "
                  f"{res['base_mb']:6,.0f} MiB  ({np.median(res['times']):.2f} s/step)", flush=True)
    print(f"\npeak resident memory (VmHWM) of a training process: {cfg[4]} layers, width {C}, vocab "
          f"{V:,}, batch {cfg[5]} x {cfg[6]}, dropout {args.dropout}, "
          f"{args.steps} steps, {args.threads} threads; median of {args.rounds} round(s)")
    torch_peak = next((float(np.median(peaks[n])) for n, k in kinds.items() if k == "torch"), None)
    for name, kind in kinds.items():
        pk = float(np.median(peaks[name]))
        line = f"  {name:10s} {pk:8,.0f} MiB (after imports {np.median(bases[name]):5,.0f} MiB)"
        if torch_peak and kind.startswith("minigpt"):
            line += f"   {pk / torch_peak:.3f}x torch's peak"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
