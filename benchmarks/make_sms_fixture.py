"""Write tests/fixtures/sms/book_splits.json: the book's chapter 6 data pipeline, run ONCE with pandas
and tiktoken exactly as the book's code runs it, frozen row for row.

    .peer/bin/python benchmarks/make_sms_fixture.py [--out tests/fixtures/sms/book_splits.json]

Needs pandas and tiktoken (not minigpt dependencies: install them in a separate venv, e.g.
``python3 -m venv .peer && .peer/bin/pip install pandas tiktoken``). The tests read the JSON and never
import either. tiktoken is built offline from minigpt/assets/gpt2/gpt2.tiktoken (r50k pattern).

The pipeline below is the book's (ch06.ipynb / gpt_class_finetune.py), line for line:
read_csv(sep="\\t", header=None, names=["Label", "Text"]); create_balanced_dataset (ham sampled with
random_state=123 to the spam count, then ham + spam concatenated); Label mapped {"ham": 0, "spam": 1};
random_split(df, 0.7, 0.1) (sample(frac=1, random_state=123), then cut); each split written with
to_csv(index=None) and read back with read_csv (as SpamDataset does); SpamDataset's encoding
(tiktoken GPT-2), max_length = the longest training text, truncation of val/test to it, right padding
with 50256. What is frozen: counts, the original row numbers of every split (the index pandas keeps),
the labels, sha256 checksums of the texts and of the padded token arrays, the first texts.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "minigpt", "assets", "sms-spam-collection", "SMSSpamCollection")
R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def sha256_texts(texts) -> str:
    """sha256 of the texts joined by a NUL byte (UTF-8); the test computes the same."""
    return hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()


def make_tiktoken():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(os.path.join(ROOT, "minigpt", "assets", "gpt2", "gpt2.tiktoken"))
    return tiktoken.Encoding("gpt2-offline", pat_str=R50K, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


# --- the book's code (ch06.ipynb, gpt_class_finetune.py) ---
def create_balanced_dataset(df):
    import pandas as pd
    num_spam = df[df["Label"] == "spam"].shape[0]
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced_df = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    return balanced_df


def random_split(df, train_frac, validation_frac):
    df = df.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    train_df = df[:train_end]
    validation_df = df[train_end:validation_end]
    test_df = df[validation_end:]
    return train_df, validation_df, test_df


def spam_dataset(csv_text: str, enc, max_length=None, pad_token_id=50256):
    """The book's SpamDataset.__init__ on a CSV (given as text), returning (ids, labels, max_length)."""
    import pandas as pd
    data = pd.read_csv(io.StringIO(csv_text))
    encoded = [enc.encode(text) for text in data["Text"]]
    if max_length is None:
        max_length = max(len(e) for e in encoded)
    else:
        encoded = [e[:max_length] for e in encoded]
    lengths = [len(e) for e in encoded]
    encoded = [e + [pad_token_id] * (max_length - len(e)) for e in encoded]
    return encoded, list(data["Label"]), max_length, lengths, list(data["Text"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "sms", "book_splits.json"))
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import tiktoken

    with open(DATA, "rb") as f:
        data_sha = hashlib.sha256(f.read()).hexdigest()

    df = pd.read_csv(DATA, sep="\t", header=None, names=["Label", "Text"])
    assert df["Text"].isna().sum() == 0 and df["Label"].isna().sum() == 0
    # negative control: the same read with quoting off sees every line as its own row
    df_noquote = pd.read_csv(DATA, sep="\t", header=None, names=["Label", "Text"], quoting=csv.QUOTE_NONE)

    # the file's physical lines: pandas' quoting joins some (a text opening with '"' runs to its
    # closing quote), so there are more lines than rows
    with open(DATA, encoding="utf-8") as f:
        n_lines = sum(1 for _ in f)

    balanced_df = create_balanced_dataset(df)
    balanced_index = [int(i) for i in balanced_df.index]
    # pandas' sample(n, random_state=s) is RandomState(s).choice(N, n, replace=False), which in NumPy's
    # legacy RandomState is permutation(N)[:n]: check it so the minigpt code can rely on it
    ham_rows = np.flatnonzero((df["Label"] == "ham").to_numpy())
    pick = np.random.RandomState(123).permutation(len(ham_rows))[:747]
    assert [int(i) for i in ham_rows[pick]] == balanced_index[:747]

    balanced_df["Label"] = balanced_df["Label"].map({"ham": 0, "spam": 1})
    shuffled_index = [int(i) for i in balanced_df.sample(frac=1, random_state=123).index]
    perm = np.random.RandomState(123).permutation(len(balanced_df))
    assert [balanced_index[i] for i in perm] == shuffled_index

    train_df, validation_df, test_df = random_split(balanced_df, 0.7, 0.1)
    enc = make_tiktoken()

    splits = {}
    n_train = len(train_df)
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + len(validation_df)),
              "test": (n_train + len(validation_df), len(balanced_df))}
    max_length = None
    for name, part in (("train", train_df), ("validation", validation_df), ("test", test_df)):
        csv_text = part.to_csv(index=None)                       # the book writes train.csv etc.
        ids, labels, ml, lengths, texts = spam_dataset(csv_text, enc, max_length)
        if name == "train":
            max_length = ml
        assert texts == list(part["Text"]), f"{name}: the CSV round trip changed a text"
        lo, hi = bounds[name]
        arr = np.asarray(ids, dtype=np.int64)                     # (N, max_length)
        splits[name] = {
            "rows": len(part),
            "ham": int((part["Label"] == 0).sum()),
            "spam": int((part["Label"] == 1).sum()),
            "row_index": shuffled_index[lo:hi],                   # row numbers in the 5,572-row table
            "labels": "".join(str(int(v)) for v in labels),
            "texts_sha256": sha256_texts(texts),
            "first_texts": texts[:3],
            "first_ids": ids[0][:lengths[0]],
            "lengths": lengths,                                   # tokens before padding (after truncation)
            "max_untruncated_length": max(len(enc.encode(t)) for t in texts),
            "input_ids_shape": list(arr.shape),
            "input_ids_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),   # int64, little-endian, C order
        }

    out = {
        "made_by": "benchmarks/make_sms_fixture.py (pandas + tiktoken, the book's chapter 6 code)",
        "versions": {"pandas": pd.__version__, "numpy": np.__version__, "tiktoken": tiktoken.__version__},
        "data_sha256": data_sha,
        "file_lines": n_lines,
        "rows": len(df),
        "ham": int((df["Label"] == "ham").sum()),
        "spam": int((df["Label"] == "spam").sum()),
        "texts_sha256": sha256_texts(list(df["Text"])),
        "labels_sha256": sha256_texts(list(df["Label"])),
        "rows_without_quoting": len(df_noquote),
        "ham_without_quoting": int((df_noquote["Label"] == "ham").sum()),
        "balanced_rows": len(balanced_df),
        "balanced_index": balanced_index,
        "max_length": max_length,
        "pad_token_id": 50256,
        "splits": splits,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"rows {out['rows']} (ham {out['ham']} / spam {out['spam']}), without quoting "
          f"{out['rows_without_quoting']}; balanced {out['balanced_rows']}; split "
          + " / ".join(str(s['rows']) for s in splits.values())
          + f"; max_length {max_length}; train ham/spam {splits['train']['ham']}/{splits['train']['spam']}")
    for name, s in splits.items():
        print(f"  {name}: longest {s['max_untruncated_length']} tokens, shape {s['input_ids_shape']}, "
              f"first text {s['first_texts'][0][:50]!r}")
    print(f"wrote {os.path.relpath(args.out, ROOT)} ({os.path.getsize(args.out):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
