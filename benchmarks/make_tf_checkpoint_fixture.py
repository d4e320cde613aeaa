"""Write a tiny GPT-2 checkpoint in OpenAI's TensorFlow layout with TensorFlow itself, and check
that minigpt's TensorFlow-free reader (minigpt/weights/tf_checkpoint.py) reads every variable exactly.

Needs TensorFlow (NOT a dependency of minigpt or its tests):

    python3 -m venv /work/venv-tf && /work/venv-tf/bin/pip install tensorflow-cpu numpy
    PYTHONPATH=. /work/venv-tf/bin/python benchmarks/make_tf_checkpoint_fixture.py [--write-fixture]

The variables are named and shaped like OpenAI's released checkpoints (``model/wte``,
``model/h0/attn/c_attn/w`` of shape (1, C, 3C), ``model/h0/ln_1/g``, ...), saved by
``tf.compat.v1.train.Saver`` as ``model.ckpt.{index,data-00000-of-00001,meta}`` + ``checkpoint``,
with an ``hparams.json`` like OpenAI's. ``--write-fixture`` copies the files minigpt needs
(``checkpoint``, ``hparams.json``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``) to
tests/fixtures/gpt2_tf_tiny/ with ``expected.safetensors``: every variable as TensorFlow's own
``tf.train.load_variable`` returns it, under its TF name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import tensorflow as tf
except ImportError as e:
    print(f"skipped: this needs TensorFlow ({e}); see the docstring")
    sys.exit(0)

from minigpt.training.checkpoint import save_tensors as save_file
from minigpt.weights.tf_checkpoint import TFCheckpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2_tf_tiny"
HP = {"n_vocab": 101, "n_ctx": 16, "n_embd": 24, "n_head": 2, "n_layer": 2}
HP_124M = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}


def openai_variables(seed: int = 0, hp: dict = HP) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    V, T, C, L = hp["n_vocab"], hp["n_ctx"], hp["n_embd"], hp["n_layer"]

    def r(*shape, scale=0.2):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    v = {"model/wte": r(V, C), "model/wpe": r(T, C),
         "model/ln_f/g": 1 + r(C, scale=0.3), "model/ln_f/b": r(C, scale=0.1)}
    for i in range(L):
        h = f"model/h{i}/"
        for ln in ("ln_1", "ln_2"):
            v[h + ln + "/g"], v[h + ln + "/b"] = 1 + r(C, scale=0.3), r(C, scale=0.1)
        for name, (n_in, n_out) in {"attn/c_attn": (C, 3 * C), "attn/c_proj": (C, C),
                                    "mlp/c_fc": (C, 4 * C), "mlp/c_proj": (4 * C, C)}.items():
            v[h + name + "/w"] = r(1, n_in, n_out)      # OpenAI's conv1d layout
            v[h + name + "/b"] = r(n_out, scale=0.1)
    return v


def write_tf(directory: Path, variables: dict[str, np.ndarray], hp: dict = HP) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf_vars = [tf.compat.v1.get_variable(name, initializer=tf.constant(a))
                   for name, a in variables.items()]
        saver = tf.compat.v1.train.Saver(var_list=tf_vars, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(directory / "model.ckpt"))
    (directory / "hparams.json").write_text(json.dumps(hp, indent=2))
    return Path(prefix)


def time_124m() -> None:
    import time

    from minigpt.weights.pretrained import from_pretrained
    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_tf(Path(tmp) / "124M", openai_variables(1, HP_124M), HP_124M)
        size = Path(str(prefix) + ".data-00000-of-00001").stat().st_size
        for verify in (True, False):
            t0 = time.perf_counter()
            with TFCheckpoint(prefix, verify=verify) as f:
                for k in f.keys():
                    f.get(k)
            t1 = time.perf_counter()
            print(f"124M-shaped TF checkpoint ({size / 2**20:.1f} MiB): reading every tensor "
                  f"{'with' if verify else 'without'} CRC32C checks: {t1 - t0:.2f} s")
        t0 = time.perf_counter()
        m = from_pretrained(prefix.parent)
        print(f"from_pretrained({prefix.parent.name}/) -> {m.num_params:,} parameters in "
              f"{time.perf_counter() - t0:.2f} s (CRC32C checked)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-fixture", action="store_true")
    ap.add_argument("--time-124m", action="store_true",
                    help="also write a checkpoint with GPT-2 124M's shapes and time minigpt loading it")
    args = ap.parse_args()
    print(f"TensorFlow {tf.__version__}")
    if args.time_124m:
        time_124m()
    variables = openai_variables()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_tf(Path(tmp) / "124M-like", variables)
        listed = dict(tf.train.list_variables(str(prefix)))
        print(f"TensorFlow wrote {len(listed)} variables: {sorted(p.name for p in prefix.parent.iterdir())}")
        ours = TFCheckpoint(prefix)             # CRC32C of every tensor checked while reading
        failures = []
        truth = {}
        for tf_name in listed:
            t = tf.train.load_variable(str(prefix), tf_name)   # TensorFlow's own reader
            truth[tf_name] = t
            name = next(k for k in ours.keys() if ours.tf_name(k) == tf_name)
            got = ours.get(name)
            if not np.array_equal(got, np.squeeze(t, 0) if t.ndim == 3 else t):
                failures.append(tf_name)
        print(f"minigpt's reader: {len(ours.keys())} variables, CRC32C verified, "
              f"{len(listed) - len(failures)}/{len(listed)} identical to tf.train.load_variable")
        if args.write_fixture:
            FIXTURE.mkdir(parents=True, exist_ok=True)
            for f in ("checkpoint", "hparams.json", "model.ckpt.index",
                      "model.ckpt.data-00000-of-00001"):
                shutil.copy(prefix.parent / f, FIXTURE / f)
            save_file(truth, FIXTURE / "expected.safetensors", metadata={
                "generated_by": "benchmarks/make_tf_checkpoint_fixture.py",
                "tensorflow": tf.__version__})
            print(f"wrote {FIXTURE.relative_to(ROOT)}")
    if failures:
        print("FAILURES:", failures)
        return 1
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
