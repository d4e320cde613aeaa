"""The model shapes ``minigpt bench`` times (``--config``)."""

from __future__ import annotations


from minigpt.config import GPTConfig

# name -> (config, batch size, tokens per sequence). "small" and "gpt2" are the peer configurations of
# the issue; "long" is the full context, T = 1024, of a small model with GPT-2's vocabulary (the shape
# an outside review measured: 4 layers, width 256, batch 2); "tiny" is for tests and smoke runs. All:
# tied head, qkv bias, dropout 0 (as the peer). ``--config all`` is "small" and "gpt2" (ALL).
CONFIGS: dict[str, tuple[GPTConfig, int, int]] = {
    "tiny": (GPTConfig(vocab_size=256, context_length=64, emb_dim=64, n_heads=4, n_layers=2,
                       drop_rate=0.0, qkv_bias=True, tie_weights=True), 2, 32),
    "small": (GPTConfig(vocab_size=4096, context_length=256, emb_dim=256, n_heads=8, n_layers=4,
                        drop_rate=0.0, qkv_bias=True, tie_weights=True), 16, 128),
    "gpt2": (GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                       drop_rate=0.0, qkv_bias=True, tie_weights=True), 4, 128),
    "long": (GPTConfig(vocab_size=50257, context_length=1024, emb_dim=256, n_heads=8, n_layers=4,
                       drop_rate=0.0, qkv_bias=True, tie_weights=True), 2, 1024),
}

# what ``--config all`` runs: the README's speed table rows (benchmarks/readme_table.py); "long" is
# asked for by name (``--config long``), so that the table's re-run does not grow by its minutes
ALL = ("small", "gpt2")


def config_dict(cfg: GPTConfig) -> dict:
    """The model shape the PyTorch child (``torch_child.py``) needs, as plain JSON."""
    return {k: int(getattr(cfg, k)) for k in ("vocab_size", "context_length", "emb_dim", "n_heads",
                                              "n_layers")}
