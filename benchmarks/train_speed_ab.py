"""Training-step speed of several interpreters, each step series in its own fresh process, alternating.

    python benchmarks/train_speed_ab.py --config small --rounds 6 \\
        --side before=/work/benchvenv/bin/python:minigpt --side after=.venv/bin/python:minigpt \\
        --side torch=/work/peer/bin/python:torch

Each ``--side NAME=PYTHON:KIND`` is run once per round, in a fresh process started from a neutral
working directory (so the interpreter's installed ``minigpt`` is the one measured, not the current
checkout), in an order that rotates from round to round. KIND ``minigpt`` times
``GPTModel.loss_and_grads`` + ``AdamW.step`` (``minigpt-recompute-mlp``: with
``GPTModel.recompute_mlp``); KIND ``torch`` times a plain PyTorch eager GPT-2 of the
same shape written below, in a process that never imports minigpt or kernels (PyTorch's defaults
apart from the thread count), initialised as GPT-2 (normal(0, 0.02) weights, zero biases) like the
minigpt side. Until 2026-12-02 19:50 UTC it kept PyTorch's default initialisation: N(0, 1)
embeddings, tied to the head, give logits spread by ~100 and subnormal gradients, and that ran the
'small' step 3.4x slower (2,000 vs 6,900 tokens/s here; docs/kernels.md, "Subnormal numbers"), so
its PyTorch figures from before then are not comparable. A process does ``--warmup`` untimed steps, then ``--steps`` timed ones,
and reports its median step; the table gives, per side, the median over rounds of those medians,
their min..max, and the ratio of each minigpt side to the torch side's median and to its best
round (PyTorch's speed on this machine moves between processes; "best" is its faster mode).

Shapes are the bench configs of ``minigpt/cli/bench/configs.py``, repeated here so that the torch
process needs nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from statistics import median

CONFIGS = {  # name -> (V, context, C, H, L, B, T); tied head, qkv bias, dropout 0, as the bench
    "small": (4096, 256, 256, 8, 4, 16, 128),
    "gpt2": (50257, 1024, 768, 12, 12, 4, 128),
    "long": (50257, 1024, 256, 8, 4, 2, 1024),
}

MINIGPT_CHILD = r"""
import json, sys, time
import numpy as np
from minigpt import backend
from minigpt.config import GPTConfig
from minigpt.model import GPTModel
from minigpt.training.optim import AdamW
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
base = status("VmRSS")
V, ctx, C, H, L, B, T, threads, warmup, steps, drop = json.loads(sys.argv[1])
backend.set_threads(threads)
cfg = GPTConfig(vocab_size=V, context_length=ctx, emb_dim=C, n_heads=H, n_layers=L,
                drop_rate=drop, qkv_bias=True, tie_weights=True)
model = GPTModel(cfg, seed=0, dtype=np.float32)
model.recompute_mlp = sys.argv[2:] == ["recompute-mlp"]
opt = AdamW(model, lr=4e-4, weight_decay=0.1)
rng = np.random.default_rng(0)
idx, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
drng = np.random.default_rng(1) if drop > 0 else None
ts = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    model.loss_and_grads(idx, tgt, rng=drng)
    opt.step()
    ts.append(time.perf_counter() - t0)
print(json.dumps({"times": ts[warmup:], "base_mb": base, "peak_mb": status("VmHWM")}))
"""

TORCH_CHILD = r"""
import json, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
base = status("VmRSS")
V, ctx, C, H, L, B, T, threads, warmup, steps, drop = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        B_, T_, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B_, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=drop if self.training else 0.0)
        x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(B_, T_, C)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))

class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(ctx, C)
        self.h = nn.ModuleList([Block() for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.drop = nn.Dropout(drop)

    def forward(self, idx):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        for blk in self.h:
            x = blk(x)
        return self.ln_f(x) @ self.wte.weight.T

net = GPT()
with torch.no_grad():   # GPT-2's initialisation, as the minigpt side's GPTModel(init="gpt2")
    for name, p in net.named_parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.02)
        elif name.endswith("bias"):
            p.zero_()
opt = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=0.1)
g = torch.Generator().manual_seed(0)
idx, tgt = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
ts = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(idx).view(-1, V), tgt.view(-1))
    loss.backward()
    opt.step()
    ts.append(time.perf_counter() - t0)
print(json.dumps({"times": ts[warmup:], "base_mb": base, "peak_mb": status("VmHWM")}))
"""


def run_side(python: str, kind: str, cfg: tuple, threads: int, warmup: int, steps: int,
             drop: float) -> dict:
    """One fresh process: {"times": [s per timed step], "base_mb": RSS after imports,
    "peak_mb": peak RSS (VmHWM) at the end}."""
    code = MINIGPT_CHILD if kind.startswith("minigpt") else TORCH_CHILD
    extra = ["recompute-mlp"] if kind == "minigpt-recompute-mlp" else []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    with tempfile.TemporaryDirectory() as neutral:
        r = subprocess.run([python, "-c", code, json.dumps([*cfg, threads, warmup, steps, drop]),
                            *extra],
                           capture_output=True, text=True, cwd=neutral, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{python} ({kind}) failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--side", action="append", required=True, help="NAME=PYTHON:KIND")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dropout", type=float, default=0.0)
    args = ap.parse_args(argv)
    sides = []
    for s in args.side:
        name, rest = s.split("=", 1)
        python, kind = rest.rsplit(":", 1)
        if kind not in ("minigpt", "minigpt-recompute-mlp", "torch"):
            raise ValueError(f"--side {s}: KIND must be minigpt, minigpt-recompute-mlp or torch")
        sides.append((name, os.path.abspath(python) if os.sep in python else python, kind))
    cfg = CONFIGS[args.config]
    tokens = cfg[5] * cfg[6]
    res: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    loads = []
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for name, python, kind in order:
            loads.append(os.getloadavg()[0])
            t = median(run_side(python, kind, cfg, args.threads, args.warmup, args.steps,
                                args.dropout)["times"])
            res[name].append(tokens / t)
            print(f"round {r + 1}: {name:10s} {tokens / t:9,.0f} tok/s  (load {loads[-1]:.2f})",
                  flush=True)
    print(f"\nconfig {args.config}, {args.threads} threads, dropout {args.dropout}, {args.rounds} "
          f"rounds x {args.steps} steps; load average during the run {min(loads):.2f}.."
          f"{max(loads):.2f}")
    torch_sides = [n for n, _, k in sides if k == "torch"]
    pt = res[torch_sides[0]] if torch_sides else None
    for name, _, kind in sides:
        v = res[name]
        line = f"  {name:10s} median {median(v):9,.0f} tok/s  (min {min(v):,.0f} .. max {max(v):,.0f})"
        if pt and kind.startswith("minigpt"):
            line += f"   vs torch median {median(v) / median(pt):.2f}x, vs torch best " \
                    f"{median(v) / max(pt):.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
