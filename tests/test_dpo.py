"""DPO (the book's ch07 bonus): data, loss, the backward by hand, against PyTorch and finite differences.

(a) the preference data: 1,100 entries shipped, the book's collate rule (prompt + 2 and padding masked)
(b) step 0: policy == reference gives exactly ln 2 and zero rewards, on both kernel paths
(c) the two ops and every parameter of a tiny policy against central differences (float64), with the
    negative controls (sigmoid's derivative forgotten, a reference that receives gradients)
(d) the loss, rewards and dL/dlogits against the book's compute_dpo_loss run by PyTorch in float64
    (tests/fixtures/outside/dpo_book_loss.safetensors, benchmarks/make_dpo_fixture.py; no torch here)
(e) a few AdamW steps move the policy, never the reference, and the reward margin grows
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import minigpt
from minigpt import backend
from minigpt.gradcheck_dpo import (
    check_dpo_loss,
    check_dpo_model,
    check_response_logprobs,
    clone,
    sigmoid_derivative_forgotten,
    tiny_config,
)
from minigpt.layers.dpo import (
    dpo_loss_backward,
    dpo_loss_forward,
    response_logprobs_backward,
    response_logprobs_forward,
)
from minigpt.training.dpo import (
    DPOObjective,
    PreferenceDataset,
    PreferenceLoader,
    as_targets,
    evaluate_dpo_loader,
    preference_collate_fn,
)
from minigpt.training.instruction_data import load_preference_data, split_instruction_data
from minigpt.training.optim import AdamW

FIXTURE = Path(__file__).parent / "fixtures" / "outside" / "dpo_book_loss.safetensors"
TOL = 1e-12

pytestmark = pytest.mark.usefixtures("one_numba_thread")


# ---------------------------------------------------------------- (a) data
def test_preference_data_is_shipped_and_split_like_chapter_7():
    data = load_preference_data()
    assert len(data) == 1100
    assert set(data[0]) == {"instruction", "input", "output", "chosen", "rejected"}
    train, test, val = split_instruction_data(data)
    assert (len(train), len(val), len(test)) == (935, 55, 110)


def test_collate_masks_prompt_plus_two_and_padding():
    batch = [{"prompt": [1, 2], "chosen": [1, 2, 3, 4, 5, 6], "rejected": [1, 2, 3, 4, 7]},
             {"prompt": [1], "chosen": [1, 3, 4, 8], "rejected": [1, 3, 4, 9, 9, 9, 9]}]
    b = preference_collate_fn(batch, pad_token_id=0)
    assert b["chosen"].shape == b["rejected"].shape == (2, 8)                 # longest 7 + 1
    assert b["chosen"][0].tolist() == [1, 2, 3, 4, 5, 6, 0, 0]
    assert b["chosen_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]           # prompt 2 + 2 off
    assert b["rejected_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]         # prompt 1 + 2 off
    x, y = as_targets(b["chosen"], b["chosen_mask"])
    assert x[0].tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert y[0].tolist() == [-100, -100, -100, 5, 6, -100, -100]
    cut = preference_collate_fn(batch, pad_token_id=0, allowed_max_length=5)
    assert cut["rejected"].shape == (2, 5)


def test_loader_stacks_chosen_over_rejected():
    tok = minigpt.Tokenizer.gpt2()
    data = load_preference_data()[:5]
    ds = PreferenceDataset(data, tok)
    x, y = next(iter(PreferenceLoader(ds, batch_size=2)))
    assert x.shape == y.shape and x.shape[0] == 4
    prompt = ds[0]["prompt"]
    assert x[0, :len(prompt)].tolist() == prompt and x[2, :len(prompt)].tolist() == prompt
    assert np.all(y[0, :len(prompt) + 1] == -100)          # the prompt and "\n\n" predict nothing
    chosen = ds[0]["chosen"]
    assert y[0, len(chosen) - 2] == chosen[-1] and np.all(y[0, len(chosen) - 1:] == -100)
    with pytest.raises(ValueError, match="chosen"):
        PreferenceDataset([{"instruction": "a", "input": "", "output": "b", "rejected": "c"}], tok)
    with pytest.raises(ValueError, match="context_length"):
        PreferenceDataset(data, tok, context_length=16)


# ---------------------------------------------------------------- (b) step 0
@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step0_loss_is_exactly_ln2(path, dtype):
    rng = np.random.default_rng(1)
    cfg = tiny_config(33)
    with backend.use(path):
        policy = minigpt.GPTModel(cfg, seed=3, dtype=dtype)
        objective = DPOObjective(policy, clone(policy), beta=0.1)
        x = rng.integers(0, cfg.vocab_size, (4, 33))
        y = np.where(rng.random((4, 33)) < 0.7, rng.integers(0, cfg.vocab_size, (4, 33)), -100)
        out = objective.evaluate(x, y)
        assert out.loss == math.log(2) == pytest.approx(0.693147, abs=5e-7)
        assert out.chosen_reward == 0.0 and out.rejected_reward == 0.0 and out.margin == 0.0
        loss, _ = objective.loss_and_grads(x, y)
        assert loss == math.log(2)
        # control: a policy one step away from the reference is not at ln 2
        policy.flat_params[0] += dtype(0.5)
        assert objective.evaluate(x, y).loss != math.log(2)


def test_reference_sharing_the_policy_is_refused():
    policy = minigpt.GPTModel(tiny_config(5), seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match="separate frozen copy"):
        DPOObjective(policy, policy)
    objective = DPOObjective(policy, clone(policy))
    assert objective.reference.num_trainable == 0 and policy.num_trainable == policy.num_params


# ---------------------------------------------------------------- (c) finite differences
def test_response_logprobs_gradient():
    assert check_response_logprobs().passed


def test_dpo_loss_gradient_and_its_control():
    assert all(r.passed for r in check_dpo_loss())
    assert not any(r.passed for r in check_dpo_loss(backward=sigmoid_derivative_forgotten))


@pytest.mark.parametrize("path,T,variants", [
    ("numpy", 5, ("correct", "sigmoid_forgotten", "reference_trains")),
    ("numba", 5, ("correct",)),
    ("numba", 33, ("correct", "sigmoid_forgotten", "reference_trains")),   # BLAS attention
])
def test_every_policy_parameter_against_finite_differences(path, T, variants):
    with backend.use(path):
        by_variant = dict(zip(variants, check_dpo_model(T=T, variants=variants), strict=True))
    assert by_variant["correct"].passed
    assert by_variant["correct"].n_checked > 300
    for v in variants[1:]:
        assert not by_variant[v].passed, f"the negative control {v} passed the check"


# ---------------------------------------------------------------- (d) PyTorch's numbers
def _fixture_case():
    f = load_file(str(FIXTURE))
    rows = {}
    for key in ("chosen", "rejected"):
        x, y = as_targets(f[f"{key}_ids"], f[f"{key}_mask"].astype(bool))
        rows[key] = y
    return f, rows


def test_loss_and_gradient_match_the_books_compute_dpo_loss_in_pytorch():
    f, y = _fixture_case()
    lp, caches = {}, {}
    for name in ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"):
        logits = f[f"{name}_logits"][:, :-1]                  # the book drops the last position
        lp[name], caches[name] = response_logprobs_forward(logits, y[name.split("_")[1]])
        np.testing.assert_allclose(lp[name], f[f"logprob.{name}"], rtol=0, atol=TOL)
    out, c = dpo_loss_forward(lp["policy_chosen"], lp["policy_rejected"], lp["reference_chosen"],
                              lp["reference_rejected"], beta=0.1)
    assert abs(out.loss - float(f["loss"])) < TOL
    assert abs(out.chosen_reward - float(f["chosen_reward"])) < TOL
    assert abs(out.rejected_reward - float(f["rejected_reward"])) < TOL
    for backward, should_match in ((dpo_loss_backward, True), (sigmoid_derivative_forgotten, False)):
        d_w, d_l = backward(c)
        for name, d in (("policy_chosen", d_w), ("policy_rejected", d_l)):
            want = f[f"grad.{name}_logits"]
            assert np.all(want[:, -1] == 0)                   # the last position predicts nothing
            got = response_logprobs_backward(d, caches[name])
            err = np.abs(got - want[:, :-1]).max() / np.abs(want).max()
            assert (err < 1e-12) == should_match, (name, err)
    step0, _ = dpo_loss_forward(lp["policy_chosen"], lp["policy_rejected"], lp["policy_chosen"],
                                lp["policy_rejected"], beta=0.1)
    assert step0.loss == float(f["step0_loss"]) == math.log(2)


def test_a_wrong_mask_is_caught_by_the_fixture():
    """Negative control: masking one token fewer of the prompt (+1 instead of the book's +2)
    moves the log-probabilities off PyTorch's."""
    f, _ = _fixture_case()
    mask = f["chosen_mask"].astype(bool).copy()
    for b in range(mask.shape[0]):
        first = np.flatnonzero(mask[b])[0]
        mask[b, first - 1] = True
    _, y = as_targets(f["chosen_ids"], mask)
    lp, _ = response_logprobs_forward(f["policy_chosen_logits"][:, :-1], y)
    assert np.abs(lp - f["logprob.policy_chosen"]).max() > 1e-3


# ---------------------------------------------------------------- (e) training
def test_steps_move_the_policy_not_the_reference_and_grow_the_margin():
    rng = np.random.default_rng(0)
    cfg = tiny_config(12)
    policy = minigpt.GPTModel(cfg, seed=0, dtype=np.float64)
    reference = clone(policy)
    frozen = reference.flat_params.copy()
    objective = DPOObjective(policy, reference, beta=0.1)
    opt = AdamW(policy, lr=1e-2, weight_decay=0.01)
    x = rng.integers(0, cfg.vocab_size, (8, 12))
    y = np.where(np.arange(12) >= 4, np.roll(x, -1, axis=1), -100)
    margins = []
    for _ in range(5):
        margins.append(objective.evaluate(x, y).margin)
        objective.loss_and_grads(x, y)
        opt.step(policy.flat_grads)
    assert margins[0] == 0.0 and margins[-1] > margins[1] > 0
    assert np.array_equal(reference.flat_params, frozen)
    assert not np.array_equal(policy.flat_params, frozen)

    class Loader:
        def __iter__(self):
            yield x, y

    m = evaluate_dpo_loader(objective, Loader())
    assert m["margin"] == pytest.approx(m["chosen_reward"] - m["rejected_reward"]) and m["margin"] > 0
