"""GPTConfig: the shape of a GPT-2 model, with the book's field names.

The book (chapter 4) passes a plain dict ``GPT_CONFIG_124M``; here the same names live in a small
frozen dataclass that checks itself, so a typo or an impossible shape fails at construction with a
message instead of deep inside a matrix product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from minigpt.params import param_table
from minigpt.layers.pooling import POOLINGS

DEFAULT_POOLING = "last_nonpad"


@dataclass(frozen=True)
class GPTConfig:
    """The hyperparameters of a GPT-2 model.

    Field names are the book's (chapter 4, ``GPT_CONFIG_124M``) so a reader can map one to one:

    vocab_size      V   number of token ids (50257 for GPT-2's BPE)
    context_length  T   longest sequence the position embedding covers
    emb_dim         C   width of the residual stream
    n_heads         H   attention heads; head size hs = C // H
    n_layers        L   transformer blocks
    drop_rate           dropout probability (embedding sum, attention weights, residual branches)
    qkv_bias            whether the fused q, k, v projection has a bias (OpenAI's weights do)
    tie_weights         the LM head reuses ``wte`` (GPT-2 as released) instead of its own
                        ``lm_head.weight`` (the book's from-scratch training, chapters 4-5)
    num_classes         None: the LM head (logits over the vocabulary at every position). An
                        integer >= 2: a classification head replaces it (chapter 6): ``out_head``,
                        a linear layer C -> num_classes with a bias, applied to one pooled vector
                        per sequence; ``tie_weights`` then has no head to tie
    pooling             how the classification head gets one vector per sequence:
                        "last_nonpad" (default) the last real token, ``lengths[b] - 1``;
                        "last" the last position, the book's ``model(x)[:, -1, :]``;
                        "mean" the mean over the real tokens. The default makes the prediction
                        independent of the amount of right-padding: with "last", a padded text is
                        classified from a padding token that has read the padding (the book's
                        readers' issue #566, #990; the book's ablation row 16, last non-padding
                        position, scores 98.33% against 95.00% for the last). "last" reproduces
                        the book's numbers. Not used by the LM head.
    lora_rank       r   rank of the LoRA adapters (appendix E); 0: the model has none
    lora_alpha          LoRA's alpha: the adapters are scaled by lora_scale = alpha / r (the book's
                        corrected convention, PEFT's too). Here, not in the adapter rows, so that a
                        checkpoint's config remembers them and every forward knows the scale
                        (``minigpt.lora``)
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = False
    num_classes: int | None = None
    pooling: str = DEFAULT_POOLING
    lora_rank: int = 0
    lora_alpha: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}): "
                f"each head gets emb_dim // n_heads channels. Choose, for example, "
                f"emb_dim={self.n_heads * max(1, round(self.emb_dim / self.n_heads))}."
            )
        if not (0.0 <= float(self.drop_rate) < 1.0):
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}")
        for name in ("qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        n = self.num_classes
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            raise ValueError(f"GPTConfig.num_classes must be None (the LM head) or an integer >= 2 "
                             f"(a classification head), got {n!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"GPTConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        r, alpha = self.lora_rank, self.lora_alpha
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"GPTConfig.lora_rank must be an integer >= 0 (0: no LoRA), got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha == alpha:
            raise ValueError(f"GPTConfig.lora_alpha must be a number, got {alpha!r}")
        if r > 0 and alpha == 0:
            raise ValueError(f"GPTConfig.lora_rank is {r} but lora_alpha is 0, which would switch the "
                             "adapters off; the book uses lora_alpha = lora_rank (e.g. 16 and 16)")

    @property
    def head_dim(self) -> int:
        """hs = C // H, the width of one attention head."""
        return self.emb_dim // self.n_heads

    @property
    def lora_scale(self) -> float:
        """s = alpha / r, the factor of every LoRA update (eq. 12.1); 0.0 without LoRA."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    # --- conversion -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict. A plain LM config leaves out the classifier's two fields and LoRA's
        two (at their defaults), so its dict, and the checkpoints that store it, are as before
        they existed."""
        d = asdict(self)
        if self.num_classes is None and self.pooling == DEFAULT_POOLING:
            del d["num_classes"], d["pooling"]
        if self.lora_rank == 0 and self.lora_alpha == 0:
            del d["lora_rank"], d["lora_alpha"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from a dict with the book's keys; unknown keys are an error (they are usually typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; the known keys are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed, e.g. ``GPT_CONFIG_124M.replace(context_length=256)``."""
        return replace(self, **changes)

    # --- parameter count ------------------------------------------------------------------------
    def n_params(self, include_head: bool | None = None) -> int:
        """Number of parameters (unique arrays: a tied head adds nothing).

        ``include_head=None`` counts the model as configured (``lm_head.weight`` only when untied);
        True/False force the separate head in or out, which is how the book's chapter 4 reports
        163,009,536 ("total") and 124,412,160 ("considering weight tying") for the 124M config.
        """
        return sum(size for _, size in self.param_counts(include_head))

    def param_counts(self, include_head: bool | None = None) -> list[tuple[str, int]]:
        """(group, count) rows summed from the parameter table (``minigpt.params``): the
        embeddings, one block times n_layers, final norm, head."""
        head = (not self.tie_weights) if include_head is None else include_head
        groups: dict[str, int] = {}
        for spec in param_table(self.replace(tie_weights=not head)):
            group = "blocks" if spec.name.startswith("h.") else spec.name.split(".")[0]
            groups[group] = groups.get(group, 0) + spec.size
        L = self.n_layers
        return [(f"blocks ({L} x {n // L})" if g == "blocks" else g, n) for g, n in groups.items()]

    def n_bytes(self, itemsize: int = 4, include_head: bool | None = None) -> int:
        return self.n_params(include_head) * itemsize


def size_mb(n_bytes: int) -> float:
    """Bytes to the book's "MB" (2**20 bytes): 163,009,536 float32 params -> 621.83 MB."""
    return n_bytes / 1024**2


# The book's GPT_CONFIG_124M (chapter 4): untied head, no qkv bias, dropout 0.1.
GPT_CONFIG_124M = GPTConfig(
    vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
    drop_rate=0.1, qkv_bias=False,
)

# The other GPT-2 sizes (chapter 4 exercise 4.2 and chapter 5 ``model_configs``).
GPT_CONFIG_MEDIUM = GPT_CONFIG_124M.replace(emb_dim=1024, n_layers=24, n_heads=16)
GPT_CONFIG_LARGE = GPT_CONFIG_124M.replace(emb_dim=1280, n_layers=36, n_heads=20)
GPT_CONFIG_XL = GPT_CONFIG_124M.replace(emb_dim=1600, n_layers=48, n_heads=25)

# Keyed like the book's chapter 5 ``model_configs``.
model_configs: dict[str, GPTConfig] = {
    "gpt2-small (124M)": GPT_CONFIG_124M,
    "gpt2-medium (355M)": GPT_CONFIG_MEDIUM,
    "gpt2-large (774M)": GPT_CONFIG_LARGE,
    "gpt2-xl (1558M)": GPT_CONFIG_XL,
}

# The released OpenAI weights: qkv bias on, tied head, no dropout (chapter 5 NEW_CONFIG).
PRETRAINED_CONFIGS: dict[str, GPTConfig] = {
    name: cfg.replace(qkv_bias=True, tie_weights=True, drop_rate=0.0)
    for name, cfg in {
        "gpt2": GPT_CONFIG_124M,
        "gpt2-medium": GPT_CONFIG_MEDIUM,
        "gpt2-large": GPT_CONFIG_LARGE,
        "gpt2-xl": GPT_CONFIG_XL,
    }.items()
}
