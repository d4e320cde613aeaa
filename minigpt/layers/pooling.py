"""Pooling: one vector per sequence from the hidden states of all its positions (chapter 6).

A classification head needs one vector per text, not one per token. Three ways to get it:

    "last"         x[b, T-1]                        the book's: the last position (eq. 11.1)
    "last_nonpad"  x[b, lengths[b]-1]               the last real token of each row (eq. 11.1)
    "mean"         mean of x[b, :lengths[b]]        the mean over the real tokens (eq. 11.2)

``lengths[b]`` is the number of real (non-padding) tokens of row b; the padding is on the right, as
the book's ``SpamDataset`` pads. With causal attention the last real token is the only position that
has seen the whole text and nothing else; after it, every position also reads the padding, so
"last" gives a prediction that changes with the amount of padding (the book's readers' issue #566).

The backwards (eqs. 11.3-11.4) send the upstream gradient back to the positions that were read and
zero to every other one.
"""

from __future__ import annotations

import numpy as np

POOLINGS = ("last", "last_nonpad", "mean")


def check_lengths(lengths, B: int, T: int, mode: str) -> np.ndarray | None:
    """The pooling's ``lengths`` argument, checked: (B,) integers in [1, T], or None for "last".

    "last" does not read ``lengths`` (it may be given, then it is checked all the same, so that one
    data pipeline can feed every pooling). Raises ValueError saying what was wrong.
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    if lengths is None:
        if mode == "last":
            return None
        raise ValueError(f"pooling {mode!r} needs lengths: the number of real (non-padding) tokens "
                         f"of each row, an int array of shape ({B},); pass lengths=... (or choose "
                         "pooling='last', which reads the last position whatever it holds)")
    lengths = np.asarray(lengths)
    if lengths.dtype == bool or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must hold integers (tokens per row), got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one count per row of the batch, got "
                         f"shape {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > T:
        bad = lengths.min() if lengths.min() < 1 else lengths.max()
        raise ValueError(f"lengths hold {int(bad)}, outside [1, {T}]: each row has at least one real "
                         f"token and at most T={T} (the padded length)")
    return lengths


def pooling_forward(x: np.ndarray, mode: str, lengths: np.ndarray | None = None):
    """x (B, T, C), lengths (B,) int or None -> pooled (B, C).

    Cache: ``(mode, rows, x.shape)``. For "last" / "last_nonpad", ``rows`` is the position read in each
    row (B,); for "mean", the (B, T) weights 1/lengths[b] on the real positions and 0 on padding
    (eq. 11.2), which are also the backward's (eq. 11.4).
    """
    B, T, C = x.shape
    lengths = check_lengths(lengths, B, T, mode)
    if mode == "mean":
        real = np.arange(T)[None, :] < lengths[:, None]                    # (B, T) bool, True = real token
        w = (real / lengths[:, None]).astype(x.dtype)                      # (B, T) 1/len or 0
        pooled = (x * w[:, :, None]).sum(axis=1)                           # (B, T, C) -> (B, C)  eq. 11.2
        return pooled, (mode, w, x.shape)
    pos = np.full(B, T - 1) if mode == "last" else lengths - 1             # (B,) the position read
    pooled = x[np.arange(B), pos]                                          # (B, T, C) -> (B, C)  eq. 11.1
    return pooled, (mode, pos, x.shape)


def pooling_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (B, C) -> dx (B, T, C). No parameters.

    "last" / "last_nonpad" (eq. 11.3): dx[b, pos[b]] = dout[b], zero elsewhere (each row reads one
    position, so no two rows write one element).
    "mean" (eq. 11.4): dx[b, t] = dout[b] / lengths[b] for t < lengths[b], zero on the padding.
    """
    mode, rows, shape = cache
    if mode == "mean":
        return rows[:, :, None] * dout[:, None, :]                         # (B, T, 1) * (B, 1, C)  eq. 11.4
    B = shape[0]
    dx = np.zeros(shape, dtype=dout.dtype)                                 # (B, T, C)
    dx[np.arange(B), rows] = dout                                          # eq. 11.3
    return dx
