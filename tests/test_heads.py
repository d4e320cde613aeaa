"""Heads and losses: the classification head and its pooling (chapter 6), forward_train / backward
(any loss, e.g. DPO), and the clear errors around them (docs/derivations.md section 11)."""

from __future__ import annotations

import numpy as np
import pytest

import minigpt.kernel_ops
import minigpt.layers
from minigpt import GPTConfig, GPTModel, KVCache, backend
from minigpt import gradcheck as gc
from minigpt.layers.pooling import POOLINGS, pooling_backward, pooling_forward

TINY = GPTConfig(vocab_size=23, context_length=12, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0,
                 qkv_bias=True)
PAD = 22  # the "<|endoftext|>" of this tiny vocabulary


def classifier(pooling, seed=0, dtype=np.float64, **kw):
    m = GPTModel(TINY.replace(num_classes=3, pooling=pooling, **kw), seed=seed, dtype=dtype)
    gc._randomise(m, np.random.default_rng(seed))   # weights far from init: differences are visible
    return m


def padded(ids, T):
    return np.array([list(ids) + [PAD] * (T - len(ids))])


# --- the pooling layer --------------------------------------------------------------------------------

def test_pooling_values_by_hand():
    x = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    lengths = np.array([4, 2])
    last, _ = pooling_forward(x, "last")
    np.testing.assert_array_equal(last, x[:, 3])
    nonpad, _ = pooling_forward(x, "last_nonpad", lengths)
    np.testing.assert_array_equal(nonpad, np.stack([x[0, 3], x[1, 1]]))
    mean, _ = pooling_forward(x, "mean", lengths)
    np.testing.assert_allclose(mean, np.stack([x[0].mean(0), x[1, :2].mean(0)]), rtol=1e-15)


@pytest.mark.parametrize("mode", POOLINGS)
def test_pooling_backward_is_zero_on_padding_and_keeps_dtype(mode):
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2, 1])
    out, cache = pooling_forward(x, mode, lengths)
    assert out.shape == (3, 4) and out.dtype == np.float32
    dx = pooling_backward(np.ones((3, 4), np.float32), cache)
    assert dx.shape == x.shape and dx.dtype == np.float32
    if mode != "last":
        for b, n in enumerate(lengths):
            assert not dx[b, n:].any()          # padding receives nothing
    assert dx.sum() == pytest.approx(3 * 4)     # each row's gradient lands once (or averaged)


def test_pooling_is_the_same_function_on_both_backends():
    # no kernel: kernel_ops re-exports the layer (nothing to keep in step)
    assert minigpt.kernel_ops.pooling_forward is minigpt.layers.pooling_forward
    assert minigpt.kernel_ops.pooling_backward is minigpt.layers.pooling_backward


# --- issue #566: the prediction must not depend on the amount of right-padding ------------------------

@pytest.mark.parametrize("pooling", ["last_nonpad", "mean"])
def test_prediction_does_not_change_with_padding(pooling, one_numba_thread):
    m = classifier(pooling)
    text = [3, 7, 1, 9, 4]
    base = m.forward(padded(text, 5), lengths=[5])
    for T in (6, 8, 12):
        np.testing.assert_allclose(m.forward(padded(text, T), lengths=[5]), base, rtol=1e-12,
                                   atol=1e-13)
    # and in a batch with other rows of other lengths
    batch = np.concatenate([padded([5, 5, 2], 12), padded(text, 12), padded(list(range(12)), 12)])
    out = m.forward(batch, lengths=[3, 5, 12])
    np.testing.assert_allclose(out[1], base[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out[0], m.forward(padded([5, 5, 2], 3), lengths=[3])[0], rtol=1e-12,
                               atol=1e-13)


def test_last_pooling_changes_with_padding_the_books_issue(one_numba_thread):
    """The negative case: "last" (the book's) reads a padding token that has seen the padding."""
    m = classifier("last")
    text = [3, 7, 1, 9, 4]
    base = m.forward(padded(text, 5))
    for T in (6, 8, 12):
        assert np.abs(m.forward(padded(text, T)) - base).max() > 1e-2
    # without padding "last" and "last_nonpad" are the same head on the same position
    nonpad = classifier("last_nonpad")
    np.testing.assert_array_equal(nonpad.forward(padded(text, 5), lengths=[5]), base)


def test_classifier_with_last_pooling_is_the_books_last_row_of_the_head():
    """The book applies out_head at every position and takes the last row; pooling first gives
    the same logits (the head acts on each position alone)."""
    m = classifier("last")
    lm = GPTModel(TINY.replace(tie_weights=True), seed=0, dtype=np.float64)
    lm.flat_params[...] = m.flat_params[:lm.flat_params.size]       # the trunk, shared
    idx = np.array([[3, 7, 1, 9, 4, PAD]])
    _, cache = lm.forward_train(idx)
    x_f = cache.head[0]                                                 # ln_f's output (B, T, C)
    book = x_f @ m.params["out_head.weight"] + m.params["out_head.bias"]  # (B, T, n)
    np.testing.assert_allclose(m.forward(idx), book[:, -1, :], rtol=1e-12)


# --- forward_train / backward -------------------------------------------------------------------------

def _lm_batch(cfg, seed=0, B=2, T=9):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    tgt = rng.integers(0, cfg.vocab_size, (B, T))
    tgt[1, :4] = -100                                                   # instruction-style masking
    return idx, tgt


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("cfg", [TINY, TINY.replace(tie_weights=True, drop_rate=0.2)],
                         ids=["untied", "tied-dropout"])
def test_forward_train_backward_reproduce_loss_and_grads_bit_for_bit(name, cfg, one_numba_thread):
    m = GPTModel(cfg, seed=1, dtype=np.float32)
    idx, tgt = _lm_batch(cfg)
    with backend.use(name):
        loss, _ = m.loss_and_grads(idx, tgt, rng=np.random.default_rng(5))
        expected = m.flat_grads.copy()
        out, cache = m.forward_train(idx, rng=np.random.default_rng(5))
        assert out.shape == (*idx.shape, cfg.vocab_size)
        loss2, dout = backend.ops().cross_entropy(out, tgt)
        grads = m.backward(dout, cache)
    assert loss2 == loss
    np.testing.assert_array_equal(m.flat_grads, expected)
    assert grads is m.grads


def test_forward_train_backward_reproduce_loss_and_grads_for_a_classifier():
    m = classifier("mean")
    idx = np.concatenate([padded([1, 2, 3], 7), padded([4, 5, 6, 7, 8, 9, 10], 7)])
    lengths, labels = np.array([3, 7]), np.array([2, 0])
    loss, _ = m.loss_and_grads(idx, labels, lengths=lengths)
    expected = m.flat_grads.copy()
    out, cache = m.forward_train(idx, lengths=lengths)
    assert out.shape == (2, 3)
    loss2, dout = backend.ops().cross_entropy(out, labels)
    m.backward(dout, cache)
    assert loss2 == loss and m.loss(idx, labels, lengths=lengths) == loss
    np.testing.assert_array_equal(m.flat_grads, expected)


def _sampled_fd_check(model, L, k=4, seed=0):
    """Finite differences of the scalar L() at k sampled elements of every parameter (float64),
    against model.flat_grads; returns the failing results."""
    rng = np.random.default_rng(seed)
    analytic = model.flat_grads.copy()
    bad, offset = [], 0
    for name, shape in model.shapes.items():
        size = int(np.prod(shape))
        local = rng.choice(size, min(k, size), replace=False)
        numeric = gc.numerical_gradient(L, model.flat_params, offset + local)
        r = gc.compare("fd", name, analytic[offset + local], numeric)
        bad += [] if r.passed else [r]
        offset += size
    return bad


@pytest.mark.parametrize("pooling", [None, "last_nonpad"], ids=["lm-head", "classifier"])
def test_backward_of_a_custom_dout_is_the_gradient_of_sum_out_times_dout(pooling, one_numba_thread):
    if pooling is None:
        m = GPTModel(TINY, seed=2, dtype=np.float64)
        gc._randomise(m, np.random.default_rng(2))
        kw = {}
    else:
        m, kw = classifier(pooling, seed=2), {"lengths": np.array([9, 4])}
    idx = np.random.default_rng(3).integers(0, PAD, (2, 9))
    out, cache = m.forward_train(idx, **kw)
    dout = np.random.default_rng(4).standard_normal(out.shape)
    m.backward(dout, cache)
    assert not _sampled_fd_check(m, lambda: float(np.sum(m.forward(idx, **kw) * dout)))
    # the control: a wrong dout gives gradients the check rejects
    out, cache = m.forward_train(idx, **kw)
    m.backward(dout * 1.01, cache)
    assert _sampled_fd_check(m, lambda: float(np.sum(m.forward(idx, **kw) * dout)))


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _dpo(policy, reference, idx, tgt, mask, beta=0.1):
    """The DPO loss of one preference pair (row 0 chosen, row 1 rejected) and dL/dlogits, by hand
    (outside the model): logp_seq = sum over response positions of log p(target);
    L = -log sigmoid(beta ((pc - rc) - (pr - rr)))."""
    logits, cache = policy.forward_train(idx)                              # (2, T, V)
    lp = _log_softmax(logits)
    lp_y = np.take_along_axis(lp, tgt[..., None], -1)[..., 0]              # (2, T)
    pol = (lp_y * mask).sum(1)                                             # (2,)
    ref = (np.take_along_axis(_log_softmax(reference.forward(idx)), tgt[..., None], -1)[..., 0]
           * mask).sum(1)
    u = beta * ((pol[0] - ref[0]) - (pol[1] - ref[1]))
    loss = float(np.logaddexp(0.0, -u))                                    # -log sigmoid(u)
    dL_du = -1.0 / (1.0 + np.exp(u))                                       # sigmoid(u) - 1
    dpol = np.array([dL_du * beta, -dL_du * beta])                         # dL/dpol (2,)
    onehot = np.zeros_like(lp)
    np.put_along_axis(onehot, tgt[..., None], 1.0, -1)
    dlogits = dpol[:, None, None] * mask[..., None] * (onehot - np.exp(lp))  # (2, T, V)
    return loss, dlogits, cache


def test_dpo_style_loss_through_forward_train_and_backward(one_numba_thread):
    """DPO needs the LM logits with the caches kept, its own dlogits, then the model's backward."""
    policy = GPTModel(TINY.replace(tie_weights=True), seed=5, dtype=np.float64)
    gc._randomise(policy, np.random.default_rng(5))
    reference = GPTModel(policy.cfg, seed=6, dtype=np.float64)
    reference.flat_params[...] = policy.flat_params + 0.05 * np.random.default_rng(7).standard_normal(
        policy.flat_params.size)
    rng = np.random.default_rng(8)
    idx = rng.integers(0, PAD, (2, 10))
    idx[1, :4] = idx[0, :4]                                                # one prompt, two answers
    tgt = np.roll(idx, -1, axis=1)
    mask = np.zeros((2, 10))
    mask[:, 3:9] = 1.0                                                     # the response positions
    loss, dlogits, cache = _dpo(policy, reference, idx, tgt, mask)
    assert 0.0 < loss and np.isfinite(loss)
    grads = policy.backward(dlogits, cache)
    assert np.abs(grads["wte.weight"]).max() > 0
    assert not _sampled_fd_check(policy, lambda: _dpo(policy, reference, idx, tgt, mask)[0], k=5)


# --- the classification head: parameters, config, gradients ------------------------------------------

def test_classifier_head_parameters_and_init():
    cfg = TINY.replace(num_classes=3, tie_weights=True)
    m = GPTModel(cfg, seed=4)
    assert list(m.params)[-2:] == ["out_head.weight", "out_head.bias"]
    assert "lm_head.weight" not in GPTModel(cfg.replace(tie_weights=False)).params
    assert m.params["out_head.weight"].shape == (8, 3) and m.params["out_head.bias"].shape == (3,)
    bound = 1 / np.sqrt(8)                                                # nn.Linear(C, n)'s default
    for name in ("out_head.weight", "out_head.bias"):
        p = m.params[name]
        assert np.abs(p).max() <= bound and np.abs(p).max() > bound / 2 and p.std() > 0
    lm = GPTModel(TINY.replace(tie_weights=True), seed=4)                 # same trunk for one seed
    np.testing.assert_array_equal(m.flat_params[:lm.num_params], lm.flat_params)
    assert m.num_params == cfg.n_params() == lm.num_params + 8 * 3 + 3


def test_config_round_trip_and_old_lm_dicts():
    cfg = TINY.replace(num_classes=2, pooling="mean")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    d = TINY.to_dict()
    assert "num_classes" not in d and "pooling" not in d                  # an LM's dict as before
    assert GPTConfig.from_dict(d) == TINY


def test_classifier_checkpoint_round_trip(tmp_path):
    from minigpt.training.checkpoint import model_from_checkpoint, save_checkpoint

    m = classifier("mean")
    save_checkpoint(tmp_path, m, step=1)
    back, _ = model_from_checkpoint(tmp_path)
    assert back.cfg == m.cfg
    idx = padded([1, 2, 3], 6)
    np.testing.assert_array_equal(back.forward(idx, lengths=[3]), m.forward(idx, lengths=[3]))


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_classifier_gradcheck(pooling, name, one_numba_thread):
    # every element on the numpy path for the default pooling; the others sample 6 elements of
    # each trunk tensor and check every element of the head (`minigpt gradcheck` checks all)
    every = name == "numpy" and pooling == "last_nonpad"
    with backend.use(name):
        results = gc.check_classifier_model(pooling, max_per_tensor=None if every else 6)
    assert [r.tensor for r in results][-2:] == ["out_head.weight", "out_head.bias"]
    assert results[-2].n_checked == 24 and results[-1].n_checked == 3
    bad = [r for r in results if not r.passed]
    assert not bad, bad


def test_gradcheck_runs_the_head_checks_and_controls():
    assert {f"pooling ({m}, rows of 5, 2, 1 tokens)" for m in POOLINGS} <= set(gc.LAYER_CASES)
    assert {"last_nonpad pooling backward into a padding position",
            "mean pooling backward that divides by T"} <= set(gc.NEGATIVE_CONTROLS)


# --- clear errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["last_nonpad", "mean"])
def test_pooling_that_needs_lengths_refuses_none(pooling):
    m = classifier(pooling)
    with pytest.raises(ValueError, match="needs lengths"):
        m.forward(padded([1, 2], 4))
    with pytest.raises(ValueError, match="needs lengths"):
        m.loss_and_grads(padded([1, 2], 4), [1])


@pytest.mark.parametrize("lengths,match", [([0], "outside"), ([5], "outside"), ([1, 2], "shape"),
                                           ([1.5], "integers"), ([[2]], "shape")])
def test_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=match):
        classifier("mean").forward(padded([1, 2], 4), lengths=lengths)


@pytest.mark.parametrize("labels,match", [([3], "class id"), ([-1], "class id"),
                                          ([[0, 1, 2, 0]], "one label per sequence"),
                                          ([0.0], "integer")])
def test_bad_labels(labels, match):
    m = classifier("last")
    for call in (m.loss, m.loss_and_grads):
        with pytest.raises(ValueError, match=match):
            call(padded([1, 2], 4), labels)


def test_classifier_refuses_the_kv_cache_and_the_lm_refuses_lengths():
    m = classifier("last")
    with pytest.raises(ValueError, match="classification head"):
        m.forward(padded([1, 2], 2), kv_cache=KVCache(m.cfg, batch_size=1, dtype=np.float64))
    with pytest.raises(ValueError, match="not an LM head"):
        m.head_weight()
    lm = GPTModel(TINY)
    with pytest.raises(ValueError, match="-100"):
        lm.forward(padded([1, 2], 4), lengths=[2])


def test_backward_refuses_a_dout_of_the_wrong_shape():
    m = classifier("last")
    out, cache = m.forward_train(padded([1, 2], 4))
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        m.backward(np.ones((1, 4, 3)), cache)


@pytest.mark.parametrize("kw,match", [({"num_classes": 1}, "num_classes"),
                                      ({"num_classes": True}, "num_classes"),
                                      ({"num_classes": 2, "pooling": "max"}, "pooling")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        TINY.replace(**kw)


def test_save_pretrained_refuses_a_classifier(tmp_path):
    from minigpt.weights.pretrained import save_pretrained

    with pytest.raises(ValueError, match="GPT2ForSequenceClassification"):
        save_pretrained(classifier("last"), tmp_path)
    assert not any(tmp_path.iterdir())                                    # nothing half-written


def test_generate_refuses_a_classifier_clearly():
    """Generation needs next-token logits: a classifier says so instead of an IndexError."""
    from minigpt import GPTConfig, GPTModel, generate

    cfg = GPTConfig(vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                    drop_rate=0.0, num_classes=2)
    with pytest.raises(ValueError, match="classification head"):
        generate(GPTModel(cfg, seed=0), np.zeros((1, 3), dtype=np.int64), max_new_tokens=2)


# --- the LM head's loss in row chunks (heads.lm_head_loss) ---------------------------------------------

def _lm(tie=True, dtype=np.float64):
    m = GPTModel(TINY.replace(tie_weights=tie), seed=3, dtype=dtype)
    gc._randomise(m, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    idx = rng.integers(0, TINY.vocab_size, (3, 11))
    targets = rng.integers(0, TINY.vocab_size, (3, 11))
    targets[1, :] = -100                 # a whole sequence ignored: with chunks of 4 rows, chunk 3
    targets[2, 5] = -100                 # (rows 12-15, all in sequence 1) has no counted target
    return m, idx, targets


@pytest.mark.parametrize("name", ["numba", "numpy"])
@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_is_the_whole_loss(name, tie):
    """Chunks of 4 rows (9 chunks over 33 rows, one without any counted target) give the loss and
    every gradient of the unchunked head to rounding, in float64; one chunk of all the rows gives
    the forward_train / cross_entropy / backward path bit for bit."""
    m, idx, targets = _lm(tie)
    with backend.use(name):
        out, cache = m.forward_train(idx)
        want, dout = backend.ops().cross_entropy(out, targets)
        want_g = m.backward(dout, cache)
        want_g = {k: v.copy() for k, v in want_g.items()}
        m.loss_chunk_rows = 33
        loss, g = m.loss_and_grads(idx, targets)
        assert loss == want and all(np.array_equal(g[k], want_g[k]) for k in g)
        m.loss_chunk_rows = 4
        loss, g = m.loss_and_grads(idx, targets)
        assert loss == pytest.approx(want, rel=1e-13) and m.loss(idx, targets) == loss
        for k in g:
            np.testing.assert_allclose(g[k], want_g[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_chunked_loss_divides_every_chunk_by_the_whole_batch_count(monkeypatch):
    """Control: a chunked loss that averages each chunk over its own counted targets (count not
    passed on) is not the batch mean, and the comparison above would catch it."""
    import minigpt.heads as heads
    m, idx, targets = _lm()
    with backend.use("numpy"):
        want = m.loss(idx, targets)
        x, _ = m._trunk_forward(idx, None, keep_caches=False)
        real = minigpt.layers.cross_entropy

        def per_chunk_mean(logits, t, grad=True, inplace=False, count=None):
            if not (t != -100).any():
                return 0.0, (np.zeros_like(logits) if grad else None)
            return real(logits, t, grad=grad, inplace=inplace)

        assert backend.ops().cross_entropy is real
        good = heads.lm_head_loss(x, m.head_weight(), targets, grad=False, chunk_rows=4)[0]
        monkeypatch.setattr(minigpt.layers, "cross_entropy", per_chunk_mean)
        bad = heads.lm_head_loss(x, m.head_weight(), targets, grad=False, chunk_rows=4)[0]
    assert good == pytest.approx(want, rel=1e-13)
    assert abs(bad - want) > 1e-2


def test_chunk_rows_for_gpt2():
    from minigpt.heads import loss_chunk_rows
    assert loss_chunk_rows(512, 50257, 4) == 128          # batch 4 x 128: 4 chunks of 25 MiB
    assert loss_chunk_rows(2048, 4096, 4) == 2048         # the bench's small config: one chunk
    assert loss_chunk_rows(7, 50257, 8) == 7


def test_chunked_loss_refuses_all_ignored_targets():
    m, idx, targets = _lm()
    m.loss_chunk_rows = 4
    with pytest.raises(ValueError, match="every target equals ignore_index"):
        m.loss_and_grads(idx, np.full_like(targets, -100))


@pytest.mark.parametrize("name", ["numba", "numpy"])
def test_cross_entropy_count_is_checked_and_used(name):
    """``count``: the loss of a chunk is its sum over the batch's count; a count below the chunk's
    own counted targets (or not a whole number) is refused with a message; a chunk may then hold
    no counted target."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5))
    t = np.array([1, -100, 3, 0])
    with backend.use(name):
        ce = backend.ops().cross_entropy
        whole, d_whole = ce(z, t)
        part, d_part = ce(z, t, count=6)
        assert part == pytest.approx(whole * 3 / 6, rel=1e-14)
        np.testing.assert_allclose(d_part, d_whole * 3 / 6, rtol=1e-14)
        for bad in (2, 0, 3.5):
            with pytest.raises(ValueError, match="count=.* must be a whole number"):
                ce(z, t, count=bad)
        none, d_none = ce(z, np.full(4, -100), count=6)
        assert none == 0.0 and not d_none.any()
        with pytest.raises(ValueError, match="every target equals ignore_index"):
            ce(z, np.full(4, -100))
