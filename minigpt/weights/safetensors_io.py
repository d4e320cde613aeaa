"""Read and write the safetensors format by hand: zero-copy reads, atomic writes, strict checks.

The format (https://huggingface.co/docs/safetensors) is three parts:

    [8 bytes: n, little-endian u64] [n bytes: JSON header] [raw little-endian tensor bytes]

The header maps each tensor name to ``{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}``
(offsets relative to the byte right after the header) and may hold ``"__metadata__"``: str -> str.

Why not ``safetensors.numpy.load_file``: it returns fresh arrays, so loading a model through it holds
the file's bytes twice (its arrays, then the model's own buffer). Here a tensor is either read
straight into the caller's array with ``readinto`` (no intermediate copy at all), or exposed as a
read-only ``np.memmap`` whose pages the OS brings in on demand. ``benchmarks/pretrained_memory.py``
measures the difference.

Every header is validated before a byte of data is used: offsets inside the file, no overlaps, no
holes, byte counts equal to ``prod(shape) * itemsize``. A truncated download therefore fails with
a message that says "truncated" and by how many bytes, instead of a confusing reshape error.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

# safetensors dtype code -> little-endian NumPy dtype. BF16 has no NumPy dtype: it is read as
# uint16 and widened to float32 by shifting into the high half (bfloat16 is float32's top 16 bits).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES: dict[str, str] = {  # NumPy dtype.str (native or little-endian) -> safetensors code
    "<f8": "F64", "<f4": "F32", "<f2": "F16", "<i8": "I64", "<i4": "I32", "<i2": "I16",
    "|i1": "I8", "<u8": "U64", "<u4": "U32", "<u2": "U16", "|u1": "U8", "|b1": "BOOL",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit
_CHUNK = 16 * 1024 * 1024  # bytes per read when converting dtypes on the way in


class SafetensorsError(ValueError):
    """A file that is not valid safetensors (truncated, corrupt header, bad offsets)."""


class SafetensorsFile:
    """An open safetensors file: its header parsed and checked, its tensors read on demand.

    >>> with SafetensorsFile("model.safetensors") as f:
    ...     f.keys(); f.shape("wte.weight"); f.read_into("wte.weight", out)   # out: (V, C) array

    Nothing is read beyond the header until a tensor is asked for.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no safetensors file at {self.path}")
        self._f = open(self.path, "rb")  # noqa: SIM115 (closed by close()/__exit__)
        try:
            self._parse_header()
        except Exception:
            self._f.close()
            raise

    # --- header -----------------------------------------------------------------------------------
    def _parse_header(self) -> None:
        where = str(self.path)
        file_size = os.fstat(self._f.fileno()).st_size
        if file_size < 8:
            raise SafetensorsError(
                f"{where}: {file_size} bytes is too short to be a safetensors file (a truncated or "
                f"empty download?); delete it and download it again"
            )
        (n,) = struct.unpack("<Q", self._f.read(8))
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(
                f"{where}: header length {n} is implausible (limit {MAX_HEADER_BYTES}); "
                f"this is not a safetensors file (a PyTorch .pth or an HTML error page?)"
            )
        if 8 + n > file_size:
            raise SafetensorsError(
                f"{where}: truncated inside the header ({file_size} bytes, the header alone needs "
                f"{8 + n}); delete it and download it again"
            )
        raw = self._f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{where}: the JSON header is corrupt ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{where}: the header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.file_size = file_size
        self._info: dict[str, tuple[np.dtype, str, tuple[int, ...], int, int]] = {}
        spans = []
        for name, entry in header.items():
            try:
                code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{where}: bad header entry for {name!r}: {entry!r}") from None
            if code not in DTYPES:
                raise SafetensorsError(
                    f"{where}: tensor {name!r} has dtype {code!r}; supported: {sorted(DTYPES)}"
                )
            shape = tuple(int(s) for s in shape)
            if any(s < 0 for s in shape) or not (0 <= begin <= end):
                raise SafetensorsError(f"{where}: bad shape or offsets for {name!r}: {entry!r}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[code].itemsize
            if end - begin != nbytes:
                raise SafetensorsError(
                    f"{where}: tensor {name!r} {code}{list(shape)} needs {nbytes} bytes but its "
                    f"offsets span {end - begin}; the header is corrupt"
                )
            self._info[name] = (DTYPES[code], code, shape, begin, end)
            spans.append((begin, end, name))
        spans.sort()
        cursor = 0
        for begin, end, name in spans:  # the data buffer must be tiled exactly, in some order
            if begin != cursor:
                kind = "overlaps the previous tensor" if begin < cursor else "leaves a hole before it"
                raise SafetensorsError(f"{where}: tensor {name!r} at byte {begin} {kind}")
            cursor = end
        if self.data_start + cursor > file_size:
            missing = self.data_start + cursor - file_size
            raise SafetensorsError(
                f"{where}: truncated: the header promises {self.data_start + cursor} bytes, the file "
                f"has {file_size} ({missing} missing). Delete it and download it again"
            )

    # --- queries ----------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def __len__(self) -> int:
        return len(self._info)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[2]

    def dtype_code(self, name: str) -> str:
        return self._entry(name)[1]

    def _entry(self, name: str):
        try:
            return self._info[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    # --- reading ----------------------------------------------------------------------------------
    def memmap(self, name: str) -> np.ndarray:
        """A read-only view of the tensor's bytes in the file (BF16 comes back as raw uint16).

        Pages are read by the OS when touched; the mapping lives as long as the returned array.
        """
        dtype, _, shape, begin, end = self._entry(name)
        if end == begin:  # mmap cannot map zero bytes
            return np.zeros(shape, dtype)
        return np.memmap(self._f, dtype=dtype, mode="r", offset=self.data_start + begin, shape=shape)

    def get(self, name: str, dtype=None) -> np.ndarray:
        """A fresh in-memory array (converted to ``dtype`` if given; BF16 widens to float32)."""
        _, code, shape, _, _ = self._entry(name)
        out_dtype = np.dtype(dtype) if dtype is not None else (
            np.dtype(np.float32) if code == "BF16" else DTYPES[code].newbyteorder("=")
        )
        out = np.empty(shape, out_dtype)
        self.read_into(name, out)
        return out

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fill ``out`` (same shape) with the tensor, converting dtype if needed.

        When ``out`` is C-contiguous with the file's dtype the bytes go straight from the file into
        ``out`` (``readinto``): no temporary array, no mapping. Otherwise the file is read in 16 MiB
        chunks and each chunk converted, so the extra memory is bounded whatever the tensor's size.
        """
        dtype, code, shape, begin, end = self._entry(name)
        if tuple(out.shape) != shape:
            raise ValueError(f"{self.path}: tensor {name!r} has shape {shape}, target has {out.shape}")
        offset = self.data_start + begin
        nbytes = end - begin
        direct = code != "BF16" and out.dtype == dtype and out.flags.c_contiguous
        if direct:
            self._readinto_exact(memoryview(out.reshape(-1).view(np.uint8)), offset, name)
            return
        if not out.flags.c_contiguous:  # a strided target (e.g. a transposed view): via one copy
            out[...] = self.get(name, out.dtype)
            return
        flat = out.reshape(-1)
        step = max(1, _CHUNK // dtype.itemsize)
        n = nbytes // dtype.itemsize
        buf = np.empty(min(step, max(n, 1)), dtype)
        for start in range(0, n, step):
            k = min(step, n - start)
            self._readinto_exact(memoryview(buf[:k].view(np.uint8)), offset + start * dtype.itemsize,
                                 name)
            flat[start:start + k] = _bf16_to_f32(buf[:k]) if code == "BF16" else buf[:k]

    def _readinto_exact(self, view: memoryview, offset: int, name: str) -> None:
        self._f.seek(offset)
        got = 0
        while got < len(view):
            k = self._f.readinto(view[got:])
            if not k:
                raise SafetensorsError(
                    f"{self.path}: truncated while reading {name!r} (file shrank while open?)"
                )
            got += k

    # --- context manager --------------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)


class ShardedSafetensors:
    """Several safetensors files read as one, as listed by an index (``model.safetensors.index.json``:
    ``{"metadata": {...}, "weight_map": {tensor name: shard file name}}``), the layout
    ``save_pretrained`` of transformers writes for a model bigger than its ``max_shard_size``
    (5 GB in transformers 4.x: gpt2-xl in float32 comes as two shards).

    The same interface as ``SafetensorsFile``. Every shard's header is validated; the index must
    name exactly the tensors the shards hold, each in the shard that holds it.
    """

    def __init__(self, index_path: str | os.PathLike):
        self.path = Path(index_path)
        try:
            index = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: not a valid JSON index ({e})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SafetensorsError(f"{self.path}: no \"weight_map\" (tensor -> shard file) in the index")
        self.metadata: dict[str, str] = index.get("metadata") or {}
        self._shards: dict[str, SafetensorsFile] = {}
        self._owner: dict[str, SafetensorsFile] = {}
        try:
            for shard in sorted(set(weight_map.values())):
                where = self.path.parent / shard
                if Path(shard).name != shard or not where.is_file():
                    raise FileNotFoundError(f"{self.path} lists shard {shard!r}, which is not in "
                                            f"{self.path.parent}; the download is incomplete")
                f = self._shards[shard] = SafetensorsFile(where)
                for k in f.keys():
                    if k in self._owner:
                        raise SafetensorsError(f"{self.path}: tensor {k!r} is stored in two shards "
                                               f"({self._owner[k].path.name} and {shard})")
                    self._owner[k] = f
            unlisted = sorted(set(self._owner) - set(weight_map))
            absent = sorted(k for k, v in weight_map.items()
                            if k not in self._owner or self._owner[k].path.name != v)
            if unlisted or absent:
                raise SafetensorsError(
                    f"{self.path}: the index and the shards disagree: in shards but not in the "
                    f"index {unlisted[:8]}, in the index but not in the shard it names {absent[:8]}"
                )
        except Exception:
            self.close()
            raise

    def keys(self) -> list[str]:
        return list(self._owner)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def __len__(self) -> int:
        return len(self._owner)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def _shard(self, name: str) -> SafetensorsFile:
        try:
            return self._owner[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shard(name).shape(name)

    def dtype_code(self, name: str) -> str:
        return self._shard(name).dtype_code(name)

    def memmap(self, name: str) -> np.ndarray:
        return self._shard(name).memmap(name)

    def get(self, name: str, dtype=None) -> np.ndarray:
        return self._shard(name).get(name, dtype)

    def read_into(self, name: str, out: np.ndarray) -> None:
        self._shard(name).read_into(name, out)

    def close(self) -> None:
        for f in self._shards.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_weights(path: str | os.PathLike) -> SafetensorsFile | ShardedSafetensors:
    """A ``.safetensors`` file, or the shards behind a ``*.safetensors.index.json``."""
    path = Path(path)
    return ShardedSafetensors(path) if path.name.endswith(".index.json") else SafetensorsFile(path)


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: the 16 bits become the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load_file(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, np.ndarray]:
    """All tensors of a file: in-memory copies, or read-only memory maps with ``mmap=True``."""
    with SafetensorsFile(path) as f:
        if mmap:
            return {k: f.memmap(k) for k in f}
        return {k: f.get(k) for k in f}


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict]:
    """``({name: (dtype code, shape)}, metadata)`` after full validation, reading no tensor data."""
    with SafetensorsFile(path) as f:
        return {k: (f.dtype_code(k), f.shape(k)) for k in f}, dict(f.metadata)


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as safetensors, atomically: a temporary file in the same directory,
    fsync, then ``os.replace``. A crash mid-write leaves the old file (or none), never half a file.

    Tensors are written in sorted-name order; any NumPy numeric or bool dtype is accepted and
    stored little-endian.
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise ValueError(f"safetensors metadata must map str to str; bad entries: {bad!r}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    cursor = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        le = a.dtype if a.dtype.byteorder in ("|", "<") else a.dtype.newbyteorder("<")
        code = _CODES.get(le.str)
        if code is None:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in safetensors")
        a = np.require(a, dtype=le, requirements="C")  # (ascontiguousarray would make 0-d 1-d)
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [cursor, cursor + a.nbytes]}
        cursor += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the data starts 8-byte aligned (as the reference does)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for a in arrays:
                if a.nbytes:
                    f.write(memoryview(a.reshape(-1).view(np.uint8)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
