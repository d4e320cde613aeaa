"""KV-cached decoding: one new token per sequence, every product shared by the threads.

At batch 1 every product of a decode step has ONE row: x (1, K) @ W (K, N). It does K*N
multiply-adds on K*N weights read once from memory, so it is bound by memory bandwidth, not by
arithmetic (GPT-2 124M reads ~500 MB of float32 weights per token; docs/kernels.md, "Decoding").
``kernels.blas.gemm`` splits products by rows of the result, and a one-row product has nothing
to split there. The entry points:

    gemv(x, w, b)           x (M, K) @ w (K, N) + b -> (M, N)       any linear layer, M <= MAX_ROWS
    gemv(x, wt.T)           x (M, K) @ wt.T     -> (M, N)           the LM head: wt = wte, (V, C)
    step(x, buf, offs, ...) x (B, C) -> logits (B, V)   every block and the LM head, one position
    block_step(x, ...)      x (B, C) -> (B, C)          one block, one position (``step``'s block)

``step`` is the model's decode step after the embedding: each block of ``minigpt/block.py``
(pre-LN, eqs. 8.1-8.2) for T = 1, then ln_f and the LM head, as ONE Numba call per thread. The
threads meet inside it, by spinning on a shared counter (``kernels/spin.py``), five times per
block:

    ln_1(x) -> [qkv partials] -> its heads: q, k, v, k and v into the cache, attention -> [a]
    -> [a W_proj partials] -> x1 = x + ... + b, ln_2(x1) -> [W_fc partials] -> gelu -> [W_mproj
    partials] -> x = x1 + ... + b                                         ([...]: then they meet)

and then each thread takes its block of the vocabulary for the LM head (one dot product per
logit with a contiguous row of wte). Handing each stage to a pool thread from Python instead
cost a thread wake-up, ~0.1 ms on this VM, 49 times per GPT-2 token.

How a product is shared (``_products``): its K rows are cut in two fixed halves, and each half
gives a partial product (B, N); the output is partial_0 + partial_1 (+ bias ...). With two
threads, one streams the first half of W and the other the second half, each a contiguous
stretch of memory: from memory at 2 threads, GPT-2's mlp.c_proj (3072, 768) read at 21.1 GB/s
this way against 12.5 GB/s when each thread took half of every row, and mlp.c_fc at 19.5 against
15.3 (the column split ``gemv`` and the first design use; ``benchmarks/decode_layout.py --k 3072
--n 768``, ``--k 768 --n 3072``, 2026-12-03 00:47 UTC, Intel Xeon). With 2p threads, p take each
half, each a block of its columns; with an odd count every thread takes both halves of its block
of columns. The elementwise steps between products
(the residual adds, the layernorms, GELU) are C or 4C numbers per row: every thread computes them
whole for itself (GELU only for the rows of W_mproj it will read) rather than meeting again.

Summation order: every output sums over k in the same order whatever thread computes it (its
half from the half's first row, one row after another, then partial_0 + partial_1), each head's
attention is computed whole by one thread, and every thread runs the same code for the steps it
computes whole, so the bits do not depend on the thread count (tests/test_decode.py). For that
the loops ALONG the columns are compiled without fastmath: with it LLVM may fuse a multiply-add
into an FMA differently in the vectorised body and in the scalar tail of a loop, and which
columns fall in the tail depends on the block (measured: last-bit differences between 1 and 2
threads). Reductions along a row (the layernorm, the LM head's dot products, attention over one
head) run the same loop for every output and keep fastmath, which lets them vectorise. They
differ from BLAS's and the layers' NumPy in the last bits, as any two BLAS calls do.

The threads are ``kernels.blas``'s pool (``kernels.blas.pool()``: the threads the training
products use); the Numba functions release the GIL. A step too small to pay for the meetings
(``MIN_SPLIT_MACS`` per block) runs on the calling thread alone: the same code with one part.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from kernels import blas, spin
from kernels._fast32 import exp32, tanh32

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
MAX_ROWS = 8                # products with more rows go to BLAS (prefill, training)
# ``gemv`` runs a product below MIN_SPLIT_MACS multiply-adds whole on the calling thread (each
# block of a split one is handed to a pool thread from Python, ~0.1 ms to wake it). 2^21: the
# 'small' bench config's LM head (4096 x 256 = 2^20) ran slower split than whole when decoding went
# through gemv (benchmarks/decode_split_threshold.py: 1,026-1,032 tokens/s with 2^20, 1,136-1,150
# with 2^21; 2026-12-02, Intel Xeon).
MIN_SPLIT_MACS = 1 << 21
# ``step`` and ``block_step`` run a block of fewer multiply-adds (12 C^2 B) whole on the calling
# thread. 2^18: the 'small' config (2^19.6 per block) decodes faster split, now that the threads
# meet by spinning (benchmarks/decode_split_threshold.py --values 18,21,22: 1,488-1,633 tokens/s
# split, 1,278-1,297 whole; 2026-12-02 21:11 UTC, Intel Xeon).
MIN_STEP_SPLIT_MACS = 1 << 18
ALIGN = 16                  # column blocks start on multiples of 16 elements (64-byte lines, f32)
_S2PI = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------------- Numba pieces
@njit(inline="always")
def _edge(size, n, i, align):
    """Edge i of n blocks over range(size), inner edges rounded to multiples of ``align``
    (``_edges`` below, inside compiled code)."""
    if i <= 0:
        return 0
    if i >= n:
        return size
    return min(size, (size * i // n + align // 2) // align * align)


@njit(nogil=True, cache=True)           # no fastmath: see "Summation order" above
def _gemv_acc(x, w, k0, k1, n0, n1, acc, c0):
    """acc[:, c0:c0+n1-n0] = x[:, k0:k1] @ w[k0:k1, n0:n1]; x (M, K), w row-major (K, N).

    Rows of w are streamed once, in order, each used by every row of x while in cache (four rows
    at a time, as the first design did, made the step no faster); each output sums over k in the
    same order (from k0, one row after another) whatever n0, n1 are."""
    M = x.shape[0]
    nb = n1 - n0
    for m in range(M):
        acc[m, c0:c0 + nb] = 0
    for k in range(k0, k1):
        wk = w[k, n0:n1]
        for m in range(M):
            xk = x[m, k]
            a = acc[m, c0:c0 + nb]
            for n in range(nb):
                a[n] += xk * wk[n]


@njit(inline="always", fastmath=FASTMATH)
def _gemv_t_acc(x, wt, n0, n1, acc):
    """acc (M, n1-n0) = x (M, K) @ wt[n0:n1].T; wt row-major (N, K): one dot per output."""
    M, K = x.shape
    dt = acc.dtype.type
    for n in range(n0, n1):
        row = wt[n]
        for m in range(M):
            s = dt(0.0)
            for k in range(K):
                s += x[m, k] * row[k]
            acc[m, n - n0] = s


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _layernorm(x, w, b, out):
    """out (M, C) = layernorm of each row of x (M, C), eps 1e-5 (eqs. 2.1-2.3)."""
    M, C = x.shape
    dt = x.dtype.type
    for m in range(M):
        mean = dt(0.0)
        for c in range(C):
            mean += x[m, c]
        mean /= C
        var = dt(0.0)
        for c in range(C):
            d = x[m, c] - mean
            var += d * d
        rstd = dt(1.0) / np.sqrt(var / C + dt(1e-5))
        for c in range(C):
            out[m, c] = (x[m, c] - mean) * rstd * w[c] + b[c]


@njit(nogil=True, cache=True)
def _gemv(x, w, b, has_b, out, n0, n1):
    """out[:, n0:n1] = x @ w[:, n0:n1] (+ b[n0:n1])."""
    acc = np.empty((x.shape[0], n1 - n0), dtype=out.dtype)
    _gemv_acc(x, w, 0, w.shape[0], n0, n1, acc, 0)
    for m in range(x.shape[0]):
        for n in range(n0, n1):
            out[m, n] = acc[m, n - n0] + b[n] if has_b else acc[m, n - n0]


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _gemv_t(x, wt, out, n0, n1):
    """out[:, n0:n1] = x @ wt[n0:n1].T."""
    acc = np.empty((x.shape[0], n1 - n0), dtype=out.dtype)
    _gemv_t_acc(x, wt, n0, n1, acc)
    out[:, n0:n1] = acc


# ----------------------------------------------------------------------------- one stage's pieces
@njit(nogil=True, cache=True)
def _products(x, w, part, nparts, acc):
    """This thread's share of a one-row product cut in two halves of its rows (k):
    acc[r] (B, N) = x[:, rows r] @ w[rows r], r = 0, 1 (cut at a multiple of 4 rows).

    With an even thread count, half the threads take the first half of the rows and half the
    second, each a block of the columns: one thread streams ONE contiguous stretch of w (two
    threads: each half of the matrix, front to back). With an odd count every thread takes both
    halves of its column block. Either way each partial sums its half in the same order."""
    K, N = w.shape
    half = K // 8 * 4
    if nparts % 2 == 0:
        pairs = nparts // 2
        r, i = part // pairs, part % pairs
        n0, n1 = _edge(N, pairs, i, ALIGN), _edge(N, pairs, i + 1, ALIGN)
        if n0 < n1:
            _gemv_acc(x, w, half * r, half if r == 0 else K, n0, n1, acc[r], n0)
    else:
        n0, n1 = _edge(N, nparts, part, ALIGN), _edge(N, nparts, part + 1, ALIGN)
        if n0 < n1:
            _gemv_acc(x, w, 0, half, n0, n1, acc[0], n0)
            _gemv_acc(x, w, half, K, n0, n1, acc[1], n0)


@njit(nogil=True, cache=True)           # no fastmath: an element's bits must not depend on n0
def _qkv(acc, b, has_b, q, kc, vc, t0, c0, c1):
    """Columns c0..c1 of each of q, k, v: the two partials + bias; k, v into the caches at t0."""
    B = q.shape[0]
    C = q.shape[1]
    hs = kc.shape[3]
    dt = q.dtype.type
    for bi in range(B):
        for c in range(c0, c1):
            for j in range(3):
                n = j * C + c
                z = (acc[0, bi, n] + acc[1, bi, n]) + (b[n] if has_b else dt(0.0))
                if j == 0:
                    q[bi, c] = z
                elif j == 1:
                    kc[bi, c // hs, t0, c % hs] = z
                else:
                    vc[bi, c // hs, t0, c % hs] = z


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _attend(q, kc, vc, t0, a, fast, h0, h1):
    """a[:, heads h0..h1] = causal attention of q over the cached positions 0..t0 (eq. 6.x)."""
    B = q.shape[0]
    hs = kc.shape[3]
    dt = q.dtype.type
    scale = dt(1.0 / np.sqrt(hs))
    s = np.empty(t0 + 1, dtype=q.dtype)
    for bi in range(B):
        for hd in range(h0, h1):
            j0 = hd * hs
            mx = -np.inf
            for j in range(t0 + 1):                         # s_j = q . k_j / sqrt(hs), j <= t0
                acc = dt(0.0)
                for d in range(hs):
                    acc += q[bi, j0 + d] * kc[bi, hd, j, d]
                s[j] = acc * scale
                mx = max(mx, s[j])
            tot = dt(0.0)
            for j in range(t0 + 1):
                e = exp32(s[j] - mx) if fast else np.exp(s[j] - mx)
                s[j] = e
                tot += e
            inv = dt(1.0) / tot
            for d in range(hs):
                a[bi, j0 + d] = 0
            for j in range(t0 + 1):                         # out = sum_j p_j v_j
                pj = s[j] * inv
                for d in range(hs):
                    a[bi, j0 + d] += pj * vc[bi, hd, j, d]


@njit(nogil=True, cache=True)           # no fastmath: an element's bits must not depend on n0
def _residual(acc, b, x, out, n0, n1):
    """Columns n0..n1: out = x + (the two partials + b)                    (eqs. 8.1, 8.2)."""
    for m in range(x.shape[0]):
        for n in range(n0, n1):
            out[m, n] = x[m, n] + ((acc[0, m, n] + acc[1, m, n]) + b[n])


@njit(nogil=True, cache=True)           # no fastmath: an element's bits must not depend on n0
def _bias_gelu(acc, b, out, fast, n0, n1):
    """Columns n0..n1: out = gelu(the two partials + b) (tanh GELU, eq. 4.1)."""
    dt = out.dtype.type
    for m in range(out.shape[0]):
        for n in range(n0, n1):
            z = (acc[0, m, n] + acc[1, m, n]) + b[n]
            u = dt(_S2PI) * (z + dt(0.044715) * z * z * z)
            t = tanh32(u) if fast else np.tanh(u)
            out[m, n] = dt(0.5) * z * (dt(1.0) + t)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _head(x, ln_w, ln_b, wt, logits, n0, n1):
    """The LM head for vocabulary entries n0..n1: logits[:, n0:n1] = ln_f(x) @ wt[n0:n1].T."""
    h = np.empty(x.shape, dtype=x.dtype)
    _layernorm(x, ln_w, ln_b, h)
    acc = np.empty((x.shape[0], n1 - n0), dtype=logits.dtype)
    _gemv_t_acc(h, wt, n0, n1, acc)
    logits[:, n0:n1] = acc


# ----------------------------------------------------------------------------- one thread's share
@njit(inline="always")
def _rows_read(F, part, nparts):
    """The rows of a (F, N) weight that ``_products`` has this thread read: (first, stop)."""
    if nparts % 2 == 0:
        half = F // 8 * 4
        return (0, half) if part < nparts // 2 else (half, F)
    return 0, F


@njit(nogil=True, cache=True)
def _block_part(x, x1, u, h, q, a, acc, ln1_w, ln1_b, w_attn, b_attn, has_qkv_b, w_proj, b_proj,
                ln2_w, ln2_b, w_fc, b_fc, w_mproj, b_mproj, kc, vc, t0, fast, passed, part,
                nparts, sync):
    """Thread ``part`` of ``nparts``: its share of one block. Each thread holds its own x, x1, u,
    h, q and computes the elementwise steps whole for itself (C or 4C numbers, the same bits in
    every thread); what is shared is the attention output a (B, C) and the partial products
    acc (2, 2, B, max(3C, 4C)), two sets used in turn (a set is rewritten only after every thread
    has read it). The threads meet after each product and after the attention: 5 meetings
    (``kernels.spin.barrier``). x (B, C): the block's input, receives its output. ``passed``: the
    barriers passed before; returns the count after, or -1 (see ``spin.barrier``)."""
    C = x.shape[1]
    F = u.shape[1]
    H = kc.shape[1]
    hs = kc.shape[3]
    h0, h1 = _edge(H, nparts, part, 1), _edge(H, nparts, part + 1, 1)      # this thread's heads
    _layernorm(x, ln1_w, ln1_b, h)
    _products(h, w_attn, part, nparts, acc[0])            # qkv = ln_1(x) W_attn, two partials
    passed = spin.barrier(sync, nparts, passed)
    if passed < 0:
        return -1
    _qkv(acc[0], b_attn, has_qkv_b, q, kc, vc, t0, h0 * hs, h1 * hs)    # its heads' q, k, v (+ b)
    _attend(q, kc, vc, t0, a, fast, h0, h1)               # a[:, its heads] = attention
    passed = spin.barrier(sync, nparts, passed)
    if passed < 0:
        return -1
    _products(a, w_proj, part, nparts, acc[1])            # a W_proj
    passed = spin.barrier(sync, nparts, passed)
    if passed < 0:
        return -1
    _residual(acc[1], b_proj, x, x1, 0, C)                # x1 = x + a W_proj + b      (eq. 8.1)
    _layernorm(x1, ln2_w, ln2_b, h)
    _products(h, w_fc, part, nparts, acc[0])              # ln_2(x1) W_fc
    passed = spin.barrier(sync, nparts, passed)
    if passed < 0:
        return -1
    u0, u1 = _rows_read(F, part, nparts)
    _bias_gelu(acc[0], b_fc, u, fast, u0, u1)             # the u = gelu(... + b) it will read
    _products(u, w_mproj, part, nparts, acc[1])           # u W_mproj
    passed = spin.barrier(sync, nparts, passed)
    if passed < 0:
        return -1
    _residual(acc[1], b_mproj, x1, x, 0, C)               # x = x1 + u W_mproj + b     (eq. 8.2)
    return passed


@njit(nogil=True, cache=True)
def _step_part(x_in, a, acc, logits, buf, offs, has_qkv_b, kc, vc, t0, lnf_w, lnf_b, w_head,
               hidden, fast, part, nparts, sync):
    """Thread ``part`` of ``nparts``: its share of a whole decode step, every block then the LM
    head (its block of the vocabulary). The blocks' weights are read from ``buf`` at the offsets
    ``offs`` (L, 12) (columns in ``WEIGHTS`` order); kc, vc (L, B, H, T_max, hs)."""
    B, C = x_in.shape
    F = hidden
    x = x_in.copy()                                       # this thread's own activations
    x1, h, q = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    u = np.empty((B, F), dtype=x.dtype)
    passed = 0
    for layer in range(offs.shape[0]):
        o = offs[layer]
        b_attn = buf[o[3]:o[3] + 3 * C] if has_qkv_b else buf[o[1]:o[1] + C]   # unused if none
        passed = _block_part(
            x, x1, u, h, q, a, acc, buf[o[0]:o[0] + C], buf[o[1]:o[1] + C],
            buf[o[2]:o[2] + C * 3 * C].reshape((C, 3 * C)), b_attn, has_qkv_b,
            buf[o[4]:o[4] + C * C].reshape((C, C)), buf[o[5]:o[5] + C],
            buf[o[6]:o[6] + C], buf[o[7]:o[7] + C],
            buf[o[8]:o[8] + C * F].reshape((C, F)), buf[o[9]:o[9] + F],
            buf[o[10]:o[10] + F * C].reshape((F, C)), buf[o[11]:o[11] + C],
            kc[layer], vc[layer], t0, fast, passed, part, nparts, sync)
        if passed < 0:
            return -1
    V = w_head.shape[0]
    v0, v1 = _edge(V, nparts, part, ALIGN), _edge(V, nparts, part + 1, ALIGN)
    if v0 < v1:
        _head(x, lnf_w, lnf_b, w_head, logits, v0, v1)
    return passed


@njit(nogil=True, cache=True)
def _block_alone(x_in, out, a, acc, ln1_w, ln1_b, w_attn, b_attn, has_qkv_b, w_proj, b_proj, ln2_w,
                 ln2_b, w_fc, b_fc, w_mproj, b_mproj, kc, vc, t0, fast, part, nparts, sync):
    """Thread ``part``'s share of ONE block (``block_step``); part 0 writes the output."""
    x = x_in.copy()
    x1, h, q = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    u = np.empty((x.shape[0], w_fc.shape[1]), dtype=x.dtype)
    passed = _block_part(x, x1, u, h, q, a, acc, ln1_w, ln1_b, w_attn, b_attn, has_qkv_b, w_proj,
                         b_proj, ln2_w, ln2_b, w_fc, b_fc, w_mproj, b_mproj, kc, vc, t0, fast, 0,
                         part, nparts, sync)
    if part == 0:
        out[:, :] = x
    return passed


# ----------------------------------------------------------------------------- splitting
@functools.lru_cache(maxsize=256)
def _edges(size: int, n: int, align: int) -> tuple[int, ...]:
    """n + 1 block edges over range(size), inner edges rounded to multiples of ``align``."""
    inner = [min(size, (size * i // n + align // 2) // align * align) for i in range(1, n)]
    return (0, *inner, size)


def _run(fn, args: tuple, edges: tuple[int, ...], pool) -> None:
    """fn(*args, lo, hi) for each block [lo, hi) of ``edges``: the first on the calling thread, the
    others on the pool; returns when all are done."""
    futures = [pool.submit(fn, *args, lo, hi) for lo, hi in zip(edges[1:-1], edges[2:], strict=True)
               if lo < hi]
    if edges[0] < edges[1]:
        fn(*args, edges[0], edges[1])
    for f in futures:
        f.result()


def _run_parts(fn, args: tuple, n: int, pool) -> None:
    """fn(*args, part, n, sync) for part = 0..n-1 all at once: part 0 on the calling thread, the
    others on the pool. The parts meet inside fn (``kernels.spin.barrier`` on ``sync``), so they
    must all run together: the pool must have n - 1 threads free (decoding is never entered from
    two Python threads at once; see ``kernels/__init__.py``)."""
    sync = np.zeros(24, dtype=np.int64)[8:]          # the counter away from its neighbours' lines
    futures = [pool.submit(fn, *args, part, n, sync) for part in range(1, n)]
    results = [fn(*args, 0, n, sync)] + [f.result() for f in futures]
    if min(results) < 0:
        raise RuntimeError(f"decode: the {n} threads of one step did not all arrive within "
                           f"kernels.spin.SPIN_LIMIT polls (was a pool thread busy elsewhere?)")


def _threads_for(macs: int, least: int) -> tuple[object, int]:
    """(pool, blocks) for ``macs`` multiply-adds: one block below ``least``."""
    pool, n = blas.pool()
    if pool is None or n <= 1 or macs < least:
        return None, 1
    return pool, n


def _check_rows(x: np.ndarray, what: str) -> None:
    if x.ndim != 2 or not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"{what}: x must be (M, K) with 1 <= M <= {MAX_ROWS} rows (decoding), got "
                         f"shape {x.shape}; larger products go through kernels.blas.gemm")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{what}: x must be float32 or float64, got {x.dtype}")


# ----------------------------------------------------------------------------- the entry points
def applies(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> bool:
    """True when ``gemv(x, w, b)`` serves this product: at most MAX_ROWS rows, one float dtype,
    w row-major or the transpose of a row-major array (no copy needed)."""
    return (x.ndim == 2 and x.shape[0] <= MAX_ROWS and x.dtype in (np.float32, np.float64)
            and w.dtype == x.dtype and (b is None or b.dtype == x.dtype)
            and (w.flags.c_contiguous or w.T.flags.c_contiguous))


def gemv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x (M, K) @ w (K, N) (+ b (N,)) -> (M, N), M <= MAX_ROWS, split by output columns.

    ``w`` row-major (a projection) streams rows of w; ``w`` the transpose of a row-major (N, K)
    array (the LM head, ``wte.T``) takes one dot product per output with a contiguous row."""
    _check_rows(x, "gemv")
    M, K = x.shape
    if w.ndim != 2 or w.shape[0] != K:
        raise ValueError(f"gemv: x {x.shape} and w {w.shape} do not chain (need w (K, N))")
    N = w.shape[1]
    if w.dtype != x.dtype or (b is not None and (b.dtype != x.dtype or b.shape != (N,))):
        raise ValueError(f"gemv: x, w and b must share a dtype and b be (N,); got {x.dtype}, "
                         f"{w.dtype}, {None if b is None else (b.dtype, b.shape)}")
    x = np.ascontiguousarray(x)
    out = np.empty((M, N), dtype=x.dtype)
    pool, n = _threads_for(M * K * N, MIN_SPLIT_MACS)
    edges = _edges(N, n, ALIGN)
    if w.flags.c_contiguous:                                   # a projection: stream rows of w
        has_b = b is not None
        _run(_gemv, (x, w, b if has_b else out[0], has_b, out), edges, pool)
    else:                                                      # the LM head: dots with rows of wt
        wt = np.ascontiguousarray(w.T)                         # a view when w = wte.T (no copy)
        _run(_gemv_t, (x, wt, out), edges, pool)
        if b is not None:
            out += b
    return out


def block_step(x, ln1_w, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_w, ln2_b, w_fc, b_fc,
               w_mproj, b_mproj, k_cache, v_cache, t0: int) -> np.ndarray:
    """One pre-LN transformer block for ONE new position per row: x (B, C) -> (B, C).

    The weights as in ``minigpt/block.py`` (``x @ W`` layout; ``b_attn`` may be None: no qkv
    bias); k_cache, v_cache (B, H, T_max, hs) receive the new keys and values at ``t0`` and the
    attention covers positions 0..t0. No dropout (inference)."""
    _check_rows(x, "block_step")
    B, C = x.shape
    H, T_max, hs = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    if k_cache.shape != (B, H, T_max, hs) or v_cache.shape != k_cache.shape or H * hs != C:
        raise ValueError(f"block_step: caches {k_cache.shape}/{v_cache.shape} do not fit x {x.shape}")
    if not 0 <= t0 < T_max:
        raise ValueError(f"block_step: position t0={t0} is outside the cache (max_len {T_max})")
    has_qkv_b = b_attn is not None
    F = w_fc.shape[1]
    pool, n = _threads_for(B * C * (3 * C + C + 2 * F), MIN_STEP_SPLIT_MACS)
    out = np.empty_like(x)
    _run_parts(_block_alone, (x, out, *_scratch(x, F), ln1_w, ln1_b, w_attn,
                              b_attn if has_qkv_b else ln1_b, has_qkv_b, w_proj, b_proj, ln2_w,
                              ln2_b, w_fc, b_fc, w_mproj, b_mproj, k_cache, v_cache, t0,
                              x.dtype == np.float32), n, pool)
    return out


def _scratch(x: np.ndarray, F: int):
    """What the threads share: the attention output a (B, C) and two sets of the two partial
    products, acc (2, 2, B, max(3C, F))."""
    B, C = x.shape
    return np.empty_like(x), np.empty((2, 2, B, max(3 * C, F)), dtype=x.dtype)


# ----------------------------------------------------------------------------- a whole step
WEIGHTS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
           "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
           "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def root(a: np.ndarray) -> np.ndarray:
    """The array whose memory ``a`` views (following ``.base``), or ``a`` itself."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def weight_offsets(buf: np.ndarray, layers) -> np.ndarray | None:
    """(L, 12) element offsets into the 1-D contiguous ``buf`` of each layer's weights (``layers``:
    L sequences in ``WEIGHTS`` order; the qkv bias may be None: offset -1), or None when a weight is
    not a C-contiguous view of ``buf`` with its dtype (then ``step`` cannot read it from there)."""
    if buf.ndim != 1 or not buf.flags.c_contiguous:
        return None
    start, size = buf.__array_interface__["data"][0], buf.itemsize
    offs = np.full((len(layers), len(WEIGHTS)), -1, dtype=np.int64)
    for i, ws in enumerate(layers):
        for j, w in enumerate(ws):
            if w is None and j == 3:
                continue
            if (w is None or w.dtype != buf.dtype or not w.flags.c_contiguous
                    or root(w) is not root(buf)):
                return None
            off, rem = divmod(w.__array_interface__["data"][0] - start, size)
            if rem or off < 0 or off + w.size > buf.size:
                return None
            offs[i, j] = off
    has_b = offs[:, 3] >= 0
    return offs if has_b.all() or not has_b.any() else None    # a qkv bias in every layer or none


def step(x, buf, offs, hidden: int, k_all, v_all, t0: int, lnf_w, lnf_b, w_head) -> np.ndarray:
    """A whole KV-cached decode step for ONE new position per row: the embedded tokens x (B, C)
    through every block and the final layernorm to the LM head's logits (B, V).

    The blocks' weights are read from ``buf`` (1-D, the model's flat parameters) at ``offs``
    (``weight_offsets``), their MLP ``hidden`` wide (4C in GPT-2); k_all, v_all (L, B, H, T_max, hs)
    receive the new keys and values at ``t0``; w_head (V, C) (``wte`` when tied). One Numba call
    per thread for the whole step, the threads meeting after each stage (4 per block) by spinning
    (``kernels/spin.py``): one hand-off per token instead of one per stage."""
    _check_rows(x, "step")
    B, C = x.shape
    L, H, T_max = k_all.shape[0], k_all.shape[2], k_all.shape[3]
    if (k_all.ndim != 5 or k_all.shape[1] != B or H * k_all.shape[4] != C
            or v_all.shape != k_all.shape or offs.shape != (L, len(WEIGHTS))):
        raise ValueError(f"step: caches {k_all.shape}/{v_all.shape} and offsets {offs.shape} do not "
                         f"fit x {x.shape} (need (L, B, H, T_max, C // H) and (L, 12))")
    if not 0 <= t0 < T_max:
        raise ValueError(f"step: position t0={t0} is outside the cache (max_len {T_max})")
    if w_head.ndim != 2 or w_head.shape[1] != C or not w_head.flags.c_contiguous:
        raise ValueError(f"step: w_head must be a row-major (V, {C}) array, got {w_head.shape}")
    if len({x.dtype, buf.dtype, k_all.dtype, v_all.dtype, w_head.dtype, lnf_w.dtype}) != 1:
        raise ValueError("step: x, the weights and the caches must share one dtype")
    pool, n = _threads_for(B * C * (3 * C + C + 2 * hidden), MIN_STEP_SPLIT_MACS)
    logits = np.empty((B, w_head.shape[0]), dtype=x.dtype)
    _run_parts(_step_part, (x, *_scratch(x, hidden), logits, buf, offs,
                            bool((offs[:, 3] >= 0).all()), k_all, v_all, t0, lnf_w, lnf_b, w_head,
                            hidden, x.dtype == np.float32), n, pool)
    return logits
