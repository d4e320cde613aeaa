"""Finite-difference checks of DPO's hand-written backward (docs/derivations.md §13), float64.

Three checks, each over every element:

1. ``response_logprobs`` (eq. 13.2): dL/dlogits of L = sum(lp * g) for a random upstream g;
2. ``dpo_loss`` (eq. 13.4): dL/dpi_w and dL/dpi_l, the reference held fixed;
3. the whole chain (eq. 13.5): dL/dtheta for every parameter of a tiny policy, the frozen reference
   held fixed (its log-probabilities computed once), at a point where policy != reference.

Negative controls (must FAIL the same criterion): a backward that forgets the sigmoid's derivative
(dL/dh = -1/B instead of -sigmoid(-h)/B), and a reference model that receives gradients (its
backward, through its own parameters, added into the policy's gradient as if the two were one).
"""

from __future__ import annotations

import numpy as np

from minigpt.config import GPTConfig
from minigpt.gradcheck import CheckResult, compare, numerical_gradient
from minigpt.layers.dpo import (
    dpo_loss_backward,
    dpo_loss_forward,
    response_logprobs_backward,
    response_logprobs_forward,
)
from minigpt.model import GPTModel
from minigpt.training.dpo import DPOObjective


def tiny_config(T: int) -> GPTConfig:
    """One block, C = 4: small enough to walk every parameter (~500) in well under a second."""
    return GPTConfig(vocab_size=11, context_length=T, emb_dim=4, n_heads=2, n_layers=1,
                     drop_rate=0.0, qkv_bias=True, tie_weights=False)


def _targets(rng: np.random.Generator, N: int, T: int, V: int) -> np.ndarray:
    """Random targets with a masked prompt (the first 2) and padding (row-dependent tail)."""
    y = rng.integers(0, V, (N, T))
    y[:, :2] = -100
    for n in range(N):
        y[n, T - (n % 3):] = -100
    return y


# ----------------------------------------------------------------- 1-2: the two ops
def check_response_logprobs(seed: int = 0, N: int = 3, T: int = 6, V: int = 7) -> CheckResult:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, T, V)) * 2
    y = _targets(rng, N, T, V)
    g = rng.standard_normal(N)
    lp, cache = response_logprobs_forward(z, y)
    analytic = response_logprobs_backward(g, cache)
    numeric = numerical_gradient(lambda: float(response_logprobs_forward(z, y)[0] @ g), z)
    return compare("response_logprobs", "logits", analytic, numeric, "13.2")


def sigmoid_derivative_forgotten(cache):
    """Negative control: dL/dh = -1/B, as if -log sigmoid(h) were -h."""
    h, beta = cache
    dh = -np.ones_like(h) / h.size
    return beta * dh, -beta * dh


def check_dpo_loss(seed: int = 0, B: int = 4, beta: float = 0.1,
                   backward=dpo_loss_backward) -> list[CheckResult]:
    rng = np.random.default_rng(seed)
    pi_w, pi_l, ref_w, ref_l = (rng.standard_normal(B) * 3 for _ in range(4))
    _, cache = dpo_loss_forward(pi_w, pi_l, ref_w, ref_l, beta)
    d_w, d_l = backward(cache)

    def L() -> float:
        return dpo_loss_forward(pi_w, pi_l, ref_w, ref_l, beta)[0].loss

    return [compare("dpo_loss", "pi_w", d_w, numerical_gradient(L, pi_w), "13.4"),
            compare("dpo_loss", "pi_l", d_l, numerical_gradient(L, pi_l), "13.4")]


# ----------------------------------------------------------------- 3: the whole chain
class _SigmoidForgotten(DPOObjective):
    loss_backward = staticmethod(sigmoid_derivative_forgotten)


class _ReferenceTrains(DPOObjective):
    """Negative control: the reference's log-probabilities are differentiated too (dL/dref =
    -dL/dpi), and the reference's parameter gradients land in the policy's buffer."""

    def loss_and_grads(self, x, y, *, rng=None, lengths=None):
        loss, grads = super().loss_and_grads(x, y, rng=rng)
        policy_grads = self.policy.flat_grads.copy()
        B = x.shape[0] // 2
        pi, _ = response_logprobs_forward(self.policy.forward(x), y)
        ref_logits, cache = self.trainable_reference.forward_train(x)
        ref, c_lp = response_logprobs_forward(ref_logits, y)
        _, c_loss = dpo_loss_forward(pi[:B], pi[B:], ref[:B], ref[B:], self.beta)
        d_w, d_l = dpo_loss_backward(c_loss)
        dref = -np.concatenate([d_w, d_l])                                  # dL/dref = -dL/dpi
        self.trainable_reference.backward(response_logprobs_backward(dref, c_lp), cache)
        self.policy.flat_grads[...] = policy_grads + self.trainable_reference.flat_grads
        return loss, grads


def clone(model: GPTModel) -> GPTModel:
    """A separate model holding the same numbers (``GPTModel.copy``: its own flat buffers)."""
    return model.copy()


def _dpo_case(T: int, seed: int):
    rng = np.random.default_rng(seed)
    cfg = tiny_config(T)
    reference = GPTModel(cfg, seed=seed, dtype=np.float64)
    reference.flat_params[...] = rng.standard_normal(reference.flat_params.size) * 0.5
    policy = clone(reference)
    policy.flat_params += rng.standard_normal(policy.flat_params.size) * 0.3   # policy != reference
    B = 2
    x = rng.integers(0, cfg.vocab_size, (2 * B, T))
    y = _targets(rng, 2 * B, T, cfg.vocab_size)
    return policy, reference, x, y


VARIANTS = {"correct": DPOObjective, "sigmoid_forgotten": _SigmoidForgotten,
            "reference_trains": _ReferenceTrains}


def check_dpo_model(T: int = 5, seed: int = 0,
                    variants: tuple[str, ...] = ("correct",)) -> list[CheckResult]:
    """Every parameter of a tiny policy against central differences of the DPO loss (eq. 13.5).

    ``variants``: "correct" and the negative controls "sigmoid_forgotten", "reference_trains", each
    compared with the one numerical gradient, which holds the reference fixed (its
    log-probabilities computed once). The policy differs from the reference (h != 0)."""
    policy, reference, x, y = _dpo_case(T, seed)
    B = x.shape[0] // 2
    analytic = {}
    for v in variants:
        objective = VARIANTS[v](policy, reference, beta=0.5)
        objective.trainable_reference = clone(reference)
        objective.trainable_reference.unfreeze()   # the control's reference takes gradients
        objective.loss_and_grads(x, y)
        analytic[v] = policy.flat_grads.copy()
    ref, _ = response_logprobs_forward(reference.forward(x), y)

    def L() -> float:
        pi, _ = response_logprobs_forward(policy.forward(x), y)
        return dpo_loss_forward(pi[:B], pi[B:], ref[:B], ref[B:], 0.5)[0].loss

    numeric = numerical_gradient(L, policy.flat_params)
    return [compare(f"dpo_model_T{T}_{v}", "flat_params", a, numeric, "13.5")
            for v, a in analytic.items()]
