"""Chapter 3 of "Build a Large Language Model (From Scratch)": coding attention mechanisms.

    python examples/ch03_attention.py

Walks the chapter's steps on its fixed 6x3 input ("Your journey starts with one step") with
minigpt's own functions, and checks the numbers that do not depend on PyTorch's random numbers
(book-notes §3): the scores and weights for the query x^2, its context vector, all six context
vectors, and the parameter count of a GPT-2-sized multi-head attention. Then it runs minigpt's
causal multi-head attention layer and shows the causal mask, dropout and the heads at work. The
script exits non-zero on a mismatch.
"""
from __future__ import annotations

import sys

import numpy as np

from minigpt.layers.attention import attention_forward, causal_softmax, softmax
from minigpt.layers.linear import linear_forward

FAILED = []


def check(label: str, got: np.ndarray, want, decimals: int = 4) -> None:
    """Compare to the book's printed numbers at the precision it prints."""
    got = np.round(np.asarray(got, dtype=np.float64), decimals)
    ok = np.allclose(got, want, atol=0.6 * 10**-decimals, rtol=0)
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got.tolist()}" + ("" if ok else f"  (book: {want})"))


def main() -> int:
    np.set_printoptions(precision=4, suppress=True)
    # 3.3.1 the input: six tokens, each a 3-d embedding
    inputs = np.array([[0.43, 0.15, 0.89],   # Your     (x^1)
                       [0.55, 0.87, 0.66],   # journey  (x^2)
                       [0.57, 0.85, 0.64],   # starts   (x^3)
                       [0.22, 0.58, 0.33],   # with     (x^4)
                       [0.77, 0.25, 0.10],   # one      (x^5)
                       [0.05, 0.80, 0.55]])  # step     (x^6)                           (T, C) = (6, 3)

    # attention scores of the query x^2: dot products with every input
    query = inputs[1]                                                          # (C,)
    scores = inputs @ query                                                    # (T,)
    check("scores for x^2", scores, [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])
    check("sum-normalised weights", scores / scores.sum(), [0.1455, 0.2278, 0.2249, 0.1285, 0.1077, 0.1656])
    weights = softmax(scores)                                                  # (T,) sums to 1
    check("softmax weights", weights, [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581])
    check("context vector z^2", weights @ inputs, [0.4419, 0.6515, 0.5683])    # (C,)

    # 3.3.2 every query at once: Z = softmax(X X^T) X
    context = softmax(inputs @ inputs.T) @ inputs                              # (T, T) @ (T, C)
    check("all context vectors", context,
          [[0.4421, 0.5931, 0.5790], [0.4419, 0.6515, 0.5683], [0.4431, 0.6496, 0.5671],
           [0.4304, 0.6298, 0.5510], [0.4671, 0.5910, 0.5266], [0.4177, 0.6503, 0.5645]])

    # 3.4 trainable weights: q = x Wq, k = x Wk, v = x Wv, scores scaled by 1/sqrt(d_k).
    # minigpt keeps the three projections as one fused matrix (C, 3C), as GPT-2 does.
    rng = np.random.default_rng(123)
    d_out = 2
    w_qkv = rng.random((3, 3 * d_out))                                         # (d_in, 3 d_out)
    qkv, _ = linear_forward(inputs[None], w_qkv, None)                         # (1, T, 3 d_out)
    q, k, v = np.split(qkv[0], 3, axis=-1)                                     # (T, d_out) each
    a = softmax(q @ k.T / np.sqrt(d_out))                                      # (T, T)
    print("\nself-attention, random weights (seed 123, so not the book's numbers):\n", a @ v)

    # 3.5 causal attention: future positions get -inf before the softmax, so their weight is 0
    a_causal = causal_softmax(q @ k.T / np.sqrt(d_out))                        # (T, T), lower-triangular
    print("causal attention weights:\n", a_causal)
    masked_then_renormalised = np.tril(a) / np.tril(a).sum(-1, keepdims=True)  # the chapter's first way
    ok = np.allclose(a_causal, masked_then_renormalised, rtol=0, atol=1e-15)
    ok &= bool(np.all(np.triu(a_causal, 1) == 0))
    print(f"[{'ok' if ok else 'MISMATCH'}] -inf before the softmax == tril + renormalise; "
          "no weight on a future token")
    FAILED.extend([] if ok else ["causal mask"])

    # dropout on the weights: the kept ones are scaled by 1/(1-p) (2 at the chapter's p = 0.5)
    keep = rng.random(a_causal.shape) >= 0.5
    print("dropout(0.5) of a row of ones:", np.where(keep[0], 1.0 / (1 - 0.5), 0.0))

    # 3.6 multi-head: minigpt's layer on a batch of two copies of the input, 2 heads of size 2;
    # then the parameter count at GPT-2's size: 768 -> 768 with 12 heads
    batch = np.stack([inputs, inputs])                                         # (B, T, C) = (2, 6, 3)
    C, H = 4, 2
    w_qkv = rng.normal(0, 0.5, (3, 3 * C))                                     # (d_in, 3C)
    qkv, _ = linear_forward(batch, w_qkv, None)                                # (B, T, 3C)
    out, _ = attention_forward(qkv, n_heads=H)                                 # (B, T, C): heads merged
    print(f"\nmulti-head attention, {H} heads of size {C // H}: output shape {out.shape}")
    d = 768
    n_mha = d * 3 * d + d * d + d   # fused qkv (no bias, as the book) + output projection with bias
    ok = n_mha == 2_360_064
    print(f"[{'ok' if ok else 'MISMATCH'}] parameters of a 768 -> 768, 12-head attention: {n_mha:,}")
    FAILED.extend([] if ok else ["MHA parameters"])

    print(f"\n{'all numbers match the book' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
