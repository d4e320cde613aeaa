"""The chapter scripts in examples/ run and report every book number as matching.

ch05 (the 163M-parameter pretraining run) takes minutes and is run by hand; the others are quick.
Each script exits non-zero on a mismatch, so a test of its return code can fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The scripts are programs: ch03 sets NumPy's print options for its output. Put them back after.
pytestmark = pytest.mark.usefixtures("restore_global_settings")  # tests/conftest.py


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["ch02_working_with_text", "ch03_attention", "ch04_gpt_model"])
def test_chapter_script_matches_the_book(name, capsys):
    mod = load(name)
    assert mod.main() == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "[ok]" in out


def test_a_wrong_number_is_reported(monkeypatch, capsys):
    """Negative control: the scripts' checks can fail."""
    mod = load("ch03_attention")
    real_softmax = mod.softmax
    monkeypatch.setattr(mod, "softmax", lambda s: real_softmax(s * 1.01))
    assert mod.main() == 1
    assert "MISMATCH" in capsys.readouterr().out
