"""The PyTorch side of ``minigpt bench``: a plain PyTorch process that never imports minigpt.

Run BY PATH, never as ``-m minigpt...`` (that imports the ``minigpt`` package and Numba, and
anything touching a kernel imports ``kernels``, which raises glibc's malloc thresholds: a plain
PyTorch 'small' step then takes 7-25x fewer page faults; docs/kernels.md)::

    python -P /path/to/torch_child.py spec.json      ->  one JSON line on stdout

It imports only the standard library, NumPy, safetensors and torch (``tests/test_bench_peer.py``
checks this file's imports without torch, and the modules loaded by a real run when torch is
installed). PyTorch keeps its own defaults apart from the thread count (``torch.set_num_threads``).

The spec (JSON): ``task`` ("train", "decode", "memory-train", "memory-decode" or "info"),
``config`` (vocab_size, context_length, emb_dim, n_heads, n_layers), ``threads``, ``inputs`` (a
safetensors file: idx, targets or prompt), ``weights`` (a safetensors file in minigpt's names, or
absent: PyTorch's own initialisation), ``warmup``, ``steps``, ``lr``, ``wd``, ``n_new``.

The model is the GPT-2 of the bench configs: pre-LN blocks, one fused qkv projection with bias,
causal ``scaled_dot_product_attention``, GELU (tanh), tied LM head, dropout 0, ``torch.optim.AdamW``.
Decoding uses a simple KV cache: preallocated (B, H, T_max, hs) keys and values per layer.

Besides the times, the result carries the process's peak memory (``ru_maxrss`` and ``VmHWM``), its
resource usage over the timed steps (page faults, context switches, CPU seconds), the CPU each of
its threads last ran on, and ``foreign_modules``: every loaded module named minigpt, kernels or
numba (the parent refuses the result unless it is empty).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file

FOREIGN = ("minigpt", "kernels", "numba")      # what a plain PyTorch process must never load


def foreign_modules() -> list[str]:
    """Loaded modules whose top-level package is minigpt, kernels or numba (should be none)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in FOREIGN)


def status_mb(field: str) -> float:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in MiB (Linux only; nan elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def thread_cpus() -> list[int]:
    """The CPU each thread of this process last ran on (/proc/self/task/*/stat, field 39)."""
    cpus = []
    try:
        for tid in sorted(os.listdir("/proc/self/task")):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpus.append(int(fields[36]))        # field 39 counted from 1; 3 precede this list
    except (OSError, IndexError, ValueError):
        pass
    return cpus


def build(cfg: dict, threads: int, params: dict[str, np.ndarray] | None = None):
    """The GPT-2 of ``cfg`` in PyTorch eager; with ``params`` (minigpt's names and layouts) its
    weights are copied in, else PyTorch's own initialisation is kept."""
    torch.set_num_threads(threads)
    nn, F = torch.nn, torch.nn.functional
    C, H = cfg["emb_dim"], cfg["n_heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def attend(self, x, kv=None, t0=0):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
            if kv is not None:                      # KV cache: store, then attend over all so far
                kc, vc = kv
                kc[:, :, t0:t0 + T] = k
                vc[:, :, t0:t0 + T] = v
                k, v = kc[:, :, :t0 + T], vc[:, :, :t0 + T]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # 1 new token sees all
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

        def forward(self, x, kv=None, t0=0):
            x = x + self.attend(x, kv, t0)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg["vocab_size"], C)
            self.wpe = nn.Embedding(cfg["context_length"], C)
            self.h = nn.ModuleList([Block() for _ in range(cfg["n_layers"])])
            self.ln_f = nn.LayerNorm(C)
            self.n_heads = H

        def forward(self, idx, kv=None, t0=0):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t0, t0 + T))
            for i, blk in enumerate(self.h):
                x = blk(x, None if kv is None else kv[i], t0)
            return self.ln_f(x) @ self.wte.weight.T          # tied head

    net = GPT()
    if params is not None:
        load_minigpt_weights(net, params)
    return net


def load_minigpt_weights(net, p: dict[str, np.ndarray]) -> None:
    """Copy minigpt's parameters (names as in its state dict, linear weights (in, out)) into ``net``."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        net.wte.weight.copy_(t(p["wte.weight"]))
        net.wpe.weight.copy_(t(p["wpe.weight"]))
        net.ln_f.weight.copy_(t(p["ln_f.weight"]))
        net.ln_f.bias.copy_(t(p["ln_f.bias"]))
        for i, blk in enumerate(net.h):
            h = f"h.{i}."
            for mod, name in ((blk.ln_1, "ln_1"), (blk.ln_2, "ln_2")):
                mod.weight.copy_(t(p[h + name + ".weight"]))
                mod.bias.copy_(t(p[h + name + ".bias"]))
            for mod, name in ((blk.c_attn, "attn.c_attn"), (blk.c_proj, "attn.c_proj"),
                              (blk.c_fc, "mlp.c_fc"), (blk.mlp_proj, "mlp.c_proj")):
                mod.weight.copy_(t(p[h + name + ".weight"].T))   # (in, out) -> nn.Linear's (out, in)
                mod.bias.copy_(t(p[h + name + ".bias"]))


def train_step_fn(net, idx: np.ndarray, targets: np.ndarray, lr: float, wd: float):
    """-> step() running forward, loss, backward and AdamW once; returns the loss."""
    F = torch.nn.functional
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    ti, tt = torch.from_numpy(idx), torch.from_numpy(targets)
    V = net.wte.weight.shape[0]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(ti).view(-1, V), tt.view(-1))
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def greedy_decode(net, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy decoding with the KV cache: prompt (B, P) -> (B, P + n_new) ids."""
    B, P = prompt.shape
    H = net.n_heads
    hs = net.wte.weight.shape[1] // H
    T_max = min(net.wpe.weight.shape[0], P + n_new)
    kv = [(torch.zeros(B, H, T_max, hs), torch.zeros(B, H, T_max, hs)) for _ in net.h]
    out = np.empty((B, P + n_new), dtype=np.int64)
    out[:, :P] = prompt
    with torch.no_grad():
        logits = net(torch.from_numpy(prompt), kv, 0)[:, -1]
        for i in range(n_new):
            nxt = torch.argmax(logits, dim=-1)                       # (B,)
            out[:, P + i] = nxt.numpy()
            if i + 1 < n_new:
                logits = net(nxt[:, None], kv, P + i)[:, -1]
    return out


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"minflt": r.ru_minflt, "majflt": r.ru_majflt, "nvcsw": r.ru_nvcsw,
            "nivcsw": r.ru_nivcsw, "user_s": r.ru_utime, "sys_s": r.ru_stime}


def run(spec: dict) -> dict:
    """One task of the spec -> the result dict printed as JSON."""
    task, threads = spec["task"], int(spec["threads"])
    out: dict = {"impl": "torch", "task": task, "torch": torch.__version__}
    torch.set_num_threads(threads)
    out["threads"] = torch.get_num_threads()
    if spec.get("flush_denormal"):       # these two: only benchmarks/torch_peer_variance.py asks
        torch.set_flush_denormal(True)
    if spec.get("mallopt"):              # glibc thresholds as minigpt's kernels set them
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        out["mallopt"] = bool(libc.mallopt(-3, 1 << 28)) and bool(libc.mallopt(-1, 1 << 30))
    if task == "info":
        out["foreign_modules"] = foreign_modules()
        return out
    base = status_mb("VmRSS")                           # after the imports: torch, NumPy
    cfg = spec["config"]
    inputs = load_file(spec["inputs"])
    params = load_file(spec["weights"]) if spec.get("weights") else None
    net = build(cfg, threads, params)
    del params
    if task in ("train", "memory-train"):
        step = train_step_fn(net, inputs["idx"], inputs["targets"], spec["lr"], spec["wd"])
    elif task in ("decode", "memory-decode"):
        step = lambda: greedy_decode(net, inputs["prompt"], spec["n_new"])  # noqa: E731
    else:
        raise ValueError(f"unknown task {task!r}: choose train, decode, memory-train, "
                         "memory-decode or info")
    first = None
    for i in range(int(spec.get("warmup", 1))):
        r = step()
        if i == 0:
            first = r if isinstance(r, float) else np.asarray(r).tolist()
    out["first"] = first
    before, times = _usage(), []
    for _ in range(int(spec.get("steps", 0))):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    after = _usage()
    out["times"] = times
    out["usage"] = {k: after[k] - before[k] for k in after}      # over the timed steps
    out["thread_cpus"] = thread_cpus()
    out["base_mb"] = base
    out["peak_mb"] = status_mb("VmHWM")
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    out["foreign_modules"] = foreign_modules()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -P torch_child.py spec.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    print(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
