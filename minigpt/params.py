"""The parameter table: every parameter of GPT-2, written down once (llm.c's ``ParameterTensors``).

One row per parameter, in the order of the flat buffer:

    name                 shape    gpt2 init          torch init       decays  trainable  HF / book / TF
    wte.weight           (V, C)   normal(0, 0.02)    normal(0, 1)     yes     yes        ...
    h.{i}.ln_1.weight    (C,)     ones               ones             no      yes
    h.{i}.attn.c_attn.w  (C, 3C)  normal(0, 0.02)    U(+-1/sqrt(C))   yes     yes
    ...

Everything else reads this table: the model's named views into its flat buffer and both of its
initialisations (``GPTModel(cfg, init="gpt2" | "torch")``), AdamW's decay group (``decay="matrices"``)
and the trainable ranges it updates, the names of the other formats (Hugging Face's
``GPT2LMHeadModel``, the book's ``GPTModel``, OpenAI's TensorFlow checkpoint) that the weight loaders
map, the parameter counts of ``GPTConfig``, and the gradient checks' parameter lists.

Initialisation rules are small named values (``normal(std)``, ``uniform_fan_in(fan_in)``, ``ONES``,
``ZEROS``); ``init_params`` applies them in buffer order with one ``np.random.Generator``, so one seed
gives one model. Draws are float64 (NumPy's), cast on assignment: float32 and float64 models hold the
same numbers up to rounding.

Adapters and heads fit the same scheme: ``param_table(cfg, extra=specs)`` appends rows after GPT-2's,
and ``GPTModel(cfg, extra=specs)`` gives them views into the same flat buffer, an initialisation, a
decay group, a trainable flag and AdamW moments. A LoRA pair for block 0's ``c_attn`` with rank r
(the book's appendix E: A from PyTorch's kaiming-uniform default on an (in, r) tensor, whose fan-in is
r; B zeros, so the model is unchanged until B moves)::

    C, r = cfg.emb_dim, 16
    lora = [ParamSpec("h.0.attn.c_attn.lora_A", (C, r), uniform_fan_in(r), uniform_fan_in(r), False),
            ParamSpec("h.0.attn.c_attn.lora_B", (r, 3 * C), ZEROS, ZEROS, False)]
    model = GPTModel(cfg, extra=lora)
    model.freeze(); model.unfreeze("*.lora_*")       # train only the adapters

(The forward that uses them is the next step; here they only live in the buffer.) The
classification head of chapter 6 is two rows the table writes itself when ``cfg.num_classes`` is
set: ``out_head.weight`` (C, n_classes) and ``out_head.bias``, in place of ``lm_head.weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INIT_SCHEMES = ("gpt2", "torch")
KINDS = ("normal", "uniform_fan_in", "ones", "zeros")


# --- initialisation rules ------------------------------------------------------------------------
@dataclass(frozen=True)
class Init:
    """How a parameter is filled: ``kind`` is "normal" (``arg`` = std), "uniform_fan_in" (``arg`` =
    fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's ``nn.Linear`` default), "ones" or "zeros"."""

    kind: str
    arg: float = 0.0

    def __str__(self) -> str:
        if self.kind == "normal":
            return f"normal(0, {self.arg:.4g})"
        if self.kind == "uniform_fan_in":
            return f"U(+-1/sqrt({int(self.arg)}))"
        return self.kind


def normal(std: float) -> Init:
    return Init("normal", float(std))


def uniform_fan_in(fan_in: int) -> Init:
    return Init("uniform_fan_in", int(fan_in))


ONES = Init("ones")
ZEROS = Init("zeros")


def draw(rule: Init, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | float:
    """The values of one parameter under ``rule`` (float64; ones and zeros draw nothing)."""
    if rule.kind == "ones":
        return 1.0
    if rule.kind == "zeros":
        return 0.0
    if rule.kind == "normal":
        return rng.normal(0.0, rule.arg, size=shape)
    if rule.kind == "uniform_fan_in":
        bound = 1.0 / math.sqrt(rule.arg)
        return rng.uniform(-bound, bound, size=shape)
    raise ValueError(f"unknown initialisation rule {rule.kind!r}; use normal(std), "
                     "uniform_fan_in(fan_in), ONES or ZEROS")


# --- the table's row ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Where (part of) a parameter lives in another format: the tensor ``key``; ``transpose`` when
    that format stores it (out, in) (PyTorch's ``nn.Linear``) and minigpt (in, out); ``cols``: the
    column block of the parameter it fills (the book's W_query / W_key / W_value -> ``c_attn``)."""

    key: str
    transpose: bool = False
    cols: tuple[int, int] | None = None


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its minigpt (= Hugging Face GPT-2) name and shape (``x @ W`` layout), its two
    initialisations, whether weight decay applies under ``decay="matrices"`` (matrices and
    embeddings; never biases or layernorm gains), whether it trains, and its names elsewhere:
    ``hf_name`` (``GPT2LMHeadModel``'s state-dict key; files of ``GPT2Model`` drop the
    ``transformer.`` prefix), ``book`` (the pieces of the book's ``GPTModel``) and ``tf_name``
    (OpenAI's TensorFlow checkpoint; None for a parameter it does not hold)."""

    name: str
    shape: tuple[int, ...]
    init_gpt2: Init
    init_torch: Init
    decay: bool
    trainable: bool = True
    hf_name: str | None = None
    book: tuple[Piece, ...] = ()
    tf_name: str | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def init(self, scheme: str) -> Init:
        if scheme == "gpt2":
            return self.init_gpt2
        if scheme == "torch":
            return self.init_torch
        raise ValueError(f"unknown initialisation {scheme!r}; choose one of {INIT_SCHEMES}")


# --- the table ---------------------------------------------------------------------------------------
def param_table(cfg: Any, extra: Sequence[ParamSpec] = ()) -> list[ParamSpec]:
    """Every parameter of the GPT-2 that ``cfg`` (a ``minigpt.GPTConfig``) describes, in buffer
    order, then the ``extra`` rows (adapters, heads). THE one place the parameter list is written."""
    V, T, C, L = cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers
    proj_std = 0.02 / math.sqrt(2 * L)  # GPT-2: the projections that write into the residual stream

    def pieces(key: str, transpose: bool = False) -> tuple[Piece, ...]:
        return (Piece(key, transpose),)

    # name, shape, gpt2 init, torch init, decays, the book's pieces, OpenAI's TF name
    rows: list[tuple] = [
        ("wte.weight", (V, C), normal(0.02), normal(1.0), True, pieces("tok_emb.weight"), "model/wte"),
        ("wpe.weight", (T, C), normal(0.02), normal(1.0), True, pieces("pos_emb.weight"), "model/wpe"),
    ]
    for i in range(L):
        h, b, tf = f"h.{i}.", f"trf_blocks.{i}.", f"model/h{i}/"
        qkv = [(f"{b}att.W_{w}", (j * C, (j + 1) * C)) for j, w in enumerate(("query", "key", "value"))]
        rows += [
            (h + "ln_1.weight", (C,), ONES, ONES, False, pieces(b + "norm1.scale"), tf + "ln_1/g"),
            (h + "ln_1.bias", (C,), ZEROS, ZEROS, False, pieces(b + "norm1.shift"), tf + "ln_1/b"),
            (h + "attn.c_attn.weight", (C, 3 * C), normal(0.02), uniform_fan_in(C), True,
             tuple(Piece(k + ".weight", True, cols) for k, cols in qkv), tf + "attn/c_attn/w"),
        ]
        if cfg.qkv_bias:
            rows.append((h + "attn.c_attn.bias", (3 * C,), ZEROS, uniform_fan_in(C), False,
                         tuple(Piece(k + ".bias", False, cols) for k, cols in qkv), tf + "attn/c_attn/b"))
        rows += [
            (h + "attn.c_proj.weight", (C, C), normal(proj_std), uniform_fan_in(C), True,
             pieces(b + "att.out_proj.weight", True), tf + "attn/c_proj/w"),
            (h + "attn.c_proj.bias", (C,), ZEROS, uniform_fan_in(C), False,
             pieces(b + "att.out_proj.bias"), tf + "attn/c_proj/b"),
            (h + "ln_2.weight", (C,), ONES, ONES, False, pieces(b + "norm2.scale"), tf + "ln_2/g"),
            (h + "ln_2.bias", (C,), ZEROS, ZEROS, False, pieces(b + "norm2.shift"), tf + "ln_2/b"),
            (h + "mlp.c_fc.weight", (C, 4 * C), normal(0.02), uniform_fan_in(C), True,
             pieces(b + "ff.layers.0.weight", True), tf + "mlp/c_fc/w"),
            (h + "mlp.c_fc.bias", (4 * C,), ZEROS, uniform_fan_in(C), False,
             pieces(b + "ff.layers.0.bias"), tf + "mlp/c_fc/b"),
            (h + "mlp.c_proj.weight", (4 * C, C), normal(proj_std), uniform_fan_in(4 * C), True,
             pieces(b + "ff.layers.2.weight", True), tf + "mlp/c_proj/w"),
            (h + "mlp.c_proj.bias", (C,), ZEROS, uniform_fan_in(4 * C), False,
             pieces(b + "ff.layers.2.bias"), tf + "mlp/c_proj/b"),
        ]
    rows += [
        ("ln_f.weight", (C,), ONES, ONES, False, pieces("final_norm.scale"), "model/ln_f/g"),
        ("ln_f.bias", (C,), ZEROS, ZEROS, False, pieces("final_norm.shift"), "model/ln_f/b"),
    ]
    n_classes = getattr(cfg, "num_classes", None)
    if n_classes is not None:  # chapter 6: a classification head replaces the LM head
        # the book's fresh nn.Linear(C, n), under either rule; x @ W layout. Hugging Face's
        # GPT2ForSequenceClassification calls it "score" (n, C) and has no bias: no mapping.
        rows += [("out_head.weight", (C, n_classes), uniform_fan_in(C), uniform_fan_in(C), True,
                  pieces("out_head.weight", True), None),
                 ("out_head.bias", (n_classes,), uniform_fan_in(C), uniform_fan_in(C), False,
                  pieces("out_head.bias"), None)]
    elif not cfg.tie_weights:  # (out, in) like wte, so logits = x @ W^T either way; OpenAI's is tied
        rows.append(("lm_head.weight", (V, C), normal(0.02), uniform_fan_in(C), True,
                     pieces("out_head.weight"), None))

    def hf_name(name: str) -> str | None:
        if name.startswith("out_head."):
            return None
        return name if name == "lm_head.weight" else "transformer." + name

    table = [ParamSpec(name, shape, g, t, decay, True, hf_name(name), book, tf_name)
             for name, shape, g, t, decay, book, tf_name in rows]
    return table + _check_extra(table, extra)


def _check_extra(table: list[ParamSpec], extra: Sequence[ParamSpec]) -> list[ParamSpec]:
    extra = list(extra)
    names = {s.name for s in table}
    for s in extra:
        if not isinstance(s, ParamSpec):
            raise ValueError(f"extra parameters must be ParamSpec rows, got {type(s).__name__}")
        if s.name in names:
            raise ValueError(f"extra parameter {s.name!r} is already in the table; give it a new name")
        if not s.shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in s.shape):
            raise ValueError(f"extra parameter {s.name!r} has shape {s.shape}; use positive ints")
        for rule in (s.init_gpt2, s.init_torch):
            if not isinstance(rule, Init) or rule.kind not in KINDS:
                raise ValueError(f"extra parameter {s.name!r} has initialisation {rule!r}; use "
                                 "normal(std), uniform_fan_in(fan_in), ONES or ZEROS")
        names.add(s.name)
    return extra


# --- what the rest reads -------------------------------------------------------------------------
def param_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """name -> shape, in buffer order."""
    return {s.name: s.shape for s in param_table(cfg)}


def offsets(table: Iterable[ParamSpec]) -> dict[str, tuple[int, int]]:
    """name -> (start, stop) of the parameter in the flat buffer."""
    out, pos = {}, 0
    for s in table:
        out[s.name] = (pos, pos + s.size)
        pos += s.size
    return out


def runs(table: Iterable[ParamSpec], keep: Callable[[ParamSpec], bool]) -> list[tuple[int, int]]:
    """The (start, stop) ranges of the flat buffer covered by the rows ``keep`` selects, with
    neighbours merged: e.g. the trainable ranges, or the decay group."""
    out: list[tuple[int, int]] = []
    pos = 0
    for s in table:
        if keep(s):
            if out and out[-1][1] == pos:
                out[-1] = (out[-1][0], pos + s.size)
            else:
                out.append((pos, pos + s.size))
        pos += s.size
    return out


def named_views(flat: np.ndarray, table: Iterable[ParamSpec]) -> dict[str, np.ndarray]:
    """name -> a view of ``flat`` with the parameter's shape (writing into it writes the buffer)."""
    views, pos = {}, 0
    for s in table:
        views[s.name] = flat[pos:pos + s.size].reshape(s.shape)
        pos += s.size
    return views


def block_index(name: str) -> int | None:
    """i for a parameter of transformer block i (``h.{i}.*``), else None."""
    if name.startswith("h."):
        return int(name.split(".", 2)[1])
    return None


def init_params(views: dict[str, np.ndarray], table: Iterable[ParamSpec], scheme: str,
                rng: np.random.Generator) -> None:
    """Fill every parameter by its ``scheme`` rule ("gpt2" or "torch"), drawing from ``rng`` in
    buffer order: one seed, one model."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; choose one of {INIT_SCHEMES}")
    for s in table:
        views[s.name][...] = draw(s.init(scheme), s.shape, rng)


def count(table: Iterable[ParamSpec], keep: Callable[[ParamSpec], bool] | None = None) -> int:
    """The number of parameter elements (of the rows ``keep`` selects)."""
    return sum(s.size for s in table if keep is None or keep(s))


def spec_to_dict(spec: ParamSpec) -> dict[str, Any]:
    """A row as JSON-able values (a checkpoint's ``extra`` rows: adapters, heads)."""
    return {"name": spec.name, "shape": list(spec.shape),
            "init_gpt2": [spec.init_gpt2.kind, spec.init_gpt2.arg],
            "init_torch": [spec.init_torch.kind, spec.init_torch.arg], "decay": spec.decay,
            "trainable": spec.trainable, "hf_name": spec.hf_name,
            "book": [[p.key, p.transpose, list(p.cols) if p.cols else None] for p in spec.book],
            "tf_name": spec.tf_name}


def spec_from_dict(d: dict[str, Any]) -> ParamSpec:
    """The inverse of ``spec_to_dict``."""
    try:
        return ParamSpec(d["name"], tuple(int(n) for n in d["shape"]), Init(*d["init_gpt2"]),
                         Init(*d["init_torch"]), bool(d["decay"]), bool(d["trainable"]),
                         d.get("hf_name"),
                         tuple(Piece(k, bool(t), tuple(c) if c else None) for k, t, c in d.get("book", [])),
                         d.get("tf_name"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a parameter row: {d!r} ({e})") from None


def extra_rows(model: Any) -> list[ParamSpec]:
    """The rows of ``model.table`` beyond what its config writes (``extra=`` when it was built)."""
    return list(model.table[len(param_table(model.cfg)):])


def format_table(table: Iterable[ParamSpec]) -> str:
    """The table as text, one row per parameter (for docs and for a reader at the prompt)."""
    lines = [f"{'name':28} {'shape':14} {'gpt2 init':18} {'torch init':18} decay train  "
             f"{'book':46} TF"]
    for s in table:
        keys = [p.key + ("^T" if p.transpose else "") for p in s.book]
        if len(keys) > 1 and all("W_" in k for k in keys):  # trf_blocks.0.att.W_{query,key,value}
            head = keys[0][: keys[0].index("W_") + 2]
            tail = keys[0][keys[0].index(".", len(head)):]
            keys = [head + "{" + ",".join(k[len(head):-len(tail)] for k in keys) + "}" + tail]
        book = ", ".join(keys) or "-"
        lines.append(f"{s.name:28} {str(s.shape):14} {str(s.init_gpt2):18} {str(s.init_torch):18} "
                     f"{'yes' if s.decay else 'no':5} {'yes' if s.trainable else 'no':6} "
                     f"{book:46} {s.tf_name or '-'}")
    return "\n".join(lines)
