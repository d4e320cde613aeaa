"""The PyTorch side of ``minigpt bench`` is a plain PyTorch process, and the spread/flag logic.

``torch_child.py`` must never import minigpt, kernels or Numba: checked statically on its source
(always, no torch needed) and, when torch is installed, on the modules a real child loaded.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.cli.bench import spread
from minigpt.cli.bench.isolated import TORCH_CHILD

ALLOWED = {"__future__", "ctypes", "json", "os", "resource", "sys", "time", "numpy", "torch",
           "safetensors"}
# the child's interpreter: MINIGPT_BENCH_TORCH_PYTHON (e.g. a venv with torch only), else this one
TORCH_PYTHON = os.environ.get("MINIGPT_BENCH_TORCH_PYTHON") or sys.executable
HAS_TORCH = ("MINIGPT_BENCH_TORCH_PYTHON" in os.environ
             or importlib.util.find_spec("torch") is not None)


def imported_top_levels(source: str) -> set[str]:
    """Top-level package of every import statement in ``source`` (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # a relative import: the package
                names.add("." * node.level + (node.module or ""))
            else:
                names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__"):
            names.add("<dynamic import>")
    return names


def test_torch_child_imports_only_stdlib_numpy_safetensors_torch():
    found = imported_top_levels(TORCH_CHILD.read_text("utf-8"))
    assert found <= ALLOWED, f"torch_child.py imports {sorted(found - ALLOWED)}"
    assert {"torch", "numpy", "safetensors"} <= found


def test_decode_bandwidth_peer_imports_only_stdlib_and_torch():
    """benchmarks/decode_bandwidth_torch.py is the PyTorch side of decode_bandwidth.py: plain too."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_bandwidth_torch.py"
    found = imported_top_levels(path.read_text("utf-8"))
    assert found <= {"__future__", "argparse", "time", "torch"}, sorted(found)


@pytest.mark.parametrize("line", ["from minigpt.config import GPTConfig", "import kernels.blas",
                                  "from . import configs", "import numba",
                                  "m = importlib.import_module('minigpt')"])
def test_import_check_catches_a_foreign_import(line):
    """Negative control: each of these lines added to the child would be caught."""
    found = imported_top_levels(TORCH_CHILD.read_text("utf-8") + "\n" + line + "\n")
    assert not found <= ALLOWED


def test_torch_child_is_run_by_path_without_its_directory_on_sys_path():
    """``-m minigpt...`` would import the package; ``-P`` keeps the sibling modules unimportable."""
    import inspect

    from minigpt.cli.bench import isolated
    src = inspect.getsource(isolated.run_torch_child)
    assert '"-P", str(TORCH_CHILD)' in src and "-m" not in src


@pytest.mark.skipif(not HAS_TORCH, reason="runs a real PyTorch child: needs torch")
def test_torch_child_process_loads_no_minigpt_kernels_or_numba(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"task": "info", "threads": 1}))
    out = subprocess.run([TORCH_PYTHON, "-P", str(TORCH_CHILD), str(spec)], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1])["foreign_modules"] == []


def test_a_child_started_as_a_minigpt_module_would_load_minigpt_and_numba():
    """Control for the check above: the old way (``-m minigpt.cli.bench.isolated``) loads them."""
    code = ("import minigpt.cli.bench.isolated, sys; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'minigpt', 'numba'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['minigpt', 'numba']"


def test_side_is_median_and_extremes_of_the_processes():
    s = spread.side([5000.0, 8000.0, 5100.0, 7900.0, 5050.0])
    assert s["tok_s"] == 5100.0 and s["tok_s_range"] == (5000.0, 8000.0)
    with pytest.raises(ValueError, match="at least one process"):
        spread.side([])


def test_ratio_spread_and_flag():
    steady = spread.side([6800.0, 6835.0, 6990.0])
    bimodal = spread.side([4999.0, 6800.0, 8000.0])
    r = spread.ratio(steady, bimodal)
    assert r["ratio"] == pytest.approx(6835 / 6800)
    assert r["ratio_range"] == pytest.approx((6800 / 8000, 6990 / 4999))
    assert r["flagged"]                                  # 0.55 wide, 0.005 from 1
    clear = spread.ratio(spread.side([150.0, 152.0, 155.0]), spread.side([100.0, 101.0, 103.0]))
    assert clear["ratio"] == pytest.approx(152 / 101) and not clear["flagged"]   # control


def test_flag_boundary():
    assert spread.flagged(1.2, 1.0, 1.3)                 # 0.3 wide > 0.2
    assert not spread.flagged(1.2, 1.1, 1.25)            # 0.15 wide < 0.2
    assert spread.flagged(0.8, 0.7, 0.95)                # below 1 too: 0.25 > 0.2
    assert not spread.flagged(0.5, 0.45, 0.55)


def test_a_missing_torch_interpreter_is_a_clear_error(monkeypatch):
    from minigpt.cli.bench import isolated

    monkeypatch.setenv("MINIGPT_BENCH_TORCH_PYTHON", "/nonexistent/python")
    with pytest.raises(ValueError, match="no such interpreter"):
        isolated.torch_info()


def test_without_torch_the_probe_says_so(monkeypatch):
    """The interpreter runs but has no torch (this venv, when torch is absent): None, not an error."""
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this interpreter")
    from minigpt.cli.bench import isolated

    monkeypatch.delenv("MINIGPT_BENCH_TORCH_PYTHON", raising=False)
    assert isolated.torch_info() is None
