"""``minigpt bench`` runs end to end on the tiny config (without PyTorch in the test environment),
prints its header, and its kernel section validates every kernel against its twin."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from minigpt import cli

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_bench_tiny_runs_and_prints_header(capsys, restore_global_settings):
    """(--threads 1 sets the process's threads, as a CLI run should; the fixture puts them back.)"""
    rc = cli.main(["bench", "--config", "tiny", "--steps", "1", "--rounds", "2", "--decode-tokens", "4",
                   "--threads", "1", "--only", "train,decode,profile"])
    out = capsys.readouterr().out
    assert rc == 0
    for needle in ("CPU", "BLAS", "threading layer", "Numba", "threads      minigpt 1",
                   "Training step", "KV-cached greedy decode", "Where a minigpt training step goes"):
        assert needle in out, f"{needle!r} missing from the bench output"
    assert "each in its own process, alternating" in out
    if not HAS_TORCH:
        assert "PyTorch not installed" in out
    # the tiny row has a positive tokens/s figure
    row = next(line for line in out.splitlines() if line.strip().startswith("tiny") and "[" in line)
    assert float(row.split()[2]) > 0


def test_bench_same_process_flag_runs_the_old_way(capsys, restore_global_settings):
    rc = cli.main(["bench", "--config", "tiny", "--steps", "1", "--threads", "1", "--only", "train",
                   "--same-process"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "interleaved in THIS process" in out and "each in its own process" not in out


def test_isolated_child_matches_in_process_loss(tmp_path):
    """The child loads the parent's weights and inputs: its first loss is the in-process one."""
    from safetensors.numpy import save_file

    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.cli.bench.isolated import run_minigpt_child
    from minigpt.cli.bench.model_bench import batch
    from minigpt.model import GPTModel

    cfg, B, T = CONFIGS["tiny"]
    model = GPTModel(cfg, seed=3, dtype=np.float32)      # not the child's own seed-0 init
    idx, targets = batch(cfg, B, T)
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, tmp_path / "w.st")
    save_file({"idx": idx, "targets": targets}, tmp_path / "i.st")
    spec = {"impl": "minigpt", "task": "train", "config": "tiny", "threads": 1, "steps": 2,
            "weights": str(tmp_path / "w.st"), "inputs": str(tmp_path / "i.st"), "warmup": 1,
            "lr": 4e-4, "wd": 0.1}
    res = run_minigpt_child(spec, str(tmp_path))
    assert len(res["times"]) == 2 and all(t > 0 for t in res["times"])
    assert res["first"] == pytest.approx(model.loss(idx, targets), rel=1e-6)


def test_bench_rejects_bad_options(capsys):
    assert cli.main(["bench", "--config", "tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli.main(["bench", "--config", "tiny", "--only", "nonsense"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_kernel_section_validates_against_twins():
    from minigpt.cli.bench import kernel_times

    rows = kernel_times.warm_times("tiny", repeats=1)
    ops = {r["op"] for r in rows}
    from minigpt.kernel_ops import PAIRS
    assert set(PAIRS) <= ops
    assert all(r["err"] < 1e-3 and r["numpy"] > 0 and r["numba"] > 0 for r in rows)


def test_validate_catches_a_wrong_kernel(monkeypatch):
    from minigpt import kernel_ops
    from minigpt.cli.bench import kernel_times

    ref, _ = kernel_ops.PAIRS["gelu_forward"]
    wrong = lambda x: (ref(x)[0] * np.float32(1.01), ref(x)[1])  # noqa: E731
    monkeypatch.setitem(kernel_ops.PAIRS, "gelu_forward", (ref, wrong))
    with pytest.raises(AssertionError, match="differs from its NumPy layer"):
        kernel_times.validate("gelu_forward", kernel_times.cases("tiny")["gelu_forward"])


def test_train_flops_counts_the_products():
    from minigpt.cli.bench.configs import CONFIGS
    from minigpt.cli.bench.model_bench import train_flops

    cfg, B, T = CONFIGS["small"]
    L, C, V = cfg.n_layers, cfg.emb_dim, cfg.vocab_size
    # 6 x (matrix parameters touched per token) x tokens, plus causal attention
    dense = 6 * (12 * L * C * C + V * C) * B * T
    attn = 3 * L * 2 * C * (T + 1) * B * T
    assert train_flops(cfg, B, T) == pytest.approx(dense + attn)
