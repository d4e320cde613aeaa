"""A kernel given bad shapes says which shapes it got: forward (with a bias) and backward (without).

Found by benchmarks/mutation_score.py: the layernorm check's message had a branch for the
backward's missing bias that no test reached (a mutant that broke it survived)."""

import re

import numpy as np
import pytest

import kernels as K


def test_layernorm_backward_names_the_shapes():
    xhat, dout = np.zeros((2, 3)), np.zeros((2, 3))
    wrong_w = np.ones(4)
    msg = re.escape("got x (2, 3), w (4,), b None")
    with pytest.raises(ValueError, match=msg):
        K.layernorm_backward_numba(dout, xhat, wrong_w, np.ones((2, 1)), np.zeros(4), np.zeros(4))


def test_layernorm_forward_names_the_bias_shape():
    with pytest.raises(ValueError, match=re.escape("got x (2, 3), w (3,), b (4,)")):
        K.layernorm_forward_numba(np.zeros((2, 3)), np.ones(3), np.zeros(4))
