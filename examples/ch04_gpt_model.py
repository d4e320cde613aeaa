"""Chapter 4 of "Build a Large Language Model (From Scratch)": implementing a GPT model.

    python examples/ch04_gpt_model.py

Builds the chapter's GPTModel(GPT_CONFIG_124M) with minigpt and checks the numbers that do not
depend on PyTorch's random numbers (book-notes §4): the token ids of the two example prompts, the
parameter counts and memory of all four GPT-2 sizes (163,009,536 and 124,412,160 "considering
weight tying", 621.83 MB, ...), the per-block counts of exercise 4.1, the layernorm and GELU
properties, and the shape of the untrained model's greedy continuation of "Hello, I am" (its
tokens differ from the book's: the random weights come from NumPy, not PyTorch). Exits non-zero
on a mismatch.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import minigpt
from minigpt import GPT_CONFIG_124M, GPTModel, Tokenizer, model_configs
from minigpt.config import size_mb
from minigpt.inference.generate import generate_text_simple
from minigpt.layers.gelu import gelu_forward
from minigpt.layers.layernorm import layernorm_forward

FAILED = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (book: {want})"))


def main() -> int:
    tok = Tokenizer.gpt2()
    # 4.1 a batch of two prompts
    batch = np.array([tok.encode("Every effort moves you"), tok.encode("Every day holds a")])  # (2, 4)
    check("batch ids", batch.tolist(), [[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])

    # 4.2 layer normalization: mean 0, variance 1 (biased variance, eps 1e-5) per row
    x = np.random.default_rng(123).normal(size=(2, 5))                          # (B, C)
    C = x.shape[-1]
    y, _ = layernorm_forward(x, np.ones(C), np.zeros(C))
    ok = np.allclose(y.mean(-1), 0, atol=1e-12) and np.allclose(y.var(-1), 1, atol=1e-4)
    print(f"[{'ok' if ok else 'MISMATCH'}] layernorm: means {y.mean(-1).round(6)}, "
          f"variances {y.var(-1).round(4)} (not exactly 1: eps)")
    FAILED.extend([] if ok else ["layernorm"])

    # 4.3 GELU (tanh approximation, as GPT-2): smooth, ~0 for large negative x, ~x for large x
    g, _ = gelu_forward(np.array([-8.0, -1.0, 0.0, 1.0, 8.0]))
    print("GELU(-8, -1, 0, 1, 8) =", g.round(4))

    # 4.6 the whole model; its parameters, as chapter 4 and exercise 4.2 count them
    cfg = GPT_CONFIG_124M
    total, no_head = cfg.n_params(include_head=True), cfg.n_params(include_head=False)
    check("parameters, GPT_CONFIG_124M", f"{total:,}", "163,009,536")
    check("without the output head (\"considering weight tying\")", f"{no_head:,}", "124,412,160")
    check("float32 size", f"{size_mb(4 * total):.2f} MB", "621.83 MB")
    C = cfg.emb_dim
    check("exercise 4.1, feed-forward per block", f"{C * 4 * C + 4 * C + 4 * C * C + C:,}", "4,722,432")
    check("exercise 4.1, attention per block", f"{3 * C * C + C * C + C:,}", "2,360,064")
    book = {"gpt2-medium (355M)": ("406,212,608", "354,749,440", "1549.58 MB"),
            "gpt2-large (774M)": ("838,220,800", "773,891,840", "3197.56 MB"),
            "gpt2-xl (1558M)": ("1,637,792,000", "1,557,380,800", "6247.68 MB")}
    for name, (want_total, want_tied, want_mb) in book.items():
        c = model_configs[name]                       # GPT_CONFIG_124M with another width and depth
        n = c.n_params(include_head=True)
        check(f"exercise 4.2, {name}",
              (f"{n:,}", f"{c.n_params(include_head=False):,}", f"{size_mb(4 * n):.2f} MB"),
              (want_total, want_tied, want_mb))
    tied_bias = cfg.replace(qkv_bias=True, tie_weights=True).n_params()
    check("OpenAI's layout (qkv bias, tied head)", f"{tied_bias:,}", "124,439,808")

    # 4.7 generating text with the untrained model
    t0 = time.perf_counter()
    model = GPTModel(cfg, seed=123)
    print(f"\nGPTModel(GPT_CONFIG_124M) built in {time.perf_counter() - t0:.1f} s: "
          f"{model.flat_params.size:,} parameters in one float32 buffer, "
          f"wte {model.params['wte.weight'].shape}, lm_head {model.params['lm_head.weight'].shape}")
    logits = model.forward(batch)                                                 # (2, 4, 50257)
    check("logits shape", logits.shape, (2, 4, 50257))
    encoded = np.array([tok.encode("Hello, I am")])                                # (1, 4)
    check("'Hello, I am'", encoded[0].tolist(), [15496, 11, 314, 716])
    out = generate_text_simple(model, encoded, max_new_tokens=6, context_size=cfg.context_length)
    check("greedy output length", out.shape, (1, 10))
    print("untrained continuation (random weights, so gibberish, and not the book's gibberish):",
          repr(tok.decode(out[0].tolist())))

    print(f"\nminigpt {minigpt.__version__}: "
          f"{'all numbers match the book' if not FAILED else 'MISMATCHES: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
