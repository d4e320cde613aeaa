"""The book's data pipeline (chapter 2): sliding windows over token ids, batches, the 90/10 split.

    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    inputs, targets = windows(ids, max_length=256, stride=256)       # (N, T) each, targets = inputs shifted by 1
    loader = DataLoader(inputs, targets, batch_size=2, shuffle=True, drop_last=True, seed=123)
    for x, y in loader:                                                # one epoch: (B, T) int64 arrays
        ...
    state = loader.state_dict()                                        # {epoch, batch, seed}: exact resume

Or, as in the book: ``create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128)``.

Shuffling is a permutation drawn from ``np.random.default_rng([seed, epoch])``, so epoch e's order is
a pure function of (seed, e): resuming mid-epoch reproduces the remaining batches exactly. The
permutations differ from PyTorch's (another RNG), so shuffled batch orders do not match the book's;
everything else (window count, contents, unshuffled order, batch counts) does.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def windows(ids: Sequence[int] | np.ndarray, max_length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows (the book's ``GPTDatasetV1``).

    Window k starts at k * stride for every start in ``range(0, len(ids) - max_length, stride)``;
    its target is the same window shifted right by one token.
    Returns inputs (N, max_length) int64 and targets (N, max_length) int64.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    ids = np.asarray(ids, dtype=np.int64)                            # (L,)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if len(ids) <= max_length:
        raise ValueError(f"need more than max_length={max_length} tokens to make one window (input + "
                         f"shifted target), got {len(ids)}; use a longer text or a smaller max_length")
    starts = np.arange(0, len(ids) - max_length, stride)             # (N,)
    idx = starts[:, None] + np.arange(max_length)[None, :]           # (N, T)
    return ids[idx], ids[idx + 1]


def train_val_split(text: str, train_ratio: float = 0.9) -> tuple[str, str]:
    """The book's split by characters: ``text[:int(train_ratio * len(text))]`` and the rest."""
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be between 0 and 1 (exclusive), got {train_ratio}")
    split = int(train_ratio * len(text))
    return text[:split], text[split:]


class GPTDatasetV1:
    """The book's dataset: tokenize ``txt`` and cut it into windows. ``ds[i] -> (input, target)``."""

    def __init__(self, txt: str, tokenizer, max_length: int, stride: int):
        ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        self.input_ids, self.target_ids = windows(ids, max_length, stride)   # (N, T) each

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.input_ids[i], self.target_ids[i]


class DataLoader:
    """Batches of (inputs, targets), each (B, T) int64; iterating once is one epoch.

    Args:
        inputs, targets: (N, T) arrays, or pass a ``GPTDatasetV1`` as ``inputs`` and no targets.
        batch_size: B. shuffle: a new permutation each epoch from ``default_rng([seed, epoch])``.
        drop_last: drop the final partial batch. seed: the shuffling seed.

    Position: ``epoch`` and ``batch`` (the next batch to yield) advance as batches are yielded;
    after a full pass ``epoch`` += 1 and ``batch`` = 0. ``state_dict()``/``load_state_dict()``
    save and restore them, and a new ``iter()`` continues from the saved batch.
    """

    def __init__(self, inputs, targets: np.ndarray | None = None, batch_size: int = 4,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 123):
        if targets is None:
            if not hasattr(inputs, "input_ids"):
                raise ValueError("pass (inputs, targets) arrays or a GPTDatasetV1")
            inputs, targets = inputs.input_ids, inputs.target_ids
        self.inputs = np.asarray(inputs)
        self.targets = np.asarray(targets)
        if self.inputs.shape != self.targets.shape or self.inputs.ndim != 2:
            raise ValueError(f"inputs and targets must both be (N, T), got {self.inputs.shape} "
                             f"and {self.targets.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.batch = 0

    def __len__(self) -> int:
        n, b = len(self.inputs), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The window order of ``epoch``: (N,) int64."""
        n = len(self.inputs)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.batch >= len(self):                                # a finished epoch: next one
            self.epoch, self.batch = self.epoch + 1, 0
        order = self.order(self.epoch)
        B = self.batch_size
        while self.batch < len(self):
            sel = order[self.batch * B:(self.batch + 1) * B]       # (B,)
            self.batch += 1
            yield self.inputs[sel], self.targets[sel]               # (B, T), (B, T)
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """The position, JSON-ready: {"epoch", "batch", "seed"} ("batch" is the next to yield)."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position from :meth:`state_dict`."""
        missing = {"epoch", "batch", "seed"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}")
        if not 0 <= int(state["batch"]) <= len(self):
            raise ValueError(f"loader state batch {state['batch']} is outside 0..{len(self)}")
        self.epoch, self.batch, self.seed = int(state["epoch"]), int(state["batch"]), int(state["seed"])


def create_dataloader_v1(txt: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                         shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                         seed: int = 123, tokenizer=None) -> DataLoader:
    """The book's ``create_dataloader_v1`` (GPT-2 tokenizer unless one is given; num_workers ignored)."""
    if tokenizer is None:
        from minigpt.tokenizer import Tokenizer
        tokenizer = Tokenizer.gpt2()
    ds = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
