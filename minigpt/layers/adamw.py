"""The AdamW update over a run of the flat parameter buffer (PyTorch's ``torch.optim.AdamW``).

Not a layer of the network but an op over the flat buffers; it sits with the layers so that the
optimizer picks it, or its kernel (``kernels/adamw.py``), through the same switch as the model
(``minigpt.backend.ops()``). For step t >= 1 and gradient g * grad_scale (the clip factor):

    p <- p * (1 - lr * wd)                         decoupled weight decay (Loshchilov & Hutter)
    m <- b1 m + (1 - b1) g;    v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

written in that order, so float32 results follow PyTorch's to rounding. All four arrays are 1-D,
same length and dtype, updated in place (m and v start at 0). Parameters that must not decay are
updated by a call on their slice with ``weight_decay=0``.
"""

from __future__ import annotations

import math

import numpy as np

# Elements per chunk: big enough that NumPy's per-call overhead vanishes, small enough (4 MiB of
# float32) that the temporaries stay in cache and cost no memory (GPT-2 has 124M parameters).
CHUNK = 1 << 20


def adamw_step(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float, step: int,
               grad_scale: float = 1.0) -> None:
    """One in-place AdamW update of p, m, v (n,) from the gradient g (n,) (formula above)."""
    for name, a in (("g", g), ("m", m), ("v", v)):
        if p.ndim != 1 or a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"adamw: {name} must be 1-D like p {p.shape} {p.dtype}, "
                             f"got {a.shape} {a.dtype}")
    if step < 1:
        raise ValueError(f"adamw: step counts from 1, got {step}")
    dt = p.dtype.type
    if weight_decay != 0.0 and lr != 0.0:
        p *= 1.0 - lr * weight_decay                       # decay multiplies the weights, not g
    step_size = lr / (1.0 - beta1**step)
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    tmp = np.empty(min(CHUNK, p.size), dtype=p.dtype)
    for a in range(0, p.size, CHUNK):
        b = min(a + CHUNK, p.size)
        gs, ms, vs, ts = g[a:b], m[a:b], v[a:b], tmp[: b - a]
        if grad_scale != 1.0:
            gs = gs * dt(grad_scale)
        # m = b1 m + (1 - b1) g   (torch: m.lerp_(g, 1 - b1))
        ms *= dt(beta1)
        np.multiply(gs, dt(1.0 - beta1), out=ts)
        ms += ts
        # v = b2 v + (1 - b2) g^2
        vs *= dt(beta2)
        np.multiply(gs, gs, out=ts)
        ts *= dt(1.0 - beta2)
        vs += ts
        # p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        np.sqrt(vs, out=ts)
        ts /= dt(bc2_sqrt)
        ts += dt(eps)
        np.divide(ms, ts, out=ts)
        ts *= dt(step_size)
        p[a:b] -= ts
