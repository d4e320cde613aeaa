"""A kernel given bad shapes says which shapes it got: layernorm forward (with a bias) and backward
(without), the embedding backward when dout and idx disagree.

Found by benchmarks/mutation_score.py: the layernorm check's message had a branch for the
backward's missing bias that no test reached, and an embedding check that raised only when both
of its conditions failed went unnoticed (mutants that broke them survived)."""

import re

import numpy as np
import pytest

from kernels.embedding import embedding_backward
from kernels.layernorm import layernorm_backward, layernorm_forward


def test_layernorm_backward_names_the_shapes():
    xhat, dout = np.zeros((2, 3)), np.zeros((2, 3))
    wrong_w = np.ones(4)
    msg = re.escape("got x (2, 3), w (4,), b None")
    with pytest.raises(ValueError, match=msg):
        layernorm_backward(dout, (xhat, wrong_w, np.ones((2, 1))), np.zeros(4), np.zeros(4))


def test_layernorm_forward_names_the_bias_shape():
    with pytest.raises(ValueError, match=re.escape("got x (2, 3), w (3,), b (4,)")):
        layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(4))


@pytest.mark.parametrize("dout_shape, idx_shape", [((2, 3, 4), (2, 2)),   # idx one short
                                                   ((2, 3), (2, 3))])     # dout not (B, T, C)
def test_embedding_backward_rejects_dout_and_idx_that_disagree(dout_shape, idx_shape):
    """Each condition alone must raise: a too-short idx would send the kernel past its end."""
    dwte, dwpe = np.zeros((5, 4)), np.zeros((8, 4))
    with pytest.raises(ValueError, match=re.escape(f"got {dout_shape} and {idx_shape}")):
        embedding_backward(np.zeros(dout_shape), (np.zeros(idx_shape, dtype=np.int64), 0),
                           dwte, dwpe)
