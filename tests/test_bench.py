"""``minigpt bench`` runs end to end on the tiny config (without PyTorch in the test environment),
prints its header, and its kernel section validates every kernel against its twin."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from minigpt import cli

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_bench_tiny_runs_and_prints_header(capsys):
    rc = cli.main(["bench", "--config", "tiny", "--steps", "1", "--decode-tokens", "4",
                   "--threads", "1", "--only", "train,decode,profile"])
    out = capsys.readouterr().out
    assert rc == 0
    for needle in ("CPU", "BLAS", "threading layer", "Numba", "threads      minigpt 1",
                   "Training step", "KV-cached greedy decode", "Where a minigpt training step goes"):
        assert needle in out, f"{needle!r} missing from the bench output"
    if not HAS_TORCH:
        assert "PyTorch not installed" in out
    # the tiny row has a positive tokens/s figure
    row = next(line for line in out.splitlines() if line.strip().startswith("tiny") and "[" in line)
    assert float(row.split()[2]) > 0


def test_bench_rejects_bad_options(capsys):
    assert cli.main(["bench", "--config", "tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli.main(["bench", "--config", "tiny", "--only", "nonsense"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_kernel_section_validates_against_twins():
    from minigpt.bench import kernel_times

    rows = kernel_times.warm_times("tiny", repeats=1)
    ops = {r["op"] for r in rows}
    import kernels
    assert set(kernels.PAIRS) <= ops
    assert all(r["err"] < 1e-3 and r["numpy"] > 0 and r["numba"] > 0 for r in rows)


def test_validate_catches_a_wrong_kernel(monkeypatch):
    import kernels
    from minigpt.bench import kernel_times

    ref, _ = kernels.PAIRS["gelu_forward"]
    wrong = lambda x: tuple(a * np.float32(1.01) for a in ref(x))  # noqa: E731
    monkeypatch.setitem(kernels.PAIRS, "gelu_forward", (ref, wrong))
    with pytest.raises(AssertionError, match="differs from its NumPy twin"):
        kernel_times.validate("gelu_forward", kernel_times.cases("tiny")["gelu_forward"])


def test_train_flops_counts_the_products():
    from minigpt.bench import CONFIGS
    from minigpt.bench.model_bench import train_flops

    cfg, B, T = CONFIGS["small"]
    L, C, V = cfg.n_layers, cfg.emb_dim, cfg.vocab_size
    # 6 x (matrix parameters touched per token) x tokens, plus causal attention
    dense = 6 * (12 * L * C * C + V * C) * B * T
    attn = 3 * L * 2 * C * (T + 1) * B * T
    assert train_flops(cfg, B, T) == pytest.approx(dense + attn)
