"""Vectorisable float32 exp and tanh for the Numba kernels.

Numba lowers ``np.exp``/``np.tanh`` on scalars to libm calls, which LLVM cannot vectorise without
Intel's SVML; NumPy's own ufuncs are SIMD. These pure-arithmetic versions (Cephes ``expf`` with
Cody-Waite range reduction; Eigen's rational ``tanh``) vectorise and are accurate to a few float32
ulp (tests/test_kernels.py checks the relative error over a range). Kernels use them only for
float32 inputs (``fast=True``); float64 keeps libm, so the gradient checks see exact functions.

NOTE: Numba's cache does not notice edits to this file; after changing it, touch the kernel files
that import it (or clear ``kernels/__pycache__``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _i32_as_f32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32 (LLVM trunc + bitcast)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if i.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


_LO = np.float32(-87.0)
_HI = np.float32(88.0)
_LOG2E = np.float32(1.44269504088896341)
_HALF = np.float32(0.5)
_C1 = np.float32(0.693359375)
_C2 = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE = np.float32(1.0)


@njit(inline="always", fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def exp32(x):
    """exp(x) for float32 x (inputs below -87 flush to ~0, above 88 saturate)."""
    x = min(max(x, _LO), _HI)
    fx = np.floor(x * _LOG2E + _HALF)
    r = x - fx * _C1 - fx * _C2
    r2 = r * r
    y = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r2 + r + _ONE
    n = np.int32(fx)
    return y * _i32_as_f32((n + 127) << 23)


_TCLAMP = np.float32(7.90531110763549805)
_A13 = np.float32(-2.76076847742355e-16)
_A11 = np.float32(2.00018790482477e-13)
_A9 = np.float32(-8.60467152213735e-11)
_A7 = np.float32(5.12229709037114e-08)
_A5 = np.float32(1.48572235717979e-05)
_A3 = np.float32(6.37261928875436e-04)
_A1 = np.float32(4.89352455891786e-03)
_B6 = np.float32(1.19825839466702e-06)
_B4 = np.float32(1.18534705686654e-04)
_B2 = np.float32(2.26843463243900e-03)
_B0 = np.float32(4.89352518554385e-03)


@njit(inline="always", fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def tanh32(x):
    """tanh(x) for float32 x: a 13/6 rational approximation on [-7.9, 7.9], exactly +-1 outside
    (float32 tanh rounds to +-1 there, and the backward's 1 - tanh^2 must then be exactly 0)."""
    xc = min(max(x, -_TCLAMP), _TCLAMP)
    x2 = xc * xc
    p = x2 * _A13 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    p = p * xc
    q = x2 * _B6 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    r = p / q
    r = _ONE if x >= _TCLAMP else r
    return -_ONE if x <= -_TCLAMP else r
