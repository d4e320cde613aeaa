"""Loading does not hold the weights twice (the full-size figures: benchmarks/pretrained_memory.py).

A fresh process loads a ~48 MiB checkpoint; its peak RSS may grow by the model's size plus a small
margin, never by twice the size (which is what a load-then-copy path costs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minigpt
from minigpt.weights.pretrained import save_pretrained

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import minigpt
    from minigpt.weights.pretrained import from_pretrained
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM) to the current
            f.write("5")                                 # RSS: import-time peaks must not count
    except OSError as e:
        print(json.dumps({"skip": f"cannot reset the peak RSS: {e}"}))
        sys.exit(0)
    before = status("VmRSS")
    m = from_pretrained(sys.argv[1], dtype=np.float32)
    peak = status("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "nbytes": m.flat_params.nbytes}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_of_loading_is_about_one_copy(tmp_path):
    cfg = minigpt.GPTConfig(vocab_size=50257, context_length=256, emb_dim=240, n_heads=4,
                            n_layers=1, drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = minigpt.GPTModel(cfg, seed=0, dtype=np.float32)
    save_pretrained(model, tmp_path, tokenizer=False)
    del model
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                         text=True, check=True, timeout=120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in r:
        pytest.skip(r["skip"])
    extra = r["peak"] - r["before"]
    assert r["nbytes"] > 40 * 2**20
    # one copy (the model) plus import-time noise; a second copy would be >= 2x
    assert extra < 1.3 * r["nbytes"], (extra / r["nbytes"], r)
