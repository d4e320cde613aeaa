"""Sampling math (book-notes §5 golden values), the generation loop, and KV cache == no cache."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import model as model_mod
from minigpt.inference.generate import (
    generate,
    generate_text_simple,
    sample_next,
    softmax,
    softmax_with_temperature,
    top_k_filter,
)


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tests/conftest.py


# chapter 5's toy vocabulary and next-token logits (book-notes §5)
VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
LOGITS = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])


def test_softmax_golden_values():
    p = softmax(LOGITS)
    np.testing.assert_allclose(
        p, [0.0609, 0.0016, 0.0001, 0.5721, 0.0034, 0.0001, 0.0001, 0.3576, 0.0040], atol=5e-5
    )
    assert VOCAB[int(np.argmax(LOGITS))] == "forward"


def test_temperature_golden_values():
    p5 = softmax_with_temperature(LOGITS, 5.0)
    assert p5[VOCAB.index("pizza")] == pytest.approx(0.0430, abs=5e-5)
    p01 = softmax_with_temperature(LOGITS, 0.1)
    assert p01[3] > 0.99  # T=0.1 is nearly greedy
    assert p5.max() < softmax(LOGITS).max()  # T=5 flattens
    with pytest.raises(ValueError, match="greedy"):
        softmax_with_temperature(LOGITS, 0.0)


def test_top_k_golden_values():
    filtered = top_k_filter(LOGITS, 3)
    kept = np.flatnonzero(np.isfinite(filtered))
    np.testing.assert_array_equal(kept, [0, 3, 7])  # top logits 6.75, 6.28, 4.51
    np.testing.assert_allclose(
        softmax(filtered), [0.0615, 0, 0, 0.5775, 0, 0, 0, 0.3610, 0], atol=5e-5
    )


def test_top_k_keeps_ties_and_is_per_row():
    logits = np.array([[1.0, 3.0, 2.0, 2.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    np.testing.assert_array_equal(np.isfinite(out), [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(top_k_filter(logits, 99), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_sample_next_greedy_and_seeded():
    logits = np.stack([LOGITS, LOGITS[::-1]])  # (2, 9)
    np.testing.assert_array_equal(sample_next(logits), [3, 5])
    a = sample_next(logits, 1.0, None, np.random.default_rng(7))
    b = sample_next(logits, 1.0, None, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        sample_next(logits, 1.0)


def test_sampling_frequencies_follow_the_distribution():
    rng = np.random.default_rng(123)
    logits = np.tile(LOGITS, (50000, 1))
    for T, k in [(1.0, None), (5.0, None), (1.0, 3)]:
        ids = sample_next(logits, T, k, rng)
        freq = np.bincount(ids, minlength=9) / len(ids)
        expected = softmax_with_temperature(top_k_filter(LOGITS, k) if k else LOGITS, T)
        np.testing.assert_allclose(freq, expected, atol=0.011)  # 5 sigma for p=0.5, n=50000
        if k:
            assert set(np.flatnonzero(freq)) <= {0, 3, 7}  # nothing outside the top 3


# --- the loop, on a tiny fake model whose next token is (last token + position) % V ----------------
class CountingModel:
    def __init__(self, V=11, T=6):
        self.cfg = SimpleNamespace(vocab_size=V, context_length=T)
        self.dtype = np.float64
        self.seen_lengths = []

    def forward(self, idx, *, rng=None, kv_cache=None):
        assert kv_cache is None and idx.shape[1] <= self.cfg.context_length
        self.seen_lengths.append(idx.shape[1])
        T = idx.shape[1]
        nxt = (idx + np.arange(T)) % self.cfg.vocab_size  # (B, T)
        return np.eye(self.cfg.vocab_size)[nxt] * 5.0  # (B, T, V) one-hot logits


def test_generate_greedy_matches_book_simple_loop_and_crops():
    m = CountingModel()
    idx = np.array([[1, 2], [3, 4]])
    out = generate(m, idx, 7, use_cache=False)
    assert out.shape == (2, 9)
    ref = generate_text_simple(m, idx, 7, context_size=6)
    np.testing.assert_array_equal(out, ref)
    assert max(m.seen_lengths) == 6  # cropped to the context length
    out3 = generate(m, idx, 4, context_size=3, use_cache=False)
    # with a window of 3 the last position is 2: next = (last + 2) % 11
    assert out3[0, 2] == (2 + 1) % 11 and out3[0, 3] == (out3[0, 2] + 2) % 11


def test_eos_stops_each_row_on_its_own():
    m = CountingModel(V=11, T=20)
    idx = np.array([[5], [9]])  # row 0: 5, 5, 6, 8, 0, 4... row 1: 9, 9, 10, 1, ...
    free = generate(m, idx, 6, use_cache=False)
    eos = int(free[0, 3])  # row 0's third new token
    out = generate(m, idx, 6, eos_id=eos, use_cache=False)
    assert out[0, 3] == eos and np.all(out[0, 3:] == eos)  # finished rows are padded with eos
    row1 = free[1]
    stop = np.flatnonzero(row1[1:] == eos)
    if stop.size:  # row 1 ends at its own eos
        assert np.all(out[1, stop[0] + 1 :] == eos)
    else:
        np.testing.assert_array_equal(out[1], row1)
    # a batch of one stops as soon as it emits eos
    one = generate(m, idx[:1], 6, eos_id=eos, use_cache=False)
    assert one.shape == (1, 4) and one[0, -1] == eos


def test_generate_rejects_bad_input():
    m = CountingModel()
    with pytest.raises(ValueError, match=r"idx\[None"):
        generate(m, np.array([1, 2]), 3)
    with pytest.raises(ValueError, match="token ids"):
        generate(m, np.array([[11]]), 3)
    with pytest.raises(ValueError, match="context_size"):
        generate(m, np.array([[1]]), 3, context_size=7)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, np.array([[1]]), 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        generate(m, np.array([[1]]), 3, top_k=0)
    assert generate(m, np.array([[1]]), 0).shape == (1, 1)


# --- the real model: KV cache == no cache ------------------------------------------------------------


def tiny_model(context_length=12, dtype=np.float64, seed=0, V=37):
    from minigpt.config import GPTConfig

    cfg = GPTConfig(vocab_size=V, context_length=context_length, emb_dim=16, n_heads=2, n_layers=2,
                    drop_rate=0.0, qkv_bias=True)
    return model_mod.GPTModel(cfg, seed=seed, dtype=dtype)


def test_cache_equals_no_cache_greedy_past_the_context():
    m = tiny_model()
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    a = generate(m, idx, 15, use_cache=False)  # 18 > 12: the window slides
    b = generate(m, idx, 15, use_cache=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, generate_text_simple(m, idx, 15, context_size=12))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    B=st.integers(1, 3),
    T0=st.integers(1, 8),
    new=st.integers(0, 10),
    temperature=st.sampled_from([0.0, 0.7, 1.5]),
    top_k=st.sampled_from([None, 1, 5]),
    eos=st.sampled_from([None, 0, 3]),
)
def test_cache_equals_no_cache_property(seed, B, T0, new, temperature, top_k, eos):
    m = tiny_model(seed=seed % 7)
    idx = np.random.default_rng(seed).integers(0, 37, size=(B, T0))
    kw = {"temperature": temperature, "top_k": top_k, "eos_id": eos, "seed": seed}
    a = generate(m, idx, new, use_cache=False, **kw)
    b = generate(m, idx, new, use_cache=True, **kw)
    np.testing.assert_array_equal(a, b)


def test_cache_logits_match_full_forward():
    from minigpt.inference.kv_cache import KVCache

    m = tiny_model()
    idx = np.random.default_rng(1).integers(0, 37, size=(2, 9))
    full = m.forward(idx)  # (2, 9, V)
    cache = KVCache(m.cfg, batch_size=2, dtype=m.dtype)
    parts = [m.forward(idx[:, :4], kv_cache=cache)] + [
        m.forward(idx[:, t : t + 1], kv_cache=cache) for t in range(4, 9)
    ]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-12)


def test_seeded_sampling_repeats_and_seeds_differ():
    m = tiny_model()
    idx = np.array([[1, 2]])
    a = generate(m, idx, 10, temperature=1.0, seed=5)
    assert np.array_equal(a, generate(m, idx, 10, temperature=1.0, seed=5))
    others = [generate(m, idx, 10, temperature=1.0, seed=s) for s in range(6, 10)]
    assert any(not np.array_equal(a, o) for o in others)


def _first_eos(row: np.ndarray, start: int, eos: int) -> int | None:
    hits = np.flatnonzero(row[start:] == eos)
    return int(hits[0]) if hits.size else None


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, None), (0.8, 5)])
def test_cache_equals_no_cache_float32_batch_with_per_row_eos(temperature, top_k):
    # float32 as in real use; a batch where the eos token ends one row early and the others later
    # (or never), so the padding of finished rows is exercised on both paths
    m = tiny_model(context_length=40, dtype=np.float32, seed=3, V=23)
    idx = np.random.default_rng(4).integers(0, 23, size=(3, 5))
    kw = {"temperature": temperature, "top_k": top_k, "seed": 42}
    free = generate(m, idx, 30, use_cache=False, **kw)
    for eos in range(23):  # an id that one row emits strictly earlier than another row
        firsts = [_first_eos(r, 5, eos) for r in free]
        known = [f for f in firsts if f is not None]
        if known and (None in firsts or len(set(known)) > 1) and max(known) < 29:
            break
    else:
        pytest.fail("no token id ends the rows at different steps")
    a = generate(m, idx, 30, eos_id=eos, use_cache=False, **kw)
    b = generate(m, idx, 30, eos_id=eos, use_cache=True, **kw)
    np.testing.assert_array_equal(a, b)
    n = a.shape[1]
    for r, free_r, f in zip(a, free, firsts, strict=True):
        # each row is the free-running one (same draws: one uniform per row per step) up to its
        # own eos, and only eos after it
        stop = n if f is None else 5 + f + 1
        np.testing.assert_array_equal(r[:stop], free_r[:stop])
        assert np.all(r[stop:] == eos)
    ends = [f for f in firsts if f is not None]
    if None not in firsts:  # every row finished: the loop stopped after the last one did
        assert a.shape[1] == 5 + max(ends) + 1


def test_help_reads_cold(capsys):
    from minigpt.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--checkpoint runs/quick" in out
    assert "(default: None)" not in out and "(default: False)" not in out
