"""minigpt/training/kernel_cache.py: after the warm-up, a training process compiles no kernel itself.

A kernel compiled in-process gives results that differ in the last bits from the same kernel loaded
from Numba's cache, which would break the bit-identical resume; the warm-up compiles them in a child.
This runs in a subprocess with an EMPTY Numba cache directory, so it sees what a fresh clone sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, numpy as np
from minigpt.config import GPTConfig
from minigpt.training.kernel_cache import compiled_in_process, warm_kernel_cache
from minigpt.model import GPTModel
from minigpt.training.optim import AdamW, clip_grad_norm_

out = {"warmed": warm_kernel_cache(np.float32)}
rng = np.random.default_rng(0)
# the shapes of real runs: the quick preset (T=64 >= 32: BLAS attention), a short-context run (T=16)
for C, H, T, B, V in ((192, 6, 64, 16, 1024), (48, 3, 16, 8, 300)):
    cfg = GPTConfig(vocab_size=V, context_length=T, emb_dim=C, n_heads=H, n_layers=2, drop_rate=0.1)
    model = GPTModel(cfg, seed=0)
    opt = AdamW(model, lr=1e-3, weight_decay=0.1)
    idx = rng.integers(0, V, (B, T))
    model.loss_and_grads(idx, idx, rng=rng)
    clip_grad_norm_(model, 1.0)
    opt.step()
    model.loss(idx, idx)
out["fresh_after_training"] = compiled_in_process()
# negative control: a float64 model was not warmed, so its kernels compile here and are detected
GPTModel(cfg, seed=0, dtype=np.float64).loss_and_grads(idx, idx)
out["fresh_after_float64"] = compiled_in_process()
print(json.dumps(out))
"""


def test_warm_up_covers_every_kernel_a_training_step_calls(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    env.pop("MINIGPT_WARM_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["warmed"] is True
    assert out["fresh_after_training"] == []
    assert out["fresh_after_float64"], "the detector must notice kernels compiled in this process"
