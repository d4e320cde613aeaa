"""KVCache: the keys and values of every layer, kept between generation steps.

Without a cache, generating token t re-runs the whole model over all t tokens. The keys and values of
earlier positions never change (causal attention: position i only sees positions <= i), so they can be
computed once and stored; each step then runs the model on the new token alone and attends over the
stored keys and values. ``GPTModel.forward(new_ids, kv_cache=cache)`` does exactly that and gives the
same logits as the uncached forward, up to floating-point summation order.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    """Preallocated keys and values: ``k[layer]``, ``v[layer]`` of shape (B, H, max_len, hs), views
    of ``k_all``, ``v_all`` (L, B, H, max_len, hs).

    ``pos`` is the number of positions already stored; the next tokens go to ``pos, pos+1, ...``.
    """

    def __init__(self, cfg, batch_size: int, dtype=np.float32, max_len: int | None = None):
        max_len = cfg.context_length if max_len is None else int(max_len)
        if not 1 <= max_len <= cfg.context_length:
            raise ValueError(f"max_len must be in [1, context_length={cfg.context_length}], got {max_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.max_len = max_len
        self.dtype = np.dtype(dtype).type
        shape = (cfg.n_layers, self.batch_size, cfg.n_heads, max_len, cfg.head_dim)
        self.k_all = np.zeros(shape, dtype=self.dtype)     # every layer's, for a whole-step kernel
        self.v_all = np.zeros(shape, dtype=self.dtype)
        self.k = list(self.k_all)                          # views, one per layer
        self.v = list(self.v_all)
        self.pos = 0

    def reset(self) -> None:
        """Forget every stored position (the arrays are reused)."""
        self.pos = 0

    def check_compatible(self, cfg, dtype) -> None:
        if (cfg.n_layers, cfg.n_heads, cfg.head_dim) != (self.cfg.n_layers, self.cfg.n_heads,
                                                         self.cfg.head_dim):
            raise ValueError("this KV cache was made for another model shape; make a new "
                             "KVCache(model.cfg, batch_size)")
        if np.dtype(dtype) != np.dtype(self.dtype):
            raise ValueError(f"KV cache dtype {np.dtype(self.dtype).name} differs from the model's "
                             f"{np.dtype(dtype).name}; make it with dtype=model.dtype")

    @property
    def nbytes(self) -> int:
        return self.k_all.nbytes + self.v_all.nbytes
