"""The backward's contract is "add into dw and db", not "write": a gradient already there (a tied
weight's other use, a previous micro-batch) must survive, in both dW layouts and on both paths.

Found by benchmarks/mutation_score.py: with every checked dW starting at zero, ``dw[...] = ...``
in place of ``dw[...] += ...`` (the C-contiguous branch) went unnoticed."""

import numpy as np
import pytest

from minigpt import backend
from minigpt.layers.linear import linear_backward, linear_forward

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tests/conftest.py


@pytest.mark.parametrize("path", ["numba", "numpy"])
@pytest.mark.parametrize("layout", ["C", "transposed view"])
def test_linear_backward_adds_to_what_dw_and_db_hold(path, layout):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5))
    w = rng.normal(size=(5, 4))
    b = rng.normal(size=4)
    dout = rng.normal(size=(2, 3, 4))
    held_w, held_b = rng.normal(size=(5, 4)), rng.normal(size=4)
    dw = held_w.copy() if layout == "C" else np.ascontiguousarray(held_w.T).T   # (5, 4) either way
    db = held_b.copy()
    with backend.use(path):
        _, cache = linear_forward(x, w, b)
        dx = linear_backward(dout, cache, dw, db)
    x2, d2 = x.reshape(-1, 5), dout.reshape(-1, 4)
    np.testing.assert_allclose(dw, held_w + x2.T @ d2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, held_b + d2.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, (d2 @ w.T).reshape(2, 3, 5), rtol=1e-12, atol=1e-12)
