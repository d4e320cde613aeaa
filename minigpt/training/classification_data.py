"""Labelled text for classification (the book's chapter 6): read, balance, split, encode, pad, batch.

    data = load_sms_spam()                                    # 5,572 messages: 4,825 ham / 747 spam
    balanced = create_balanced_dataset(data)                  # 1,494 rows (747 / 747)
    train, val, test = random_split(balanced, 0.7, 0.1)      # 1,045 / 149 / 300 rows
    train_ds, val_ds, test_ds = classification_datasets(train, val, test, Tokenizer.gpt2())
    train_ds.input_ids.shape                                  # (1045, 120): right-padded with 50256
    loaders = classification_loaders(train_ds, val_ds, test_ds, batch_size=8)
    for x, y in loaders[0]:                                   # 130 batches: (8, 120) and (8,) int64
        ...

Or in one call: ``book_sms_spam()``. A user's own data goes the same way from ``load_labelled(path)``.

Exactly the book's rows, without pandas. The book reads the file with
``pd.read_csv(path, sep="\\t", header=None, names=["Label", "Text"])``. Pandas' default CSV quoting
treats a text that opens with ``"`` as quoted: it runs to the closing quote, across line ends, so a
few lines are joined and the book sees 5,572 messages, not the file's 5,574 lines. Python's
``csv.reader`` with its default quoting (quotechar ``"``, doubled quotes) reads the same 5,572 texts.
The book's sampling is pandas' ``sample(n, random_state=123)``, which is
``numpy.random.RandomState(123).choice(N, n, replace=False)``, itself ``permutation(N)[:n]``. So the
balanced set and the 70/10/20 split match the book row for row. This is checked against a fixture
made with pandas (benchmarks/make_sms_fixture.py).

Labels. The SMS file uses the book's map {"ham": 0, "spam": 1}. For other data, label ``k`` is the
k-th label in sorted order: numeric order if every label is an integer, else string order. Pass
``labels=`` to fix the map yourself. ``LabelledTexts.label_names[k]`` is the name of label ``k``:
store it with a checkpoint to recover the map.

Shuffling. The training loader shuffles with NumPy (``DataLoader.order``), not with PyTorch's RNG,
so the order of the training batches differs from the book's. The rows in each split, the padding
and the batch counts match the book.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from minigpt.training.data import DataLoader

SMS_LABELS = {"ham": 0, "spam": 1}      # the book's label map
PAD_TOKEN_ID = 50256                    # GPT-2's <|endoftext|>, the book's padding


def sms_spam_path() -> Path:
    """The SMS Spam Collection shipped in the package (UCI dataset 228, CC BY 4.0)."""
    return Path(str(resources.files("minigpt") / "assets" / "sms-spam-collection" / "SMSSpamCollection"))


@dataclass
class LabelledTexts:
    """Texts with integer labels. ``rows[i]`` is text i's row number in the file it came from."""

    texts: list[str]
    labels: np.ndarray          # (N,) int64, each in 0..num_classes-1
    label_names: list[str]      # label_names[k] is the name of label k
    rows: np.ndarray            # (N,) int64

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def label_map(self) -> dict[str, int]:
        """{name: id}, JSON-ready: what a checkpoint stores to recover the labels."""
        return {name: k for k, name in enumerate(self.label_names)}

    def take(self, idx) -> LabelledTexts:
        """The rows ``idx`` (an index array), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledTexts([self.texts[i] for i in idx], self.labels[idx], self.label_names,
                             self.rows[idx])


# ---------------------------------------------------------------- reading files

def load_sms_spam(path: str | Path | None = None) -> LabelledTexts:
    """The SMS Spam Collection as the book reads it: 5,572 texts, ham 0 (4,825) and spam 1 (747)."""
    return load_labelled(sms_spam_path() if path is None else path, text_column="Text",
                         label_column="Label", fmt="tsv", names=["Label", "Text"], labels=SMS_LABELS)


def load_labelled(path: str | Path, text_column: str = "text", label_column: str = "label",
                  fmt: str | None = None, names: list[str] | None = None,
                  labels: dict[str, int] | None = None) -> LabelledTexts:
    """Read labelled texts from a CSV, TSV or JSONL file, with any number of classes.

    fmt: "csv", "tsv" or "jsonl"; by default taken from the file name's suffix (.csv, .tsv, .jsonl).
    CSV and TSV files need a header row naming the columns, unless ``names`` gives the column names
    (the file then has no header, like the SMS file). A JSONL file holds one JSON object per line.
    labels: a fixed {name: id} map (ids 0..K-1); by default the labels found, in sorted order.
    Raises ValueError for an empty file, a missing column, an empty text or label, or a label that
    is not in ``labels``.
    """
    path = Path(path)
    fmt = _format_of(path, fmt)
    if fmt == "jsonl":
        records = _read_jsonl(path)
    else:
        records = _read_delimited(path, delimiter="," if fmt == "csv" else "\t", names=names)
    if not records:
        raise ValueError(f"{path} is empty: it holds no {'lines' if fmt == 'jsonl' else 'data rows'}; "
                         f"a labelled file needs one row per text")

    texts, raw_labels = [], []
    for line, record in records:
        for column in (text_column, label_column):
            if column not in record:
                raise ValueError(f"{path}, line {line}: no column {column!r}; the columns found are "
                                 f"{sorted(record)}. Pass text_column= and label_column= to name them")
        text, label = record[text_column], record[label_column]
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}, line {line}: the text ({text_column!r}) is empty or not a string "
                             f"({text!r}); every row needs a non-empty text")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise ValueError(f"{path}, line {line}: the label ({label_column!r}) must be a non-empty "
                             f"string or an integer, got {label!r}")
        texts.append(text)
        raw_labels.append(str(label))

    label_map = _label_map(raw_labels) if labels is None else _check_label_map(labels)
    unknown = sorted(set(raw_labels) - set(label_map))
    if unknown:
        raise ValueError(f"{path}: the labels {unknown} are not in the label map {label_map}; "
                         f"add them to labels= or remove those rows")
    names_by_id = sorted(label_map, key=label_map.get)
    ids = np.array([label_map[name] for name in raw_labels], dtype=np.int64)             # (N,)
    return LabelledTexts(texts, ids, names_by_id, np.arange(len(texts), dtype=np.int64))


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the format of {path} from its suffix {path.suffix!r}; "
                             f"name it .csv, .tsv or .jsonl, or pass fmt='csv', 'tsv' or 'jsonl'")
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"fmt must be 'csv', 'tsv' or 'jsonl', got {fmt!r}")
    return fmt


def _read_delimited(path: Path, delimiter: str, names: list[str] | None) -> list[tuple[int, dict]]:
    """(line number, {column: value}) per data row. Default csv quoting: '"' quotes, '""' escapes.

    Blank lines are skipped (as pandas does). A quoted field may span lines: its line number is the
    line where its row starts.
    """
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        rows = []
        start = reader.line_num + 1
        for fields in reader:
            if fields:
                rows.append((start, fields))
            start = reader.line_num + 1
    if names is None:
        if not rows:
            return []
        (_, header), rows = rows[0], rows[1:]
    else:
        header = list(names)
    records = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise ValueError(f"{path}, line {line}: {len(fields)} fields where the header "
                             f"{header} has {len(header)}; check the delimiter and the quoting")
        records.append((line, dict(zip(header, fields, strict=True))))
    return records


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line}: not valid JSON ({e.msg}); a JSONL file holds "
                                 f"one JSON object per line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line}: expected a JSON object, got "
                                 f"{type(record).__name__}")
            records.append((line, record))
    return records


def _label_map(raw_labels: list[str]) -> dict[str, int]:
    """Ids in sorted order: numeric if every label is an integer, else by string."""
    found = set(raw_labels)
    if all(_is_int(name) for name in found):
        ordered = sorted(found, key=int)
    else:
        ordered = sorted(found)
    return {name: k for k, name in enumerate(ordered)}


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def _check_label_map(labels: dict) -> dict[str, int]:
    label_map = {str(name): int(k) for name, k in labels.items()}
    if sorted(label_map.values()) != list(range(len(label_map))):
        raise ValueError(f"labels= must map names to the ids 0..{len(label_map) - 1}, each once; "
                         f"got {labels}")
    return label_map


# ---------------------------------------------------------------- the book's balance and split

def create_balanced_dataset(data: LabelledTexts, seed: int = 123) -> LabelledTexts:
    """The book's ``create_balanced_dataset``: every class cut to the rarest class's size.

    Each larger class is sampled as pandas' ``sample(n, random_state=seed)`` does (a fresh
    ``RandomState(seed).choice(N, n, replace=False)``); the classes follow in label order, a class
    at the rarest size keeps all its rows in file order. For the SMS set: 747 sampled ham, then the
    747 spam, as the book's ``pd.concat([ham_subset, spam])``.
    """
    counts = np.bincount(data.labels, minlength=data.num_classes)                     # (K,)
    present = np.flatnonzero(counts)
    n = int(counts[present].min())
    parts = []
    for k in present:
        rows = np.flatnonzero(data.labels == k)                                        # (N_k,)
        if len(rows) > n:
            rows = rows[np.random.RandomState(seed).choice(len(rows), n, replace=False)]
        parts.append(rows)
    return data.take(np.concatenate(parts))


def random_split(data: LabelledTexts, train_frac: float = 0.7, validation_frac: float = 0.1,
                 seed: int = 123) -> tuple[LabelledTexts, LabelledTexts, LabelledTexts]:
    """The book's ``random_split``: shuffle all rows, then cut train / validation / test (the rest).

    The shuffle is pandas' ``sample(frac=1, random_state=seed)``: ``RandomState(seed).permutation(N)``.
    The cuts are ``int(N * train_frac)`` and ``int(N * validation_frac)`` rows.
    Raises ValueError for fractions outside [0, 1], an empty train or test split, or a label that
    the validation or test split holds but the train split does not.
    """
    if not (0.0 < train_frac <= 1.0 and 0.0 <= validation_frac and train_frac + validation_frac <= 1.0):
        raise ValueError(f"need 0 < train_frac, 0 <= validation_frac and train_frac + validation_frac "
                         f"<= 1, got {train_frac} and {validation_frac}")
    N = len(data)
    order = np.random.RandomState(seed).permutation(N)                                 # (N,)
    train_end = int(N * train_frac)
    validation_end = train_end + int(N * validation_frac)
    train = data.take(order[:train_end])
    validation = data.take(order[train_end:validation_end])
    test = data.take(order[validation_end:])
    for name, part, frac in (("train", train, train_frac), ("validation", validation, validation_frac),
                             ("test", test, 1.0 - train_frac - validation_frac)):
        if len(part) == 0 and frac > 1e-12:
            raise ValueError(f"the {name} split is empty: {N} rows with fractions {train_frac} / "
                             f"{validation_frac} give it no row; use more data or change the fractions")
    check_split_labels(train, validation=validation, test=test)
    return train, validation, test


def check_split_labels(train: LabelledTexts, **others: LabelledTexts) -> None:
    """Raise ValueError if a label appears in another split (validation, test) but not in train."""
    seen = set(train.labels.tolist())
    for name, part in others.items():
        only_here = sorted(set(part.labels.tolist()) - seen)
        if only_here:
            names = [part.label_names[k] for k in only_here]
            counts = [int((part.labels == k).sum()) for k in only_here]
            raise ValueError(f"the labels {names} appear only in the {name} split ({counts} rows), "
                             f"never in the train split, so the model cannot learn them; add training "
                             f"examples of them or remove those rows")


# ---------------------------------------------------------------- token ids: the book's SpamDataset

class ClassificationDataset:
    """The book's ``SpamDataset``: token ids right-padded to one length, with labels.

    max_length: pad (and cut) every text to this many tokens; None: the longest text's length
        (the book's training set: 120). The book's validation and test sets use the training
        set's max_length (``classification_datasets`` does that).
    truncate: cut texts longer than max_length (the book); False raises ValueError instead.
    context_length: the model's context; max_length may not exceed it (with max_length None and
        truncate on, max_length becomes min(longest, context_length)).
    Arrays: input_ids (N, T) int64, labels (N,) int64, lengths (N,) int64: the number of real
    (non-padding) tokens of each row, so ``input_ids[i, lengths[i] - 1]`` is its last token.
    """

    def __init__(self, data: LabelledTexts, tokenizer, max_length: int | None = None,
                 pad_token_id: int = PAD_TOKEN_ID, truncate: bool = True,
                 context_length: int | None = None):
        encoded = []
        for i, text in enumerate(data.texts):
            try:
                encoded.append(tokenizer.encode(text))
            except ValueError as e:
                raise ValueError(f"row {int(data.rows[i])} cannot be encoded: {e}") from None
        longest = max((len(ids) for ids in encoded), default=0)
        if max_length is None:
            max_length = longest
            if context_length is not None and truncate:
                max_length = min(longest, context_length)
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if context_length is not None and max_length > context_length:
            raise ValueError(f"max_length {max_length} exceeds the model's context_length "
                             f"{context_length} (the longest text has {longest} tokens); pass a "
                             f"smaller max_length, or truncate=True to cut texts to the context")
        if not truncate:
            for i, ids in enumerate(encoded):
                if len(ids) > max_length:
                    raise ValueError(f"row {int(data.rows[i])} has {len(ids)} tokens, more than "
                                     f"max_length {max_length}, and truncate is off; pass "
                                     f"truncate=True or a larger max_length")
        T = int(max_length)
        N = len(encoded)
        self.input_ids = np.full((N, T), pad_token_id, dtype=np.int64)                 # (N, T)
        self.lengths = np.zeros(N, dtype=np.int64)                                     # (N,)
        for i, ids in enumerate(encoded):
            ids = ids[:T]
            self.input_ids[i, :len(ids)] = ids                                         # right padding
            self.lengths[i] = len(ids)
        self.labels = np.asarray(data.labels, dtype=np.int64)                          # (N,)
        self.max_length = T
        self.pad_token_id = int(pad_token_id)
        self.label_names = list(data.label_names)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.input_ids[i], self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def classification_datasets(train: LabelledTexts, validation: LabelledTexts, test: LabelledTexts,
                            tokenizer=None, max_length: int | None = None,
                            pad_token_id: int = PAD_TOKEN_ID, truncate: bool = True,
                            context_length: int | None = None
                            ) -> tuple[ClassificationDataset, ClassificationDataset, ClassificationDataset]:
    """The three datasets as the book builds them: validation and test padded (and cut) to the
    training set's max_length. The GPT-2 tokenizer unless one is given."""
    if tokenizer is None:
        from minigpt.tokenizer import Tokenizer
        tokenizer = Tokenizer.gpt2()
    check_split_labels(train, validation=validation, test=test)
    train_ds = ClassificationDataset(train, tokenizer, max_length, pad_token_id, truncate, context_length)
    rest = [ClassificationDataset(part, tokenizer, train_ds.max_length, pad_token_id, truncate,
                                  context_length) for part in (validation, test)]
    return train_ds, rest[0], rest[1]


# ---------------------------------------------------------------- batches

class ClassificationLoader(DataLoader):
    """Batches of (input_ids (B, T) int64, labels (B,) int64); one iteration is one epoch.

    The chapter 2 ``DataLoader`` with labels as targets: the same shuffling (a permutation from
    ``default_rng([seed, epoch])``), ``drop_last``, and ``state_dict()``/``load_state_dict()`` for
    an exact resume. with_lengths=True adds each row's true length: (input_ids, labels, lengths (B,)).
    """

    def __init__(self, dataset: ClassificationDataset, batch_size: int = 8, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 123, with_lengths: bool = False):
        inputs = np.asarray(dataset.input_ids)
        labels = np.asarray(dataset.labels)
        if inputs.ndim != 2 or labels.shape != (len(inputs),):
            raise ValueError(f"need input_ids (N, T) and labels (N,), got {inputs.shape} and {labels.shape}")
        # DataLoader checks inputs and targets share a shape; give it the ids twice, then the labels
        super().__init__(inputs, inputs, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                         seed=seed)
        self.targets = labels                                                          # (N,)
        self.lengths = np.asarray(dataset.lengths)                                     # (N,)
        self.with_lengths = bool(with_lengths)

    def __iter__(self):
        B = self.batch_size
        for x, y in super().__iter__():              # DataLoader advances (epoch, batch)
            if self.with_lengths:
                sel = self.order(self.epoch)[(self.batch - 1) * B:self.batch * B]      # (B,)
                yield x, y, self.lengths[sel]
            else:
                yield x, y


def classification_loaders(train: ClassificationDataset, validation: ClassificationDataset,
                           test: ClassificationDataset, batch_size: int = 8, seed: int = 123,
                           with_lengths: bool = False
                           ) -> tuple[ClassificationLoader, ClassificationLoader, ClassificationLoader]:
    """The book's loaders: train shuffled with drop_last; validation and test in order, all rows."""
    return (ClassificationLoader(train, batch_size, shuffle=True, drop_last=True, seed=seed,
                                 with_lengths=with_lengths),
            ClassificationLoader(validation, batch_size, with_lengths=with_lengths),
            ClassificationLoader(test, batch_size, with_lengths=with_lengths))


@dataclass
class ClassificationData:
    """Everything ``book_sms_spam`` builds: the split texts, their datasets and their loaders."""

    splits: tuple[LabelledTexts, LabelledTexts, LabelledTexts]
    datasets: tuple[ClassificationDataset, ClassificationDataset, ClassificationDataset]
    loaders: tuple[ClassificationLoader, ClassificationLoader, ClassificationLoader]


def book_sms_spam(tokenizer=None, batch_size: int = 8, seed: int = 123,
                  with_lengths: bool = False) -> ClassificationData:
    """Chapter 6's data in one call: 1,045 / 149 / 300 rows, (N, 120) ids, 130 / 19 / 38 batches."""
    splits = random_split(create_balanced_dataset(load_sms_spam()), 0.7, 0.1)
    datasets = classification_datasets(*splits, tokenizer=tokenizer)
    loaders = classification_loaders(*datasets, batch_size=batch_size, seed=seed,
                                     with_lengths=with_lengths)
    return ClassificationData(splits, datasets, loaders)
