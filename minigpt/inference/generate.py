"""Text generation: greedy, temperature and top-k sampling, end-of-text stopping, a KV cache.

The book's chapter 5 ``generate`` with three changes a real tool needs:

- ``eos_id`` stops each sequence of a batch on its own: a row that emitted ``eos_id`` is padded with
  ``eos_id`` until every row has finished (the book's ``if idx_next == eos_id: break`` only works for
  one row, and drops the end token; here it is kept so a caller can see where a row ended);
- sampling draws from a seeded ``np.random.Generator`` (``seed=`` or ``rng=``), so a run repeats;
- ``use_cache=True`` feeds only the new token through the model, with the keys and values of the
  earlier ones kept in a ``KVCache``; the tokens are the same as without it (a test checks).

The order of operations is the book's: top-k on the raw logits (every logit >= the k-th largest is
kept, ties included), then divide by the temperature, subtract the row max, softmax, sample.
``temperature == 0`` is greedy (argmax), as ``generate_text_simple``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# softmax over the last axis, (..., V) -> (..., V): the attention layer's (eq. 6.3), written once;
# -inf logits (top-k filtered) get probability exactly 0
from minigpt.layers.attention import softmax


# --- pure functions over logits ------------------------------------------------------------------


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The book's ``softmax_with_temperature``: softmax(logits / T).  (..., V) -> (..., V)

    T < 1 sharpens the distribution towards the argmax, T > 1 flattens it.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for a softmax, got {temperature} "
                         "(temperature 0 means greedy decoding: take the argmax)")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature)


def top_k_filter(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Keep every logit >= the k-th largest of its row, set the rest to -inf.  (..., V) -> (..., V)

    As the book (``torch.where(logits < top_logits[:, -1], -inf, logits)``), ties with the k-th
    value are all kept, so a row may keep more than k entries.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    V = logits.shape[-1]
    if top_k >= V:
        return logits.copy()
    kth = np.partition(logits, V - top_k, axis=-1)[..., V - top_k : V - top_k + 1]  # (..., 1)
    return np.where(logits < kth, -np.inf, logits)


def sample_next(
    logits: np.ndarray,
    temperature: float = 0.0,
    top_k: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Choose the next token of each row.  logits (B, V) -> ids (B,) int64

    ``temperature == 0``: argmax (greedy; top-k cannot change the argmax). Otherwise top-k filter,
    divide by the temperature, softmax (in float64) and draw one id per row by inverting the
    cumulative distribution with one uniform number per row from ``rng``.
    """
    if logits.ndim != 2:
        raise ValueError(f"sample_next expects logits of shape (B, V), got {logits.shape}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an rng (np.random.default_rng(seed))")
    probs = softmax_with_temperature(logits, temperature)  # (B, V) float64
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]  # (B, 1), uniform in [0, total)
    # the first index whose cdf exceeds u; a zero-probability id never has cdf[j] > cdf[j-1]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[1] - 1).astype(np.int64)


# --- the generation loops --------------------------------------------------------------------------
def _check_idx(model: Any, idx: Any) -> np.ndarray:
    if getattr(model.cfg, "num_classes", None) is not None:
        raise ValueError(f"this model has a classification head ({model.cfg.num_classes} classes), "
                         "not an LM head: it classifies texts and cannot generate tokens; "
                         "generate with a language model (num_classes=None)")
    idx = np.asarray(idx)
    if idx.ndim == 1:
        raise ValueError(f"idx must have shape (B, T); got a 1-D array of {idx.shape[0]} ids - "
                         "wrap it as idx[None, :] for a batch of one")
    if idx.ndim != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must have shape (B, T) with B, T >= 1, got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    V = model.cfg.vocab_size
    if idx.min() < 0 or idx.max() >= V:
        raise ValueError(f"token ids must be in [0, {V}), got min {idx.min()} max {idx.max()}")
    return idx.astype(np.int64)


def generate_text_simple(model: Any, idx: Any, max_new_tokens: int, context_size: int) -> np.ndarray:
    """The book's greedy loop (chapter 4), no cache: crop to ``context_size``, argmax, append.

    idx (B, T) -> (B, T + max_new_tokens)
    """
    idx = _check_idx(model, idx)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (B, <=context_size)
        logits = model.forward(idx_cond)[:, -1, :]  # (B, V): the last position predicts the next token
        idx_next = np.argmax(logits, axis=-1)[:, None]  # (B, 1)
        idx = np.concatenate([idx, idx_next], axis=1)  # (B, T + 1)
    return idx


def generate(
    model: Any,
    idx: Any,
    max_new_tokens: int,
    context_size: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Extend each row of ``idx`` by up to ``max_new_tokens`` tokens.  idx (B, T) -> (B, T + n)

    Args:
        model: a ``GPTModel`` (uses ``forward`` and, with ``use_cache``, ``minigpt.inference.kv_cache.KVCache``).
        context_size: the model sees at most the last ``context_size`` tokens (default and maximum:
            ``model.cfg.context_length``).
        temperature: 0 is greedy; > 0 samples from softmax(logits / temperature).
        top_k: sample only among the ``top_k`` largest logits (ties kept).
        eos_id: a row that produces it is finished; it is padded with ``eos_id`` afterwards and the
            loop ends early (n < max_new_tokens) once every row has finished.
        use_cache: reuse the keys and values of earlier tokens. While the sequence fits in
            ``context_size`` each step runs one token through the model; past that, the window
            slides and every position moves, so those steps recompute the window like the uncached
            path. The tokens are identical either way.
        seed / rng: the randomness for sampling (``rng`` wins); ignored when greedy.
    """
    idx = _check_idx(model, idx)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    T_max = model.cfg.context_length
    if context_size is None:
        context_size = T_max
    if not 1 <= context_size <= T_max:
        raise ValueError(f"context_size must be in [1, {T_max}] (the model's context_length), "
                         f"got {context_size}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if eos_id is not None and not 0 <= eos_id < model.cfg.vocab_size:
        raise ValueError(f"eos_id must be a token id in [0, {model.cfg.vocab_size}), got {eos_id}")
    if top_k is not None:
        top_k_filter(np.zeros((1, 1)), top_k)  # validates top_k up front
    if rng is None and temperature > 0:
        rng = np.random.default_rng(seed)

    B = idx.shape[0]
    out = np.empty((B, idx.shape[1] + max_new_tokens), dtype=np.int64)
    out[:, : idx.shape[1]] = idx
    n = idx.shape[1]  # tokens written so far
    finished = np.zeros(B, dtype=bool)
    cache = None
    if use_cache and max_new_tokens > 0:
        from minigpt.inference.kv_cache import KVCache

        cache = KVCache(model.cfg, batch_size=B, dtype=model.dtype, max_len=context_size)
    for _ in range(max_new_tokens):
        if cache is not None and n <= context_size:
            # prefill the whole prompt once, then one new token per step; positions continue
            new = out[:, cache.pos : n]  # (B, n - pos)
            logits = model.forward(new, kv_cache=cache)[:, -1, :]  # (B, V)
        else:
            logits = model.forward(out[:, max(0, n - context_size) : n])[:, -1, :]  # (B, V)
        idx_next = sample_next(logits, temperature, top_k, rng)  # (B,)
        if eos_id is not None:
            idx_next[finished] = eos_id  # finished rows are padded
            finished |= idx_next == eos_id
        out[:, n] = idx_next
        n += 1
        if eos_id is not None and finished.all():
            break
    return out[:, :n]


# --- text in, text out (the book's helpers) ----------------------------------------------------------
def text_to_token_ids(text: str, tokenizer: Any) -> np.ndarray:
    """The book's helper: encode ``text`` (``<|endoftext|>`` allowed) as a batch of one.  -> (1, T)"""
    ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    if len(ids) == 0:
        raise ValueError("the prompt is empty: give at least one character of text")
    return np.asarray(ids, dtype=np.int64)[None, :]


def token_ids_to_text(token_ids: Any, tokenizer: Any) -> str:
    """The book's helper: decode a (1, T) batch or a (T,) list of ids back to text."""
    ids = np.asarray(token_ids)
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"token_ids_to_text decodes one row; got a batch of {ids.shape[0]}")
        ids = ids[0]
    return tokenizer.decode([int(i) for i in ids])
