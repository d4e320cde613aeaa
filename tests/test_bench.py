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


def test_config_long_is_t_1024_and_all_leaves_it_out(monkeypatch):
    """--config long: GPT-2's vocabulary, a whole 1024-token context, width 256, 8 heads, 4 layers,
    batch 2 x 1024; --config all stays small and gpt2 (the README table's rows). The report is
    faked: only which configs reach it is checked."""
    from minigpt.cli.bench import report
    from minigpt.cli.bench.configs import ALL, CONFIGS
    from minigpt.cli.dispatch import build_parser

    cfg, B, T = CONFIGS["long"]
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers, B, T) == \
        (50257, 1024, 256, 8, 4, 2, 1024)
    assert cfg.qkv_bias and cfg.tie_weights and cfg.drop_rate == 0.0
    seen = []
    monkeypatch.setattr(report, "run", lambda configs, *a, **k: seen.append(configs) or {})
    for name in ("long", "all"):
        assert cli.main(["bench", "--config", name, "--threads", "1"]) == 0
    assert seen == [["long"], ["small", "gpt2"]] and list(ALL) == ["small", "gpt2"]
    parser = build_parser()
    for name in CONFIGS:                                   # every config is selectable by name
        assert parser.parse_args(["bench", "--config", name]).config == name


def test_train_speed_ab_repeats_the_bench_configs():
    """benchmarks/train_speed_ab.py keeps its own copy (its torch child needs nothing from the
    project): the same shapes as the bench's configs."""
    from pathlib import Path

    from minigpt.cli.bench.configs import CONFIGS

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed_ab.py"
    spec = importlib.util.spec_from_file_location("train_speed_ab", path)
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    assert set(ab.CONFIGS) == set(CONFIGS) - {"tiny"}
    for name, shape in ab.CONFIGS.items():
        cfg, B, T = CONFIGS[name]
        assert shape == (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads,
                         cfg.n_layers, B, T), name
