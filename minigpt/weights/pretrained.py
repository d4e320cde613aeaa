"""GPT-2 checkpoints in and out: Hugging Face safetensors, the book's converted files, names.

    model = from_pretrained("gpt2")                       # download (or cache) OpenAI's 124M weights
    model = from_pretrained("path/to/hf_dir", dtype=np.float64)   # config.json + model.safetensors
    model = from_pretrained("gpt2-small-124M.safetensors")        # the book's converted file
    save_pretrained(model, "out_dir")                     # loads in transformers' GPT2LMHeadModel

Two naming schemes are read (after dropping a ``transformer.`` prefix):

- **Hugging Face / OpenAI** (``wte.weight``, ``h.{i}.attn.c_attn.weight`` (C, 3C), ...): these are
  minigpt's own names and layout (``x @ W``, GPT-2's Conv1D), so each tensor is copied as it is.
- **The book's** (``tok_emb.weight``, ``trf_blocks.{i}.att.W_query.weight`` (C, C), ``ff.layers.0``,
  ``norm1.scale``, ``final_norm.shift``, ``out_head.weight``, ...): PyTorch ``nn.Linear`` stores
  (out, in), so each matrix is transposed, and W_query / W_key / W_value become the three column
  blocks of ``c_attn`` (the split the book's ``load_weights_into_gpt`` undoes).

Loading is strict: every tensor the configuration needs must be present with its shape, nothing
unknown may be left over (stored attention masks, ``h.{i}.attn.bias`` / ``attn.masked_bias`` and the
book's ``trf_blocks.{i}.att.mask``, are recognised buffers and skipped), and a head stored beside a
config that says "tied" must equal ``wte``. Files are read with the ``safetensors`` package, in blocks
of a few MiB copied straight into the model's flat parameter buffer, so the weights are not held
twice (``SafetensorsWeights``).
"""

from __future__ import annotations

import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from safetensors import SafetensorError, safe_open

from minigpt.weights import download, tf_checkpoint
from minigpt.atomic import write_text_atomic
from minigpt.training.checkpoint import save_tensors
from minigpt.config import PRETRAINED_CONFIGS, GPTConfig
from minigpt.model import GPTModel
from minigpt.params import Piece, param_shapes, param_table  # Piece: where a tensor sits in a file

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # sharded: model-00001-of-0000N.safetensors ...
CONFIG_FILE = "config.json"
LN_EPS = 1e-5  # minigpt's layernorm epsilon (GPT-2's)
# Heads of the four GPT-2 sizes, for files that come without a config (the book's converted ones).
STANDARD_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
# Buffers some checkpoints store beside the weights: the causal mask and its fill value.
_SKIP = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|trf_blocks\.\d+\.att\.mask)$")
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
_BLOCK_BYTES = 4 << 20  # bytes (counted as float64) read per safetensors handle, see below
_READABLE = ("F64", "F32", "F16")  # the dtypes read; anything else is refused


class SafetensorsError(ValueError):
    """A safetensors file that cannot be loaded: corrupt, truncated, or not the model it claims."""


# --- reading safetensors ----------------------------------------------------------------------------
class SafetensorsWeights:
    """One ``.safetensors`` file, or the shards a ``model.safetensors.index.json`` lists
    (``{"weight_map": {tensor: shard file}}``, what transformers' ``save_pretrained`` writes above
    its ``max_shard_size``), read with the ``safetensors`` package.

    ``safe_open`` maps the file into memory, and every page a read touches stays resident (and
    counts in the process's memory) until the handle is closed. So each block of at most 4 MiB is
    read through its own short-lived handle and copied into its place: loading 124M then costs the
    model's own buffer plus one block, not the file twice (``benchmarks/pretrained_memory.py``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: dict[str, Path] = {}               # tensor -> the file that holds it
        self._info: dict[str, tuple[str, tuple[int, ...]]] = {}   # tensor -> (dtype code, shape)
        if not self.path.name.endswith(".index.json"):
            self._add(self.path)
            return
        try:
            index = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: not a valid JSON index ({e})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SafetensorsError(f"{self.path}: no \"weight_map\" (tensor -> shard file) in the index")
        for shard in sorted(set(weight_map.values())):
            where = self.path.parent / shard
            if Path(shard).name != shard or not where.is_file():
                raise FileNotFoundError(f"{self.path} lists shard {shard!r}, which is not in "
                                        f"{self.path.parent}; the download is incomplete")
            self._add(where)
        unlisted = sorted(set(self._file) - set(weight_map))
        absent = sorted(k for k, v in weight_map.items()
                        if k not in self._file or self._file[k].name != v)
        if unlisted or absent:
            raise SafetensorsError(
                f"{self.path}: the index and the shards disagree: in shards but not in the "
                f"index {unlisted[:8]}, in the index but not in the shard it names {absent[:8]}")

    def _add(self, path: Path) -> None:
        with _open(path) as f:
            for k in f.keys():
                if k in self._file:
                    raise SafetensorsError(f"{self.path}: tensor {k!r} is stored in two shards "
                                           f"({self._file[k].name} and {path.name})")
                s = f.get_slice(k)
                self._file[k], self._info[k] = path, (s.get_dtype(), tuple(s.get_shape()))

    def keys(self) -> list[str]:
        return list(self._file)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][1]

    def blocks(self, name: str):
        """``(start, stop, rows)``: the tensor in blocks of whole rows (axis 0), <= 4 MiB."""
        code, shape = self._info[name]
        if code not in _READABLE:
            raise SafetensorsError(f"{self._file[name]}: tensor {name!r} is {code}; minigpt reads "
                                   f"{', '.join(_READABLE)} (NumPy has no bfloat16): save the "
                                   f"checkpoint in float32")
        row_bytes = 8 * math.prod(shape[1:])  # as if float64: equal shapes, equal blocks
        if not shape or row_bytes * shape[0] <= _BLOCK_BYTES:
            with _open(self._file[name]) as f:
                yield 0, (shape[0] if shape else None), _read(f, name, None)
            return
        step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
        for start in range(0, shape[0], step):
            stop = min(start + step, shape[0])
            with _open(self._file[name]) as f:
                yield start, stop, _read(f, name, slice(start, stop))

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fill ``out`` (the tensor's shape, any float dtype) block by block."""
        if tuple(out.shape) != self.shape(name):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {self.shape(name)}, target "
                             f"has {out.shape}")
        for start, stop, rows in self.blocks(name):
            if stop is None:  # a 0-d tensor
                out[...] = rows
            else:
                out[start:stop] = rows

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        out = np.empty(self.shape(name), dtype)
        self.read_into(name, out)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _open(path: Path):
    """``safe_open``, its errors (bad header, truncated data) said in minigpt's words."""
    try:
        return safe_open(str(path), framework="numpy")
    except SafetensorError as e:
        raise SafetensorsError(
            f"{path}: not a readable safetensors file (safetensors: {e}). A truncated or interrupted "
            f"download, or not a safetensors file at all (an HTML error page, a PyTorch .pth?): "
            f"delete it and download it again") from None


def _read(f, name: str, rows: slice | None) -> np.ndarray:
    try:
        return f.get_tensor(name) if rows is None else f.get_slice(name)[rows]
    except SafetensorError as e:  # e.g. the file shrank while it was being read
        raise SafetensorsError(f"cannot read tensor {name!r} ({e}); is the file complete?") from None


# --- configs ------------------------------------------------------------------------------------
def config_from_hf(d: dict[str, Any], drop_rate: float | None = None) -> GPTConfig:
    """A Hugging Face ``GPT2Config`` dict (config.json) -> GPTConfig, refusing what minigpt can't run.

    A config written by ``save_pretrained`` also carries minigpt's own config under ``"minigpt"``
    (it remembers ``qkv_bias=False``, which GPT-2's format cannot express).
    """
    if "emb_dim" in d:  # a minigpt GPTConfig dict (a training checkpoint's config.json)
        cfg = GPTConfig.from_dict(d)
        return cfg if drop_rate is None else cfg.replace(drop_rate=drop_rate)
    if d.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json has model_type {d.get('model_type')!r}; minigpt reads GPT-2 "
                         f"('gpt2') checkpoints only")
    missing = [k for k in ("vocab_size", "n_embd", "n_head", "n_layer") if k not in d]
    if missing or ("n_positions" not in d and "n_ctx" not in d):
        raise ValueError(f"config.json lacks {missing or ['n_positions']}; is it a GPT-2 config?")
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise ValueError(f"config.json asks for activation {act!r}; minigpt implements GPT-2's tanh "
                         f"GELU ('gelu_new') only")
    eps = float(d.get("layer_norm_epsilon", LN_EPS))
    if not math.isclose(eps, LN_EPS, rel_tol=1e-9):
        raise ValueError(f"config.json has layer_norm_epsilon={eps}; minigpt's layernorm uses {LN_EPS}")
    C = int(d["n_embd"])
    if d.get("n_inner") not in (None, 4 * C):
        raise ValueError(f"config.json has n_inner={d['n_inner']}; minigpt's MLP is 4 * n_embd = {4 * C}")
    for flag, want in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                       ("add_cross_attention", False)):
        if bool(d.get(flag, want)) != want:
            raise ValueError(f"config.json sets {flag}={d[flag]}; minigpt supports {want} only")
    own = d.get("minigpt") or {}
    if drop_rate is None:  # pretrained weights run without dropout (the book's NEW_CONFIG, ch05)
        drop_rate = 0.0
    try:
        return GPTConfig(
            vocab_size=int(d["vocab_size"]), context_length=int(d.get("n_positions", d.get("n_ctx"))),
            emb_dim=C, n_heads=int(d["n_head"]), n_layers=int(d["n_layer"]),
            drop_rate=float(drop_rate), qkv_bias=bool(own.get("qkv_bias", True)),
            tie_weights=bool(d.get("tie_word_embeddings", True)),
        )
    except ValueError as e:
        raise ValueError(f"config.json describes an impossible GPT-2 (n_embd={C}, "
                         f"n_head={d['n_head']}, ...): {e}") from None


def config_to_hf(cfg: GPTConfig, dtype=np.float32) -> dict[str, Any]:
    """GPTConfig -> a Hugging Face ``GPT2Config`` dict (what ``GPT2LMHeadModel`` reads)."""
    eos = min(50256, cfg.vocab_size - 1)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "layer_norm_epsilon": LN_EPS,
        "initializer_range": 0.02,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": True,
        "torch_dtype": np.dtype(dtype).name,  # transformers 4.x reads this key ...
        "dtype": np.dtype(dtype).name,        # ... and 5.x this one
        "minigpt": cfg.to_dict(),
    }


# --- key mapping --------------------------------------------------------------------------------
def _strip_prefix(keys: list[str]) -> dict[str, str]:
    """file key -> canonical key: drop ``transformer.`` (GPT2LMHeadModel) and ``model.``/``module.``."""
    out = {}
    for k in keys:
        c = k
        for prefix in ("module.", "model.", "transformer."):
            c = c.removeprefix(prefix)
        if c in out.values():
            raise SafetensorsError(f"the file holds {c!r} twice (with and without a prefix)")
        out[k] = c
    return out


def detect_format(canonical: set[str]) -> str:
    """'book' for the book's names (tok_emb, trf_blocks, ...), else 'hf'."""
    return "book" if ("tok_emb.weight" in canonical or any(k.startswith("trf_blocks.")
                                                            for k in canonical)) else "hf"


def head_key(fmt: str) -> str:
    return "out_head.weight" if fmt == "book" else "lm_head.weight"


def mapping(cfg: GPTConfig, fmt: str) -> dict[str, list[Piece]]:
    """minigpt parameter name -> the pieces of the file it is made of (canonical file keys), read
    from the parameter table's ``hf_name`` / ``book`` columns (``minigpt.params``)."""
    if fmt == "hf":
        return {s.name: [Piece(s.hf_name.removeprefix("transformer."))] for s in param_table(cfg)
                if s.hf_name is not None}
    return {s.name: list(s.book) for s in param_table(cfg)}


def _piece_shape(piece: Piece, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the file must store for ``piece`` of a parameter of ``param_shape``."""
    shape = list(param_shape)
    if piece.cols is not None:
        shape[-1] = piece.cols[1] - piece.cols[0]
    return tuple(reversed(shape)) if piece.transpose else tuple(shape)


def infer_config(shapes: dict[str, tuple[int, ...]], fmt: str, n_heads: int | None = None,
                 drop_rate: float | None = None) -> GPTConfig:
    """A GPTConfig from the tensor shapes alone (files without config.json).

    V, C come from the token embedding, T from the position embedding, L from the block indices,
    qkv_bias from the presence of the q/k/v bias. The head count is not visible in any shape: it is
    ``n_heads`` if given, else GPT-2's for that width (768 -> 12, 1024 -> 16, 1280 -> 20, 1600 -> 25).
    Whether the head is tied is decided later, by comparing it with ``wte``.
    """
    wte, wpe = ("tok_emb.weight", "pos_emb.weight") if fmt == "book" else ("wte.weight", "wpe.weight")
    for k in (wte, wpe):
        if k not in shapes or len(shapes[k]) != 2:
            raise ValueError(f"cannot infer the model's shape: the file has no 2-D {k!r} "
                             f"(its first keys: {sorted(shapes)[:8]})")
    (V, C), (T, C2) = shapes[wte], shapes[wpe]
    if C != C2:
        raise ValueError(f"{wte} is {shapes[wte]} but {wpe} is {shapes[wpe]}: widths differ")
    block = r"^trf_blocks\.(\d+)\." if fmt == "book" else r"^h\.(\d+)\."
    layers = {int(m.group(1)) for k in shapes if (m := re.match(block, k))}
    if not layers:
        raise ValueError("cannot infer the model's shape: the file holds no transformer blocks")
    if n_heads is None:
        if C not in STANDARD_HEADS:
            raise ValueError(f"the file has no config.json and width {C} is not a GPT-2 size; pass "
                             f"n_heads=... (the number of attention heads)")
        n_heads = STANDARD_HEADS[C]
    bias_key = "trf_blocks.0.att.W_query.bias" if fmt == "book" else "h.0.attn.c_attn.bias"
    return GPTConfig(vocab_size=V, context_length=T, emb_dim=C, n_heads=int(n_heads),
                     n_layers=max(layers) + 1, drop_rate=0.0 if drop_rate is None else drop_rate,
                     qkv_bias=bias_key in shapes, tie_weights=True)


# --- paths ----------------------------------------------------------------------------------------
def resolve(path_or_name: str | os.PathLike,
            **download_kwargs) -> tuple[Path, dict | None, str | None, str]:
    """-> (weights, config dict or None, known GPT-2 name or None, kind "safetensors" or "tf").

    Accepts a directory (``model.safetensors`` or the shards of ``model.safetensors.index.json``,
    + ``config.json``; or OpenAI's TensorFlow files:
    ``hparams.json`` + ``model.ckpt.*``), a ``.safetensors`` file (its sibling config.json is used
    only when the file is called model.safetensors or model.safetensors.index.json), a TF checkpoint
    prefix or one of its files, or
    a name from ``minigpt.weights.download.MODEL_NAMES`` (downloaded into the cache unless it is there).
    """
    p = Path(path_or_name).expanduser()
    name = None
    # a model name, unless a folder of that name holds weights (the book's code leaves a ./gpt2/
    # folder with 124M/ etc. inside, which must not shadow the name)
    if str(path_or_name) in download.MODEL_NAMES and not _holds_weights(p):
        name = str(path_or_name)
        p = download.model_dir(name, **download_kwargs)
    tf_prefix = tf_checkpoint.find_prefix(p) if p.exists() or p.parent.is_dir() else None
    if p.is_dir():
        weights = p / WEIGHTS_FILE
        if not weights.is_file() and (p / INDEX_FILE).is_file():
            weights = p / INDEX_FILE
        if not weights.is_file():
            if tf_prefix is not None:
                return tf_prefix, tf_checkpoint.read_hparams(tf_prefix), name, "tf"
            found = sorted(x.name for x in p.iterdir())[:10]
            hint = ""
            inner = [x for x in sorted(p.iterdir()) if x.is_dir() and _holds_weights(x)]
            if inner:
                hint = f" Did you mean {inner[0]}?"
            if any(f.endswith(_PICKLE_SUFFIXES) for f in found):
                hint = (" It holds a PyTorch pickle file: minigpt never unpickles (it can run code); "
                        "save the weights as safetensors first.")
            raise FileNotFoundError(f"{p} has no {WEIGHTS_FILE} and no TensorFlow checkpoint (it "
                                    f"holds {found}).{hint}")
        config_path = p / CONFIG_FILE
    elif tf_prefix is not None and not p.name.endswith(".safetensors"):
        return tf_prefix, tf_checkpoint.read_hparams(tf_prefix), name, "tf"
    elif p.is_file():
        if p.suffix.lower() in _PICKLE_SUFFIXES:
            raise ValueError(f"{p} is a PyTorch pickle file; minigpt reads safetensors only (never "
                             f"pickle, which can run code). The book's converted weights exist as "
                             f"{p.stem}.safetensors beside the .pth on the hub")
        weights = p
        config_path = p.with_name(CONFIG_FILE) if p.name in (WEIGHTS_FILE, INDEX_FILE) else None
    else:
        known = ", ".join(download.MODEL_NAMES)
        raise FileNotFoundError(f"{path_or_name!s} is neither a file, a directory, nor a model name "
                                f"({known})")
    config = None
    if config_path is not None and config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON ({e})") from None
    return weights, config, name, "safetensors"


def _holds_weights(p: Path) -> bool:
    """A file, or a folder with model.safetensors or a TensorFlow checkpoint."""
    if p.is_file():
        return True
    return p.is_dir() and ((p / WEIGHTS_FILE).is_file() or (p / INDEX_FILE).is_file() or
                           tf_checkpoint.find_prefix(p) is not None)


# --- loading --------------------------------------------------------------------------------------
def from_pretrained(path_or_name: str | os.PathLike, dtype=np.float32, *,
                    drop_rate: float | None = None, n_heads: int | None = None,
                    progress: bool = True, **download_kwargs) -> GPTModel:
    """Load a GPT-2 checkpoint into a new GPTModel (float32 or float64).

    ``path_or_name``: "gpt2" / "gpt2-medium" / "gpt2-large" / "gpt2-xl" (downloaded and cached, see
    ``minigpt.weights.download``), a Hugging Face GPT-2 directory or ``.safetensors`` file of any shape, the
    book's converted ``gpt2-*.safetensors``, OpenAI's TensorFlow checkpoint folder (what the book's
    ``gpt_download.py`` saves, e.g. ``gpt2/124M``), or a minigpt checkpoint directory.
    ``drop_rate``: dropout for later finetuning (default 0.0, or the saved value for a minigpt config).
    ``n_heads``: only for a file without config.json whose width is not one of GPT-2's.
    Raises ValueError (SafetensorsError) naming every missing, unexpected or mis-shaped tensor.
    """
    weights, config, name, kind = resolve(path_or_name, progress=progress, **download_kwargs)
    opener = tf_checkpoint.TFCheckpoint if kind == "tf" else SafetensorsWeights
    with opener(weights) as f:
        canon_of = _strip_prefix(f.keys())
        key_of = {c: k for k, c in canon_of.items()}           # canonical -> key in the file
        shapes = {c: f.shape(k) for k, c in canon_of.items()}
        fmt = detect_format(set(shapes))
        if config is not None:
            cfg = config_from_hf(config, drop_rate)
        elif name is not None:
            cfg = PRETRAINED_CONFIGS[name]
            cfg = cfg if drop_rate is None else cfg.replace(drop_rate=drop_rate)
        else:
            cfg = infer_config(shapes, fmt, n_heads, drop_rate)
        head = head_key(fmt)
        if config is None and head in shapes and not _equal(f, key_of[head], key_of[_wte(fmt)]):
            cfg = cfg.replace(tie_weights=False)   # no config: a head that differs means untied
        plan = mapping(cfg, fmt)
        _check_keys(cfg, fmt, plan, shapes, str(weights), config is not None)
        model = _empty_model(cfg, dtype)
        for pname, pieces in plan.items():
            dest = model.params[pname]
            for pc in pieces:
                key = key_of[pc.key]
                if not pc.transpose and pc.cols is None:
                    f.read_into(key, dest)                        # file -> flat buffer, no copy
                else:
                    view = dest if pc.cols is None else dest[..., pc.cols[0]:pc.cols[1]]
                    view[...] = f.get(key, dtype).T if pc.transpose else f.get(key, dtype)
        stored_head_differs = (config is not None and cfg.tie_weights and head in shapes
                               and not _equal(f, key_of[head], key_of[_wte(fmt)]))
        if stored_head_differs:
            raise SafetensorsError(f"{weights}: the config says the LM head is tied to the token "
                                   f"embedding, but the stored {head!r} differs from it")
        if not cfg.qkv_bias and fmt == "hf" and "h.0.attn.c_attn.bias" in shapes:
            for i in range(cfg.n_layers):
                if np.any(f.get(key_of[f"h.{i}.attn.c_attn.bias"]) != 0):
                    raise SafetensorsError(f"{weights}: config says qkv_bias=False but "
                                           f"h.{i}.attn.c_attn.bias is not zero")
    _check_finite(model, weights)
    return model


class _Uninitialised(GPTModel):
    """GPTModel without the random init: drawing 124M normals costs ~5 s (1.5B: over a minute)
    and every value would be overwritten by the file at once."""

    def _init_weights(self, rng: np.random.Generator) -> None:
        pass


def _empty_model(cfg: GPTConfig, dtype) -> GPTModel:
    model = _Uninitialised(cfg, seed=None, dtype=dtype)
    model.__class__ = GPTModel  # the same object layout; only the skipped init differed
    return model


def _wte(fmt: str) -> str:
    return "tok_emb.weight" if fmt == "book" else "wte.weight"


def _equal(f, a: str, b: str) -> bool:
    """Two stored tensors equal, compared in row blocks (bounded memory for 50257 x 1600)."""
    if f.shape(a) != f.shape(b):
        return False
    if not hasattr(f, "blocks"):  # a TensorFlow checkpoint: small enough to compare whole
        return bool(np.array_equal(f.get(a), f.get(b)))
    pairs = zip(f.blocks(a), f.blocks(b), strict=True)  # in blocks: bounded memory for 50257 x 1600
    return all(np.array_equal(ra, rb) for (_, _, ra), (_, _, rb) in pairs)


def _check_keys(cfg: GPTConfig, fmt: str, plan: dict[str, list[Piece]],
                shapes: dict[str, tuple[int, ...]], where: str, have_config: bool) -> None:
    """Strict: all needed tensors present with their shapes, nothing unknown left over."""
    pshapes = param_shapes(cfg)
    needed = {pc.key: _piece_shape(pc, pshapes[p]) for p, pcs in plan.items() for pc in pcs}
    allowed = set(needed)
    allowed.add(head_key(fmt))  # a stored copy of a tied head is checked against wte
    if not cfg.qkv_bias and fmt == "hf":
        allowed |= {f"h.{i}.attn.c_attn.bias" for i in range(cfg.n_layers)}  # zeros; checked
    missing = sorted(k for k in needed if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in allowed and not _SKIP.match(k))
    wrong = [f"{k}: file {shapes[k]}, expected {s}" for k, s in needed.items()
             if k in shapes and shapes[k] != s]
    if head_key(fmt) in shapes and head_key(fmt) not in needed:
        s, want = shapes[head_key(fmt)], (cfg.vocab_size, cfg.emb_dim)
        if s != want:
            wrong.append(f"{head_key(fmt)}: file {s}, expected {want}")
    if missing or unexpected or wrong:
        src = "its config.json" if have_config else "the shapes in the file"
        parts = [f"{where} does not match the GPT-2 model described by {src} "
                 f"({_describe(cfg)}; {fmt} names):"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" ... and {len(items) - 12} more" if len(items) > 12 else ""
                parts.append(f"  {label} ({len(items)}): {', '.join(items[:12])}{more}")
        raise SafetensorsError("\n".join(parts))


def _describe(cfg: GPTConfig) -> str:
    return (f"V={cfg.vocab_size} T={cfg.context_length} C={cfg.emb_dim} H={cfg.n_heads} "
            f"L={cfg.n_layers} qkv_bias={cfg.qkv_bias} tied={cfg.tie_weights}")


def _check_finite(model: GPTModel, where: Path) -> None:
    flat, step = model.flat_params, 1 << 22   # in blocks: a (N,) bool temporary would cost N bytes
    if all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step)):
        return
    bad = [n for n, p in model.params.items() if not np.isfinite(p).all()]
    raise SafetensorsError(f"{where}: non-finite values (NaN/inf) in {bad[:8]}; the file is corrupt "
                           f"(or was saved from a diverged run)")


def load_model(name_or_path_or_checkpoint: str | os.PathLike, dtype=np.float32,
               **kwargs) -> GPTModel:
    """The one entry point for commands (``minigpt generate/eval --model X``) -> GPTModel.

    ``X`` may be a GPT-2 name ("gpt2", ...), a Hugging Face directory or .safetensors file, the
    book's converted file, or a training run / checkpoint directory written by
    ``minigpt.training.checkpoint`` (its ``state.json`` or ``latest`` pointer is recognised; the checkpoint's
    sha256 records are verified).
    """
    p = Path(name_or_path_or_checkpoint).expanduser()
    if p.is_dir() and ((p / "state.json").is_file() or (p / "latest").is_file()):
        from minigpt.training.checkpoint import model_from_checkpoint
        model, _ = model_from_checkpoint(p, dtype=dtype)
        return model
    return from_pretrained(name_or_path_or_checkpoint, dtype=dtype, **kwargs)


# --- saving ---------------------------------------------------------------------------------------
def hf_state(model: GPTModel, dtype=None) -> dict[str, np.ndarray]:
    """The model's tensors under GPT2LMHeadModel's names (``transformer.`` prefix, ``lm_head``).

    GPT-2's format has no switch for the q/k/v bias, so a model without one is written with a zero
    ``c_attn.bias`` (the same function). A tied head is not stored (transformers re-ties it).
    """
    C = model.cfg.emb_dim
    out: dict[str, np.ndarray] = {}
    nameless = [s.name for s in model.table if s.hf_name is None]
    if nameless:
        raise ValueError(f"parameters {nameless[:4]} have no place in GPT-2's format (adapters or "
                         "heads); merge or drop them before saving")
    for spec in model.table:
        arr = model.params[spec.name]
        out[spec.hf_name] = arr if dtype is None else arr.astype(dtype)
    if not model.cfg.qkv_bias:
        for i in range(model.cfg.n_layers):
            out[f"transformer.h.{i}.attn.c_attn.bias"] = np.zeros(3 * C, dtype or model.dtype)
    return out


def save_pretrained(model: GPTModel, directory: str | os.PathLike, *, dtype=None,
                    tokenizer: bool | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained``
    loads (and ``from_pretrained`` here too). ``dtype``: cast on the way out (default: the model's).

    ``tokenizer``: also write GPT-2's tokenizer files (``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``, from the vocabulary minigpt ships), so that transformers'
    ``AutoTokenizer`` and ``pipeline("text-generation", model=directory)`` work on the folder.
    Default: when the vocabulary size is GPT-2's 50257. Every file is written atomically.
    Returns the directory.
    """
    if model.cfg.num_classes is not None:
        raise ValueError(f"save_pretrained writes GPT2LMHeadModel's format, and this model has a "
                         f"classification head (num_classes={model.cfg.num_classes}) instead of "
                         "the LM head; Hugging Face's GPT2ForSequenceClassification has no bias "
                         "for it (score.weight only). Save a minigpt checkpoint instead "
                         "(minigpt.training.checkpoint.save_checkpoint)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(model.dtype)
    if out_dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(f"save dtype must be float16, float32 or float64, got {out_dtype}")
    save_tensors(hf_state(model, None if dtype is None else out_dtype), directory / WEIGHTS_FILE,
                 metadata={"format": "pt"})
    _write_text(directory / CONFIG_FILE, json.dumps(config_to_hf(model.cfg, out_dtype), indent=2))
    if tokenizer is None:
        tokenizer = model.cfg.vocab_size == GPT2_VOCAB_SIZE
    if tokenizer:
        if model.cfg.vocab_size != GPT2_VOCAB_SIZE:
            raise ValueError(f"GPT-2's tokenizer has {GPT2_VOCAB_SIZE} tokens, the model "
                             f"{model.cfg.vocab_size}; save with tokenizer=False")
        assets = resources.files("minigpt") / "assets" / "gpt2"
        _write_text(directory / "vocab.json", (assets / "encoder.json").read_text("utf-8"))
        _write_text(directory / "merges.txt", (assets / "vocab.bpe").read_text("utf-8"))
        eot = "<|endoftext|>"
        _write_text(directory / "tokenizer_config.json", json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model.cfg.context_length,
            "bos_token": eot, "eos_token": eot, "unk_token": eot, "add_prefix_space": False,
        }, indent=2))
    return directory


GPT2_VOCAB_SIZE = 50257


def _write_text(path: Path, text: str) -> None:
    """A JSON or text file of a saved model, ending in a newline, written atomically."""
    write_text_atomic(path, text if text.endswith("\n") else text + "\n")


