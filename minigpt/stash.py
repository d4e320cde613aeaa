"""Activations kept in the gradient buffer until the backward needs that part of it.

A training step's peak resident memory is the parameters, gradients and AdamW moments (4 x the
parameters) plus what the step allocates on top. But the gradient buffer sits idle, zeroed, until
the backward writes it, and the backward writes it block by block from the top: block i's
gradients are written only after block i + 1's backward is done. So block i + 1's cached
activations can live in block i's gradient slab until then (``GPTModel.loss_and_grads``):

    forward:   block i + 1 copies what it keeps (its inputs x, qkv, u) into block i's slab
    backward:  block i + 1's backward reads them there; then the slab is zeroed again, and block i's
               backward adds its gradients into it as before

The memory they took on the heap is not needed, and memory the allocator would keep for them
(``kernels/blas.py: tune_malloc`` keeps freed memory) is not taken. The numbers are the same bits:
the arrays are copies, and every gradient is added into zeros as before. A slab too small for an
array (many tokens per step on a narrow model) leaves it where it is, on the heap. The dropout
masks (bytes, ``block.PackedMask``) go there too.
"""

from __future__ import annotations

import numpy as np


class Stash:
    """A bump allocator over ``buf`` (1-D, zeroed): ``keep`` copies arrays into it (any dtype: the
    slab is used as bytes), ``clear`` zeroes what they used."""

    def __init__(self, buf: np.ndarray):
        self.buf = buf
        self.bytes = buf.view(np.uint8)
        self.used = 0                                   # bytes

    def keep(self, a: np.ndarray) -> np.ndarray:
        """A copy of ``a`` in the slab, or ``a`` itself when it does not fit (or is in the slab
        already)."""
        if np.may_share_memory(a, self.buf):         # kept already (by the caller)
            return a
        start = -(-self.used // 64) * 64             # each array on a cache line of its own
        if start + a.nbytes > self.bytes.size:
            return a
        out = self.bytes[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        np.copyto(out, a)
        self.used = start + a.nbytes
        return out

    def clear(self) -> None:
        """Zero what ``keep`` wrote: the slab is a gradient again, to be added into."""
        self.bytes[:self.used] = 0
        self.used = 0


def block_slabs(ranges: dict[str, tuple[int, int]], n_layers: int) -> list[tuple[int, int] | None]:
    """Per block, the (start, stop) of its parameters in the flat buffer, or None when they are
    not one contiguous run (then nothing is stashed there)."""
    out: list[tuple[int, int] | None] = []
    for i in range(n_layers):
        spans = [r for name, r in ranges.items() if name.startswith(f"h.{i}.")]
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        out.append((lo, hi) if sum(e - s for s, e in spans) == hi - lo else None)
    return out
