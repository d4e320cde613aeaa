"""minigpt's use of the ``safetensors`` package: block reads into a model's buffer, clear errors for
bad files, and the one atomic writer (``minigpt.training.checkpoint.save_tensors``)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy as st

from minigpt.weights import pretrained
from minigpt.training.checkpoint import save_tensors
from minigpt.weights.pretrained import SafetensorsError, SafetensorsWeights


def raw_file(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_written_file_is_plain_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    t = {"a": rng.standard_normal((3, 5)), "b": rng.standard_normal(7).astype(np.float16),
         "c": np.arange(6, dtype=">f4").reshape(2, 3),        # big-endian in, little-endian stored
         "d": np.asfortranarray(rng.standard_normal((4, 3)))}  # not C-contiguous in
    save_tensors(t, tmp_path / "a.safetensors", metadata={"format": "pt"})
    back = st.load_file(str(tmp_path / "a.safetensors"))
    assert sorted(back) == sorted(t)
    for k in t:
        assert back[k].shape == t[k].shape and np.array_equal(back[k], t[k]), k


@pytest.mark.parametrize("block_bytes", [pretrained._BLOCK_BYTES, 40, 7])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_block_reads_equal_the_package_and_convert(tmp_path, monkeypatch, block_bytes, out_dtype):
    """Tensors read in blocks of whole rows (here as small as one row) into a target of any float
    dtype equal what the package reads whole; F16/F32/F64 sources."""
    monkeypatch.setattr(pretrained, "_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(1)
    t = {"m16": rng.standard_normal((9, 4)).astype(np.float16), "m32": rng.standard_normal((11, 3)),
         "v": rng.standard_normal(13).astype(np.float32), "s": np.array(2.5, np.float32),
         "e": np.zeros((0, 4), np.float32)}
    t["m32"] = t["m32"].astype(np.float32)
    st.save_file(t, str(tmp_path / "b.safetensors"))
    w = SafetensorsWeights(tmp_path / "b.safetensors")
    assert sorted(w.keys()) == sorted(t) and w.shape("m16") == (9, 4) and w.shape("s") == ()
    for k, ref in t.items():
        out = np.full(ref.shape, np.nan, out_dtype)
        w.read_into(k, out)
        assert np.array_equal(out, ref.astype(out_dtype)), k
    rows_per_block = max(1, block_bytes // (3 * 8))   # rows are counted as float64
    assert len(list(w.blocks("m32"))) == (1 if block_bytes >= 11 * 3 * 8 else -(-11 // rows_per_block))
    with pytest.raises(ValueError, match=r"shape \(13,\), target has \(12,\)"):
        w.read_into("v", np.empty(12, np.float32))


@pytest.mark.parametrize("content,match", [
    (b"<html>404 Not Found</html>", "header too large"),
    (b"abc", "header too small"),
    (struct.pack("<Q", 4) + b"{no}", "not a readable safetensors file"),
])
def test_not_a_safetensors_file(tmp_path, content, match):
    (tmp_path / "x.safetensors").write_bytes(content)
    with pytest.raises(SafetensorsError, match=match) as e:
        SafetensorsWeights(tmp_path / "x.safetensors")
    assert "delete it and download it again" in str(e.value)


@pytest.mark.parametrize("header,data", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 10),   # truncated
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12),   # bad count
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),   # overlap
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),   # hole
    ({"a": {"shape": [2]}}, b""),                                                   # no dtype
])
def test_corrupt_headers_are_reported(tmp_path, header, data):
    p = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=f"{p}: not a readable safetensors file"):
        SafetensorsWeights(p)


def test_truncated_file_is_reported(tmp_path):
    save_tensors({"a": np.ones((100, 10), np.float32)}, tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-1000])
    with pytest.raises(SafetensorsError, match="incomplete metadata.*truncated or interrupted"):
        SafetensorsWeights(tmp_path / "t.safetensors")
    with pytest.raises(FileNotFoundError):
        SafetensorsWeights(tmp_path / "missing.safetensors")


def test_bf16_is_refused_clearly(tmp_path):
    p = raw_file(tmp_path / "bf.safetensors", {"w": {"dtype": "BF16", "shape": [2],
                                                    "data_offsets": [0, 4]}},
                 np.array([0x3F80, 0x4000], "<u2").tobytes())
    w = SafetensorsWeights(p)
    assert w.shape("w") == (2,)
    with pytest.raises(SafetensorsError, match="'w' is BF16.*save the checkpoint in float32"):
        w.read_into("w", np.empty(2, np.float32))


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "m.safetensors"
    save_tensors({"a": np.ones(3)}, p)
    before = p.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_tensors({"a": np.zeros(1000)}, p)
    monkeypatch.undo()
    assert p.read_bytes() == before                     # the old file is intact
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left


def test_save_rejects_bad_metadata(tmp_path):
    with pytest.raises(Exception, match="str"):  # the package's own check (a TypeError)
        save_tensors({"a": np.ones(1)}, tmp_path / "s.safetensors", metadata={"n": 1})
    assert list(tmp_path.iterdir()) == []
