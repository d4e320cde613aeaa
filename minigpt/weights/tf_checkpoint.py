"""Read OpenAI's TensorFlow GPT-2 checkpoints, the ones the book's ``gpt_download.py`` fetches,
without TensorFlow.

    gpt2/124M/                         (the book: download_and_load_gpt2("124M", "gpt2"))
      hparams.json                     {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, ...}
      model.ckpt.index                 name -> (dtype, shape, shard, offset, size, crc32c)
      model.ckpt.data-00000-of-00001   the raw little-endian tensor bytes, back to back
      checkpoint, model.ckpt.meta, encoder.json, vocab.bpe   (not needed here)

The ``.index`` file is a LevelDB-format table (an "SSTable"): sorted key/value blocks, an index
block pointing at them, and a 48-byte footer ending in a magic number. Each value is a protocol
buffer ``BundleEntryProto``; the entry with the empty key is the ``BundleHeaderProto`` (number of
shards, byte order). Both are decoded here by hand: a varint reader and a field loop are all the
protobuf this needs. Each tensor's bytes are checked against the CRC32C stored beside it
(TensorFlow stores it "masked": rotated right by 15 bits, plus 0xa282ead8).

``TFCheckpoint`` exposes the variables under minigpt's (Hugging Face's) names, with OpenAI's
leading 1 of the conv weights squeezed away ((1, C, 3C) -> (C, 3C); the bytes are the same), so
``minigpt.weights.pretrained`` loads it exactly like a safetensors file. No transposes are needed: TF's
conv1d weights are already (in, out), the ``x @ W`` layout.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from minigpt.config import GPTConfig
from minigpt.params import param_table

_MAGIC = 0xDB4775248B80FB57
# TensorFlow DataType enum -> little-endian NumPy dtype (bfloat16 is read as its raw bits)
_TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "|u1", 5: "<i2", 6: "|i1", 9: "<i8", 10: "|b1",
              14: "<u2", 17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}
def tf_names(tf_keys) -> dict[str, str]:
    """OpenAI's TF names -> minigpt's, read from the parameter table's ``tf_name`` column for as many
    blocks as the keys hold (names do not depend on the sizes; OpenAI's models have the q/k/v bias
    and a tied head)."""
    blocks = [int(m.group(1)) for k in tf_keys if (m := re.match(r"^model/h(\d+)/", k))]
    cfg = GPTConfig(vocab_size=1, context_length=1, emb_dim=1, n_heads=1,
                    n_layers=max(blocks, default=0) + 1, qkv_bias=True, tie_weights=True)
    return {s.tf_name: s.name for s in param_table(cfg) if s.tf_name}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint that cannot be read (truncated, corrupt, unsupported)."""


# --- protobuf and table primitives ----------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint in the checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints as int, others as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire}")
        out.append((field, value))
    return out


def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The key/value entries of one table block (keys are prefix-compressed)."""
    if offset + size + 5 > len(data):
        raise TFCheckpointError("the checkpoint index is truncated (a block runs past its end)")
    if data[offset + size] != 0:  # the 5-byte trailer: compression type, then crc
        raise TFCheckpointError("the checkpoint index uses a compressed (snappy) block; only "
                                "uncompressed indexes (what TensorFlow writes) are supported")
    block = data[offset:offset + size]
    n_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def read_index(path: str | os.PathLike) -> dict[str, bytes]:
    """All entries of a TensorFlow table file: {key: value bytes}."""
    data = Path(path).read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise TFCheckpointError(f"{path} is not a TensorFlow checkpoint index (bad footer magic; "
                                f"truncated or a different file?)")
    footer = data[-48:]
    _, pos = _varint(footer, 0)            # metaindex handle (unused)
    _, pos = _varint(footer, pos)
    index_off, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    out: dict[str, bytes] = {}
    for _, handle in _block_entries(data, index_off, index_size):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(data, off, size):
            out[key.decode("utf-8")] = value
    return out


# --- CRC32C (Castagnoli), for the per-tensor checksums ---------------------------------------------
def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc32c_table()
_crc_kernel = None


def crc32c(data: np.ndarray | bytes, crc: int = 0) -> int:
    """CRC32C of ``data`` (a byte buffer), continuing from ``crc``. A Numba loop (~1 GB/s)."""
    global _crc_kernel
    if _crc_kernel is None:
        from numba import njit

        @njit(cache=True, nogil=True)
        def kernel(buf, crc, table):  # pragma: no cover - compiled
            c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
            for i in range(buf.shape[0]):
                c = table[(c ^ np.uint32(buf[i])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
            return c ^ np.uint32(0xFFFFFFFF)

        _crc_kernel = kernel
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else data.reshape(-1).view(np.uint8)
    return int(_crc_kernel(buf, np.uint32(crc), _CRC_TABLE))


def masked_crc32c(data) -> int:
    """TensorFlow's stored form of a CRC32C: rotate right by 15 bits, add 0xa282ead8."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- the checkpoint ---------------------------------------------------------------------------------
def find_prefix(path: str | os.PathLike) -> Path | None:
    """The checkpoint prefix (``.../model.ckpt``) for a directory or any of its files, or None."""
    p = Path(path)
    if p.is_dir():
        ckpt_file = p / "checkpoint"
        if ckpt_file.is_file():   # 'model_checkpoint_path: "model.ckpt"'
            m = re.search(r'model_checkpoint_path:\s*"([^"]+)"', ckpt_file.read_text())
            if m:  # relative (OpenAI's) or absolute (a moved folder: try its base name here)
                for cand in (p / m.group(1), p / Path(m.group(1)).name):
                    if cand.with_name(cand.name + ".index").is_file():
                        return cand
        found = sorted(p.glob("*.index"))
        return found[0].with_suffix("") if len(found) == 1 else None
    name = p.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)])
    if re.search(r"\.data-\d{5}-of-\d{5}$", name):
        return p.with_name(re.sub(r"\.data-\d{5}-of-\d{5}$", "", name))
    if p.with_name(name + ".index").is_file():
        return p
    return None


def hparams_to_hf(h: dict) -> dict:
    """OpenAI's hparams.json -> the Hugging Face config keys minigpt reads."""
    try:
        return {"model_type": "gpt2", "vocab_size": h["n_vocab"], "n_positions": h["n_ctx"],
                "n_embd": h["n_embd"], "n_head": h["n_head"], "n_layer": h["n_layer"]}
    except KeyError as e:
        raise TFCheckpointError(f"hparams.json lacks {e}; expected n_vocab, n_ctx, n_embd, "
                                f"n_head, n_layer") from None


class TFCheckpoint:
    """A TF checkpoint's variables under minigpt's names; the interface of ``SafetensorsFile``
    that ``minigpt.weights.pretrained`` uses (``keys``, ``shape``, ``read_into``, ``get``).

    ``verify``: check each tensor's CRC32C as it is read (about 1 s per GB).
    """

    def __init__(self, prefix: str | os.PathLike, verify: bool = True):
        self.prefix = Path(prefix)
        self.path = self.prefix.with_name(self.prefix.name + ".index")
        if not self.path.is_file():
            raise FileNotFoundError(f"no TensorFlow checkpoint index at {self.path}")
        self.verify = verify
        entries = read_index(self.path)
        header = dict(_proto_fields(entries.pop("", b"")))
        n_shards = int(header.get(1, 1))
        if int(header.get(2, 0)) != 0:
            raise TFCheckpointError(f"{self.path}: a big-endian checkpoint; not supported")
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], Path, int, int, int | None, str]] = {}
        names = tf_names(entries)
        for tf_name, value in entries.items():
            f = _proto_fields(value)
            fields = dict(f)
            if 7 in fields:
                raise TFCheckpointError(f"{self.path}: {tf_name!r} is stored in slices; not supported")
            code = int(fields.get(1, 0))
            if code not in _TF_DTYPES:
                raise TFCheckpointError(f"{self.path}: {tf_name!r} has TensorFlow dtype {code}; "
                                        f"supported: {sorted(_TF_DTYPES)}")
            dims = [dict(_proto_fields(d)).get(1, 0) for k, d in _proto_fields(fields.get(2, b""))
                    if k == 2]
            shape = tuple(int(d) for d in dims)
            shard = int(fields.get(3, 0))
            offset, size = int(fields.get(4, 0)), int(fields.get(5, 0))
            crc = struct.unpack("<I", fields[6])[0] if 6 in fields else None
            data = self.prefix.with_name(f"{self.prefix.name}.data-{shard:05d}-of-{n_shards:05d}")
            dtype = np.dtype(_TF_DTYPES[code])
            if size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise TFCheckpointError(f"{self.path}: {tf_name!r} {shape} has {size} bytes; corrupt")
            name, shape = self._rename(tf_name, shape, names)
            self._entries[name] = (dtype, shape, data, offset, size, crc, tf_name)
        for _, _, data, offset, size, _, tf_name in self._entries.values():
            if not data.is_file():
                raise FileNotFoundError(f"{data} is missing (the checkpoint's data file for "
                                        f"{tf_name!r})")
            if offset + size > data.stat().st_size:
                raise TFCheckpointError(f"{data} is truncated: {tf_name!r} ends at byte "
                                        f"{offset + size}, the file has {data.stat().st_size}")

    @staticmethod
    def _rename(tf_name: str, shape: tuple[int, ...],
                names: dict[str, str]) -> tuple[str, tuple[int, ...]]:
        if tf_name not in names:
            return tf_name, shape  # unknown: kept, so the strict loader reports it by its TF name
        name = names[tf_name]
        if name.endswith(".weight") and len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]  # OpenAI's conv1d weights are (1, in, out)
        return name, shape

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def tf_name(self, name: str) -> str:
        return self._entries[name][6]

    def read_into(self, name: str, out: np.ndarray) -> None:
        dtype, shape, data, offset, size, crc, tf_name = self._entries[name]
        if tuple(out.shape) != shape:
            raise ValueError(f"{tf_name}: shape {shape}, target {out.shape}")
        direct = out.dtype == dtype and out.flags.c_contiguous
        buf = out if direct else np.empty(shape, dtype)
        with open(data, "rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(buf.reshape(-1).view(np.uint8))) != size:
                raise TFCheckpointError(f"{data}: truncated while reading {tf_name!r}")
        if self.verify and crc is not None and masked_crc32c(buf) != crc:
            raise TFCheckpointError(f"{data}: {tf_name!r} fails its CRC32C check; the file is "
                                    f"corrupt, download it again")
        if not direct:
            out[...] = buf

    def get(self, name: str, dtype=None) -> np.ndarray:
        out = np.empty(self.shape(name), dtype or self._entries[name][0])
        self.read_into(name, out)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_hparams(prefix: Path) -> dict | None:
    """The HF-style config from ``hparams.json`` beside the checkpoint, or None."""
    h = prefix.parent / "hparams.json"
    if not h.is_file():
        return None
    try:
        return hparams_to_hf(json.loads(h.read_text()))
    except json.JSONDecodeError as e:
        raise TFCheckpointError(f"{h} is not valid JSON ({e})") from None
