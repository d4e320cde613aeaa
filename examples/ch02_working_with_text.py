"""Chapter 2 of "Build a Large Language Model (From Scratch)": working with text data.

    python examples/ch02_working_with_text.py

Reproduces the chapter's numbers with minigpt (book-notes §2): the regex word tokenizer and its
1,130-word vocabulary, SimpleTokenizerV1/V2 ids, GPT-2 BPE ids (5,145 tokens for the-verdict), the
sliding-window batches, and the chapter 5 loaders (9 train + 1 val batches at 256/256 with the
90/10 character split). Each number is checked; the script exits non-zero on a mismatch.
"""
from __future__ import annotations

import sys
from importlib import resources

import numpy as np

import minigpt
from minigpt.training.data import create_dataloader_v1, train_val_split, windows
from minigpt.tokenizer.simple import EOT, UNK, SimpleTokenizerV1, SimpleTokenizerV2, build_vocab, split_words

FAILED = []


def check(label: str, got, want) -> None:
    ok = got == want
    if not ok:
        FAILED.append(label)
    print(f"[{'ok' if ok else 'MISMATCH'}] {label}: {got}" + ("" if ok else f"  (book: {want})"))


def main() -> int:
    path = resources.files("minigpt") / "assets" / "texts" / "the-verdict.txt"
    with open(path, encoding="utf-8", newline="") as f:      # newline="": exact bytes, exact counts
        raw_text = f.read()
    check("characters", len(raw_text), 20_479)
    print("first 99 characters:", repr(raw_text[:99]))

    # 2.2 a regex word tokenizer
    pieces = split_words(raw_text)
    check("regex pieces", len(pieces), 4_690)
    print("first 30 pieces:", pieces[:30])
    vocab = build_vocab(pieces)
    check("vocabulary size", len(vocab), 1_130)

    # 2.3 SimpleTokenizerV1
    tok1 = SimpleTokenizerV1(vocab)
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = tok1.encode(text)
    check("V1 ids", ids, [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851,
                           1108, 754, 793, 7])
    print("V1 decode:", tok1.decode(ids))

    # 2.4 special context tokens: SimpleTokenizerV2
    vocab2 = build_vocab(pieces, extra=[EOT, UNK])
    check("vocabulary with <|endoftext|>, <|unk|>", (len(vocab2), vocab2[EOT], vocab2[UNK]), (1_132, 1130, 1131))
    tok2 = SimpleTokenizerV2(vocab2)
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    ids = tok2.encode(text)
    check("V2 ids", ids, [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7])
    print("V2 decode:", tok2.decode(ids))

    # 2.5 byte pair encoding (GPT-2)
    tok = minigpt.Tokenizer.gpt2()
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces" "of someunknownPlace."
    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    check("BPE ids", ids, [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250,
                           8812, 2114, 1659, 617, 34680, 27271, 13])
    print("BPE decode:", tok.decode(ids))
    check("Exercise 2.1 'Akwirw ier'", tok.encode("Akwirw ier"), [33901, 86, 343, 86, 220, 959])
    print("  pieces:", [tok.decode([i]) for i in tok.encode("Akwirw ier")])

    # 2.6 data sampling with a sliding window
    enc_text = tok.encode(raw_text)
    check("BPE tokens in the-verdict", len(enc_text), 5_145)
    enc_sample = enc_text[50:]
    x, y = enc_sample[:4], enc_sample[1:5]
    check("x = enc_text[50:54]", x, [290, 4920, 2241, 287])
    check("y", y, [4920, 2241, 287, 257])
    for i in range(1, 5):
        print(f"  {tok.decode(enc_sample[:i])!r} ----> {tok.decode([enc_sample[i]])!r}")
    loader = create_dataloader_v1(raw_text, batch_size=1, max_length=4, stride=1, shuffle=False, tokenizer=tok)
    it = iter(loader)
    first, second = next(it), next(it)
    check("first batch (1, 4, 1)", [a.tolist() for a in first], [[[40, 367, 2885, 1464]], [[367, 2885, 1464, 1807]]])
    print("  second batch:", [a.tolist() for a in second])
    loader = create_dataloader_v1(raw_text, batch_size=8, max_length=4, stride=4, shuffle=False, tokenizer=tok)
    inputs, targets = next(iter(loader))
    check("batch (8, 4, 4): first row, last row", (inputs[0].tolist(), inputs[-1].tolist()),
          ([40, 367, 2885, 1464], [284, 3285, 326, 11]))
    print("  inputs:\n", inputs, "\n  targets:\n", targets)
    check("windows at (4,1) / (4,4) / (256,128)",
          tuple(len(windows(enc_text, m, s)[0]) for m, s in ((4, 1), (4, 4), (256, 128))), (5_141, 1_286, 39))

    # 2.7-2.8 token + position embeddings (shapes; the book's values depend on torch's RNG)
    rng = np.random.default_rng(123)
    tok_emb = rng.standard_normal((50257, 256)).astype(np.float32)[inputs]          # (8, 4, 256)
    pos_emb = rng.standard_normal((4, 256)).astype(np.float32)                      # (4, 256)
    check("input embeddings shape", (tok_emb + pos_emb).shape, (8, 4, 256))

    # chapter 5's loaders: 90/10 split by characters, 256-token windows, stride 256, batch 2
    train_text, val_text = train_val_split(raw_text, 0.9)
    train_loader = create_dataloader_v1(train_text, batch_size=2, max_length=256, stride=256,
                                        shuffle=True, drop_last=True, tokenizer=tok, seed=123)
    val_loader = create_dataloader_v1(val_text, batch_size=2, max_length=256, stride=256,
                                      shuffle=False, drop_last=False, tokenizer=tok)
    check("train / val batches", (len(train_loader), len(val_loader)), (9, 1))
    check("train / val tokens in batches", (sum(x.size for x, _ in train_loader), sum(x.size for x, _ in val_loader)),
          (4_608, 512))
    print("  (split tokens: train", len(tok.encode(train_text)), "val", len(tok.encode(val_text)), ")")

    print("\nall chapter 2 numbers reproduced" if not FAILED else f"\nMISMATCHES: {FAILED}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
