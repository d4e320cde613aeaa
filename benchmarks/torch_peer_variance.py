"""Why does PyTorch's 'small' training step change speed from one process to the next?

Runs the bench's plain PyTorch child (``minigpt/cli/bench/torch_child.py``, by path: it never imports
minigpt) in N fresh processes per variant, variants interleaved round by round, and records per
process the tokens/s (median of its timed steps) beside the suspects:

    default   PyTorch as the bench runs it
    bind      OMP_PROC_BIND=close OMP_PLACES=cores (each OpenMP thread pinned to its own core)
    passive   OMP_WAIT_POLICY=passive (OpenMP threads sleep at once instead of spinning)
    noaslr    setarch -R (address-space randomisation off: the same buffer addresses every process)
    malloc    GLIBC_TUNABLES raising glibc's mmap/trim thresholds (capped at 32 MiB by glibc)
    mallopt   mallopt(M_MMAP_THRESHOLD, 256 MiB), mallopt(M_TRIM_THRESHOLD, 1 GiB) in the child:
              what minigpt's kernels do at import (and so what the old bench's PyTorch child had)
    thp       THP_MEM_ALLOC_ENABLE=1 (PyTorch's allocator asks for transparent huge pages)
    ftz       torch.set_flush_denormal(True) in the child

and, per process: minor page faults per timed step, involuntary context switches, CPU seconds per
wall second over the timed steps (2.0 = both threads busy all the time), whether its last two
busy threads sat on the same CPU, the host's steal time (/proc/stat) and the load average.

    python benchmarks/torch_peer_variance.py --runs 6 --torch-python /work/peer/bin/python

The parent needs minigpt (it writes the weights of the bench's 'small' model); the children need
only torch, NumPy and safetensors. Results: one JSON line per process in --out, a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigpt.cli.bench import isolated  # noqa: E402
from minigpt.cli.bench.configs import CONFIGS  # noqa: E402
from minigpt.cli.bench.model_bench import LR, WD, batch  # noqa: E402

VARIANTS = {
    "default": ({}, [], {}),
    "bind": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, [], {}),
    "passive": ({"OMP_WAIT_POLICY": "passive"}, [], {}),
    "noaslr": ({}, ["setarch", platform.machine(), "-R"], {}),
    "malloc": ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:"
                                  "glibc.malloc.trim_threshold=1073741824"}, [], {}),
    "mallopt": ({}, [], {"mallopt": True}),
    "thp": ({"THP_MEM_ALLOC_ENABLE": "1"}, [], {}),
    "ftz": ({}, [], {"flush_denormal": True}),
}


def fault_cost_us(mib: int = 128, repeats: int = 3, pause: float = 0.0) -> float:
    """System CPU microseconds per minor page fault on this machine: map ``mib`` MiB anonymous
    memory, write one byte per 4 KiB page, unmap; the median of ``repeats``. This is what a step
    pays for every page its allocator returns to the kernel and takes back. ``pause`` seconds
    before each repeat give a balloon with free page reporting time to hand the pages back to the
    host (if that made faults dearer, the cost would rise with the pause)."""
    import mmap
    import resource

    costs = []
    for _ in range(repeats):
        time.sleep(pause)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        m = mmap.mmap(-1, mib << 20)
        a = np.frombuffer(m, dtype=np.uint8)
        a[::4096] = 1
        del a
        m.close()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        costs.append((r1.ru_stime - r0.ru_stime) / max(1, r1.ru_minflt - r0.ru_minflt) * 1e6)
    return median(costs)


def steal_jiffies() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=6, help="fresh processes per variant")
    ap.add_argument("--variants", default="default,bind,passive,noaslr",
                    help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process (after 2 warm-up)")
    ap.add_argument("--torch-python", default=os.environ.get("MINIGPT_BENCH_TORCH_PYTHON",
                                                             sys.executable))
    ap.add_argument("--out", default="torch_peer_variance.jsonl")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    cfg, B, T = CONFIGS[args.config]
    idx, targets = batch(cfg, B, T)
    print(f"one minor page fault costs {fault_cost_us():.2f} us of system CPU here, "
          f"{fault_cost_us(pause=5.0):.2f} us after a 5 s pause "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="torch-variance-") as tmp, open(args.out, "a") as log:
        weights, inputs = isolated.write_files(args.config, {"idx": idx, "targets": targets}, tmp)
        for r in range(args.runs):
            for name in names:
                env_add, prefix, extra = VARIANTS[name]
                spec = {"task": "train", "config": isolated.config_dict(cfg), "threads": args.threads,
                        "weights": weights, "inputs": inputs, "warmup": 2, "steps": args.steps,
                        "lr": LR, "wd": WD, **extra}
                load, steal0, t0 = os.getloadavg()[0], steal_jiffies(), time.time()
                res = isolated.run_torch_child(spec, tmp, python=args.torch_python,
                                               env_add=env_add, prefix=prefix)
                wall = sum(res["times"])
                cpus = res["thread_cpus"]
                row = {"variant": name, "round": r, "tok_s": B * T / median(res["times"]),
                       "step_tok_s": [B * T / t for t in res["times"]],
                       "minflt_per_step": res["usage"]["minflt"] / args.steps,
                       "nivcsw": res["usage"]["nivcsw"], "cpu_per_wall": (res["usage"]["user_s"] + res["usage"]["sys_s"]) / wall,
                       "sys_ms_per_step": 1e3 * res["usage"]["sys_s"] / args.steps,
                       "thread_cpus": cpus, "steal_s": (steal_jiffies() - steal0) / 100,
                       "process_s": time.time() - t0, "load1": load,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(f"{row['date']} {name:8s} round {r}: {row['tok_s']:7.0f} tok/s  "
                      f"steps {' '.join(f'{x:.0f}' for x in row['step_tok_s'])}  "
                      f"minflt/step {row['minflt_per_step']:7.0f}  sys ms/step {row['sys_ms_per_step']:5.0f}  nivcsw {row['nivcsw']:5d}  "
                      f"cpu/wall {row['cpu_per_wall']:.2f}  cpus {cpus}  steal {row['steal_s']:.1f}s "
                      f"load {load:.2f}", flush=True)
    print("\nper variant: tokens/s of each process, sorted")
    for name in names:
        v = sorted(x["tok_s"] for x in rows if x["variant"] == name)
        f = sorted(x["minflt_per_step"] for x in rows if x["variant"] == name)
        print(f"  {name:8s} minor faults per step, sorted: " + " ".join(f"{x:.0f}" for x in f))
        print(f"  {name:8s} median {median(v):7.0f}  min {v[0]:7.0f}  max {v[-1]:7.0f}  "
              + " ".join(f"{x:.0f}" for x in v))
    tok = np.array([x["tok_s"] for x in rows])
    for key in ("minflt_per_step", "sys_ms_per_step", "nivcsw", "cpu_per_wall", "steal_s", "load1"):
        col = np.array([x[key] for x in rows], dtype=float)
        if col.std() > 0 and tok.std() > 0:
            print(f"  correlation of tokens/s with {key:16s} {np.corrcoef(tok, col)[0, 1]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
