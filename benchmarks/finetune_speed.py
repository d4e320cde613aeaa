"""What freezing and LoRA save per finetuning step, minigpt beside PyTorch, in one run.

    .venv/bin/python benchmarks/finetune_speed.py                       # GPT-2 124M shape, B 8, T 120
    .venv/bin/python benchmarks/finetune_speed.py --small               # 6 layers, width 384
    .venv/bin/python benchmarks/finetune_speed.py --torch-python /work/peer/bin/python

One optimizer step of the chapter 6 classifier (random weights: the cost does not depend on them)
on a batch of 8 texts of 120 tokens, float32, in three set-ups:

    full        every parameter trains (a plain training step)
    last-block  the book's chapter 6 freezing: the last block, ln_f and the head train
    lora        appendix E: LoRA r = 16, alpha 16 on every linear layer and the head, base frozen

minigpt runs in this process. PyTorch runs in a process of its own (``--torch-python``, a Python
with torch; minigpt never imports torch), on the book's model written in PyTorch here (the book's
``GPTModel`` with separate W_query / W_key / W_value, its ``LinearWithLoRA`` on every ``nn.Linear``,
``requires_grad_(False)`` for frozen parameters, ``torch.optim.AdamW`` over the trainable ones);
both at the same thread count. Each figure is the median of ``--reps`` timed steps after one
warm-up step; the three set-ups take their steps in turn (round robin), so a change of the
machine's load hits all three alike. Printed: seconds per step, the speed-up of each set-up over the full step, and
minigpt's time over PyTorch's (below 1: minigpt is faster). The machine's load average is printed
with the figures: on a shared machine the absolute times move, the ratios within a run less so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODES = ("full", "last-block", "lora")


def shape(small: bool) -> dict:
    if small:
        return {"vocab": 50257, "ctx": 1024, "C": 384, "H": 6, "L": 6}
    return {"vocab": 50257, "ctx": 1024, "C": 768, "H": 12, "L": 12}


def batch(B: int, T: int, vocab: int):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, (B, T)), rng.integers(0, 2, B)


# --- minigpt ----------------------------------------------------------------------------------------
def minigpt_times(s: dict, B: int, T: int, reps: int, threads: int) -> dict[str, float]:
    from minigpt.config import GPTConfig
    from minigpt.lora import with_lora
    from minigpt.model import GPTModel
    from minigpt.training.finetune import choose_trainable
    from minigpt.training.loop import set_num_threads
    from minigpt.training.optim import AdamW

    set_num_threads(threads)
    cfg = GPTConfig(vocab_size=s["vocab"], context_length=s["ctx"], emb_dim=s["C"], n_heads=s["H"],
                    n_layers=s["L"], drop_rate=0.0, qkv_bias=True, tie_weights=True,
                    num_classes=2, pooling="last")
    x, y = batch(B, T, s["vocab"])
    runs = {}
    for mode in MODES:
        model = GPTModel(cfg, seed=1)
        if mode == "lora":
            model = with_lora(model, 16, 16)
        else:
            choose_trainable(model, "all" if mode == "full" else "last-block")
        runs[mode] = (model, AdamW(model, lr=1e-4, weight_decay=0.1))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for k in range(reps + 1):                  # round robin: a change of load hits every set-up
        for mode, (model, opt) in runs.items():
            t0 = time.perf_counter()
            model.loss_and_grads(x, y)
            opt.step()
            if k:
                times[mode].append(time.perf_counter() - t0)
    return {mode: float(np.median(t)) for mode, t in times.items()}


# --- PyTorch (run with --torch-only in a Python that has torch) ---------------------------------
TORCH_SIDE = r'''
import json, sys, time, math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

s, B, T, reps, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)

class LayerNorm(nn.Module):
    def __init__(self, C):
        super().__init__(); self.scale = nn.Parameter(torch.ones(C)); self.shift = nn.Parameter(torch.zeros(C))
    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, 1e-5)

class MHA(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.W_query, self.W_key, self.W_value = (nn.Linear(C, C, bias=True) for _ in range(3))
        self.out_proj = nn.Linear(C, C)
    def forward(self, x):
        b, t, C = x.shape
        q, k, v = (w(x).view(b, t, self.H, C // self.H).transpose(1, 2)
                   for w in (self.W_query, self.W_key, self.W_value))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(a.transpose(1, 2).reshape(b, t, C))

class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm(C), LayerNorm(C)
        self.att = MHA(C, H)
        self.ff = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"), nn.Linear(4 * C, C))
    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))

class GPT(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.tok_emb = nn.Embedding(s["vocab"], s["C"]); self.pos_emb = nn.Embedding(s["ctx"], s["C"])
        self.trf_blocks = nn.Sequential(*[Block(s["C"], s["H"]) for _ in range(s["L"])])
        self.final_norm = LayerNorm(s["C"])
        self.out_head = nn.Linear(s["C"], 2)
    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x))[:, -1, :])   # the book's last token

class LoRALayer(nn.Module):            # the book's appendix E
    def __init__(self, n_in, n_out, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(torch.empty(n_in, rank)); nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, n_out)); self.scale = alpha / rank
    def forward(self, x):
        return self.scale * (x @ self.A @ self.B)

class LinearWithLoRA(nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__(); self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
    def forward(self, x):
        return self.linear(x) + self.lora(x)

def replace_linear_with_lora(model, rank, alpha):
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)

rng = np.random.default_rng(0)
x = torch.tensor(rng.integers(0, s["vocab"], (B, T)))
y = torch.tensor(rng.integers(0, 2, B))
runs = {}
for mode in ("full", "last-block", "lora"):
    model = GPT(s)
    if mode == "last-block":
        model.requires_grad_(False)
        for m in (model.trf_blocks[-1], model.final_norm, model.out_head):
            m.requires_grad_(True)
    if mode == "lora":
        model.requires_grad_(False)
        replace_linear_with_lora(model, 16, 16)
    runs[mode] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                           lr=1e-4, weight_decay=0.1))
times = {mode: [] for mode in runs}
for k in range(reps + 1):
    for mode, (model, opt) in runs.items():
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if k:
            times[mode].append(time.perf_counter() - t0)
print(json.dumps({mode: float(np.median(t)) for mode, t in times.items()}))
'''


def torch_times(python: str, s: dict, B: int, T: int, reps: int, threads: int) -> dict[str, float] | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    r = subprocess.run([python, "-c", TORCH_SIDE, json.dumps([s, B, T, reps, threads])],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"PyTorch side failed ({python}):\n{r.stderr[-2000:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="6 layers, width 384 (default: GPT-2 124M)")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="fewer blocks of the same width (each block costs the same, so the ratios "
                         "carry over; default: the shape's)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-python", default="/work/peer/bin/python",
                    help="a Python with torch for the PyTorch side ('' to skip it)")
    args = ap.parse_args()
    s = shape(args.small)
    if args.n_layers:
        s["L"] = args.n_layers
    B, T = args.batch_size, args.tokens
    print(f"shape: L {s['L']}, C {s['C']}, H {s['H']}, 2-class head; batch {B} x {T} tokens; "
          f"float32; {args.threads} thread(s); median of {args.reps} steps")
    load0 = os.getloadavg()[0]
    mg = minigpt_times(s, B, T, args.reps, args.threads)
    pt = torch_times(args.torch_python, s, B, T, args.reps, args.threads) if args.torch_python else None
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) {load0:.1f} at the start, {load1:.1f} at the end, on "
          f"{os.cpu_count()} cores")
    print(f"{'set-up':12} {'minigpt s/step':>15} {'vs full':>8} {'PyTorch s/step':>15} {'vs full':>8} "
          f"{'minigpt/PyTorch':>16}")
    for mode in MODES:
        row = f"{mode:12} {mg[mode]:15.3f} {mg['full'] / mg[mode]:7.2f}x"
        if pt:
            row += f" {pt[mode]:15.3f} {pt['full'] / pt[mode]:7.2f}x {mg[mode] / pt[mode]:16.2f}"
        print(row)
    print("json " + json.dumps({"minigpt": mg, "torch": pt, "load": [load0, load1], "shape": s,
                                "B": B, "T": T, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
