"""LoRA adapter files in the layout Hugging Face PEFT reads: ``adapter_config.json`` and
``adapter_model.safetensors`` (``PeftModel.from_pretrained(GPT2LMHeadModel..., directory)``).

The format, as PEFT writes it for GPT-2 (``GPT2LMHeadModel``, whose linears are ``Conv1D``s that
store W (in, out), like minigpt):

    base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight   (r, in)    = A^T
    base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight   (out, r)   = B^T
    ... the same for attn.c_proj, mlp.c_fc, mlp.c_proj

PEFT's lora_A and lora_B are ``nn.Linear(in, r)`` and ``nn.Linear(r, out)``, whose weights are stored
(out, in): hence the transposes. ``fan_in_fan_out: true`` (Conv1D's transposed base weight) changes
only how PEFT merges, not these tensors. PEFT scales by ``lora_alpha / r`` (``use_rslora`` false),
the book's corrected convention and ``GPTConfig.lora_scale``.

The book's three q / k / v pairs on ``c_attn`` (``minigpt.lora.BOOK_TARGETS``) have no PEFT module of
their own; they are written as the one c_attn adapter they equal (eq. 12.6): rank 3r with
A = [A_q A_k A_v] and a block-diagonal B, and ``rank_pattern`` / ``alpha_pattern`` give c_attn
rank 3r and alpha 3 alpha, so PEFT's scale is still alpha / r. Loading such a file back into q / k / v
pairs checks that B is block-diagonal.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from minigpt.atomic import write_text_atomic
from minigpt.block import QKV
from minigpt.lora import adapters
from minigpt.model import GPTModel
from minigpt.training.checkpoint import save_tensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.transformer."


def _layers(model: GPTModel) -> dict[str, list]:
    """layer name ("h.0.attn.c_attn") -> its adapters (one pair, or the q / k / v pairs)."""
    out: dict[str, list] = {}
    for a in adapters(model):
        if not a.layer.startswith("h."):
            raise ValueError(f"the adapter on {a.layer} has no place in PEFT's files: PEFT adapts "
                             "only the blocks' c_attn, c_proj, c_fc of GPT-2, and for sequence "
                             "classification saves the whole head (score.weight, no bias) as a "
                             "module to save, never a LoRA pair on it; keep it in the model's "
                             "checkpoint ('minigpt finetune' does), or build the model with "
                             "with_lora(..., head=False) to write a PEFT adapter")
        out.setdefault(a.layer, []).append(a)
    return out


def _is_split(pairs: list) -> bool:
    return len(pairs) == 3


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rule for rank_pattern / alpha_pattern: the first key that matches the end of the
    module name at a dot boundary."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def save_adapter(model: GPTModel, directory: str | os.PathLike, *,
                 base_model_name_or_path: str = "gpt2") -> Path:
    """Write the model's LoRA adapters as ``adapter_config.json`` + ``adapter_model.safetensors``
    (the model's dtype). ``base_model_name_or_path``: the base model the adapter belongs to (a Hub
    name or a folder written by ``save_pretrained``). Returns the directory."""
    if getattr(model, "_lora_merged", None) is not None:
        raise ValueError("the adapters are merged into the base weights; unmerge_lora(model) first")
    cfg, p = model.cfg, model.params
    layers = _layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; see minigpt.lora.with_lora")
    split = {_is_split(pairs) for layer, pairs in layers.items() if layer.endswith("attn.c_attn")}
    if len(split) > 1:
        raise ValueError("some blocks have q/k/v adapters on c_attn and others one fused adapter; "
                         "PEFT's rank_pattern here covers one kind: use one kind in every block")
    tensors = {}
    for layer, pairs in layers.items():
        A = np.concatenate([p[a.a_name] for a in pairs], axis=1)   # (in, k r)
        B = np.zeros((A.shape[1], p[layer + ".weight"].shape[1]), model.dtype)   # (k r, out)
        r = cfg.lora_rank
        for j, a in enumerate(pairs):
            B[j * r:(j + 1) * r, a.lo:a.hi] = p[a.b_name]          # block-diagonal (eq. 12.6)
        key = PREFIX + layer
        tensors[key + ".lora_A.weight"] = A.T                      # (k r, in)
        tensors[key + ".lora_B.weight"] = B.T                      # (out, k r)
    short = sorted({layer.rsplit(".", 1)[1] for layer in layers})   # c_attn, c_proj, c_fc
    every = {f"h.{i}.{m}" for i in range(cfg.n_layers) for m in ("attn.c_attn", "attn.c_proj",
                                                                  "mlp.c_fc", "mlp.c_proj")
             if m.rsplit(".", 1)[1] in short}
    targets = short if every == set(layers) else sorted("transformer." + k for k in layers)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": cfg.lora_rank,
        "lora_alpha": _number(cfg.lora_alpha),
        "target_modules": targets,
        "fan_in_fan_out": True,             # GPT-2's Conv1D stores W (in, out)
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {"c_attn": 3 * cfg.lora_rank} if split == {True} else {},
        "alpha_pattern": {"c_attn": _number(3 * cfg.lora_alpha)} if split == {True} else {},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    write_text_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def load_adapter(model: GPTModel, directory: str | os.PathLike) -> None:
    """Read ``save_adapter``'s files (or PEFT's own, for GPT-2) into the model's adapters. The model
    must have the same adapted layers and rank (``with_lora(base, r, alpha, targets)``) and the same
    scale alpha / r; anything else is a ValueError saying what differs."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"{directory} has no {name}; an adapter folder holds {CONFIG_FILE} "
                             f"and {WEIGHTS_FILE} (save_adapter or PEFT's save_pretrained)")
    config = json.loads((directory / CONFIG_FILE).read_text("utf-8"))
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for flag in ("use_rslora", "use_dora"):
        if config.get(flag):
            raise ValueError(f"{directory}: {flag} is on; minigpt's LoRA is plain LoRA with scale "
                             "alpha / r")
    if config.get("lora_bias"):
        raise ValueError(f"{directory}: lora_bias is on (a bias on lora_B); minigpt's adapters "
                         "have none")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{directory}: bias is {config['bias']!r}; minigpt's adapters train no biases")
    if getattr(model, "_lora_merged", None) is not None:
        raise ValueError("the model's adapters are merged; unmerge_lora(model) before loading")
    tensors = {k.removeprefix("base_model.model.").removeprefix("transformer."): v
               for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    cfg, p = model.cfg, model.params
    layers = _layers(model)
    expected = {layer + f".lora_{m}.weight" for layer in layers for m in "AB"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory}: the adapter's layers differ from the model's: missing "
                         f"{missing[:4]}, unexpected {unexpected[:4]}; build the model with the "
                         "adapter's targets (minigpt.lora.with_lora(..., targets=...))")
    for layer, pairs in layers.items():
        module = "transformer." + layer
        k = len(pairs)
        r_file = _pattern_value(config.get("rank_pattern"), module, config["r"])
        alpha_file = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        if r_file != k * cfg.lora_rank or not np.isclose(alpha_file / r_file, cfg.lora_scale,
                                                          rtol=1e-12, atol=0):
            raise ValueError(f"{directory}: {layer} has rank {r_file} and alpha {alpha_file} "
                             f"(scale {alpha_file / r_file:g}); the model expects rank "
                             f"{k * cfg.lora_rank} and scale {cfg.lora_scale:g}")
        A = tensors[layer + ".lora_A.weight"].T                   # (in, k r)
        B = tensors[layer + ".lora_B.weight"].T                   # (k r, out)
        n_in, n_out = p[layer + ".weight"].shape
        if A.shape != (n_in, r_file) or B.shape != (r_file, n_out):
            raise ValueError(f"{directory}: {layer} lora_A.weight {A.shape[::-1]}, lora_B.weight "
                             f"{B.shape[::-1]}; the model needs ({r_file}, {n_in}) and "
                             f"({n_out}, {r_file})")
        r = cfg.lora_rank
        for j, a in enumerate(pairs):
            rows = slice(j * r, (j + 1) * r)
            off = np.delete(B[rows], np.s_[a.lo:a.hi], axis=1)
            if np.any(off != 0):
                raise ValueError(f"{directory}: {layer}'s lora_B is not block-diagonal, so it is "
                                 f"not separate {'/'.join(QKV)} adapters; load it into a model "
                                 "with one fused c_attn adapter (targets=minigpt.lora.PEFT_TARGETS)")
            p[a.a_name][...] = A[:, rows]
            p[a.b_name][...] = B[rows, a.lo:a.hi]
