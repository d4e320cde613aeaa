"""Peak memory and time of loading a GPT-2 124M-sized checkpoint, against the size of its weights.

    python benchmarks/pretrained_memory.py [--config gpt2] [--keep DIR]

Writes a checkpoint with GPT-2 124M's shapes and random float32 weights (HF names, ~498 MB) to a
temporary directory, then loads it in fresh subprocesses, one per method, and reports each one's
peak resident memory (``VmHWM``, reset to the current RSS just before loading through
``/proc/self/clear_refs``) above the process's memory just before loading:

  minigpt.from_pretrained        the loader: ``safetensors.safe_open``, each block of <= 16 MiB
                                 through its own short-lived handle, copied into the model's flat
                                 buffer
  model only                     the floor: an empty model of that size with every page touched
  safetensors.load_file + copy   the package's numpy loader (fresh arrays), then
                                 ``load_state_dict`` into the model: the weights are held twice
  safe_open, one handle + copy   one ``safe_open`` handle for the whole load, each tensor
                                 ``get_tensor`` then copied: the mapped pages the reads touch count
                                 as resident until the handle closes
  ..., float64                   the same into a float64 model (twice the weights' size): the
                                 float32 file is converted block by block

The file was just written, so it is in the page cache: the times are warm-cache times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ["model only", "minigpt.from_pretrained", "safetensors.load_file + copy",
           "safe_open, one handle + copy", "model only, float64", "minigpt.from_pretrained, float64"]


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM (the peak RSS) to the current RSS, so import-time peaks do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(method: str, path: str) -> None:
    """Runs in a fresh process; prints one JSON line."""
    import minigpt  # noqa: F401  (imports first, so they are in the baseline)
    from minigpt.weights import pretrained

    cfg = pretrained.config_from_hf(json.loads((Path(path) / "config.json").read_text()))
    reset_peak()
    before = status_mb("VmRSS")
    t0 = time.perf_counter()
    if method == "model only":
        m = pretrained._empty_model(cfg, np.float32)
        m.flat_params[...] = 1.0
    elif method == "minigpt.from_pretrained":
        m = pretrained.from_pretrained(path, dtype=np.float32)
    elif method == "model only, float64":
        m = pretrained._empty_model(cfg, np.float64)
        m.flat_params[...] = 1.0
    elif method == "minigpt.from_pretrained, float64":
        m = pretrained.from_pretrained(path, dtype=np.float64)   # converted in 16 MiB chunks
    elif method == "safetensors.load_file + copy":
        import safetensors.numpy
        state = safetensors.numpy.load_file(str(Path(path) / "model.safetensors"))
        m = pretrained._empty_model(cfg, np.float32)
        m.load_state_dict(state)
        del state
    elif method == "safe_open, one handle + copy":
        from safetensors import safe_open
        m = pretrained._empty_model(cfg, np.float32)
        with safe_open(str(Path(path) / "model.safetensors"), framework="numpy") as f:
            for k in f.keys():
                m.params[k.removeprefix("transformer.")][...] = f.get_tensor(k)
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    checksum = float(m.flat_params[::9973].astype(np.float64).sum())
    print(json.dumps({"method": method, "before_mb": before, "peak_mb": peak,
                      "seconds": seconds, "checksum": checksum}))


def write_checkpoint(directory: Path, name: str) -> int:
    from minigpt.config import PRETRAINED_CONFIGS
    from minigpt.model import param_shapes
    from minigpt.training.checkpoint import save_tensors
    from minigpt.weights.pretrained import config_to_hf

    cfg = PRETRAINED_CONFIGS[name]
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
               for k, s in param_shapes(cfg).items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config_to_hf(cfg)))
    return sum(t.nbytes for t in tensors.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="gpt2", choices=["gpt2", "gpt2-medium"])
    ap.add_argument("--keep", default=None, help="write the checkpoint here and keep it")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep) if args.keep else Path(tmp) / args.config
        n_bytes = write_checkpoint(d, args.config)
        file_mb = (d / "model.safetensors").stat().st_size / 2**20
        print(f"checkpoint: {args.config} shapes, float32, {n_bytes / 2**20:.1f} MiB of weights, "
              f"file {file_mb:.1f} MiB ({d})")
        print(f"{'method':<32s} {'RSS before':>10s} {'peak RSS':>9s} {'peak-before':>11s} "
              f"{'/ weights':>9s} {'time':>7s}")
        checksums = set()
        for method in METHODS:
            try:
                out = subprocess.run([sys.executable, __file__, "--child", method, str(d)],
                                     capture_output=True, text=True, check=True)
            except subprocess.CalledProcessError as e:
                if "No module named 'safetensors'" in e.stderr:
                    print(f"{method:<32s} skipped (the safetensors package is not installed)")
                    continue
                raise
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = r["peak_mb"] - r["before_mb"]
            print(f"{method:<32s} {r['before_mb']:>8.0f}MB {r['peak_mb']:>7.0f}MB "
                  f"{extra:>9.0f}MB {extra / (n_bytes / 2**20):>8.2f}x {r['seconds']:>6.2f}s")
            if not method.startswith("model only"):
                checksums.add(r["checksum"])
        if len(checksums) > 1:
            print(f"ERROR: the loaders disagree on the weights: {checksums}")
            return 1
        print("all loaders read the same weights (checksum of every 9973rd parameter)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
