"""Chapter 6's data: the SMS Spam Collection read, balanced, split, padded and batched as the book does.

Expected values come from outside minigpt: the data README (sha256, counts), the book (5,572 /
4,825 / 747, 1,494, 130 / 19 / 38 batches, max_length 120) and tests/fixtures/sms/book_splits.json,
made by benchmarks/make_sms_fixture.py running the book's own pandas code and tiktoken. Neither
pandas nor tiktoken is needed here.
"""
import configparser
import csv
import fnmatch
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from minigpt.training.classification_data import (
    ClassificationDataset,
    ClassificationLoader,
    LabelledTexts,
    book_sms_spam,
    check_split_labels,
    classification_datasets,
    classification_loaders,
    create_balanced_dataset,
    load_labelled,
    load_sms_spam,
    random_split,
    sms_spam_path,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "sms" / "book_splits.json").read_text("utf-8"))
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"   # shared/data/README.md
SPLIT_NAMES = ("train", "validation", "test")


def sha256_texts(texts) -> str:
    return hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def book(tok):
    return book_sms_spam(tokenizer=tok)


# ---------------------------------------------------------------- the shipped file

def test_shipped_file_is_the_uci_file():
    data = sms_spam_path().read_bytes()
    assert len(data) == 477_907
    assert hashlib.sha256(data).hexdigest() == SMS_SHA256 == FIXTURE["data_sha256"]
    assert hashlib.sha256(data + b"\n").hexdigest() != SMS_SHA256        # the check can fail


def test_setup_cfg_ships_the_data():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["minigpt"].split(",")]
    for name in ("SMSSpamCollection", "README.md"):
        rel = f"assets/sms-spam-collection/{name}"
        assert (ROOT / "minigpt" / rel).is_file()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)
    assert not any(fnmatch.fnmatch("assets/elsewhere/x", p) for p in patterns)    # control


# ---------------------------------------------------------------- reading as the book does

def test_read_as_the_book_reads():
    data = load_sms_spam()
    assert len(data) == 5_572 == FIXTURE["rows"]
    assert np.bincount(data.labels).tolist() == [4_825, 747] == [FIXTURE["ham"], FIXTURE["spam"]]
    assert data.label_names == ["ham", "spam"] and data.label_map() == {"ham": 0, "spam": 1}
    assert sha256_texts(data.texts) == FIXTURE["texts_sha256"]
    assert sha256_texts([data.label_names[k] for k in data.labels]) == FIXTURE["labels_sha256"]
    assert data.rows.tolist() == list(range(5_572))


def test_quoting_matters():
    """Negative control: with quoting off every line is a row (5,574, as pandas with QUOTE_NONE)."""
    with open(sms_spam_path(), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 5_574 == FIXTURE["rows_without_quoting"]
    assert sum(r[0] == "ham" for r in rows) == 4_827 == FIXTURE["ham_without_quoting"]
    assert sha256_texts([r[1] for r in rows]) != FIXTURE["texts_sha256"]


# ---------------------------------------------------------------- balance and split: the book's rows

def test_balanced_rows_are_the_books():
    balanced = create_balanced_dataset(load_sms_spam())
    assert len(balanced) == 1_494 == FIXTURE["balanced_rows"]
    assert np.bincount(balanced.labels).tolist() == [747, 747]
    assert balanced.rows.tolist() == FIXTURE["balanced_index"]
    other = create_balanced_dataset(load_sms_spam(), seed=124)                # control: seed matters
    assert other.rows.tolist() != FIXTURE["balanced_index"]


def test_split_rows_are_the_books(book):
    for name, part in zip(SPLIT_NAMES, book.splits, strict=True):
        want = FIXTURE["splits"][name]
        assert len(part) == want["rows"]
        assert part.rows.tolist() == want["row_index"], name
        assert "".join(map(str, part.labels.tolist())) == want["labels"]
        assert sha256_texts(part.texts) == want["texts_sha256"]
        assert part.texts[:3] == want["first_texts"]
    assert [len(p) for p in book.splits] == [1_045, 149, 300]
    assert np.bincount(book.splits[0].labels).tolist() == [528, 517]
    assert book.splits[0].texts[0] == "Dude how do you like the buff wind."
    shuffled = random_split(create_balanced_dataset(load_sms_spam()), 0.7, 0.1, seed=1)[0]
    assert shuffled.rows.tolist() != FIXTURE["splits"]["train"]["row_index"]   # control


# ---------------------------------------------------------------- token ids and padding

def test_padded_ids_are_the_books(book):
    assert FIXTURE["max_length"] == 120
    for name, ds in zip(SPLIT_NAMES, book.datasets, strict=True):
        want = FIXTURE["splits"][name]
        assert ds.max_length == 120 and ds.input_ids.shape == tuple(want["input_ids_shape"])
        assert ds.input_ids.dtype == np.int64 and ds.labels.dtype == np.int64
        assert hashlib.sha256(ds.input_ids.tobytes()).hexdigest() == want["input_ids_sha256"], name
        assert ds.lengths.tolist() == want["lengths"]
        assert ds.input_ids[0, :ds.lengths[0]].tolist() == want["first_ids"]
    train = book.datasets[0]
    assert int(train.lengths.max()) == 120 and train.label_names == ["ham", "spam"]


def test_right_padding_with_50256(book):
    for ds in book.datasets:
        T = ds.max_length
        pad = np.arange(T)[None, :] >= ds.lengths[:, None]                     # (N, T)
        assert (ds.input_ids[pad] == 50256).all()
        assert (ds.input_ids[~pad] != 50256).all()
        assert (ds.lengths >= 1).all()
    shifted = np.roll(book.datasets[0].input_ids, 1, axis=1)                      # control: left pad
    assert hashlib.sha256(shifted.tobytes()).hexdigest() != FIXTURE["splits"]["train"]["input_ids_sha256"]


def test_validation_and_test_use_the_training_length(tok):
    data = LabelledTexts(["one two three four five six seven", "hi", "a b c d e f g h i j", "ok go"],
                         np.array([0, 1, 1, 0]), ["a", "b"], np.arange(4))
    train, val = data.take([1, 3]), data.take([0, 2])
    train_ds, val_ds, _ = classification_datasets(train, val, val, tok)
    assert train_ds.max_length == 2                                             # "ok go": 2 tokens
    assert val_ds.input_ids.shape == (2, 2) and val_ds.lengths.tolist() == [2, 2]   # cut to 2
    assert val_ds.input_ids[0].tolist() == tok.encode(val.texts[0])[:2]
    with pytest.raises(ValueError, match="truncate"):
        classification_datasets(train, val, val, tok, truncate=False)


# ---------------------------------------------------------------- batches

def test_batches_are_the_books(book):
    train, val, test = classification_loaders(*book.datasets, batch_size=8)
    assert [len(loader) for loader in (train, val, test)] == [130, 19, 38]
    train_batches = list(train)
    assert len(train_batches) == 130
    assert all(x.shape == (8, 120) and y.shape == (8,) for x, y in train_batches)
    assert all(x.dtype == np.int64 and y.dtype == np.int64 for x, y in train_batches)
    seen = np.concatenate([x for x, _ in train_batches])                          # (1040, 120)
    order = train.order(0)                                                        # (1045,)
    assert sorted(order.tolist()) == list(range(1_045))
    assert np.array_equal(seen, book.datasets[0].input_ids[order[:1040]])        # 5 rows dropped
    assert not np.array_equal(seen, book.datasets[0].input_ids[:1040])           # shuffled
    for loader, ds, last in ((val, book.datasets[1], 5), (test, book.datasets[2], 4)):
        batches = list(loader)
        assert batches[-1][0].shape == (last, 120)                                 # no drop_last
        assert np.array_equal(np.concatenate([x for x, _ in batches]), ds.input_ids)   # in order
        assert np.array_equal(np.concatenate([y for _, y in batches]), ds.labels)


def test_exact_resume_and_lengths(book):
    ds = book.datasets[0]
    full = ClassificationLoader(ds, 8, shuffle=True, drop_last=True, seed=123, with_lengths=True)
    epoch0 = list(full)
    epoch1 = list(full)
    for x, _, n in epoch0 + epoch1:
        assert n.shape == (8,) and (x[np.arange(8), n - 1] != 50256).all()
        assert (x[np.arange(8), np.minimum(n, 119)][n < 120] == 50256).all()
    stopped = ClassificationLoader(ds, 8, shuffle=True, drop_last=True, seed=123, with_lengths=True)
    it = iter(stopped)
    for _ in range(50):
        next(it)
    state = json.loads(json.dumps(stopped.state_dict()))
    resumed = ClassificationLoader(ds, 8, shuffle=True, drop_last=True, seed=123, with_lengths=True)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(rest) == 80 + 130
    for a, b in zip(epoch0[50:] + epoch1, rest, strict=True):
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(epoch0[0][0], epoch1[0][0])                         # epochs differ


# ---------------------------------------------------------------- a user's own data

ROWS = [("great film, loved it", "pos"), ("terrible\nplot", "neg"), ('a "so-so" one', "neutral"),
        ("would watch again", "pos"), ("boring", "neg"), ("fine I guess", "neutral")]


def write_all_formats(tmp_path, rows=ROWS, text="review", label="sentiment"):
    paths = {}
    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        p = tmp_path / f"data.{fmt}"
        with open(p, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow([label, "id", text])
            for i, (t, lab) in enumerate(rows):
                w.writerow([lab, i, t])
        paths[fmt] = p
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps({text: t, label: lab}) + "\n" for t, lab in rows) + "\n",
                 encoding="utf-8")
    paths["jsonl"] = p
    return paths


def test_user_data_in_three_formats(tmp_path, tok):
    for fmt, path in write_all_formats(tmp_path).items():
        data = load_labelled(path, text_column="review", label_column="sentiment")
        assert data.texts == [t for t, _ in ROWS], fmt
        assert data.label_names == ["neg", "neutral", "pos"]                   # sorted order
        assert data.labels.tolist() == [2, 0, 1, 2, 0, 1]
        assert data.num_classes == 3
        ds = ClassificationDataset(data, tok)
        assert ds.input_ids.shape == (6, int(ds.lengths.max())) and ds.num_classes == 3


def test_user_labels_integer_order_and_fixed_map(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                         for i, lab in enumerate([10, 2, 0, 2])), encoding="utf-8")
    data = load_labelled(p)
    assert data.label_names == ["0", "2", "10"] and data.labels.tolist() == [2, 1, 0, 1]
    fixed = load_labelled(p, labels={"10": 0, "2": 1, "0": 2, "7": 3})
    assert fixed.labels.tolist() == [0, 1, 2, 1] and fixed.label_names == ["10", "2", "0", "7"]
    with pytest.raises(ValueError, match=r"\['10'\] are not in the label map"):
        load_labelled(p, labels={"0": 0, "2": 1})


def test_user_data_split_and_batches(tmp_path, tok):
    rows = [(f"message number {i} " + "word " * (i % 7), ["a", "b", "c"][i % 3]) for i in range(60)]
    data = load_labelled(write_all_formats(tmp_path, rows)["csv"], "review", "sentiment")
    train, val, test = random_split(data, 0.7, 0.1)
    assert [len(train), len(val), len(test)] == [42, 6, 12]
    dsets = classification_datasets(train, val, test, tok)
    loader = ClassificationLoader(dsets[0], 8, shuffle=True, drop_last=True)
    assert len(loader) == 5 and all(y.max() <= 2 for _, y in loader)


# ---------------------------------------------------------------- clear errors

def test_missing_column_names_the_columns_found(tmp_path):
    paths = write_all_formats(tmp_path)
    for path in paths.values():
        with pytest.raises(ValueError, match=r"no column 'text'.*\['id', 'review', 'sentiment'\]"
                           if path.suffix != ".jsonl" else r"no column 'text'.*\['review', 'sentiment'\]"):
            load_labelled(path, label_column="sentiment")
    assert len(load_labelled(paths["csv"], "review", "sentiment")) == 6          # control


def test_empty_files(tmp_path):
    for name, content in (("a.csv", ""), ("b.csv", "text,label\n"), ("c.tsv", "\n\n"),
                          ("d.jsonl", ""), ("e.jsonl", "\n  \n")):
        p = tmp_path / name
        p.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match="is empty"):
            load_labelled(p)
    p = tmp_path / "f.csv"
    p.write_text("text,label\nhello,x\n", encoding="utf-8")
    assert len(load_labelled(p)) == 1                                              # control


def test_label_only_in_test_split():
    data = LabelledTexts([f"t{i}" for i in range(10)], np.array([0] * 9 + [1]), ["common", "rare"],
                         np.arange(10))
    where = int(np.flatnonzero(np.random.RandomState(123).permutation(10) == 9)[0])
    assert where >= 8                                      # row 9 (the only "rare") lands in test
    with pytest.raises(ValueError, match=r"\['rare'\] appear only in the test split"):
        random_split(data, 0.7, 0.1)
    with pytest.raises(ValueError, match=r"only in the validation split"):
        check_split_labels(data.take([0, 1]), validation=data.take([9]))
    check_split_labels(data.take([0, 9]), validation=data.take([9]), test=data.take([1]))   # control


def test_too_long_without_truncation(tok):
    text = "word " * 49 + "word"
    n = len(tok.encode(text))
    assert n == 50
    data = LabelledTexts([text, "short"], np.array([0, 1]), ["a", "b"], np.arange(2))
    with pytest.raises(ValueError, match="row 0 has 50 tokens, more than max_length 10"):
        ClassificationDataset(data, tok, max_length=10, truncate=False)
    with pytest.raises(ValueError, match="exceeds the model's context_length 16"):
        ClassificationDataset(data, tok, truncate=False, context_length=16)
    cut = ClassificationDataset(data, tok, context_length=16)                     # truncation on
    assert cut.max_length == 16 and cut.lengths.tolist() == [16, 1]
    assert ClassificationDataset(data, tok, truncate=False).max_length == 50       # control


def test_other_bad_input(tmp_path):
    cases = {"x.txt": ("text,label\na,b\n", "cannot tell the format"),
             "bad.jsonl": ('{"text": "a", "label": "b"}\n{oops\n', "line 2: not valid JSON"),
             "list.jsonl": ('["a", "b"]\n', "expected a JSON object"),
             "short.csv": ("text,label\nhello\n", "line 2: 1 fields where the header"),
             "blank.csv": ("text,label\n,spam\n", "line 2: the text"),
             "nolabel.tsv": ("text\tlabel\nhi\t\n", "line 2: the label"),
             "float.jsonl": ('{"text": "a", "label": 0.5}\n', "must be a non-empty string or an integer")}
    for name, (content, message) in cases.items():
        p = tmp_path / name
        p.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_labelled(p)
    with pytest.raises(ValueError, match="fmt must be"):
        load_labelled(tmp_path / "x.txt", fmt="xlsx")
    with pytest.raises(ValueError, match="the ids 0..1"):
        load_labelled(tmp_path / "x.txt", fmt="csv", labels={"b": 0, "c": 2})
    with pytest.raises(ValueError, match="train_frac"):
        random_split(load_sms_spam(), 0.8, 0.3)
