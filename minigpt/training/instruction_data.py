"""The book's chapter 7 data path: instructions in the Alpaca template, padded batches with -100.

    data = load_instruction_data()                         # the book's 1,100 entries (shipped)
    train, test, val = split_instruction_data(data)        # in order: 935 / 110 / 55
    ds = InstructionDataset(train, tok)                    # prompt + response, pre-tokenized
    loader = InstructionLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    for x, y in loader:                                    # (B, T) ids, (B, T) targets with -100
        ...

An entry is ``{"instruction", "input", "output"}``. ``format_input`` writes the prompt (the book's
Alpaca template, or the Phi-3 style of exercise 7.1), ``format_response`` the part the model learns.

``custom_collate_fn`` is the book's: every item gets one end-of-text (50256) and the batch is padded
with it to its longest item + 1; inputs = padded[:-1], targets = padded[1:]; in the targets every pad
token but the first becomes -100, so the model learns to stop and the padding costs nothing. The
cross-entropy leaves -100 out of the mean (``minigpt.layers.loss``, eq. 7.1). ``mask_instruction``
(exercise 7.2) also sets the targets that predict prompt tokens to -100.

The train loader shuffles with a permutation from ``default_rng([seed, epoch])`` (as the chapter 2
``DataLoader``): the batch order differs from PyTorch's, the batches' contents given an order do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from minigpt.training.data import DataLoader

PAD_TOKEN_ID = 50256            # GPT-2's <|endoftext|>: the padding and the end of every response
IGNORE_INDEX = -100
KEYS = ("instruction", "input", "output")
PREFERENCE_KEYS = KEYS + ("chosen", "rejected")
STYLES = ("alpaca", "phi3")
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


def instruction_data_path() -> Path:
    """The book's ``instruction-data.json`` shipped with the package (minigpt/assets/LICENSES.md)."""
    return Path(str(resources.files("minigpt") / "assets" / "texts" / "instruction-data.json"))


def preference_data_path() -> Path:
    """The book's ``instruction-data-with-preference.json`` (DPO bonus), shipped with the package."""
    return Path(str(resources.files("minigpt") / "assets" / "texts"
                    / "instruction-data-with-preference.json"))


# --------------------------------------------------------------------------------- the templates
def format_input(entry: dict, style: str = "alpaca") -> str:
    """The prompt: instruction (and input, when not empty) in the chosen template.

    alpaca (the book):  preamble + "\\n\\n### Instruction:\\n{instruction}" [+ "\\n\\n### Input:\\n{input}"]
    phi3 (ex. 7.1):     "<|user|>\\n{instruction}" [+ "\\n{input}"]
    """
    if style == "alpaca":
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
        return text + (f"\n\n### Input:\n{entry['input']}" if entry["input"] else "")
    if style == "phi3":
        return f"<|user|>\n{entry['instruction']}" + (f"\n{entry['input']}" if entry["input"] else "")
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def response_marker(style: str = "alpaca") -> str:
    """The text between the prompt and the response (the extraction removes it)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return "### Response:" if style == "alpaca" else "<|assistant|>:"


def format_response(output: str, style: str = "alpaca") -> str:
    """The part after the prompt: "\\n\\n### Response:\\n{output}" (phi3: "\\n<|assistant|>:\\n{output}")."""
    sep = "\n\n" if style == "alpaca" else "\n"
    return f"{sep}{response_marker(style)}\n{output}"


def extract_response(generated_text: str, prompt: str, style: str = "alpaca") -> str:
    """The book's extraction: the text after the prompt, without the marker, stripped."""
    return generated_text[len(prompt):].replace(response_marker(style), "").strip()


# --------------------------------------------------------------------------------- reading
def _read_entries(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); a .jsonl file "
                                     "holds one JSON object per line") from e
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give a JSON list of "
                         "objects, or a .jsonl file with one object per line") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got a {type(rows).__name__}")
    return rows


def check_entries(rows: Sequence, keys: Sequence[str] = KEYS, where: str = "data") -> list[dict]:
    """Every entry is an object with string values for ``keys`` ("input" may be empty)."""
    if len(rows) == 0:
        raise ValueError(f"{where}: no entries")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: entry {i} is a {type(row).__name__}, not an object with the "
                             f"keys {list(keys)}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{where}: entry {i} lacks the key(s) {missing}; every entry needs "
                             f"{list(keys)} (use \"input\": \"\" when there is none)")
        bad = [k for k in keys if not isinstance(row[k], str)]
        if bad:
            raise ValueError(f"{where}: entry {i} has non-text value(s) for {bad}; give strings")
    return list(rows)


def load_instruction_data(path: str | Path | None = None, keys: Sequence[str] = KEYS) -> list[dict]:
    """Entries from a JSON list or a JSONL file (default: the book's 1,100, shipped)."""
    path = instruction_data_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no instruction data at {path}: give a .json list or a .jsonl file "
                                f"of objects with the keys {list(keys)}")
    return check_entries(_read_entries(path), keys, str(path))


def load_preference_data(path: str | Path | None = None) -> list[dict]:
    """Preference entries (``chosen`` and ``rejected`` added); default: the book's 1,100, shipped."""
    return load_instruction_data(preference_data_path() if path is None else path, PREFERENCE_KEYS)


def split_instruction_data(data: Sequence, train_frac: float = 0.85, test_frac: float = 0.10):
    """The book's split, in order, no shuffle: (train, test, validation) = the first
    int(0.85 N), the next int(0.10 N), the rest. For the 1,100 entries: 935 / 110 / 55."""
    if not (0 < train_frac < 1 and 0 <= test_frac < 1 and train_frac + test_frac < 1):
        raise ValueError(f"need 0 < train_frac, 0 <= test_frac and train_frac + test_frac < 1, got "
                         f"{train_frac}, {test_frac}")
    n_train, n_test = int(len(data) * train_frac), int(len(data) * test_frac)
    return (list(data[:n_train]), list(data[n_train:n_train + n_test]),
            list(data[n_train + n_test:]))


# --------------------------------------------------------------------------------- tokens
class InstructionDataset:
    """The book's ``InstructionDataset``: ``format_input(entry) + format_response(output)``
    pre-tokenized. ``ds[i] -> (prompt_length, ids)``; the prompt length (tokens of the prompt alone)
    serves ``mask_instruction``.

    ``context_length``: an entry whose ids (+ the end-of-text the collate adds) do not fit raises a
    ValueError naming it, instead of being cut silently (the book truncates at 1024).
    """

    def __init__(self, data: Sequence[dict], tokenizer, style: str = "alpaca",
                 context_length: int | None = None):
        check_entries(data)
        self.data = list(data)
        self.style = style
        self.encoded_texts: list[list[int]] = []
        self.prompt_lengths: list[int] = []
        for i, entry in enumerate(self.data):
            prompt = format_input(entry, style)
            ids = tokenizer.encode(prompt + format_response(entry["output"], style))
            if context_length is not None and len(ids) + 1 > context_length:
                raise ValueError(f"entry {i} ({entry['instruction'][:40]!r}...) is {len(ids)} tokens "
                                 f"+ 1 end-of-text, longer than the model's context_length "
                                 f"{context_length}; shorten or remove it")
            self.encoded_texts.append(ids)
            self.prompt_lengths.append(len(tokenizer.encode(prompt)))

    def __len__(self) -> int:
        return len(self.encoded_texts)

    def __getitem__(self, i: int) -> tuple[int, list[int]]:
        return self.prompt_lengths[i], self.encoded_texts[i]


def custom_collate_fn(batch: Sequence, pad_token_id: int = PAD_TOKEN_ID,
                      ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                      prompt_lengths: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The book's ``custom_collate_fn``: lists of ids -> inputs (B, T), targets (B, T) int64.

    T = longest item + 1, then cut to ``allowed_max_length``. With ``prompt_lengths`` (exercise 7.2)
    the targets ``[:prompt_length - 1]`` (those predicting prompt tokens) become ``ignore_index``.
    """
    if len(batch) == 0:
        raise ValueError("custom_collate_fn: the batch is empty")
    T1 = max(len(item) + 1 for item in batch)                    # longest + its end-of-text
    padded = np.full((len(batch), T1), pad_token_id, dtype=np.int64)
    for b, item in enumerate(batch):
        padded[b, :len(item)] = item
    inputs, targets = padded[:, :-1].copy(), padded[:, 1:].copy()       # (B, T) each
    for b in range(len(batch)):
        pads = np.flatnonzero(targets[b] == pad_token_id)
        targets[b, pads[1:]] = ignore_index                      # keep the first end-of-text
        if prompt_lengths is not None:
            targets[b, :max(prompt_lengths[b] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


class InstructionLoader(DataLoader):
    """Batches of the collated (inputs (B, T), targets (B, T)) of an ``InstructionDataset``.

    The chapter 2 ``DataLoader``'s order, ``drop_last`` and ``state_dict``/``load_state_dict`` (exact
    resume); each batch is padded to its own longest item, so T varies from batch to batch.
    """

    def __init__(self, dataset: InstructionDataset, batch_size: int = 8, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 123, allowed_max_length: int | None = 1024,
                 mask_instruction: bool = False, pad_token_id: int = PAD_TOKEN_ID):
        n = len(dataset)
        index = np.arange(n)[:, None]                            # the parent batches row indices
        super().__init__(index, index, batch_size=batch_size, shuffle=shuffle,
                         drop_last=drop_last, seed=seed)
        self.dataset = dataset
        self.allowed_max_length = allowed_max_length
        self.mask_instruction = bool(mask_instruction)
        self.pad_token_id = pad_token_id

    def collate(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        items = [self.dataset[int(i)] for i in rows]
        prompt_lengths = [p for p, _ in items] if self.mask_instruction else None
        return custom_collate_fn([ids for _, ids in items], self.pad_token_id,
                                 allowed_max_length=self.allowed_max_length,
                                 prompt_lengths=prompt_lengths)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rows, _ in super().__iter__():                       # DataLoader advances (epoch, batch)
            yield self.collate(rows[:, 0])


def instruction_loaders(train: InstructionDataset, val: InstructionDataset,
                        test: InstructionDataset | None = None, batch_size: int = 8,
                        seed: int = 123, **kw):
    """The book's loaders: train shuffled with drop_last; validation (and test) in order, all rows."""
    loaders = [InstructionLoader(train, batch_size, shuffle=True, drop_last=True, seed=seed, **kw),
               InstructionLoader(val, batch_size, **kw)]
    if test is not None:
        loaders.append(InstructionLoader(test, batch_size, **kw))
    return tuple(loaders)
