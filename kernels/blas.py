"""Dense products for the fast path: NumPy's BLAS, single-threaded, split across a small pool.

    gemm(a, b) = a @ b          a (M, K), b (K, N) -> (M, N), any strides BLAS accepts

Why not just ``a @ b`` with a multi-threaded BLAS? NumPy's OpenBLAS spin-waits between its
threads inside every product. On a quiet machine that is fine; on a shared one (another process
on the cores) a spinning thread burns the time slice its partner needs, and some shapes of the
training step (a weight gradient ``x^T dout`` with a small output and K = B*T) ran 5-50x slower
with 2 BLAS threads than with one (benchmarks/bench_kernels.py has the ``gemm`` rows). So the fast
path keeps BLAS at ONE thread and splits each large product itself into ``n`` independent blocks
of output rows (or columns, whichever is larger), one per pool thread. The pool's threads block
(no spinning) while idle, there is exactly one synchronisation per product, and no BLAS call ever
runs inside a parallel Numba loop.

The BLAS thread count is set through OpenBLAS's own C API (``openblas_set_num_threads``) in the
library NumPy loaded; with another BLAS (MKL, Accelerate) nothing is changed and ``gemm`` is a
plain ``a @ b``. ``set_threads(n)`` is called by ``minigpt.backend.set_threads``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Products smaller than this many multiply-adds run on the calling thread (pool hand-off ~20 us).
MIN_SPLIT_MACS = 1 << 21
SLAB = 1 << 22   # elements (16 MiB of float32) of a temporary product in gemm_acc's fallback

_lock = threading.Lock()
_state = {"threads": 1, "pool": None, "lib": None, "looked": False, "pinned": False,
          "configured": False, "malloc": None}


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's pool threads: build a new pool on first use."""
    _state["pool"] = None
    _state["configured"] = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _openblas():
    """NumPy's OpenBLAS as a ctypes library with its thread getters/setters, or None."""
    if _state["looked"]:
        return _state["lib"]
    _state["looked"] = True
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    candidates = sorted(glob.glob(os.path.join(libdir, "libscipy_openblas*.so*"))
                        + glob.glob(os.path.join(libdir, "libopenblas*.so*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found, found_names = {}, {}
        for key, names in {
            "set": ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"),
            "get": ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads"),
            "config": ("scipy_openblas_get_config64_", "scipy_openblas_get_config",
                       "openblas_get_config64_", "openblas_get_config"),
            "core": ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"),
            "sgemm": ("scipy_cblas_sgemm64_", "cblas_sgemm64_", "scipy_cblas_sgemm", "cblas_sgemm"),
            "dgemm": ("scipy_cblas_dgemm64_", "cblas_dgemm64_", "scipy_cblas_dgemm", "cblas_dgemm"),
        }.items():
            for name in names:
                if hasattr(lib, name):
                    found[key] = getattr(lib, name)
                    found_names[key] = name
                    break
        if "set" in found and "get" in found:
            found["set"].argtypes = [ctypes.c_int]
            found["set"].restype = None
            found["get"].restype = ctypes.c_int
            for key in ("config", "core"):
                if key in found:
                    found[key].restype = ctypes.c_char_p
            for key, real in (("sgemm", ctypes.c_float), ("dgemm", ctypes.c_double)):
                if key in found:
                    # the integers are 64-bit in an ILP64 build (the names ending in 64_)
                    ilp64 = found_names[key].endswith("64_")
                    blasint = ctypes.c_int64 if ilp64 else ctypes.c_int
                    found[key].restype = None
                    found[key].argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                           blasint, blasint, blasint, real, ctypes.c_void_p,
                                           blasint, ctypes.c_void_p, blasint, real,
                                           ctypes.c_void_p, blasint]
            _state["lib"] = found
            break
    return _state["lib"]


def blas_info() -> dict:
    """What NumPy's BLAS is: name/version from ``np.show_config``, OpenBLAS's core and its
    current thread count when the library can be reached (else None)."""
    info: dict = {"name": "unknown", "version": "", "core": None, "threads": None}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["name"] = blas.get("name", "unknown")
        info["version"] = blas.get("version", "")
    except Exception:  # noqa: BLE001 - old NumPy without mode="dicts"
        pass
    lib = _openblas()
    if lib is not None:
        info["threads"] = int(lib["get"]())
        if "core" in lib:
            info["core"] = lib["core"]().decode(errors="replace")
        if "config" in lib:
            info["config"] = lib["config"]().decode(errors="replace")
    return info


def tune_malloc() -> bool:
    """Keep freed memory in the process for reuse (glibc only; ``MINIGPT_MALLOPT=0`` skips it).

    A training step allocates its activations afresh (tens of MB). By default glibc serves such
    blocks with mmap and unmaps them when freed, so every step first-touches new pages: on this
    project's VM the page faults cost 0.3-25 ms per 8 MB, and the 'small' step spent ~20% of its
    time in them (measured with the phase profile, 1 thread: 795-821 ms -> 627-650 ms). Raising
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD makes glibc reuse the freed blocks instead. Returns
    True when both settings were accepted."""
    if _state.get("malloc") is not None:
        return _state["malloc"]
    ok = False
    if os.environ.get("MINIGPT_MALLOPT", "1") != "0":
        try:
            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 28)) and \
                bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):
            ok = False
    _state["malloc"] = ok
    return ok


def set_threads(n: int) -> None:
    """Use ``n`` threads for the products: BLAS itself pinned to 1, a pool of ``n`` workers."""
    n = max(1, int(n))
    tune_malloc()
    with _lock:
        lib = _openblas()
        if lib is not None:
            lib["set"](1)
            _state["pinned"] = True
        if n != _state["threads"] or _state["pool"] is None:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(max_workers=n - 1) if n > 1 else None
            _state["threads"] = n
        _state["configured"] = True


def default_threads() -> int:
    """Threads to use when nobody chose: ``OMP_NUM_THREADS`` when set, else Numba's count
    (``NUMBA_NUM_THREADS``, default the number of cores)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    import numba
    return numba.get_num_threads()


def get_threads() -> int:
    """The number of blocks ``gemm`` splits a large product into."""
    return _state["threads"]


def pool():
    """(the pool, the thread count): the workers ``gemm`` hands its blocks to (None with one
    thread). ``kernels.decode`` splits its one-row products over the same threads."""
    if not _state["configured"]:
        set_threads(default_threads())
    return _state["pool"], _state["threads"]


def splitting() -> bool:
    """True when ``gemm`` splits products itself (BLAS pinned to one thread, pool of > 1)."""
    return _state["pinned"] and _state["threads"] > 1


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a (M, K) @ b (K, N) -> (M, N), written into ``out`` when given (C-contiguous (M, N)).

    Large products are cut into ``get_threads()`` blocks of rows of the result (or of columns
    when N > M), each a single-threaded BLAS call on its own slice of ``out``: no two blocks
    write the same element, and the sum over K is done by BLAS in one piece. A block is not
    always rounded as in the unsplit ``a @ b`` (OpenBLAS's blocking depends on the block's size),
    so the bits depend on the thread count; at one count they are the same on every call
    (tests/test_threads.py).
    """
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    if not _state["configured"]:
        set_threads(default_threads())
    lib = _state["lib"]
    if lib is not None and lib["get"]() != 1:      # someone raised BLAS's threads since: pin again
        lib["set"](1)
    n = _state["threads"]
    pool = _state["pool"]
    if not _state["pinned"] or pool is None or M * K * N < MIN_SPLIT_MACS:
        return np.matmul(a, b, out=out)
    by_rows = M >= N
    size = M if by_rows else N
    n = min(n, max(1, size // 16))
    if n <= 1:
        return np.matmul(a, b, out=out)
    edges = [size * i // n for i in range(n + 1)]
    futures = []
    for i in range(1, n):
        lo, hi = edges[i], edges[i + 1]
        if by_rows:
            futures.append(pool.submit(np.matmul, a[lo:hi], b, out=out[lo:hi]))
        else:
            futures.append(pool.submit(np.matmul, a, b[:, lo:hi], out=out[:, lo:hi]))
    lo, hi = edges[0], edges[1]
    if by_rows:
        np.matmul(a[lo:hi], b, out=out[lo:hi])
    else:
        np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
    for f in futures:
        f.result()
    return out


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112   # CBLAS's enum values


def _cblas_operand(a: np.ndarray):
    """(transpose flag, leading dimension) of a 2-D operand for a row-major cblas call, or None
    when neither its rows nor its columns are contiguous."""
    item = a.itemsize
    s0, s1 = a.strides
    if s1 == item and s0 % item == 0 and s0 // item >= max(1, a.shape[1]):
        return _NO_TRANS, s0 // item                                  # rows contiguous
    if s0 == item and s1 % item == 0 and s1 // item >= max(1, a.shape[0]):
        return _TRANS, s1 // item                                     # a is the transpose of rows
    return None


def gemm_acc(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out += a @ b: a (M, K), b (K, N), out (M, N), out's rows contiguous.

    A weight gradient accumulates dW += x^T dout over the layer's uses (a tied weight; the row
    chunks of the LM head's loss, ``minigpt/heads.py``). With NumPy's OpenBLAS reachable this is
    BLAS's own beta = 1 product (``cblas_sgemm``): no (M, N) temporary and no separate pass over
    ``out``, split like ``gemm`` into one block of rows (or columns) of ``out`` per thread. Else
    (another BLAS, mixed dtypes, strides cblas cannot take) it falls back to ``out += gemm(a, b)``
    in slabs of 16 MiB.
    """
    M, K = a.shape
    N = b.shape[1]
    if out.shape != (M, N) or b.shape[0] != K:
        raise ValueError(f"gemm_acc: shapes do not match: a {a.shape} @ b {b.shape} into "
                         f"out {out.shape}")
    if not _state["configured"]:
        set_threads(default_threads())
    lib = _state["lib"]
    fn = None if lib is None or not a.dtype == b.dtype == out.dtype else \
        lib.get({np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}.get(a.dtype, ""))
    layout = [_cblas_operand(t) for t in (a, b, out)]     # (transpose flag, leading dimension)
    if fn is None or 0 in (M, N, K) or None in layout or layout[2][0] != _NO_TRANS:
        step = max(1, SLAB // max(1, N))
        for i in range(0, M, step):
            out[i:i + step] += gemm(a[i:i + step], b)                 # (s, N)
        return out
    (ta, lda), (tb, ldb), (_, ldc) = layout
    if lib["get"]() != 1:                           # someone raised BLAS's threads since: pin again
        lib["set"](1)
    n, pool = _state["threads"], _state["pool"]
    by_rows = M >= N
    size = M if by_rows else N
    n = min(n, max(1, size // 16)) if pool is not None and M * K * N >= MIN_SPLIT_MACS else 1
    edges = [size * i // n for i in range(n + 1)]

    def part(i):
        """out's block i += its product, one cblas call with beta = 1 (a block is a slice: the
        strides, so the transpose flags and leading dimensions, are the whole arrays')."""
        lo, hi = edges[i], edges[i + 1]
        pa, pb, po = (a[lo:hi], b, out[lo:hi]) if by_rows else (a, b[:, lo:hi], out[:, lo:hi])
        fn(_ROW_MAJOR, ta, tb, po.shape[0], po.shape[1], K, 1.0, pa.ctypes.data, lda,
           pb.ctypes.data, ldb, 1.0, po.ctypes.data, ldc)

    futures = [pool.submit(part, i) for i in range(1, n)]
    part(0)
    for f in futures:
        f.result()
    return out


def bmm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Batched a (B, H, M, K) @ b (B, H, K, N) -> (B, H, M, N), any strides, into ``out`` if given.

    The batch is split along B (or H when B is smaller than the thread count) into one block per
    thread, each a NumPy ``matmul`` (BLAS per (b, h) slice, one thread): the same BLAS calls as an
    unsplit ``matmul``, so the same bits at any thread count.
    """
    if out is None:
        out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=np.result_type(a, b))
    if not _state["configured"]:
        set_threads(default_threads())
    n, pool = _state["threads"], _state["pool"]
    axis = 0 if a.shape[0] >= n else 1
    size = a.shape[axis]
    n = min(n, size)
    if pool is None or n <= 1:
        return np.matmul(a, b, out=out)
    edges = [size * i // n for i in range(n + 1)]

    def part(i):
        sl = (slice(edges[i], edges[i + 1]),) if axis == 0 else \
             (slice(None), slice(edges[i], edges[i + 1]))
        np.matmul(a[sl], b[sl], out=out[sl])

    futures = [pool.submit(part, i) for i in range(1, n)]
    part(0)
    for f in futures:
        f.result()
    return out
