"""Every backward against float64 central differences (docs/derivations.md, eq. 10.1-10.2), and the
negative controls that prove the check can fail."""

import numpy as np
import pytest

from minigpt import gradcheck as gc


@pytest.mark.parametrize("name", list(gc.LAYER_CASES))
def test_layer_gradients(name):
    """Layers alone and one block: eqs. 1.2-1.3, 2.4-2.6, 3.2-3.4, 4.2, 5.2, 6.5-6.7, 7.3, 8.3."""
    results = gc.check_layer(name)
    assert results, "the case checked nothing"
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("variant", list(gc.MODEL_VARIANTS))
def test_model_gradients_every_element(variant):
    """The whole model (eqs. 9.1-9.2 and the chain of section 9): every element of every parameter."""
    cfg = gc.MODEL_VARIANTS[variant]
    results = gc.check_model(cfg, label=variant)
    from minigpt.model import param_shapes
    shapes = param_shapes(cfg)
    assert [r.tensor for r in results] == list(shapes)
    assert sum(r.n_checked for r in results) == sum(int(np.prod(s)) for s in shapes.values())
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", list(gc.NEGATIVE_CONTROLS))
def test_negative_control_is_caught(name):
    """A deliberately wrong backward must fail the very criterion the real ones pass."""
    results = gc.NEGATIVE_CONTROLS[name]()
    assert any(not r.passed for r in results), f"the checker did not catch: {name}"
    # and not by a hair: the error is far above the tolerance
    assert max(r.max_abs_err for r in results) > 100 * gc.ATOL


def test_key_bias_gradient_is_exactly_zero_and_passes():
    """Softmax is shift-invariant per row, and the key bias shifts row i of the scores by q_i . b_k,
    so dL/db_k is exactly zero (derivations eq. 10.3). The combined criterion must accept it."""
    cfg = gc.TINY
    results = gc.check_model(cfg, max_per_tensor=None, label="kbias", only="attn.c_attn.bias")
    assert len(results) == cfg.n_layers
    from minigpt.model import GPTModel
    m = GPTModel(cfg, seed=0, dtype=np.float64)
    gc._randomise(m, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    idx = rng.integers(0, cfg.vocab_size, (2, 5))
    _, grads = m.loss_and_grads(idx, rng.integers(0, cfg.vocab_size, (2, 5)))
    C = cfg.emb_dim
    kb = grads["h.0.attn.c_attn.bias"][C:2 * C]
    assert np.abs(kb).max() < 1e-15
    assert np.abs(grads["h.0.attn.c_attn.bias"][:C]).max() > 1e-6     # q bias is not zero
    assert all(r.passed for r in results if r.tensor.endswith("c_attn.bias"))


def test_gradcheck_refuses_float32():
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="float64"):
        gc.numerical_gradient(lambda: 0.0, x)


def test_compare_criterion():
    ok = gc.compare("c", "t", np.array([1.0, 0.0]), np.array([1.0 + 5e-6, 5e-8]))
    assert ok.passed
    bad = gc.compare("c", "t", np.array([1.0]), np.array([1.001]))
    assert not bad.passed and bad.max_abs_err == pytest.approx(1e-3)
