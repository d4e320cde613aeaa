"""Training checkpoints that lose nothing: safetensors + JSON, written atomically.

A run directory looks like this::

    runs/verdict/
      latest                   <- one line, the name of the newest complete checkpoint
      step-00000090/
        model.safetensors      <- every parameter, by its Hugging Face GPT-2 name
        optimizer.safetensors  <- AdamW's m and v over the trainable ranges of the flat buffer
        state.json             <- step, config, dtype, frozen parameters, extra parameter rows
                                  (LoRA adapters), optimizer scalars (with the
                                  trainable ranges), data position, RNG states, run settings,
                                  history, and the sha256 of both tensor files
      step-00000085/ ...       <- older ones, pruned to ``keep_last``

Crash safety: a checkpoint is written into a temporary directory (each file fsync'ed), which is then
renamed into place (``os.replace``, atomic on POSIX), and only then is ``latest`` switched, itself
through a temporary file + fsync + ``os.replace``. A ``kill -9`` at any moment therefore leaves
``latest`` naming a complete checkpoint (the new one or the previous one), never a half-written one.

Loading verifies the format tag, the file hashes, the config (against the model you load into) and
every tensor's shape, and says which of them failed. No pickle anywhere: the files cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.atomic import atomic_path, fsync_path, write_text_atomic
from minigpt.params import extra_rows, spec_from_dict, spec_to_dict

FORMAT = "minigpt-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or belongs to a different model or run."""


# --- RNG state as JSON ---------------------------------------------------------------------------
def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The full state of a ``np.random.Generator`` as a JSON-able dict (its bit generator's state)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore ``rng`` to ``state`` (from ``rng_state``), so it draws the same numbers again."""
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise CheckpointError(f"the saved RNG is a {state.get('bit_generator')}, this one a "
                              f"{type(rng.bit_generator).__name__}")
    rng.bit_generator.state = state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as safetensors (``safetensors.numpy.save_file``) through the one atomic
    writer (``minigpt.atomic``). The one writer for the format (checkpoints, save_pretrained)."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.require(v, requirements="C") for k, v in tensors.items()}, tmp,
                  metadata=metadata)


def _older_hint(ckpt: Path) -> str:
    """How to fall back to an older checkpoint of the same run (named, if there is one)."""
    older = [p.name for p in list_checkpoints(ckpt.parent) if p.name != ckpt.name]
    if not older:
        return "there is no older checkpoint in this run to fall back to"
    return (f"to resume from an older one, write its name ({', '.join(older)}) into "
            f"{ckpt.parent / LATEST}")


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header or size
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the checkpoint is "
                              f"corrupt; {_older_hint(path.parent)}") from e


# --- saving --------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    directory: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    *,
    step: int,
    state: dict[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write a checkpoint of ``model`` (and ``optimizer``) at ``step`` and make it ``latest``.

    ``state`` holds everything else a resume needs, as JSON-able values (the data position, RNG
    states from ``rng_state``, run settings, history). Older ``step-*`` directories beyond the
    newest ``keep_last`` are removed afterwards (0 keeps all). Returns the checkpoint's directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp-*"):  # left by a save that was killed; never referenced
        shutil.rmtree(stale, ignore_errors=True)
    name = step_dir_name(step)
    tmp = directory / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    files = {MODEL_FILE: model.state_dict()}
    opt_scalars = None
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        files[OPTIM_FILE] = {"m": opt_state.pop("m"), "v": opt_state.pop("v")}
        opt_scalars = opt_state
    hashes = {}
    for fname, tensors in files.items():
        save_tensors(tensors, tmp / fname)
        hashes[fname] = _sha256(tmp / fname)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "config": model.cfg.to_dict(),
        "dtype": np.dtype(model.dtype).name,
        "optimizer": opt_scalars,
        "frozen": model.frozen_names() if hasattr(model, "frozen_names") else [],
        "extra": [spec_to_dict(s) for s in extra_rows(model)] if hasattr(model, "table") else [],
        "files": hashes,
        "state": state or {},
    }
    write_text_atomic(tmp / STATE_FILE, json.dumps(meta, indent=1))
    fsync_path(tmp)
    final = directory / name
    if final.exists():  # re-saving the same step (e.g. the end of a run right after a periodic save)
        trash = directory / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(directory)
    write_text_atomic(directory / LATEST, name + "\n")
    if keep_last > 0:
        steps = sorted(list_checkpoints(directory))
        for old in steps[:-keep_last]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The complete ``step-*`` checkpoint directories in a run directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


# --- loading -------------------------------------------------------------------------------------------
def resolve(path: str | os.PathLike) -> Path:
    """A run directory (follows ``latest``) or one checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if (path / STATE_FILE).is_file():
        return path
    latest = path / LATEST
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        target = path / name
        if not _STEP_DIR.match(name) or not (target / STATE_FILE).is_file():
            raise CheckpointError(f"{latest} names {name!r}, which is not a complete checkpoint")
        return target
    raise FileNotFoundError(f"{path} holds no checkpoint (no {STATE_FILE} and no '{LATEST}' file); "
                            "give the --checkpoint-dir of a training run")


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``state.json`` (step, config, dtype, optimizer scalars, state), checked."""
    ckpt = resolve(path)
    try:
        meta = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt / STATE_FILE} is not valid JSON ({e}): the checkpoint is corrupt") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt} is not a minigpt checkpoint (format tag missing)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{ckpt}: checkpoint version {meta.get('version')}, this minigpt "
                              f"reads version {VERSION}")
    meta["path"] = str(ckpt)
    return meta


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check every tensor file against the sha256 recorded at save time; returns the state."""
    meta = read_state(path)
    ckpt = Path(meta["path"])
    for fname, digest in meta["files"].items():
        f = ckpt / fname
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: the checkpoint is incomplete")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} does not match the sha256 recorded when it was saved: the file "
                                  f"is corrupt; {_older_hint(ckpt)}")
    return meta


def _config_diff(saved: dict[str, Any], cfg: Any) -> list[str]:
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r}, model {now.get(k)!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def load_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: Any = None,
    *,
    check: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns its state dict (``read_state``).

    The model's frozen flags become the checkpoint's (before the optimizer's state, whose moments
    cover the trainable parameters only). Refuses, with a ``CheckpointError`` naming the difference,
    a checkpoint whose config or dtype differs from the model's, whose files fail their sha256 (``check=True``), or that has no
    optimizer state when an optimizer is given.
    """
    meta = verify(path) if check else read_state(path)
    ckpt = Path(meta["path"])
    diff = _config_diff(meta["config"], model.cfg)
    if diff:
        raise CheckpointError(f"{ckpt} was saved from a different model configuration: "
                              + "; ".join(diff))
    if meta["dtype"] != np.dtype(model.dtype).name:
        raise CheckpointError(f"{ckpt} holds {meta['dtype']} parameters, the model is "
                              f"{np.dtype(model.dtype).name}; build the model with "
                              f"dtype=np.{meta['dtype']} (or use model_from_checkpoint)")
    tensors = _load_tensors(ckpt / MODEL_FILE)
    try:
        model.load_state_dict(tensors, strict=True)
    except ValueError as e:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: {e}") from e
    frozen = meta.get("frozen", [])  # absent in checkpoints from before frozen parameters: none
    if hasattr(model, "freeze"):
        model.unfreeze()
        if frozen:
            try:
                model.freeze(frozen)
            except ValueError as e:
                raise CheckpointError(f"{ckpt / STATE_FILE}: its frozen parameters: {e}") from e
    if optimizer is not None:
        if meta.get("optimizer") is None or not (ckpt / OPTIM_FILE).is_file():
            raise CheckpointError(f"{ckpt} has no optimizer state, so training cannot resume exactly "
                                  "from it (it can still be used for generation)")
        arrays = _load_tensors(ckpt / OPTIM_FILE)
        try:
            optimizer.load_state_dict({**meta["optimizer"], **arrays})
        except ValueError as e:
            raise CheckpointError(f"{ckpt / OPTIM_FILE}: {e}") from e
    return meta


def checkpoint_extra_rows(meta: dict[str, Any]) -> list:
    """The parameter rows a checkpoint's model had beyond its config's (LoRA adapters), from its
    ``state.json`` (``read_state``); [] for checkpoints written before they were stored."""
    try:
        return [spec_from_dict(d) for d in meta.get("extra", [])]
    except ValueError as e:
        raise CheckpointError(f"{meta.get('path')}: its extra parameter rows: {e}") from e


def model_from_checkpoint(path: str | os.PathLike, dtype: Any = None, check: bool = True):
    """Build a ``GPTModel`` from a checkpoint's config and load its weights: ``(model, state)``."""
    from minigpt.config import GPTConfig
    from minigpt.model import GPTModel

    meta = read_state(path)
    cfg = GPTConfig.from_dict(meta["config"])
    saved_dtype = np.dtype(meta["dtype"])
    extra = checkpoint_extra_rows(meta)     # LoRA adapters and other rows beyond the config's
    model = GPTModel(cfg, seed=None, dtype=saved_dtype, extra=extra)
    meta = load_checkpoint(path, model, check=check)
    if dtype is not None and np.dtype(dtype) != saved_dtype:
        cast = GPTModel(cfg, seed=None, dtype=dtype, extra=extra)
        cast.load_state_dict(model.state_dict())
        if model.frozen_names():
            cast.freeze(model.frozen_names())
        model = cast
    return model, meta
