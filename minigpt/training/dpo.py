"""DPO training (the book's bonus ``ch07/04_preference-tuning-with-dpo``): data, objective, metrics.

    data = load_preference_data()                              # 1,100 entries, shipped
    train, test, val = split_instruction_data(data)            # 935 / 110 / 55, as chapter 7
    loader = PreferenceLoader(PreferenceDataset(train, tok), batch_size=8, shuffle=True, drop_last=True)
    objective = DPOObjective(policy, reference, beta=0.1)      # reference: frozen, never updated
    loss, grads = objective.loss_and_grads(x, y)               # the policy's gradients, by hand

The book's collate pads the chosen and the rejected responses of a batch to one common length (the
longest + 1) and masks the prompt (+ the two tokens of "\\n\\n" before "### Response:") and the
padding. Here the same mask is written as chapter 7's targets: ``inputs = seq[:, :-1]``,
``targets = seq[:, 1:]`` where the mask of the predicted token is on, -100 elsewhere; the book's
``compute_logprobs`` (logits[:, :-1] against labels[:, 1:] under mask[:, 1:]) is then exactly the mean
log-probability of the counted targets (``layers/dpo.py``, eq. 13.1). A batch is one array pair:
``x`` (2B, T) = the chosen rows over the rejected rows, ``y`` likewise, so that one forward of the
policy and one of the reference serve both, and the training loop (``minigpt.training.loop``) runs
DPO as it runs any loss: ``DPOObjective`` has the model's ``loss`` and ``loss_and_grads``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from minigpt.layers.dpo import (
    DPOLoss,
    dpo_loss_backward,
    dpo_loss_forward,
    response_logprobs_backward,
    response_logprobs_forward,
)
from minigpt.training.data import DataLoader
from minigpt.training.instruction_data import (
    IGNORE_INDEX,
    PAD_TOKEN_ID,
    PREFERENCE_KEYS,
    check_entries,
    format_input,
    format_response,
)


# --------------------------------------------------------------------------------- data
class PreferenceDataset:
    """The book's ``PreferenceDataset``: per entry the prompt's ids and the full chosen / rejected
    texts' ids (prompt + "\\n\\n### Response:\\n" + response). ``ds[i] -> dict``."""

    def __init__(self, data: Sequence[dict], tokenizer, style: str = "alpaca",
                 context_length: int | None = None):
        check_entries(data, PREFERENCE_KEYS)
        self.data = list(data)
        self.encoded: list[dict[str, list[int]]] = []
        for i, entry in enumerate(self.data):
            prompt = format_input(entry, style)
            item = {"prompt": tokenizer.encode(prompt)}
            for key in ("chosen", "rejected"):
                item[key] = tokenizer.encode(prompt + format_response(entry[key], style))
                if context_length is not None and len(item[key]) > context_length + 1:
                    raise ValueError(f"entry {i}: the {key} text is {len(item[key])} tokens, longer "
                                     f"than the model's context_length {context_length} + 1; "
                                     "shorten or remove it")
            self.encoded.append(item)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.encoded[i]


def preference_collate_fn(batch: Sequence[dict], pad_token_id: int = PAD_TOKEN_ID,
                          allowed_max_length: int | None = None,
                          mask_prompt_tokens: bool = True) -> dict[str, np.ndarray]:
    """The book's DPO ``custom_collate_fn``: {"chosen", "rejected"} (B, T) int64 and
    {"chosen_mask", "rejected_mask"} (B, T) bool, T = the longest of both + 1, cut to
    ``allowed_max_length``. The mask is off on the padding and (``mask_prompt_tokens``) on the
    prompt and the 2 tokens after it."""
    if len(batch) == 0:
        raise ValueError("preference_collate_fn: the batch is empty")
    T = max(len(item[key]) + 1 for item in batch for key in ("chosen", "rejected"))
    out: dict[str, np.ndarray] = {}
    for key in ("chosen", "rejected"):
        seq = np.full((len(batch), T), pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch), T), dtype=bool)
        for b, item in enumerate(batch):
            ids = item[key]
            seq[b, :len(ids)] = ids
            mask[b, :len(ids)] = True                                  # padding off
            if mask_prompt_tokens:
                mask[b, :len(item["prompt"]) + 2] = False              # prompt + "\n\n" off
        out[key], out[f"{key}_mask"] = seq[:, :allowed_max_length], mask[:, :allowed_max_length]
    return out


def as_targets(seq: np.ndarray, mask: np.ndarray,
               ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """The book's (sequence, mask) as chapter 7's (inputs, targets): seq (N, T), mask (N, T) ->
    inputs seq[:, :-1], targets seq[:, 1:] where mask[:, 1:], else -100; (N, T - 1) each."""
    return seq[:, :-1], np.where(mask[:, 1:], seq[:, 1:], ignore_index)


class PreferenceLoader(DataLoader):
    """Batches ``(x, y)`` of a ``PreferenceDataset``: x (2B, T) = chosen inputs over rejected inputs,
    y (2B, T) their targets with -100 on the prompt and the padding. The chapter 2 ``DataLoader``'s
    order, ``drop_last`` and ``state_dict``/``load_state_dict`` (exact resume)."""

    def __init__(self, dataset: PreferenceDataset, batch_size: int = 8, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 123, allowed_max_length: int | None = 1024,
                 mask_prompt_tokens: bool = True, pad_token_id: int = PAD_TOKEN_ID):
        index = np.arange(len(dataset))[:, None]
        super().__init__(index, index, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                         seed=seed)
        self.dataset = dataset
        self.allowed_max_length = allowed_max_length
        self.mask_prompt_tokens = mask_prompt_tokens
        self.pad_token_id = pad_token_id

    def collate(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        b = preference_collate_fn([self.dataset[int(i)] for i in rows], self.pad_token_id,
                                  self.allowed_max_length, self.mask_prompt_tokens)
        xw, yw = as_targets(b["chosen"], b["chosen_mask"])
        xl, yl = as_targets(b["rejected"], b["rejected_mask"])
        return np.concatenate([xw, xl]), np.concatenate([yw, yl])      # (2B, T), (2B, T)

    def __iter__(self):
        for rows, _ in super().__iter__():
            yield self.collate(rows[:, 0])


# --------------------------------------------------------------------------------- the objective
def _split(x: np.ndarray, y: np.ndarray):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape != y.shape or x.shape[0] % 2:
        raise ValueError(f"a DPO batch is x, y of one shape (2B, T): the B chosen rows over the B "
                         f"rejected rows; got {x.shape} and {y.shape}")
    return x, y, x.shape[0] // 2


class DPOObjective:
    """The policy trained by DPO against a frozen reference; to the training loop, a model.

    ``loss_and_grads(x, y, rng=None)`` fills the policy's gradient buffer by hand: the loss's
    backward to the mean log-probabilities (eq. 13.4), through the log-softmax of the policy's
    logits (eq. 13.2), then ``policy.backward`` (eq. 13.5). The reference is only run forward; it is
    frozen here (all its parameters), must not share memory with the policy, and is never updated.
    Every other attribute (``flat_params``, ``params``, ``cfg``, ``state_dict`` ...) is the
    policy's, so checkpoints, AdamW and clipping work on the policy as on any model.
    """

    loss_backward = staticmethod(dpo_loss_backward)     # eq. 13.4 (a negative control swaps it)
    # the training loop must not cut a batch into ranks or micro-batches: row i (chosen) and row
    # B + i (rejected) are one pair, and the loss is a mean over pairs, not over targets
    rows_can_be_split = False

    def __init__(self, policy: Any, reference: Any, beta: float = 0.1):
        if reference is policy or np.shares_memory(reference.flat_params, policy.flat_params):
            raise ValueError("the reference model shares its parameters with the policy: DPO's "
                             "reference must be a separate frozen copy (load the same checkpoint "
                             "twice), otherwise it moves with the policy and the loss stays ln 2")
        if reference.cfg.vocab_size != policy.cfg.vocab_size:
            raise ValueError(f"policy and reference have different vocabularies "
                             f"({policy.cfg.vocab_size} vs {reference.cfg.vocab_size})")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        reference.freeze()
        self.policy, self.reference, self.beta = policy, reference, float(beta)

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def _reference_logprobs(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lp, _ = response_logprobs_forward(self.reference.forward(x), y)    # (2B,)
        return lp

    def evaluate(self, x, y) -> DPOLoss:
        """The loss and the rewards of one batch, no backward, no dropout."""
        x, y, B = _split(x, y)
        pi, _ = response_logprobs_forward(self.policy.forward(x), y)       # (2B,)
        ref = self._reference_logprobs(x, y)
        out, _ = dpo_loss_forward(pi[:B], pi[B:], ref[:B], ref[B:], self.beta)
        return out

    def loss(self, x, y, *, rng=None, lengths=None) -> float:
        """The mean DPO loss of one batch (the training loop's evaluation calls this)."""
        return self.evaluate(x, y).loss

    def loss_and_grads(self, x, y, *, rng=None, lengths=None):
        """(loss, policy grads) of one batch: the forward of both models, the backward by hand."""
        x, y, B = _split(x, y)
        logits, cache = self.policy.forward_train(x, rng=rng)              # (2B, T, V)
        pi, c_lp = response_logprobs_forward(logits, y)                    # (2B,)  eq. 13.1
        ref = self._reference_logprobs(x, y)                               # (2B,)  no gradient
        out, c_loss = dpo_loss_forward(pi[:B], pi[B:], ref[:B], ref[B:], self.beta)   # eq. 13.3
        self.last = out
        dpi_w, dpi_l = self.loss_backward(c_loss)                           # (B,) each, eq. 13.4
        dlogits = response_logprobs_backward(np.concatenate([dpi_w, dpi_l]), c_lp,
                                             out=logits)                   # (2B, T, V) over the logits
        return out.loss, self.policy.backward(dlogits, cache)              # eq. 13.5


def evaluate_dpo_loader(objective: DPOObjective, loader: Iterable,
                        num_batches: int | None = None) -> dict[str, float]:
    """The book's ``evaluate_dpo_loss_loader``: means of the per-batch loss, chosen and rejected
    rewards over the first ``num_batches`` batches; and the reward margin."""
    state = loader.state_dict() if hasattr(loader, "load_state_dict") else None
    rows = []
    try:
        for i, (x, y) in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            rows.append(objective.evaluate(x, y))
    finally:
        if state is not None:
            loader.load_state_dict(state)
    if not rows:
        return {"loss": float("nan"), "chosen_reward": float("nan"),
                "rejected_reward": float("nan"), "margin": float("nan")}
    m = np.mean([[r.loss, r.chosen_reward, r.rejected_reward] for r in rows], axis=0)
    return {"loss": float(m[0]), "chosen_reward": float(m[1]), "rejected_reward": float(m[2]),
            "margin": float(m[1] - m[2])}
