"""Finetuning's gradients (chapter 6 and appendix E): the head's LoRA adapter, frozen weights whose
gradients are never computed, and the book's LoRA count with the head."""

import numpy as np
import pytest

from minigpt import backend
from minigpt import gradcheck as gc
from minigpt.config import PRETRAINED_CONFIGS
from minigpt.lora import BOOK_TARGETS, adapters, head_lora_specs, lora_specs, merge_lora, with_lora
from minigpt.model import GPTModel
from minigpt.params import count

pytestmark = pytest.mark.usefixtures("one_numba_thread")

CFG = gc.TINY.replace(num_classes=2)
CH06 = lambda n: not n.startswith(("h.1.", "ln_f.", "out_head."))    # noqa: E731  (L = 2)
LORA_BASE = lambda n: ".lora_" not in n                               # noqa: E731


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (3, 6))
    lengths = np.array([6, 3, 1])
    x[np.arange(6)[None, :] >= lengths[:, None]] = 0
    return x, np.array([1, 0, 1]), lengths


def models(lora: bool, freeze):
    """(full, frozen): the same float64 weights; the second with ``freeze`` applied."""
    out = []
    for _ in range(2):
        m = GPTModel(CFG, seed=1, dtype=np.float64)
        if lora:
            m = with_lora(m, 3, 5.0, freeze_base=False)
            gc._randomise(m, np.random.default_rng(2))     # B nonzero
        out.append(m)
    out[1].freeze(freeze)
    return out


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("lora,freeze", [(False, CH06), (True, LORA_BASE)], ids=["ch06", "lora"])
def test_frozen_dw_is_never_computed_and_trainable_grads_are_unchanged(path, lora, freeze,
                                                                       monkeypatch):
    full, frozen = models(lora, freeze)
    x, y, lengths = batch()
    with backend.use(path):
        full.loss_and_grads(x, y, lengths=lengths)
        ops, calls = backend.ops(), []
        for name in ("linear_backward", "lora_linear_backward"):
            real = getattr(ops, name)

            def spy(dout, cache, dw, *rest, _real=real, _name=name):
                calls.append((_name, dw is not None))
                return _real(dout, cache, dw, *rest)
            monkeypatch.setattr(ops, name, spy)
        frozen.flat_grads[...] = np.nan          # zero_grad must clear it; nothing may write a frozen one
        frozen.loss_and_grads(x, y, lengths=lengths)
    monkeypatch.undo()
    # every linear's backward ran with dW only where the weight trains
    if lora:
        assert calls == [("lora_linear_backward", False)] * (1 + 4 * CFG.n_layers)
    else:      # the head and block 1's four linears; block 0 is below the lowest trainable layer
        assert calls == [("linear_backward", True)] * 5
    for name in full.params:
        if name in frozen.frozen_names():
            assert not frozen.grads[name].any(), name                       # never written
        else:
            assert frozen.grads[name].tobytes() == full.grads[name].tobytes(), name


@pytest.mark.parametrize("key", list(gc.CLASSIFIER_FROZEN_VARIANTS))
def test_the_head_adapter_gradients_and_the_frozen_parts_by_finite_differences(key):
    """The head (and its adapter) every element; 6 sampled elements of each trainable trunk
    tensor (``minigpt gradcheck`` checks them all); frozen ones must be exact zeros."""
    kw, freeze = gc.CLASSIFIER_FROZEN_VARIANTS[key]
    with backend.use("numpy"):
        res = gc.check_classifier_model("last_nonpad", freeze=freeze, label=key,
                                        max_per_tensor=6, **kw)
    assert all(r.passed for r in res), [r for r in res if not r.passed]
    checked = {r.tensor for r in res if r.equation != "frozen"}
    if kw.get("lora"):
        assert {"out_head.lora_A", "out_head.lora_B"} <= checked
        assert all(".lora_" in n for n in checked)
    else:
        assert checked == {r.tensor for r in res if r.tensor.startswith(("h.1.", "ln_f", "out_"))}


def test_negative_control_frozen_gradients_computed_is_caught():
    res = gc.NEGATIVE_CONTROLS["frozen weights whose gradients are still computed"]()
    failed = {r.tensor for r in res if not r.passed}
    assert failed and all(r.equation == "frozen" for r in res if not r.passed)
    assert all(r.passed for r in res if r.equation != "frozen")       # the rest still right


def test_with_lora_wraps_the_head_and_merges_it():
    base = GPTModel(CFG, seed=1, dtype=np.float64)
    m = with_lora(base, 2, 4.0)
    assert "out_head.lora_A" in m.params and m.shapes["out_head.lora_B"] == (2, 2)
    assert "out_head.lora_A" not in with_lora(base, 2, 4.0, head=False).params
    x, _, lengths = batch()
    assert np.array_equal(m.forward(x, lengths=lengths), base.forward(x, lengths=lengths))   # B = 0
    m.params["out_head.lora_B"][...] = 1.0
    moved = m.forward(x, lengths=lengths)
    assert not np.allclose(moved, base.forward(x, lengths=lengths))
    assert [a.layer for a in adapters(m)][-1] == "out_head"
    merge_lora(m)
    np.testing.assert_allclose(m.forward(x, lengths=lengths), moved, rtol=0, atol=1e-12)
    assert m._grad_floor == 0       # adapters in every block: the backward runs down to block 0
    m2 = with_lora(base, 2, 4.0, ("mlp.c_fc",))
    m2.freeze(lambda n: n != "out_head.lora_B")
    assert m2._grad_floor == CFG.n_layers      # only the head's adapter trains: no block backward


def test_the_books_lora_count_includes_the_head():
    cfg = PRETRAINED_CONFIGS["gpt2"].replace(num_classes=2, lora_rank=16, lora_alpha=16)
    assert count(lora_specs(cfg, BOOK_TARGETS) + head_lora_specs(cfg)) == 2_666_528
    assert count(head_lora_specs(cfg)) == 16 * (768 + 2)
    assert cfg.n_params() == 124_441_346                                   # before freezing


def test_peft_files_refuse_the_head_adapter_clearly(tmp_path):
    """PEFT saves a sequence classifier's head whole (score.weight, modules_to_save) and never as a
    LoRA pair (checked with PEFT 0.21.2: docs/lora.md); the head's adapter stays in checkpoints."""
    from minigpt.weights.adapter import save_adapter

    base = GPTModel(CFG, seed=1, dtype=np.float64)
    with pytest.raises(ValueError, match="modules_to_save|module to save"):
        save_adapter(with_lora(base, 2, 4.0), tmp_path / "a")
    save_adapter(with_lora(base, 2, 4.0, head=False), tmp_path / "b")      # the blocks' pairs
    assert (tmp_path / "b" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("pooling", ["last", "last_nonpad"])
def test_lora_classifier_against_pytorch_autograd(pooling, path):
    """The classifier with the book's adapters, the head's included, against PyTorch autograd on a
    model written from the equations (benchmarks/make_finetune_fixture.py, float64): logits, loss
    and the gradient of every parameter; then with the base frozen, the adapters' gradients the
    same and the frozen ones not computed. The fixture holds torch's values; torch is not needed."""
    from pathlib import Path

    from safetensors.numpy import load_file

    f = load_file(str(Path(__file__).parent / "fixtures" / "finetune" / "lora_classifier.safetensors"))
    cfg = gc.TINY.replace(num_classes=2, pooling=pooling)
    m = with_lora(GPTModel(cfg, seed=0, dtype=np.float64), 3, 5.0, freeze_base=False)
    m.load_state_dict({k[6:]: v for k, v in f.items() if k.startswith("param.")})   # strict
    idx, labels, lengths = f["idx"], f["labels"], f["lengths"]
    with backend.use(path):
        np.testing.assert_allclose(m.forward(idx, lengths=lengths), f[f"{pooling}.logits"],
                                   rtol=1e-10, atol=1e-12)
        loss, g = m.loss_and_grads(idx, labels, lengths=lengths)
        assert abs(loss - f[f"{pooling}.loss"].reshape(-1)[0]) < 1e-12
        for name in m.params:
            np.testing.assert_allclose(g[name], f[f"{pooling}.grad.{name}"], rtol=1e-8, atol=1e-12,
                                       err_msg=name)
        m.freeze(lambda n: ".lora_" not in n)
        _, g = m.loss_and_grads(idx, labels, lengths=lengths)
    for name in m.params:
        if ".lora_" in name:
            np.testing.assert_allclose(g[name], f[f"{pooling}.grad.{name}"], rtol=1e-8, atol=1e-12)
        else:
            assert not g[name].any(), name
    # negative control: the same comparison sees a head adapter without its scale
    wrong = g["out_head.lora_B"] * 3 / 5.0
    assert not np.allclose(wrong, f[f"{pooling}.grad.out_head.lora_B"], rtol=1e-8, atol=1e-12)
