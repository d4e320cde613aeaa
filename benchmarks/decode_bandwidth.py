"""Where decode time goes: the GB/s of weights one KV-cached decode step reads, against what this
machine's memory gives a plain copy and a plain read, at 1 and 2 threads.

    .venv/bin/python benchmarks/decode_bandwidth.py [--config gpt2] [--steps 16] [--mb 500]

- copy: ``np.copyto`` of an ``--mb`` MB float32 array (one thread, or two threads each copying a
  half; NumPy releases the GIL). Printed as the bytes READ per second (the same bytes are written
  too, so the memory bus moves twice that).
- read: a Numba loop summing the same array (vectorised; one thread, or two halves on two threads):
  what streaming a weight matrix once can reach at best.
- decode: ``model.forward(one_token, kv_cache=cache)`` after a 16-token prompt, the median step
  time; GB/s = the weights one step reads (every parameter but the unused rows of ``wpe``) / time.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--mb", type=int, default=500, help="size of the copied / read array")
    a = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    memory_rates(a.mb * 1_000_000 // 4)

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
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            logits = model.forward(tok, kv_cache=cache)
            times.append(time.perf_counter() - t0)
            tok = np.argmax(logits[:, -1], axis=-1)[:, None]
        med, best = float(np.median(times)), min(times)
        print(f"  {k} thread(s): decode {a.config} step {med * 1e3:7.2f} ms median "
              f"({1 / med:6.1f} tokens/s), weights read {nbytes / 1e6:.0f} MB/step: "
              f"{nbytes / med / 1e9:5.1f} GB/s median, {nbytes / best / 1e9:5.1f} best")


if __name__ == "__main__":
    main()
