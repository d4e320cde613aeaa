"""More than one thread: the split products against NumPy, and which results depend on the count.

What is proven here (and stated in README.md, docs/kernels.md, docs/training.md):

- ``kernels.blas.gemm`` and ``bmm`` at 1, 2 and 3 threads, on odd shapes that reach every split
  (rows, columns, the size threshold, the 16-row minimum block, batch split along B and along H),
  with transposed inputs and strided ``out=`` views, float32 and float64, are within the rounding
  bound of a float64 NumPy product: |got - ref| <= K * u * (|a| @ |b|), u the unit roundoff.
- At one thread count, the same call gives the same bits every time, wherever the inputs lie in
  memory. Across thread counts ``bmm`` and the Numba kernels the model trains with are bit-identical
  except GELU's backward (the vectorised loop and the scalar tail of each thread's chunk may round
  differently); a split ``gemm`` and a whole training step are only within rounding (OpenBLAS may
  round a block of rows differently from the whole product; tests/test_train.py shows a run resumed
  at another thread count ending with other bits).
- A training run at 2 (and 3) threads gives the same bits twice (in one process here; across
  processes, with kill -9 and resume, in tests/test_train.py).

The Numba part needs up to 3 Numba threads, which ``NUMBA_NUM_THREADS`` (default: the number of
cores) may forbid, so it runs in a child process started with ``NUMBA_NUM_THREADS=3``: this file
run as a script prints what it measured as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future

import numpy as np
import pytest

import kernels.blas as kb

U = {np.float32: 2.0 ** -24, np.float64: 2.0 ** -53}  # unit roundoff per dtype


@pytest.fixture
def blas_threads():
    """Set ``kernels.blas``'s split count inside a test; restores the module's state afterwards."""
    saved = {k: kb._state[k] for k in ("threads", "configured", "pinned")}
    lib = kb._openblas()
    blas_before = lib["get"]() if lib is not None else None
    yield kb.set_threads
    kb.set_threads(saved["threads"])
    kb._state["configured"], kb._state["pinned"] = saved["configured"], saved["pinned"]
    if lib is not None:
        lib["set"](blas_before)


class SpyPool:
    """Wraps the product pool: counts the blocks handed to it, or drops them (negative control)."""

    def __init__(self, pool, drop=False):
        self.pool, self.drop, self.submitted = pool, drop, 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        if self.drop:  # pretend the block ran: its rows of ``out`` are never written
            done = Future()
            done.set_result(None)
            return done
        return self.pool.submit(fn, *args, **kwargs)


def spy(drop=False) -> SpyPool:
    kb._state["pool"] = SpyPool(kb._state["pool"], drop=drop)
    return kb._state["pool"]


def unspy() -> None:
    kb._state["pool"] = kb._state["pool"].pool


def assert_within_rounding(got, a, b):
    """|got - a@b| <= K u (|a| @ |b|) element by element, a@b and |a|@|b| in float64: the standard
    bound for a sum of K products in the dtype's precision, whatever order BLAS adds in."""
    dtype = got.dtype.type
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    bound = a.shape[-1] * U[dtype] * (np.abs(a64) @ np.abs(b64)) * 1.01
    excess = np.abs(got.astype(np.float64) - ref) - bound
    assert not np.isnan(excess).any(), "NaN in the product (a block was never written?)"
    assert excess.max() <= 0, f"error above the rounding bound by {excess.max():.3g}"


def expected_blocks(M, K, N, n):
    """The split ``gemm`` promises: rows if M >= N else columns, at most one block per 16 of them,
    and none below MIN_SPLIT_MACS multiply-adds."""
    if n == 1 or M * K * N < kb.MIN_SPLIT_MACS:
        return 1
    return max(1, min(n, max(M, N) // 16))


def operands(M, K, N, dtype, layout, rng):
    """a (M, K) and b (K, N), as C arrays or as transposed views (``x.T @ dout`` in a backward)."""
    a = rng.standard_normal((K, M)).T if "aT" in layout else rng.standard_normal((M, K))
    b = rng.standard_normal((N, K)).T if "bT" in layout else rng.standard_normal((K, N))
    return a.astype(dtype), b.astype(dtype)


def out_view(M, N, dtype, kind):
    """Where ``out=`` points: nowhere, a C array, or a strided view into a larger buffer."""
    if kind == "none":
        return None
    if kind == "c":
        return np.full((M, N), np.nan, dtype)
    if kind == "cols":                          # a column window: rows N + 7 apart
        return np.full((M, N + 7), np.nan, dtype)[:, 3:3 + N]
    if kind == "rows":                          # every other row
        return np.full((2 * M, N), np.nan, dtype)[::2]
    if kind == "fortran":                       # column-major
        return np.full((N, M), np.nan, dtype).T
    if kind == "step2":                         # every other column: no BLAS layout at all
        return np.full((M, 2 * N), np.nan, dtype)[:, ::2]
    raise ValueError(kind)


# (M, K, N): why this shape
GEMM_SHAPES = [
    (301, 257, 129),   # rows (M >= N), 301 not divisible by 2 or 3
    (37, 600, 301),    # columns (N > M)
    (128, 128, 128),   # exactly MIN_SPLIT_MACS: split, rows on a tie
    (127, 128, 128),   # one row less: below the threshold, one call
    (40, 4096, 17),    # large but only 40 rows: two blocks at most (16 rows each at least)
    (20, 8192, 19),    # large but 20 rows: one block
    (17, 1031, 400),   # columns, K odd and > 1024 (several of BLAS's K blocks)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_splits_within_rounding_of_numpy(blas_threads, threads, M, K, N, dtype):
    rng = np.random.default_rng(M * 7 + N)
    blas_threads(threads)
    cases = [(layout, "none") for layout in ("aT", "bT", "aT bT")] + [
        ("", kind) for kind in ("none", "c", "cols", "rows", "fortran", "step2")]
    for layout, kind in cases:
        a, b = operands(M, K, N, dtype, layout, rng)
        out = out_view(M, N, dtype, kind)
        pool = spy() if threads > 1 else None
        try:
            got = kb.gemm(a, b, out=out)
        finally:
            if pool is not None:
                unspy()
        blocks = 1 + (pool.submitted if pool else 0)
        assert blocks == expected_blocks(M, K, N, threads), (layout, kind)
        assert got.dtype == dtype and got.shape == (M, N)
        if out is not None:
            assert got is out
        assert_within_rounding(got, a, b)
        if blocks == 1:  # not split: exactly NumPy's own product into the same layout
            np.testing.assert_array_equal(got, np.matmul(a, b, out=out_view(M, N, dtype, kind)))


def test_a_block_left_unwritten_is_caught(blas_threads):
    """Negative control: a pool that drops a block (its rows stay NaN) fails the value check."""
    rng = np.random.default_rng(0)
    a, b = operands(301, 257, 129, np.float32, "", rng)
    blas_threads(3)
    pool = spy(drop=True)
    try:
        got = kb.gemm(a, b, out=np.full((301, 129), np.nan, np.float32))
    finally:
        unspy()
    assert pool.submitted == 2
    with pytest.raises(AssertionError, match="NaN"):
        assert_within_rounding(got, a, b)
    got[np.isnan(got)] = 0.0  # and wrong values, not only missing ones
    with pytest.raises(AssertionError, match="rounding bound"):
        assert_within_rounding(got, a, b)


def offset_copy(x, offset_bytes):
    """x copied to an address ``offset_bytes`` past a fresh buffer's start."""
    buf = np.empty(x.nbytes + 64, np.uint8)
    y = buf[offset_bytes:offset_bytes + x.nbytes].view(x.dtype).reshape(x.shape)
    y[...] = x
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [2, 3])
def test_gemm_same_bits_every_call_at_one_thread_count(blas_threads, threads, dtype):
    rng = np.random.default_rng(1)
    blas_threads(threads)
    for M, K, N in [(301, 257, 129), (37, 600, 301), (777, 768, 555)]:
        a, b = operands(M, K, N, dtype, "", rng)
        first = kb.gemm(a, b)
        for offset in (4, 8, 16, 24, 32):
            if offset % a.itemsize == 0:
                np.testing.assert_array_equal(kb.gemm(offset_copy(a, offset), offset_copy(b, offset)),
                                              first)
        np.testing.assert_array_equal(kb.gemm(a, b), first)


def heads(buf, B, T, H, hs, which, n):
    """(B, T, n*C) buffer -> (B, H, T, hs) strided view of part ``which``, like the fused qkv."""
    return buf.reshape(B, T, n, H, hs)[:, :, which].transpose(0, 2, 1, 3)


# (B, H, T, hs): threads 2 and 3 split along B when B >= threads, else along H
BMM_SHAPES = [(5, 3, 37, 24), (1, 7, 33, 16), (2, 1, 35, 8), (4, 2, 19, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H,T,hs", BMM_SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bmm_splits_within_rounding_and_same_bits_as_numpy(blas_threads, threads, B, H, T, hs,
                                                           dtype):
    rng = np.random.default_rng(B * 10 + H)
    C = H * hs
    qkv = rng.standard_normal((B, T, 3 * C)).astype(dtype)
    q, k, v = (heads(qkv, B, T, H, hs, i, 3) for i in range(3))
    blas_threads(threads)
    n = min(threads, B if B >= threads else H)
    for a, b, out in [
        (q, k.swapaxes(-1, -2), None),                                   # scores q k^T
        (q @ k.swapaxes(-1, -2), v, heads(np.full((B, T, C), np.nan, dtype), B, T, H, hs, 0, 1)),
        (q, np.ascontiguousarray(k.swapaxes(-1, -2)),                   # into a fused dqkv view
         heads(np.full((B, T, 3 * T * H), np.nan, dtype), B, T, H, T, 1, 3)),
    ]:
        pool = spy() if threads > 1 else None
        try:
            got = kb.bmm(a, b, out=out)
        finally:
            if pool is not None:
                unspy()
        assert 1 + (pool.submitted if pool else 0) == n
        if out is not None:
            assert got is out
        assert got.dtype == dtype
        assert_within_rounding(got, a, b)
        # each (b, h) product is its own BLAS call whatever the split: the bits of an unsplit matmul
        np.testing.assert_array_equal(got, np.matmul(a, b))


# --- the Numba kernels and whole training steps at 1, 2, 3 threads, in a child process ----------
IDENTICAL_ACROSS_COUNTS = [  # claimed bit-identical at 1, 2 and 3 threads
    "attention_forward", "attention_backward", "attention_forward_blas", "attention_backward_blas",
    "layernorm_forward", "layernorm_backward", "gelu_forward", "causal_softmax_forward",
    "cross_entropy", "embedding_backward", "adamw_step", "matmul",
]
CLOSE_ACROSS_COUNTS = ["gelu_backward", "sumsq", "model_step"]  # only within rounding


def kernel_outputs(dtype) -> dict:
    """Every parallel kernel on odd shapes above its serial threshold; name -> tuple of arrays."""
    r = np.random.default_rng(1)
    B, H, T, hs = 5, 3, 61, 24  # B*H*T*T*hs above kernels.attention.SERIAL_BELOW: the parallel kernel
    C = H * hs
    qkv = r.normal(size=(B, T, 3 * C)).astype(dtype)
    q, k, v = (heads(qkv, B, T, H, hs, i, 3) for i in range(3))
    mask = ((r.random((B, H, T, T)) >= 0.25) / 0.75).astype(dtype)
    dout = r.normal(size=(B, H, T, hs)).astype(dtype)
    x = r.normal(size=(1003, 67)).astype(dtype)
    w, b = r.normal(size=67).astype(dtype), r.normal(size=67).astype(dtype)
    g = r.normal(size=(7, 37, 301)).astype(dtype) * 3
    z = r.normal(size=(301, 1031)).astype(dtype) * 4
    t = r.integers(0, 1031, 301)
    t[::7] = -100
    s = r.normal(size=(3, 5, 41, 41)).astype(dtype) * 3
    p = r.normal(size=100_003).astype(dtype)
    import kernels.attention as KA
    import kernels.attention_blas as KB
    from kernels.adamw import adamw_step, sumsq
    from kernels.cross_entropy import cross_entropy
    from kernels.embedding import embedding_backward
    from kernels.gelu import gelu_backward, gelu_forward
    from kernels.layernorm import layernorm_backward, layernorm_forward
    from kernels.matmul import matmul
    from kernels.softmax import causal_softmax

    out = {}
    o, att = KA.heads_forward(q, k, v, drop_mask=mask)
    out["attention_forward"] = (o, att)
    out["attention_backward"] = KA.heads_backward(dout, q, k, v, att, drop_mask=mask)
    o, att = KB.heads_forward(q, k, v, drop_mask=mask)
    out["attention_forward_blas"] = (o, att)
    out["attention_backward_blas"] = KB.heads_backward(dout, q, k, v, att, drop_mask=mask)
    y, (xhat, _, rstd) = layernorm_forward(x, w, b)
    out["layernorm_forward"] = (y, xhat, rstd)
    dw, db = np.zeros(67, dtype), np.zeros(67, dtype)
    out["layernorm_backward"] = (layernorm_backward(x, (xhat, w, rstd), dw, db), dw, db)
    y, cache = gelu_forward(g)
    out["gelu_forward"] = (y, cache[1])
    out["gelu_backward"] = (gelu_backward(g[::-1].copy(), cache),)
    out["causal_softmax_forward"] = (causal_softmax(s),)
    loss, d = cross_entropy(z, t)
    out["cross_entropy"] = (np.array(loss), d)
    dwte, dwpe = np.zeros((50, 300), dtype), np.zeros((40, 300), dtype)
    embedding_backward(r.normal(size=(9, 37, 300)).astype(dtype),
                       (r.integers(0, 50, (9, 37)), 0), dwte, dwpe)
    out["embedding_backward"] = (dwte, dwpe)
    m, v2, p2 = np.zeros_like(p), np.zeros_like(p), p.copy()
    adamw_step(p2, p[::-1].copy(), m, v2, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    out["adamw_step"] = (p2, m, v2)
    out["sumsq"] = (np.array(sumsq(p)),)
    out["matmul"] = (matmul(z[:100, :300], np.ascontiguousarray(z[1:301, :200])),)
    return out


# A model whose training step reaches every parallel path: B*T*C = 32768 rows x width for layernorm
# and GELU's parallel kernels, T = 32 for the BLAS attention (bmm), products >= MIN_SPLIT_MACS.
MODEL = dict(vocab_size=301, context_length=32, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.1)
BATCH = 16


def model_step(dtype) -> tuple:
    from minigpt.config import GPTConfig
    from minigpt.model import GPTModel

    model = GPTModel(GPTConfig(**MODEL), seed=0, dtype=dtype)
    r = np.random.default_rng(3)
    x, y = (r.integers(0, MODEL["vocab_size"], (BATCH, MODEL["context_length"])) for _ in "xy")
    loss, grads = model.loss_and_grads(x, y, rng=np.random.default_rng(5))
    return (np.array(loss), *(grads[name] for name in sorted(grads)))


def training_run(steps=8) -> np.ndarray:
    """A short float32 run through ``minigpt.training.loop.train`` (dropout, clipping, AdamW)."""
    from minigpt.config import GPTConfig
    from minigpt.training.data import DataLoader
    from minigpt.model import GPTModel
    from minigpt.training.optim import AdamW
    from minigpt.training.loop import TrainSettings, train

    V, T = MODEL["vocab_size"], MODEL["context_length"]
    ids = np.cumsum(np.random.default_rng(0).choice([1, 1, 2], size=BATCH * T * 4 + 1)) % V
    x, y = ids[:-1].reshape(-1, T), ids[1:].reshape(-1, T)
    model = GPTModel(GPTConfig(**MODEL), seed=1)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    train(model, opt, DataLoader(x, y, batch_size=BATCH, shuffle=True, seed=7), None,
          settings=TrainSettings(epochs=steps, max_steps=steps, clip=1.0, eval_freq=100, seed=11,
                                 progress=False, plot=False),
          print_fn=lambda s: None)
    return model.flat_params.copy()


def _child() -> None:
    """Run in a process with NUMBA_NUM_THREADS=3; prints one JSON object."""
    import numba

    from minigpt import backend

    res, runs = {}, {}
    for n in (1, 2, 3):
        assert backend.set_threads(n) == n and numba.get_num_threads() == n and kb.get_threads() == n
        for dtype in (np.float32, np.float64):
            outs = kernel_outputs(dtype)
            outs["model_step"] = model_step(dtype)
            res[n, dtype.__name__] = outs
        if n > 1:
            runs[n] = (training_run(), training_run())
    report = {"kernels": {}, "runs": {}}
    for (n, dname), outs in res.items():
        for name, arrays in outs.items():
            one = res[1, dname][name]
            report["kernels"][f"{name} {dname} {n}"] = {
                "same_as_1": all(np.array_equal(a, b) for a, b in zip(arrays, one, strict=True)),
                "rel": max(float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
                           for a, b in zip(arrays, one, strict=True))}
    for n, (first, second) in runs.items():
        report["runs"][str(n)] = {"twice_identical": bool(np.array_equal(first, second)),
                                  "max_abs_vs_2": float(np.max(np.abs(first - runs[2][0])))}
    print(json.dumps(report))


@pytest.fixture(scope="module")
def child_report():
    # every comparison is within the child, which runs one copy of each kernel: no cache warm-up
    env = {**os.environ, "NUMBA_NUM_THREADS": "3", "OMP_NUM_THREADS": "1", "MINIGPT_WARM_CACHE": "0"}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


REL = {"float32": 1e-5, "float64": 1e-13}  # max |x_n - x_1| / max |x_1| per output array


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
def test_numba_kernels_across_thread_counts(child_report, threads, dtype):
    got = child_report["kernels"]
    assert {key.split()[0] for key in got} == set(IDENTICAL_ACROSS_COUNTS) | set(CLOSE_ACROSS_COUNTS)
    for name in IDENTICAL_ACROSS_COUNTS:
        assert got[f"{name} {dtype} {threads}"]["same_as_1"], f"{name} differs from 1 thread"
    for name in CLOSE_ACROSS_COUNTS:  # the model step sums over more terms: 100x the margin
        rel = REL[dtype] * (100 if name == "model_step" else 1)
        assert got[f"{name} {dtype} {threads}"]["rel"] < rel, name


def test_the_comparison_sees_a_difference(child_report):
    """Negative control for the checks above: a parallel sum (``sumsq``, not used in training) adds
    in per-thread partials, so at 2 or 3 threads it is not bit-identical to 1 thread."""
    got = child_report["kernels"]
    assert not all(got[f"sumsq {d} {n}"]["same_as_1"] for d in ("float32", "float64") for n in (2, 3))


@pytest.mark.parametrize("threads", ["2", "3"])
def test_training_same_bits_twice_at_one_thread_count(child_report, threads):
    run = child_report["runs"][threads]
    assert run["twice_identical"]
    assert run["max_abs_vs_2"] < 1e-3  # against the run at 2 threads: equal up to rounding


if __name__ == "__main__":
    _child()
