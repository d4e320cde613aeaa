"""GELU, tanh approximation (GPT-2 was trained with it; Hugging Face calls it ``gelu_new``).

    y = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)                 (eq. 4.1)
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715


def gelu_forward(x: np.ndarray):
    """x (...) -> out (...), same dtype.

    Cache: ``(x, tanh(u))``; keeping tanh(u) saves recomputing the transcendental in the backward.
    """
    k = x.dtype.type(SQRT_2_OVER_PI)
    c = x.dtype.type(GELU_COEF)
    half = x.dtype.type(0.5)
    th = np.tanh(k * (x + c * x * x * x))                 # (...)
    out = half * x * (1 + th)                              # (...)
    return out, (x, th)


def gelu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """Return dL/dx (...). Eq. 4.2:

        dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    x, th = cache
    k = x.dtype.type(SQRT_2_OVER_PI)
    c3 = x.dtype.type(3 * GELU_COEF)
    half = x.dtype.type(0.5)
    dy_dx = half * (1 + th) + half * x * (1 - th * th) * k * (1 + c3 * x * x)   # (...)
    return dout * dy_dx
