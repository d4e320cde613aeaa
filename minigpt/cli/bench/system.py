"""The benchmark header: what machine, which threads, which BLAS, which Numba.

Thread counts are the ones in effect (read back after ``minigpt.backend.set_threads``), not only the
environment variables; the Numba threading layer is only known after a parallel kernel ran, so
``header_lines`` runs one first.
"""

from __future__ import annotations

import os
import platform

import numpy as np


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def torch_or_none():
    """The torch module when installed (only benchmarks import it), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def header_lines(torch_info: dict | None = None) -> list[str]:
    """Human-readable lines: CPU, threads, BLAS, Numba, backend, PyTorch (``torch_info``: what the
    PyTorch child reported, {"torch": version, "where": ...}; None: not installed)."""
    import numba

    import kernels.layernorm
    import kernels.blas
    from minigpt import backend

    x = np.ones((4, 8), dtype=np.float32)
    kernels.layernorm.layernorm_forward(x, x[0], x[0])   # a kernel: fixes the threading layer
    kernels.blas.gemm(x, x.T)                            # configures the product split
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "unknown"
    blas = kernels.blas.blas_info()
    env = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                   "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"CPU          {cpu_model()}; {os.cpu_count()} logical CPUs, {cores} usable; "
        f"load average {load_average()}",
        f"Python       {platform.python_version()}   NumPy {np.__version__}   "
        f"Numba {numba.__version__} (threading layer {layer})",
        f"BLAS         {blas['name']} {blas['version']}"
        + (f", core {blas['core']}" if blas.get("core") else ""),
        f"threads      minigpt {backend.get_threads()} (Numba kernels {numba.get_num_threads()}, "
        f"products split into {kernels.blas.get_threads()} single-threaded BLAS calls; "
        f"BLAS's own threads now {blas['threads']})",
        "env          " + "  ".join(f"{k}={v}" for k, v in env.items()),
        f"kernels      backend {backend.get_backend()}; Numba cache "
        f"{os.environ.get('NUMBA_CACHE_DIR', 'next to the kernels (__pycache__)')}",
    ]
    if torch_info is None:
        lines.append("PyTorch      PyTorch not installed (peer rows are skipped)")
    else:
        lines.append(f"PyTorch      {torch_info['torch']} CPU eager, defaults apart from "
                     f"torch.set_num_threads; runs in {torch_info.get('where', '?')}")
    return lines
