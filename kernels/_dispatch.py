"""Compile-once dispatch for kernels that take strided views.

Numba specialises a function per argument *layout*: a C-contiguous (B, H, T, hs) array and a
strided view of a fused qkv buffer would compile twice, and a KV cache that becomes exactly full
would trigger a fresh compile in the middle of generation. ``AnyLayout`` compiles one explicit
signature per dtype combination with the chosen array arguments typed as layout 'A' (any strides);
C-contiguous arrays convert to it, so nothing recompiles. ``cache=True`` still applies.
"""

from __future__ import annotations

import numba
from numba import njit, types


class AnyLayout:
    """Wrap ``py_func`` so that arrays at ``positions`` are typed with layout 'A'."""

    def __init__(self, py_func, positions: tuple[int, ...], **jit_options):
        self.py_func = py_func
        self.positions = frozenset(positions)
        self.jit_options = jit_options
        self._compiled: dict[tuple, object] = {}

    def _signature(self, args) -> tuple:
        sig = []
        for i, a in enumerate(args):
            t = numba.typeof(a)
            if i in self.positions and isinstance(t, types.Array):
                t = t.copy(layout="A", readonly=False)
            sig.append(t)
        return tuple(sig)

    def __call__(self, *args):
        sig = self._signature(args)
        fn = self._compiled.get(sig)
        if fn is None:
            fn = self._compiled[sig] = njit(sig, **self.jit_options)(self.py_func)
        return fn(*args)

    @property
    def signatures(self) -> list[tuple]:
        return list(self._compiled)
