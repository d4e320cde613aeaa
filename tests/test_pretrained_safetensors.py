"""minigpt.weights.safetensors_io against the reference implementation (the ``safetensors`` package)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy as ref

from minigpt.weights.safetensors_io import (
    SafetensorsError,
    SafetensorsFile,
    load_file,
    read_header,
    save_file,
)

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8,
          np.bool_]


def sample(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, dt in enumerate(DTYPES):
        shape = [(3, 5), (7,), (2, 3, 4), (), (0, 4)][i % 5]
        out[f"t{i}.{np.dtype(dt).name}"] = np.asarray(rng.standard_normal(shape) * 50).astype(dt)
    return out


def test_ours_written_reference_read(tmp_path):
    t = sample()
    save_file(t, tmp_path / "a.safetensors", metadata={"format": "pt", "note": "x"})
    back = ref.load_file(str(tmp_path / "a.safetensors"))
    assert sorted(back) == sorted(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape
        assert np.array_equal(back[k], t[k])


def test_reference_written_ours_read(tmp_path):
    t = sample(1)
    ref.save_file(t, str(tmp_path / "b.safetensors"), metadata={"format": "np"})
    for mmap in (False, True):
        back = load_file(tmp_path / "b.safetensors", mmap=mmap)
        for k in t:
            assert back[k].shape == t[k].shape and np.array_equal(back[k], t[k]), k
    header, meta = read_header(tmp_path / "b.safetensors")
    assert meta == {"format": "np"} and header["t1.float32"] == ("F32", (7,))


def test_big_endian_input_is_stored_little_endian(tmp_path):
    a = np.arange(6, dtype=">f8").reshape(2, 3)
    save_file({"a": a}, tmp_path / "c.safetensors")
    assert np.array_equal(ref.load_file(str(tmp_path / "c.safetensors"))["a"], a)


def test_read_into_direct_and_converting(tmp_path):
    w = np.random.default_rng(2).standard_normal((37, 11)).astype(np.float32)
    save_file({"w": w}, tmp_path / "w.safetensors")
    with SafetensorsFile(tmp_path / "w.safetensors") as f:
        out32 = np.empty((37, 11), np.float32)
        f.read_into("w", out32)                         # same dtype: straight into the array
        assert np.array_equal(out32, w)
        out64 = np.empty((37, 11), np.float64)
        f.read_into("w", out64)                         # converted chunk by chunk
        assert np.array_equal(out64, w.astype(np.float64))
        strided = np.empty((11, 37), np.float64).T      # a non-contiguous target
        f.read_into("w", strided)
        assert np.array_equal(strided, w)
        with pytest.raises(ValueError, match="shape"):
            f.read_into("w", np.empty((11, 37), np.float32))


def test_bf16_is_widened_to_float32(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # exact bf16 truncation of x
    header = json.dumps({"b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(header)) + header +
                                              bits.tobytes())
    with SafetensorsFile(tmp_path / "bf.safetensors") as f:
        got = f.get("b")
    assert got.dtype == np.float32
    assert np.array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    assert np.allclose(got, x, rtol=1e-2)


def raw_file(path, header: dict, data: bytes, n_override=None):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", n_override if n_override is not None else len(h)) + h + data)
    return path


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 10, "truncated.*6 missing"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12, "needs 16 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "hole"),
    ({"a": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype 'Q8'"),
    ({"a": {"shape": [2]}}, b"", "bad header entry"),
])
def test_corrupt_headers_are_reported(tmp_path, header, data, match):
    p = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=match):
        SafetensorsFile(p)


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(SafetensorsError, match="implausible"):
        SafetensorsFile(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="too short"):
        SafetensorsFile(tmp_path / "y")
    raw_file(tmp_path / "z", {}, b"", n_override=500)
    with pytest.raises(SafetensorsError, match="inside the header"):
        SafetensorsFile(tmp_path / "z")
    (tmp_path / "j").write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(SafetensorsError, match="JSON"):
        SafetensorsFile(tmp_path / "j")
    with pytest.raises(FileNotFoundError):
        SafetensorsFile(tmp_path / "missing.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "m.safetensors"
    save_file({"a": np.ones(3)}, p)
    before = p.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_file({"a": np.zeros(1000)}, p)
    monkeypatch.undo()
    assert p.read_bytes() == before                     # the old file is intact
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="cannot be stored"):
        save_file({"a": np.array(["x"])}, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="str to str"):
        save_file({"a": np.ones(1)}, tmp_path / "s.safetensors", metadata={"n": 1})


def test_data_is_8_byte_aligned(tmp_path):
    save_file({"abc": np.ones(3, np.float64)}, tmp_path / "al.safetensors")
    (n,) = struct.unpack("<Q", (tmp_path / "al.safetensors").read_bytes()[:8])
    assert (8 + n) % 8 == 0
