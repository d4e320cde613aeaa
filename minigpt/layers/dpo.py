"""Direct Preference Optimization: the loss on a preference pair and its backward (eqs. 13.1-13.6).

Two pieces, each a forward/backward pair:

1. ``response_logprobs``: the mean log-probability of a response under a model (eq. 13.1),

       lp_n = (1/M_n) sum over counted t of log softmax(z_{n,t})[y_{n,t}]

   with the targets' -100 marking the positions that do not count (the prompt, the padding), as the
   book's ``compute_logprobs`` with its ``selection_mask``. Its backward (eq. 13.2) goes through the
   log-softmax: d lp_n / d z_{n,t} = (m_{n,t} / M_n) (onehot(y_{n,t}) - softmax(z_{n,t})).

2. ``dpo_loss``: with the policy's (pi) and the frozen reference's (ref) mean log-probabilities of
   the chosen (w) and the rejected (l) responses of B pairs (eq. 13.3),

       h_b  = beta ((pi_w - ref_w) - (pi_l - ref_l))
       L    = (1/B) sum_b -log sigmoid(h_b) = (1/B) sum_b softplus(-h_b)

   and its backward to the policy's log-probabilities (eq. 13.4): dL/dh_b = -sigmoid(-h_b) / B,
   dL/dpi_w = beta dL/dh, dL/dpi_l = -beta dL/dh. The reference gets no gradient: it is frozen.

The rewards are the book's: chosen = mean(pi_w - ref_w), rejected = mean(pi_l - ref_l), their
difference the reward margin. At step 0 the policy equals the reference, h = 0 and L = ln 2 exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


# ----------------------------------------------------------------- 1. the response log-probability
def response_logprobs_forward(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100):
    """logits (N, T, V), targets (N, T) int (-100: not counted) -> (lp (N,) float64, cache).

    Row by row, so the temporaries are (T, V), not (N, T, V); the exponentials in the logits' dtype,
    the sums and the result in float64. The cache keeps the logits (a
    reference, not a copy), the targets and each position's log-sum-exp; the backward recomputes
    the softmax from them (eq. 13.2).
    """
    N, T, V = logits.shape
    if targets.shape != (N, T):
        raise ValueError(f"targets must have shape {(N, T)} (one per position), got {targets.shape}")
    counted = targets != ignore_index                                  # (N, T) bool
    M = counted.sum(axis=1)                                            # (N,) counted per row
    if np.any(M == 0):
        raise ValueError(f"row {int(np.argmin(M))} has no counted target (every target is "
                         f"{ignore_index}): its response is empty or cut off by the context; "
                         "drop that pair or allow longer sequences")
    bad = counted & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"targets hold {targets[bad][0]}, neither a token id in [0, {V}) nor "
                         f"{ignore_index}")
    y = np.where(counted, targets, 0)                                  # (N, T) safe ids
    lse = np.empty((N, T), dtype=np.float64)                           # (N, T) log-sum-exp
    lp = np.empty(N, dtype=np.float64)
    t_idx = np.arange(T)
    for n in range(N):
        z = logits[n]                                                  # (T, V), its own dtype
        zmax = z.max(axis=1)                                           # (T,)
        e = np.exp(z - zmax[:, None])                                  # (T, V)  <= 1
        lse[n] = zmax + np.log(e.sum(axis=1, dtype=np.float64))        # (T,)  eq. 7.2, float64
        logp_y = z[t_idx, y[n]] - lse[n]                               # (T,)  log softmax(z)[y]
        lp[n] = logp_y[counted[n]].sum() / M[n]                        # eq. 13.1
    return lp, (logits, y, counted, M, lse)             # lp in float64, whatever the logits


def response_logprobs_backward(dlp: np.ndarray, cache, out: np.ndarray | None = None) -> np.ndarray:
    """dlp (N,) -> dlogits (N, T, V) (eq. 13.2):

        dlogits_{n,t} = dlp_n (m_{n,t} / M_n) (onehot(y_{n,t}) - softmax(z_{n,t}))

    ``out``: where to write dlogits (may be the cached logits themselves: each row is read before
    it is written); a new array by default.
    """
    logits, y, counted, M, lse = cache
    N, T, V = logits.shape
    if out is None:
        out = np.empty_like(logits)
    t_idx = np.arange(T)
    for n in range(N):
        w = (dlp[n] * counted[n] / M[n]).astype(logits.dtype)[:, None]     # (T, 1)  per-position weight
        p = np.exp(logits[n] - lse[n].astype(logits.dtype)[:, None])       # (T, V)  softmax
        g = -w * p                                                          # (T, V)
        g[t_idx, y[n]] += w[:, 0]                                           # + w onehot(y)
        out[n] = g
    return out


# ----------------------------------------------------------------- 2. the DPO loss
class DPOLoss(NamedTuple):
    """The loss and the book's logged values (means over the B pairs)."""

    loss: float
    chosen_reward: float          # mean(pi_w - ref_w)
    rejected_reward: float        # mean(pi_l - ref_l)

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


def dpo_loss_forward(pi_w: np.ndarray, pi_l: np.ndarray, ref_w: np.ndarray, ref_l: np.ndarray,
                     beta: float = 0.1):
    """Mean log-probabilities (B,) each -> (DPOLoss, cache) (eq. 13.3).

    -log sigmoid(h) is computed as softplus(-h) = logaddexp(0, -h): no overflow for large |h|, and
    exactly ln 2 at h = 0.
    """
    pi_w, pi_l, ref_w, ref_l = (np.asarray(a, dtype=np.float64) for a in (pi_w, pi_l, ref_w, ref_l))
    if not (pi_w.shape == pi_l.shape == ref_w.shape == ref_l.shape and pi_w.ndim == 1):
        raise ValueError(f"the four log-probabilities must be (B,) arrays of one shape, got "
                         f"{pi_w.shape}, {pi_l.shape}, {ref_w.shape}, {ref_l.shape}")
    h = beta * ((pi_w - ref_w) - (pi_l - ref_l))                       # (B,)
    loss = float(np.mean(np.logaddexp(0.0, -h)))                       # mean softplus(-h)
    out = DPOLoss(loss, float(np.mean(pi_w - ref_w)), float(np.mean(pi_l - ref_l)))
    return out, (h, beta)


def dpo_loss_backward(cache) -> tuple[np.ndarray, np.ndarray]:
    """-> (dL/dpi_w, dL/dpi_l), (B,) each (eq. 13.4); dL/dL = 1.

        dL/dh_b = -sigmoid(-h_b) / B      (d/dx softplus(x) = sigmoid(x), and h enters as -h)
    """
    h, beta = cache
    sig_neg = np.exp(-np.logaddexp(0.0, h))                            # sigmoid(-h), no overflow
    dh = -sig_neg / h.size                                             # (B,)
    return beta * dh, -beta * dh
