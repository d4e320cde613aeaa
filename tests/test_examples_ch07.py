"""The chapter 7 scripts (instruction finetuning, DPO) print the book's deterministic numbers and
exit non-zero on a mismatch (their offline training runs, --small, are run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("restore_global_settings", "one_numba_thread")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["ch07_instruction_finetuning", "ch07_dpo"])
def test_chapter_7_scripts_match(name, capsys):
    assert load(name).main([]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "[ok]" in out


def test_a_wrong_collate_is_reported(monkeypatch, capsys):
    """Negative control: a collate that keeps every padding target is caught."""
    mod = load("ch07_instruction_finetuning")
    real = mod.custom_collate_fn

    def keeps_padding(batch, *a, **kw):
        x, y = real(batch, *a, **kw)
        return x, np.where(y == -100, 50256, y)

    monkeypatch.setattr(mod, "custom_collate_fn", keeps_padding)
    assert mod.main([]) == 1
    assert "MISMATCH] collate targets" in capsys.readouterr().out


def test_a_reference_that_moves_is_reported(monkeypatch, capsys):
    """Negative control: a reference with other weights than the policy is not at ln 2."""
    mod = load("ch07_dpo")
    real = mod.GPTModel
    calls = []

    def other_seeds(cfg, seed=123, **kw):
        calls.append(seed)
        return real(cfg, seed=seed + len(calls), **kw)

    monkeypatch.setattr(mod, "GPTModel", other_seeds)
    assert mod.main([]) == 1
    assert "MISMATCH] step-0 loss" in capsys.readouterr().out
