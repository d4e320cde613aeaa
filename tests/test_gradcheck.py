"""Every backward against float64 central differences (docs/derivations.md, eq. 10.1-10.2), and the
negative controls that prove the check can fail."""

import numpy as np
import pytest

from minigpt import backend
from minigpt import gradcheck as gc
from minigpt import gradcheck_mutants as gm
from minigpt.model import GPTModel

pytestmark = pytest.mark.usefixtures("one_numba_thread")


@pytest.mark.parametrize("name", list(gc.LAYER_CASES))
def test_layer_gradients(name):
    """Layers alone and one block: eqs. 1.2-1.3, 2.4-2.6, 3.2-3.4, 4.2, 5.2, 6.5-6.7, 7.3, 8.3.
    Exactly the case's inputs are checked, each over every element, and each passes."""
    _, _, inputs, _ = gc.LAYER_CASES[name](np.random.default_rng(0))
    results = gc.check_layer(name)
    assert [r.tensor for r in results] == list(inputs)
    assert [r.n_checked for r in results] == [x.size for x in inputs.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad


def test_training_shape_cases_run_the_blas_kernels():
    """The T = 33 cases exist for attention, dropout, the block and the model, and on the numba
    path they really go through the BLAS attention kernels (T >= BLAS_MIN_T)."""
    from kernels.attention import BLAS_MIN_T

    assert gc.T_LONG >= BLAS_MIN_T and gc.T_LONG % 2 == 1
    long_cases = [n for n in gc.LAYER_CASES if f"T={gc.T_LONG}" in n]
    assert {n.split(" (")[0] for n in long_cases} == {"attention", "block"}
    assert sum("dropout" in n for n in long_cases) == 2
    long_models = [k for k, cfg in gc.MODEL_VARIANTS.items() if cfg.context_length - 1 == gc.T_LONG]
    assert len(long_models) == 2 and any(gc.MODEL_VARIANTS[k].drop_rate > 0 for k in long_models)
    calls = {"fwd": 0, "bwd": 0}
    import kernels.attention_blas as blas

    real_f, real_b = blas.heads_forward, blas.heads_backward

    def f(*a, **k):
        calls["fwd"] += 1
        return real_f(*a, **k)

    def b(*a, **k):
        calls["bwd"] += 1
        return real_b(*a, **k)

    with backend.use("numba"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(blas, "heads_forward", f)
        mp.setattr(blas, "heads_backward", b)
        fwd, bwd, inputs, _ = gc.LAYER_CASES[f"block (T={gc.T_LONG})"](np.random.default_rng(0))
        bwd(np.ones_like(fwd(**inputs)), **inputs)
    assert calls["fwd"] >= 1 and calls["bwd"] == 1


@pytest.mark.parametrize("variant", list(gc.MODEL_VARIANTS))
def test_model_gradients_every_element(variant):
    """The whole model (eqs. 9.1-9.2 and the chain of section 9): every element of every parameter."""
    cfg = gc.MODEL_VARIANTS[variant]
    results = gc.check_model(cfg, label=variant)
    params = GPTModel(cfg, seed=0, dtype=np.float64).params
    assert [r.tensor for r in results] == list(params)
    assert [r.n_checked for r in results] == [p.size for p in params.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", list(gc.NEGATIVE_CONTROLS))
def test_negative_control_is_caught(name):
    """A deliberately wrong backward must fail the very criterion the real ones pass."""
    results = gc.NEGATIVE_CONTROLS[name]()
    assert any(not r.passed for r in results), f"the checker did not catch: {name}"
    # and not by a hair: the error is far above the tolerance
    assert max(r.max_abs_err for r in results) > 100 * gc.ATOL


@pytest.mark.parametrize("control", gm.KERNEL_CONTROLS, ids=lambda c: c.name)
def test_kernel_negative_control_is_caught(control):
    """A Numba kernel with one bug (built from its own source) fails the check its real version
    passes, by far; the real kernel is back in place afterwards, on the backend the test began
    with."""
    import importlib

    owner = importlib.import_module(control.patch[0])
    real = getattr(owner, control.patch[1])
    start = backend.get_backend()
    results = gm.run_control(control)
    assert getattr(owner, control.patch[1]) is real and backend.get_backend() == start
    assert any(not r.passed for r in results), f"the checker did not catch: {control.name}"
    assert max(r.max_abs_err for r in results) > 100 * gc.ATOL
    _, _, inputs, _ = gc.LAYER_CASES[control.check](np.random.default_rng(0))
    assert [r.tensor for r in results] == list(inputs)


def test_kernel_controls_cover_both_attention_kernels_and_layernorm():
    patched = [c.patch for c in gm.KERNEL_CONTROLS]
    for kernel in (("kernels.attention", "heads_forward"), ("kernels.attention", "heads_backward"),
                   ("kernels.attention_blas", "heads_forward"),
                   ("kernels.attention_blas", "heads_backward"),
                   ("minigpt.kernel_ops", "layernorm_backward")):
        assert kernel in patched
    blas_checks = {c.check for c in gm.KERNEL_CONTROLS if "blas" in c.patch[0]}
    assert blas_checks == {f"attention (T={gc.T_LONG})"}


def test_kernel_control_refuses_an_edit_that_no_longer_matches():
    """A refactor of the kernel must not silently turn a control into a no-op."""
    c = gm.KERNEL_CONTROLS[0]
    e = c.edits[0]
    stale = gm.KernelControl(c.name, c.patch, c.source,
                             (gm.Edit(e.module, e.function, "no such text", "x"),), c.check)
    with pytest.raises(gm.MutantError, match="exactly one"):
        gm.build_mutant(stale)
    gone = gm.KernelControl(c.name, c.patch, c.source,
                            (gm.Edit(e.module, "no_such_function", "a", "b"),), c.check)
    with pytest.raises(gm.MutantError, match="no top-level function"):
        gm.build_mutant(gone)


def test_kernel_control_refuses_a_kernel_the_layers_never_call():
    """A mutant patched where the layer code does not look (here: the BLAS kernel under a T = 5
    check, which runs the fused one) must raise, not pass as 'caught' or 'missed'."""
    import kernels.attention_blas as blas

    c = next(c for c in gm.KERNEL_CONTROLS if c.patch == ("kernels.attention_blas", "heads_backward"))
    unused = gm.KernelControl(c.name, c.patch, c.source, c.edits, "attention")
    real = blas.heads_backward
    with pytest.raises(gm.MutantError, match="never called"):
        gm.run_control(unused)
    assert blas.heads_backward is real


def _zeroed(name):
    """The layernorm case with a backward that returns zeros for ``name``."""
    fwd, bwd, inputs, eq = gc._layernorm_case(np.random.default_rng(0))

    def wrong(g, **kw):
        grads = bwd(g, **kw)
        grads[name] = np.zeros_like(grads[name])
        return grads
    return fwd, wrong, inputs, eq


@pytest.mark.parametrize("name", ["x", "w", "b"])
def test_backward_returning_zeros_for_one_input_fails(name):
    results = gc.check_op("zeroed", *_zeroed(name))
    assert [r.tensor for r in results if not r.passed] == [name]


def test_backward_omitting_an_input_fails():
    """A backward that stops returning one gradient fails that input instead of checking less."""
    fwd, bwd, inputs, eq = gc._layernorm_case(np.random.default_rng(0))

    def omits_b(g, **kw):
        grads = bwd(g, **kw)
        del grads["b"]
        return grads
    results = gc.check_op("omits b", fwd, omits_b, inputs, eq)
    assert [r.tensor for r in results] == ["x", "w", "b"]
    assert [r.passed for r in results] == [True, True, False]


def test_backward_returning_a_gradient_for_no_input_is_an_error():
    fwd, bwd, inputs, eq = gc._layernorm_case(np.random.default_rng(0))
    with pytest.raises(ValueError, match="not inputs"):
        gc.check_op("extra", fwd, lambda g, **kw: bwd(g, **kw) | {"y": np.zeros(3)}, inputs, eq)


def test_model_check_with_a_zeroed_parameter_gradient_fails():
    """The model check compares every parameter: a loss_and_grads that leaves one at zero fails."""

    class LostBias(GPTModel):
        def loss_and_grads(self, *args, **kwargs):
            out = super().loss_and_grads(*args, **kwargs)
            self.grads["ln_f.bias"][...] = 0.0
            return out

    results = gc.check_model(gc.TINY, model_cls=LostBias, label="lost ln_f.bias", max_per_tensor=4)
    assert [r.tensor for r in results if not r.passed] == ["ln_f.bias"]


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


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("variant", list(gc.CHUNKED_LOSS_VARIANTS))
def test_chunked_lm_head_loss_gradients_every_element(variant, name):
    """The LM head and its loss in row chunks (heads.lm_head_loss, the path of a GPT-2-sized
    vocabulary), on both backends: every element of every parameter."""
    cfg, rows = gc.CHUNKED_LOSS_VARIANTS[variant]
    with backend.use(name):
        results = gc.check_model(cfg, model_cls=gc.model_with(loss_chunk_rows=rows), label=variant)
    params = GPTModel(cfg, seed=0, dtype=np.float64).params
    assert [r.n_checked for r in results] == [p.size for p in params.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("variant", list(gc.STASH_VARIANTS))
def test_stashed_caches_gradients_every_element(variant, name, monkeypatch):
    """The blocks' caches kept in the gradient buffer (minigpt/stash.py), on both backends: every
    element of every parameter, with every array the two upper blocks keep in a slab."""
    from minigpt.stash import Stash
    left = []
    real = Stash.keep
    monkeypatch.setattr(Stash, "keep", lambda self, a: (
        lambda k: left.append(not np.shares_memory(k, self.buf)) or k)(real(self, a)))
    cfg = gc.STASH_VARIANTS[variant]
    with backend.use(name):
        results = gc.check_model(cfg, label=variant)
    assert left and not any(left)                  # nothing stayed on the heap
    params = GPTModel(cfg, seed=0, dtype=np.float64).params
    assert [r.n_checked for r in results] == [p.size for p in params.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("variant", list(gc.RECOMPUTE_MLP_VARIANTS))
def test_recompute_mlp_gradients_every_element(variant, name):
    """GELU's input recomputed in the backward (GPTModel.recompute_mlp), on both backends: every
    element of every parameter."""
    cfg = gc.RECOMPUTE_MLP_VARIANTS[variant]
    with backend.use(name):
        results = gc.check_model(cfg, model_cls=gc.model_with(recompute_mlp=True), label=variant)
    params = GPTModel(cfg, seed=0, dtype=np.float64).params
    assert [r.n_checked for r in results] == [p.size for p in params.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("variant", list(gc.ATTENTION_VARIANTS))
def test_attention_kept_or_recomputed_gradients_every_element(variant, name):
    """The attention kept for the backward or recomputed, each at the length where it is not the
    default (minigpt/block.py, recompute_attention), dropout on, both backends: every element."""
    cfg, again = gc.ATTENTION_VARIANTS[variant]
    with backend.use(name):
        results = gc.check_model(cfg, model_cls=gc.model_with(recompute_attention=again),
                                 label=variant)
    params = GPTModel(cfg, seed=0, dtype=np.float64).params
    assert [r.n_checked for r in results] == [p.size for p in params.values()]
    bad = [r for r in results if not r.passed]
    assert not bad, bad
