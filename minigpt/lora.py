"""LoRA adapters for GPTModel (the book's appendix E): the parameter rows, adding them to a model,
merging them into the base weights and back. The math is ``minigpt/layers/lora.py`` (eq. 12.1-12.6);
the block runs it (``minigpt/block.py``); the adapter files Hugging Face PEFT reads are
``minigpt/weights/adapter.py``. docs/lora.md walks through it.

Where rank and alpha live: in ``GPTConfig`` (``lora_rank``, ``lora_alpha``; ``cfg.lora_scale`` =
alpha / r), so a checkpoint's config remembers them and the model knows the scale at every forward.
The adapter's names and shapes are extra rows of the parameter table (``minigpt.params``)::

    cfg = GPT_CONFIG_124M.replace(lora_rank=16, lora_alpha=16)
    model = GPTModel(cfg, extra=lora_specs(cfg))            # or: with_lora(pretrained, 16, 16)
    model.freeze(); model.unfreeze("*.lora_*")              # the book: only the adapters train

Which linear layers: ``targets``, names inside a block. ``BOOK_TARGETS`` (the default) is what the
book's ``replace_linear_with_lora`` wraps: its separate W_query, W_key, W_value (here three pairs on
the column blocks of the fused ``attn.c_attn``, ``attn.c_attn.q`` / ``.k`` / ``.v``), out_proj
(``attn.c_proj``), and the two feed-forward layers (``mlp.c_fc``, ``mlp.c_proj``). Only these
reproduce the book's count of 2,666,528 LoRA parameters for GPT-2 124M with its 2-class head: one
pair on the fused c_attn has r (C + 3C) parameters where the book's three have 3 r (C + C).
``PEFT_TARGETS`` is one pair per GPT-2 module, as Hugging Face PEFT adapts GPT-2. A classification
head (chapter 6) gets its own pair, ``out_head.lora_A`` / ``.lora_B`` (``head_lora_specs``;
``with_lora`` adds it unless ``head=False``), applied in ``heads.classifier_forward``.

Initialisation, the book's: B = 0, so the model is unchanged until B moves; A by PyTorch's
``kaiming_uniform_(A, a=sqrt(5))`` on the book's A of shape (in_dim, rank). PyTorch's fan-in of a 2-D
tensor is its size(1) = rank, the gain is sqrt(2 / (1 + a^2)) = sqrt(1/3), and the bound
gain * sqrt(3 / fan_in) = 1 / sqrt(rank): A ~ U(-1/sqrt(r), 1/sqrt(r)), 0.25 at r = 16, which is
the table's ``uniform_fan_in(r)``. (PEFT draws its lora_A, stored (r, in), with fan-in = in.)
Weight decay: A and B are matrices, so they decay under ``decay="matrices"``; the book's AdamW
decays every parameter it is given anyway (weight_decay=0.1), and with the base frozen those are
exactly A and B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minigpt.block import QKV
from minigpt.config import GPTConfig
from minigpt.model import GPTModel
from minigpt.params import ParamSpec, init_params, param_table, uniform_fan_in, ZEROS

LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")       # the linears of a block
PEFT_TARGETS = LAYERS
BOOK_TARGETS = ("attn.c_attn.q", "attn.c_attn.k", "attn.c_attn.v", "attn.c_proj", "mlp.c_fc",
                "mlp.c_proj")


def adapter_specs(name: str, n_in: int, n_out: int, rank: int) -> list[ParamSpec]:
    """The two rows of one adapter on a linear layer ``name`` (n_in -> n_out): ``name.lora_A``
    (n_in, r), A ~ U(+-1/sqrt(r)) (the book's kaiming_uniform_, see above), and ``name.lora_B``
    (r, n_out), zeros. Neither has a Hugging Face name: ``save_pretrained`` refuses them
    (merge first, or save them with ``save_adapter``)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    return [ParamSpec(name + ".lora_A", (n_in, rank), uniform_fan_in(rank), uniform_fan_in(rank),
                      True),
            ParamSpec(name + ".lora_B", (rank, n_out), ZEROS, ZEROS, True)]


def lora_specs(cfg: GPTConfig, targets: Sequence[str] = BOOK_TARGETS) -> list[ParamSpec]:
    """The adapter rows for every block of ``cfg`` (rank ``cfg.lora_rank``), on the ``targets``
    linears (names inside a block; ``attn.c_attn.q``/``.k``/``.v`` are c_attn's column blocks)."""
    if not cfg.lora_rank:
        raise ValueError("cfg.lora_rank is 0; build the config with lora_rank=r, lora_alpha=alpha "
                         "(the book: GPT_CONFIG_124M.replace(lora_rank=16, lora_alpha=16))")
    targets = list(targets)
    known = LAYERS + tuple(f"attn.c_attn.{j}" for j in QKV)
    bad = [t for t in targets if t not in known]
    if bad or len(set(targets)) != len(targets):
        raise ValueError(f"LoRA targets {targets} name unknown or repeated layers; choose from {known}")
    split = [t for t in targets if t.startswith("attn.c_attn.")]
    if split and (len(split) != 3 or "attn.c_attn" in targets):
        raise ValueError("LoRA on c_attn: give 'attn.c_attn' (one pair, PEFT's) or all three of "
                         "'attn.c_attn.q', '.k', '.v' (the book's W_query, W_key, W_value)")
    shapes = {s.name: s.shape for s in param_table(cfg)}
    specs = []
    for i in range(cfg.n_layers):
        for t in targets:
            layer = t[:-2] if t in split else t
            n_in, n_out = shapes[f"h.{i}.{layer}.weight"]
            specs += adapter_specs(f"h.{i}.{t}", n_in, n_out // 3 if t in split else n_out,
                                   cfg.lora_rank)
    return specs


def head_lora_specs(cfg: GPTConfig) -> list[ParamSpec]:
    """The adapter rows of a classification head (``out_head``, C -> num_classes), rank
    ``cfg.lora_rank``: the book's ``replace_linear_with_lora`` wraps every ``nn.Linear``, the new
    head included (16 (768 + 2) = 12,320 of its 2,666,528 parameters). [] for the LM head."""
    if cfg.num_classes is None:
        return []
    return adapter_specs("out_head", cfg.emb_dim, cfg.num_classes, cfg.lora_rank)


def with_lora(model: GPTModel, rank: int, alpha: float, targets: Sequence[str] = BOOK_TARGETS, *,
              seed: int | None = 123, freeze_base: bool = True, head: bool = True) -> GPTModel:
    """A copy of ``model`` with LoRA adapters added (the book's ``replace_linear_with_lora``): the
    same parameters and extra rows, plus adapters initialised from ``np.random.default_rng(seed)``.
    ``freeze_base``: the book freezes every existing parameter first, so only A and B train.
    ``head``: a classification head gets an adapter too (the book's); False leaves it without."""
    if model.cfg.lora_rank:
        raise ValueError("the model already has LoRA adapters; merge_lora and build a new model, "
                         "or start from the base model")
    cfg = model.cfg.replace(lora_rank=rank, lora_alpha=alpha)
    base_extra = model.table[len(param_table(model.cfg)):]
    specs = lora_specs(cfg, targets) + (head_lora_specs(cfg) if head else [])
    new = type(model)(cfg, seed=None, dtype=model.dtype, init=None, extra=list(base_extra) + specs)
    for name, arr in model.params.items():
        new.params[name][...] = arr
    init_params(new.params, specs, "gpt2", np.random.default_rng(seed))
    frozen = set(model.frozen_names()) | (set(model.params) if freeze_base else set())
    if frozen:
        new.freeze(sorted(frozen))
    return new


# --- the adapters of a model, and merging them ------------------------------------------------------
@dataclass(frozen=True)
class Adapter:
    """One (A, B) pair of a model: ``layer`` (e.g. "h.0.attn.c_attn"), its parameter names, and the
    columns lo:hi of the layer's output it adds to (all of them, or a q / k / v block)."""

    layer: str
    a_name: str
    b_name: str
    lo: int
    hi: int


def adapters(model: GPTModel) -> list[Adapter]:
    """Every LoRA pair of ``model``, in table order."""
    out = []
    for s in model.table:
        if not s.name.endswith(".lora_A"):
            continue
        base = s.name[: -len(".lora_A")]
        n_out = model.shapes[base + ".lora_B"][1]
        layer, _, part = base.rpartition(".")
        if part in QKV and layer + ".weight" in model.shapes:     # a column block of c_attn
            j = QKV.index(part)
            out.append(Adapter(layer, s.name, base + ".lora_B", j * n_out, (j + 1) * n_out))
        else:
            out.append(Adapter(base, s.name, base + ".lora_B", 0, n_out))
    return out


def _weight_xw(model: GPTModel, layer: str) -> np.ndarray:
    """The layer's weight as an (n_in, n_out) view: the block linears store it so; a head stored
    (out, in) like ``lm_head`` (and any head whose shape says so) is seen through its transpose."""
    w = model.params[layer + ".weight"]
    n_in = model.shapes[[a.a_name for a in adapters(model) if a.layer == layer][0]][0]
    return w if layer.startswith("h.") or w.shape[0] == n_in else w.T


def merge_lora(model: GPTModel) -> None:
    """W += s A B for every adapter (into its column block), then B = 0, so the forward is unchanged
    and runs the base layers' cost; the B values are kept on the model for ``unmerge_lora``. For
    inference or export (``save_pretrained`` after dropping the rows); unmerge before training on."""
    if getattr(model, "_lora_merged", None) is not None:
        raise ValueError("the adapters are already merged; unmerge_lora(model) first")
    pairs = adapters(model)
    if not pairs:
        raise ValueError("the model has no LoRA adapters to merge")
    s, p = model.cfg.lora_scale, model.params
    kept = {}
    for a in pairs:
        w = _weight_xw(model, a.layer)
        w[:, a.lo:a.hi] += s * (p[a.a_name] @ p[a.b_name])      # (n_in, r) @ (r, n_out)
        kept[a.b_name] = p[a.b_name].copy()
        p[a.b_name][...] = 0
    model._lora_merged = kept


def unmerge_lora(model: GPTModel) -> None:
    """Undo ``merge_lora``: restore B and W -= s A B (W is back up to float rounding)."""
    kept = getattr(model, "_lora_merged", None)
    if kept is None:
        raise ValueError("the adapters are not merged; nothing to unmerge")
    s, p = model.cfg.lora_scale, model.params
    for a in adapters(model):
        p[a.b_name][...] = kept[a.b_name]
        w = _weight_xw(model, a.layer)
        w[:, a.lo:a.hi] -= s * (p[a.a_name] @ p[a.b_name])
    model._lora_merged = None
