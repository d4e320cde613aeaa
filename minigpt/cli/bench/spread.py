"""How far a bench ratio can be trusted: each side's spread over its processes, and a flag.

Each child process gives one rate: tokens / (median of its timed steps). A side's figure is the
median of its processes' rates, its spread the slowest and the fastest process. PyTorch's rate on
the bench machine moves from one process to the next (docs/kernels.md, "Why the PyTorch peer's
speed moves"), so the spread is over processes, not over steps of one process.

The ratio (minigpt / PyTorch) is the ratio of the two medians; its spread runs from minigpt's
slowest over PyTorch's fastest to minigpt's fastest over PyTorch's slowest. A ratio is flagged when
that spread is wider than the ratio's distance from 1: the measurement cannot tell which side is
faster by as much as it claims (e.g. 1.20 with a spread of 0.95..1.40 is flagged: 0.45 > 0.20).
"""

from __future__ import annotations

from statistics import median


def side(rates: list[float]) -> dict:
    """Per-process rates of one side -> {"tok_s": median, "tok_s_range": (min, max), "rates"}."""
    if not rates:
        raise ValueError("no rates: every side needs at least one process")
    return {"tok_s": median(rates), "tok_s_range": (min(rates), max(rates)), "rates": list(rates)}


def ratio(a: dict, b: dict) -> dict:
    """a / b of two ``side`` results -> {"ratio", "ratio_range", "flagged"}."""
    r = a["tok_s"] / b["tok_s"]
    lo = a["tok_s_range"][0] / b["tok_s_range"][1]
    hi = a["tok_s_range"][1] / b["tok_s_range"][0]
    return {"ratio": r, "ratio_range": (lo, hi), "flagged": flagged(r, lo, hi)}


def flagged(r: float, lo: float, hi: float) -> bool:
    """True when the spread hi - lo is wider than the ratio's distance from 1."""
    return (hi - lo) > abs(r - 1.0)
