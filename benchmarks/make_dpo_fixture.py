"""Freeze the book's DPO loss, computed by PyTorch in float64, into tests/fixtures/outside/.

    /work/peer/bin/python benchmarks/make_dpo_fixture.py      # any venv with torch, numpy, safetensors

Writes ``tests/fixtures/outside/dpo_book_loss.safetensors``: fixed random (seed 0) token sequences of
3 preference pairs (9 tokens, vocabulary 13), their masks built by the rule of the book's DPO
collate (padding off; the prompt and the 2 tokens after it off), policy and reference logits for the
chosen and the rejected sequences, and what the book's ``compute_logprobs`` + ``compute_dpo_loss``
(beta 0.1), written here in PyTorch from the book's definitions, give for them: the loss, the
chosen and rejected rewards, and the loss's gradient (autograd) with respect to the policy's logits.
A second case, ``step0_*``, puts the reference equal to the policy: the loss there is ln 2.

This script does not import minigpt; tests/test_dpo.py reads the file with numpy and safetensors
only, and checks minigpt's forward and hand-written backward (``minigpt/layers/dpo.py``) against it.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "outside" / "dpo_book_loss.safetensors"
B, T, V, BETA = 3, 9, 13, 0.1


def compute_logprobs(torch, logits, labels, selection_mask):
    """The book's: mean log-probability of labels[:, 1:] under logits[:, :-1], over mask[:, 1:]."""
    F = torch.nn.functional
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    log_probs = F.log_softmax(logits, dim=-1)
    selected = torch.gather(input=log_probs, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    mask = selection_mask[:, 1:].clone()
    return (selected * mask).sum(-1) / mask.sum(-1)


def compute_dpo_loss(torch, pi_w, pi_l, ref_w, ref_l, beta):
    """The book's: -logsigmoid(beta * ((pi_w - pi_l) - (ref_w - ref_l))), mean; rewards detached."""
    F = torch.nn.functional
    logits = (pi_w - pi_l) - (ref_w - ref_l)
    losses = -F.logsigmoid(beta * logits)
    return losses.mean(), (pi_w - ref_w).detach().mean(), (pi_l - ref_l).detach().mean()


def main() -> int:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    prompt_len = np.array([2, 3, 1])
    seqs, masks = {}, {}
    for key, lengths in (("chosen", [7, 8, 9]), ("rejected", [6, 8, 4])):
        seq = np.full((B, T), 12, dtype=np.int64)          # 12 plays the end-of-text / padding id
        mask = np.zeros((B, T), dtype=bool)
        for b in range(B):
            seq[b, :lengths[b]] = rng.integers(0, 12, lengths[b])
            mask[b, :lengths[b]] = True                    # the padding is off
            mask[b, :prompt_len[b] + 2] = False            # the prompt + 2 tokens are off
        seqs[key], masks[key] = seq, mask
    logits = {name: rng.standard_normal((B, T, V)) * 2 for name in
              ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")}

    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k.startswith("policy"))
         for k, v in logits.items()}
    lab = {k: torch.from_numpy(v) for k, v in seqs.items()}
    msk = {k: torch.from_numpy(v).to(torch.float64) for k, v in masks.items()}
    lp = {name: compute_logprobs(torch, t[name], lab[name.split("_")[1]], msk[name.split("_")[1]])
          for name in t}
    loss, chosen_r, rejected_r = compute_dpo_loss(torch, lp["policy_chosen"], lp["policy_rejected"],
                                                  lp["reference_chosen"], lp["reference_rejected"],
                                                  BETA)
    loss.backward()
    # step 0: the reference is the policy
    loss0, c0, r0 = compute_dpo_loss(torch, lp["policy_chosen"].detach(),
                                     lp["policy_rejected"].detach(),
                                     lp["policy_chosen"].detach(), lp["policy_rejected"].detach(), BETA)

    out = {f"{k}_ids": v for k, v in seqs.items()}
    out.update({f"{k}_mask": v.astype(np.uint8) for k, v in masks.items()})
    out.update({f"{k}_logits": v for k, v in logits.items()})
    out.update({f"logprob.{k}": v.detach().numpy() for k, v in lp.items()})
    out["loss"] = np.array(loss.item())
    out["chosen_reward"] = np.array(chosen_r.item())
    out["rejected_reward"] = np.array(rejected_r.item())
    out["grad.policy_chosen_logits"] = t["policy_chosen"].grad.numpy()
    out["grad.policy_rejected_logits"] = t["policy_rejected"].grad.numpy()
    out["step0_loss"] = np.array(loss0.item())
    out["step0_rewards"] = np.array([c0.item(), r0.item()])
    meta = {"fixture": json.dumps({"torch": torch.__version__, "numpy": np.__version__,
                                   "seed": 0, "B": B, "T": T, "V": V, "beta": BETA,
                                   "what": "the book's compute_logprobs + compute_dpo_loss, float64"})}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(OUT), metadata=meta)
    print(f"wrote {OUT}: loss {loss.item():.12f}, chosen reward {chosen_r.item():.6f}, rejected "
          f"reward {rejected_r.item():.6f}, step-0 loss {loss0.item():.12f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
