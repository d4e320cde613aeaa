"""The PyTorch peer inside THIS process, for ``minigpt bench --same-process`` only.

The model, its weight loading, training step and KV-cached decode live in ``torch_child.py`` (the
plain PyTorch process the default bench runs by path); this module only adapts a minigpt model or
config to it. Importing it needs torch: without it, ``build`` raises ImportError("PyTorch not
installed").
"""

from __future__ import annotations

import numpy as np

from minigpt.cli.bench.configs import config_dict
from minigpt.cli.bench.system import torch_or_none


def build(model, threads: int):
    """A torch copy of the minigpt ``model`` (float32) -> (module, torch). Given a ``GPTConfig``
    instead, PyTorch's own initialisation is kept."""
    torch = torch_or_none()
    if torch is None:
        raise ImportError("PyTorch not installed")
    from minigpt.cli.bench import torch_child

    cfg = getattr(model, "cfg", model)
    return torch_child.build(config_dict(cfg), threads, getattr(model, "params", None)), torch


def train_step_fn(net, torch, idx: np.ndarray, targets: np.ndarray, lr: float, wd: float):
    """-> step() running forward, loss, backward and AdamW once; returns the loss."""
    from minigpt.cli.bench import torch_child

    return torch_child.train_step_fn(net, idx, targets, lr, wd)


def greedy_decode(net, torch, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy decoding with the peer's KV cache: prompt (B, P) -> (B, P + n_new) ids."""
    from minigpt.cli.bench import torch_child

    return torch_child.greedy_decode(net, prompt, n_new)
