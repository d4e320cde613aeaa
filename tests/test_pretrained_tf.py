"""Reading OpenAI's TensorFlow checkpoint layout without TensorFlow (minigpt/weights/tf_checkpoint.py).

tests/fixtures/gpt2_tf_tiny was written by TensorFlow 2.21's ``tf.compat.v1.train.Saver`` with
OpenAI's variable names and shapes; expected.safetensors holds what ``tf.train.load_variable``
returns for each variable (benchmarks/make_tf_checkpoint_fixture.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.numpy

from minigpt.weights.pretrained import from_pretrained
from minigpt.weights.tf_checkpoint import TFCheckpoint, TFCheckpointError, crc32c, masked_crc32c

FIXTURE = Path(__file__).parent / "fixtures" / "gpt2_tf_tiny"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def truth() -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(FIXTURE / "expected.safetensors"))


def test_crc32c_check_values():
    assert crc32c(b"123456789") == 0xE3069283          # the standard CRC-32C check value
    assert crc32c(b"") == 0
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    assert masked_crc32c(b"") == 0xA282EAD8


def test_every_variable_read_exactly_as_tensorflow_does(truth):
    with TFCheckpoint(FIXTURE / "model.ckpt") as f:
        assert len(f.keys()) == len(truth) == 28
        for name in f.keys():
            want = truth[f.tf_name(name)]
            want = want[0] if want.ndim == 3 else want      # (1, in, out) conv weights squeezed
            got = f.get(name)
            assert got.dtype == np.float32 and np.array_equal(got, want), name


def test_names_map_to_minigpt_parameters(truth):
    m = from_pretrained(FIXTURE, dtype=np.float64)
    cfg = m.cfg
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == \
        (101, 16, 24, 2, 2)
    assert cfg.qkv_bias and cfg.tie_weights and cfg.drop_rate == 0.0
    tf_of = {"wte.weight": "model/wte", "wpe.weight": "model/wpe",
             "ln_f.weight": "model/ln_f/g", "ln_f.bias": "model/ln_f/b"}
    for i in range(2):
        for ln in ("ln_1", "ln_2"):
            tf_of[f"h.{i}.{ln}.weight"] = f"model/h{i}/{ln}/g"
            tf_of[f"h.{i}.{ln}.bias"] = f"model/h{i}/{ln}/b"
        for sub in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            tf_of[f"h.{i}.{sub}.weight"] = f"model/h{i}/{sub.replace('.', '/')}/w"
            tf_of[f"h.{i}.{sub}.bias"] = f"model/h{i}/{sub.replace('.', '/')}/b"
    assert sorted(tf_of) == sorted(m.params)
    for name, tf_name in tf_of.items():
        want = truth[tf_name]
        assert np.array_equal(m.params[name], (want[0] if want.ndim == 3 else want)), name


@pytest.mark.parametrize("spec", ["model.ckpt", "model.ckpt.index", DATA])
def test_prefix_or_any_of_its_files(spec):
    a = from_pretrained(FIXTURE / spec, dtype=np.float32)
    b = from_pretrained(FIXTURE, dtype=np.float32)
    assert np.array_equal(a.flat_params, b.flat_params)


def copy_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "124M"
    shutil.copytree(FIXTURE, d)
    (d / "expected.safetensors").unlink()
    return d


def test_without_checkpoint_file_or_hparams(tmp_path):
    d = copy_fixture(tmp_path)
    (d / "checkpoint").unlink()
    (d / "hparams.json").unlink()
    with pytest.raises(ValueError, match="n_heads"):          # width 24 is not a GPT-2 size
        from_pretrained(d)
    assert from_pretrained(d, n_heads=2).cfg.n_layers == 2


def test_corrupt_bytes_fail_the_crc(tmp_path):
    d = copy_fixture(tmp_path)
    raw = bytearray((d / DATA).read_bytes())
    raw[1234] ^= 0x01
    (d / DATA).write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match="CRC32C"):
        from_pretrained(d)


def test_truncated_data_file(tmp_path):
    d = copy_fixture(tmp_path)
    raw = (d / DATA).read_bytes()
    (d / DATA).write_bytes(raw[:-100])
    with pytest.raises(TFCheckpointError, match="truncated"):
        from_pretrained(d)


def test_truncated_index(tmp_path):
    d = copy_fixture(tmp_path)
    raw = (d / "model.ckpt.index").read_bytes()
    (d / "model.ckpt.index").write_bytes(raw[:-10])
    with pytest.raises(TFCheckpointError, match="not a TensorFlow checkpoint index"):
        from_pretrained(d)


def test_hparams_must_match_the_tensors(tmp_path):
    d = copy_fixture(tmp_path)
    h = json.loads((d / "hparams.json").read_text())
    h["n_layer"] = 3
    (d / "hparams.json").write_text(json.dumps(h))
    with pytest.raises(ValueError, match=r"missing \(\d+\): h\.2\."):
        from_pretrained(d)


def test_the_books_gpt2_folder_does_not_shadow_the_name(tmp_path, monkeypatch):
    """The book's download_and_load_gpt2("124M", "gpt2") leaves ./gpt2/124M/: "gpt2" stays a name,
    and the folder itself gets a hint."""
    shutil.copytree(FIXTURE, tmp_path / "gpt2" / "124M")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIGPT_OFFLINE", "1")
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # empty
    with pytest.raises(FileNotFoundError, match="MINIGPT_OFFLINE"):   # the name, not the folder
        from_pretrained("gpt2")
    with pytest.raises(FileNotFoundError, match=r"Did you mean .*gpt2/124M"):
        from_pretrained("./gpt2")
    assert from_pretrained("gpt2/124M").cfg.n_layers == 2
