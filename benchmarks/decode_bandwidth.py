"""Where decode time goes: the GB/s of weights one KV-cached decode step reads, against what this
machine's memory gives a plain copy and a plain read, at 1 and 2 threads.

    .venv/bin/python benchmarks/decode_bandwidth.py [--config gpt2] [--steps 16] [--mb 100,500,2000]
        [--torch-python PATH]

- copy: ``np.copyto`` of an ``--mb`` MB float32 array, one thread or two threads each copying a
  half (NumPy releases the GIL); several sizes: an array that fits in the CPU's last-level cache is
  read from there, not from memory (``lscpu`` gives its size). Printed as the bytes READ per second (the same bytes are written
  too, so the memory bus moves twice that).
- read: a Numba loop summing the same array (vectorised; one thread, or two halves on two threads):
  what streaming a weight matrix once can reach at best.
- decode: ``model.forward(one_token, kv_cache=cache)`` after a 16-token prompt, the median step
  time; GB/s = the weights one step reads (every parameter but the unused rows of ``wpe``) / time;
  and the median time of the 16-token prompt run at once (the prefill, through ``kernels.blas``).
- PyTorch (with ``--torch-python``, default ``MINIGPT_BENCH_TORCH_PYTHON``): the products of one
  step alone, x (1, in) @ W.T for every weight in ``nn.Linear``'s layout, in a plain PyTorch
  process of its own (``decode_bandwidth_torch.py``): what PyTorch's own streaming reaches; and
  the same products for 16 rows at once (a 16-token prompt's products, without its attention).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np
from numba import njit

from minigpt import backend
from minigpt.cli.bench.configs import CONFIGS
from minigpt.inference.kv_cache import KVCache
from minigpt.model import GPTModel


@njit(nogil=True, cache=True, fastmath=True)
def _read(a):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


def _on_threads(fn, parts):
    """fn(part) for every part, each on its own thread (the first on this one)."""
    ts = [threading.Thread(target=fn, args=(p,)) for p in parts[1:]]
    for t in ts:
        t.start()
    fn(parts[0])
    for t in ts:
        t.join()


def best_of(f, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_rates(n: int) -> None:
    """Print the copy and read rates of an n-element float32 array at 1 and 2 threads."""
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    _read(src[:16])
    for k in (1, 2):
        parts = [slice(n * i // k, n * (i + 1) // k) for i in range(k)]
        t = best_of(lambda p=parts: _on_threads(lambda s: np.copyto(dst[s], src[s]), p), 5)
        r = best_of(lambda p=parts: _on_threads(lambda s: _read(src[s]), p), 5)
        print(f"  {k} thread(s): copy {src.nbytes / t / 1e9:6.1f} GB/s read (+ as much written), "
              f"read {src.nbytes / r / 1e9:6.1f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="gpt2", choices=["small", "gpt2"])
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps per thread count")
    ap.add_argument("--mb", default="500",
                    help="sizes of the copied / read array, MB, comma-separated (e.g. 100,500,2000)")
    ap.add_argument("--torch-python", default=os.environ.get("MINIGPT_BENCH_TORCH_PYTHON", ""),
                    help="a Python with torch: also time PyTorch's products in its own process")
    a = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mb in (int(v) for v in a.mb.split(",")):
        print(f" {mb} MB array:")
        memory_rates(mb * 1_000_000 // 4)

    cfg = CONFIGS[a.config][0]
    model = GPTModel(cfg, seed=0, dtype=np.float32)
    C = cfg.emb_dim
    nbytes = model.flat_params.nbytes - model.params["wpe.weight"].nbytes + C * 4
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 16))
    for k in (1, 2):
        backend.set_threads(k)
        cache = KVCache(cfg, 1, dtype=np.float32, max_len=16 + a.steps + 4)
        logits = model.forward(prompt, kv_cache=cache)
        tok = np.argmax(logits[:, -1], axis=-1)[:, None]
        model.forward(tok, kv_cache=cache)                     # warm-up step
        pre = []
        for _ in range(3):                                     # the prompt at once (prefill)
            t0 = time.perf_counter()
            model.forward(prompt, kv_cache=KVCache(cfg, 1, dtype=np.float32, max_len=16))
            pre.append(time.perf_counter() - t0)
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            logits = model.forward(tok, kv_cache=cache)
            times.append(time.perf_counter() - t0)
            tok = np.argmax(logits[:, -1], axis=-1)[:, None]
        med, best = float(np.median(times)), min(times)
        print(f"  {k} thread(s): decode {a.config} step {med * 1e3:7.2f} ms median "
              f"({1 / med:6.1f} tokens/s), weights read {nbytes / 1e6:.0f} MB/step: "
              f"{nbytes / med / 1e9:5.1f} GB/s median, {nbytes / best / 1e9:5.1f} best; "
              f"the 16-token prompt {np.median(pre) * 1e3:.1f} ms")
    if a.torch_python:
        child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode_bandwidth_torch.py")
        for k in (1, 2):
            cmd = [a.torch_python, "-P", child, "--emb", str(C), "--layers", str(cfg.n_layers),
                   "--vocab", str(cfg.vocab_size), "--threads", str(k), "--steps", str(a.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"the PyTorch child failed: {done.stderr.strip()[-400:]}")
            print(done.stdout.rstrip())


if __name__ == "__main__":
    main()
