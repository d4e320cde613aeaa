"""Golden values that do not depend on any RNG (book-notes §9.1): attention arithmetic on the fixed
6x3 input, parameter counts, the cross-entropy toy, the Appendix A logistic-regression gradients."""

import numpy as np
import pytest

import minigpt
from minigpt.config import size_mb
from minigpt.layers.attention import causal_softmax, softmax
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.loss import cross_entropy

# "Your journey starts with one step" (chapter 3)
X = np.array([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
              [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chapter3_attention_arithmetic(dtype):
    x = X.astype(dtype)
    scores = x @ x.T                                           # (6, 3) @ (3, 6) -> (6, 6)
    np.testing.assert_allclose(scores[1], [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865], atol=1e-4)
    weights = softmax(scores)
    assert weights.dtype == dtype
    np.testing.assert_allclose(weights[1], [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581], atol=1e-4)
    context = weights @ x
    np.testing.assert_allclose(context[1], [0.4419, 0.6515, 0.5683], atol=1e-4)
    np.testing.assert_allclose(context, [[0.4421, 0.5931, 0.5790], [0.4419, 0.6515, 0.5683],
                                         [0.4431, 0.6496, 0.5671], [0.4304, 0.6298, 0.5510],
                                         [0.4671, 0.5910, 0.5266], [0.4177, 0.6503, 0.5645]], atol=1e-4)


def test_chapter3_causal_mask_renormalises():
    """The masked softmax equals the book's tril-then-renormalise version (chapter 3)."""
    scores = X @ X.T
    masked = causal_softmax(scores)
    simple = softmax(scores) * np.tril(np.ones((6, 6)))
    np.testing.assert_allclose(masked, simple / simple.sum(-1, keepdims=True), rtol=1e-12)
    assert np.all(np.triu(masked, 1) == 0)


def test_parameter_counts_match_the_book():
    c = minigpt.GPT_CONFIG_124M
    assert c.n_params(include_head=True) == 163_009_536
    assert c.n_params(include_head=False) == 124_412_160
    assert round(size_mb(c.n_bytes(4, include_head=True)), 2) == 621.83
    assert c.replace(qkv_bias=True, tie_weights=True).n_params() == 124_439_808
    for cfg, total, tied, mb in [(minigpt.GPT_CONFIG_MEDIUM, 406_212_608, 354_749_440, 1549.58),
                                 (minigpt.GPT_CONFIG_LARGE, 838_220_800, 773_891_840, 3197.56),
                                 (minigpt.GPT_CONFIG_XL, 1_637_792_000, 1_557_380_800, 6247.68)]:
        assert cfg.n_params(include_head=True) == total
        assert cfg.n_params(include_head=False) == tied
        assert round(size_mb(cfg.n_bytes(4, include_head=True)), 2) == mb


def test_model_buffer_size_equals_the_count():
    """The flat buffer really holds n_params() numbers (a small config, so it is cheap)."""
    for tie in (False, True):
        for bias in (False, True):
            cfg = minigpt.GPTConfig(vocab_size=97, context_length=16, emb_dim=24, n_heads=3,
                                    n_layers=2, qkv_bias=bias, tie_weights=tie)
            assert minigpt.GPTModel(cfg).num_params == cfg.n_params()


def test_cross_entropy_toy():
    """Chapter 7: 1.1269; a third row gives 0.7936; ignoring that row with -100 gives 1.1269 again."""
    logits_1 = np.array([[-1.0, 1.0], [-0.5, 1.5]])
    assert cross_entropy(logits_1, np.array([0, 1]))[0] == pytest.approx(1.1269, abs=1e-4)
    logits_2 = np.array([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
    assert cross_entropy(logits_2, np.array([0, 1, 1]))[0] == pytest.approx(0.7936, abs=1e-4)
    assert cross_entropy(logits_2, np.array([0, 1, -100]))[0] == pytest.approx(1.1269, abs=1e-4)


def test_appendix_a_logistic_regression_gradients():
    """y = 1, x1 = 1.1, w1 = 2.2, b = 0: loss 0.0852, dL/dw1 = -0.0898, dL/db = -0.0817.

    Binary cross-entropy on sigmoid(z) is the two-class softmax cross-entropy on logits [0, z], so the
    book's example runs through minigpt's own linear layer and cross-entropy, forward and backward.
    """
    x = np.array([[1.1]])
    w = np.array([[0.0, 2.2]])             # logit of class 0 fixed at 0, class 1 is w1 * x1
    b = np.zeros(2)
    z, cache = linear_forward(x, w, b)
    loss, dz = cross_entropy(z, np.array([1]))
    dw, db = np.zeros_like(w), np.zeros_like(b)
    linear_backward(dz, cache, dw, db)
    assert loss == pytest.approx(0.0852, abs=1e-4)
    assert dw[0, 1] == pytest.approx(-0.0898, abs=1e-4)
    assert db[1] == pytest.approx(-0.0817, abs=1e-4)
