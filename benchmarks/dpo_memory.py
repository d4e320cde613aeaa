"""Peak resident memory of DPO at GPT-2 124M, minigpt beside PyTorch, in one run.

    python benchmarks/dpo_memory.py                       # minigpt, then PyTorch (if a python with
                                                          # torch is given), ratio printed
    python benchmarks/dpo_memory.py --torch-python /work/peer/bin/python --steps 2

DPO holds a policy with gradients and AdamW's two moments, plus a frozen reference (parameters
only). Each side runs in its own fresh process: ``--steps`` DPO steps (the policy's forward on the
chosen and rejected rows, the reference's forward without gradients, the loss, the backward, AdamW)
on a randomly initialised GPT-2 124M (tied head, qkv bias, dropout 0) in float32, batch ``--pairs``
pairs of ``--T`` tokens (the book's batch 8; its longest batches are about 110 tokens), the last
``--response`` positions of each row counted. The peak resident set (VmHWM, /proc/self/status) is
read at the end of each process.

The PyTorch side is the book's recipe written with ``torch.nn.functional``: GPT2LMHeadModel from
transformers (random weights, the same shapes), ``log_softmax`` + ``gather`` + masked mean for the
log-probabilities, ``-logsigmoid(beta * ...)``, ``torch.optim.AdamW``, the reference under
``torch.no_grad()``. The policy sees the chosen and the rejected rows as one batch, as minigpt does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vm_hwm_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_minigpt(a) -> dict:
    import numpy as np

    import minigpt
    from minigpt.training.dpo import DPOObjective
    from minigpt.training.loop import set_num_threads
    from minigpt.training.optim import AdamW

    set_num_threads(a.threads)
    cfg = minigpt.GPT_CONFIG_124M.replace(context_length=1024, drop_rate=0.0, qkv_bias=True,
                                          tie_weights=True)
    policy = minigpt.GPTModel(cfg, seed=0)
    reference = minigpt.GPTModel(cfg, seed=0)
    objective = DPOObjective(policy, reference, beta=0.1)
    opt = AdamW(policy, lr=5e-6, weight_decay=0.01)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (2 * a.pairs, a.T))
    y = np.where(np.arange(a.T) >= a.T - a.response, rng.integers(0, cfg.vocab_size, x.shape), -100)
    losses = []
    for _ in range(a.steps):
        loss, _ = objective.loss_and_grads(x, y)
        opt.step(policy.flat_grads)
        losses.append(loss)
    return {"side": "minigpt", "peak_mib": vm_hwm_mib(), "losses": losses}


def run_torch(a) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    policy = GPT2LMHeadModel(cfg)
    reference = GPT2LMHeadModel(cfg)
    reference.load_state_dict(policy.state_dict())
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-6, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (2 * a.pairs, a.T), generator=g)
    y = torch.randint(0, 50257, (2 * a.pairs, a.T), generator=g)
    mask = (torch.arange(a.T) >= a.T - a.response).expand(2 * a.pairs, a.T).to(torch.float32)

    def logprobs(logits):
        lp = torch.gather(F.log_softmax(logits, dim=-1), -1, y.unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(-1) / mask.sum(-1)

    losses = []
    B = a.pairs
    for _ in range(a.steps):
        pi = logprobs(policy(x).logits)
        with torch.no_grad():
            ref = logprobs(reference(x).logits)
        h = (pi[:B] - ref[:B]) - (pi[B:] - ref[B:])
        loss = -F.logsigmoid(0.1 * h).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"side": "torch " + torch.__version__, "peak_mib": vm_hwm_mib(), "losses": losses}


def child(python: str, side: str, a) -> dict:
    cmd = [python, __file__, "--side", side, "--pairs", str(a.pairs), "--T", str(a.T),
           "--response", str(a.response), "--steps", str(a.steps), "--threads", str(a.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", choices=("minigpt", "torch", "both"), default="both")
    ap.add_argument("--torch-python", default=None, metavar="PY",
                    help="a python with torch and transformers (default: skip PyTorch)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--T", type=int, default=110)
    ap.add_argument("--response", type=int, default=40)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if a.side == "minigpt":
        print(json.dumps(run_minigpt(a)))
        return 0
    if a.side == "torch":
        print(json.dumps(run_torch(a)))
        return 0
    mine = child(sys.executable, "minigpt", a)
    print(f"DPO at GPT-2 124M, float32, {a.pairs} pairs x {a.T} tokens, {a.steps} steps, "
          f"{a.threads} threads")
    print(f"  minigpt: peak {mine['peak_mib']:,.0f} MiB   (losses {mine['losses']})")
    if a.torch_python:
        theirs = child(a.torch_python, "torch", a)
        print(f"  {theirs['side']}: peak {theirs['peak_mib']:,.0f} MiB   (losses {theirs['losses']})")
        print(f"  ratio minigpt / PyTorch: {mine['peak_mib'] / theirs['peak_mib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
