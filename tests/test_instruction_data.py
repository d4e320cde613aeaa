"""Chapter 7's data path against the book's numbers (book-notes §7): split, template, collate toy, ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

import minigpt
from minigpt import backend
from minigpt.training.instruction_data import (
    InstructionDataset,
    InstructionLoader,
    custom_collate_fn,
    extract_response,
    format_input,
    format_response,
    instruction_loaders,
    load_instruction_data,
    split_instruction_data,
)

BOOK_FIRST_IDS = [21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430]


@pytest.fixture(scope="module")
def tok():
    return minigpt.Tokenizer.gpt2()


def test_split_sizes_and_the_books_examples():
    data = load_instruction_data()
    assert len(data) == 1100
    train, test, val = split_instruction_data(data)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert train[0] == data[0] and test[0] == data[935] and val[0] == data[1045]   # in order
    assert data[50]["input"] == "Ocassion"
    assert data[999]["input"] == "" and "complicated" in data[999]["instruction"]


def test_alpaca_and_phi3_templates():
    e = {"instruction": "Do X.", "input": "Y", "output": "Z"}
    assert format_input(e) == ("Below is an instruction that describes a task. Write a response "
                               "that appropriately completes the request.\n\n### Instruction:\nDo X."
                               "\n\n### Input:\nY")
    assert format_input({**e, "input": ""}).endswith("### Instruction:\nDo X.")
    assert format_response("Z") == "\n\n### Response:\nZ"
    assert format_input(e, "phi3") == "<|user|>\nDo X.\nY"
    assert format_response("Z", "phi3") == "\n<|assistant|>:\nZ"
    prompt = format_input(e)
    assert extract_response(prompt + format_response("  Z.") + "\n", prompt) == "Z."
    with pytest.raises(ValueError, match="style"):
        format_input(e, "chatml")


def test_collate_toy_exactly_as_the_book():
    inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256],
                               [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100],
                                [8, 9, 50256, -100, -100]]
    assert inputs.dtype == targets.dtype == np.int64
    cut_in, cut_tg = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], allowed_max_length=3)
    assert cut_in.shape == cut_tg.shape == (3, 3) and cut_tg[1].tolist() == [6, 50256, -100]
    # exercise 7.2: the targets predicting prompt tokens are masked too
    _, masked = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6]], prompt_lengths=[3, 1])
    assert masked.tolist() == [[-100, -100, 3, 4, 50256], [6, 50256, -100, -100, -100]]


def test_collate_toy_loss_flows_through_both_cross_entropies():
    """The book's cross-entropy toy (1.1269; a third row 0.7936; that row at -100: 1.1269) on the
    layer and on the kernel the model calls."""
    for path in ("numpy", "numba"):
        with backend.use(path):
            ce = backend.ops().cross_entropy
            z2 = np.array([[-1.0, 1.0], [-0.5, 1.5]])
            z3 = np.array([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]])
            assert ce(z2, np.array([0, 1]))[0] == pytest.approx(1.1269, abs=1e-4)
            assert ce(z3, np.array([0, 1, 1]))[0] == pytest.approx(0.7936, abs=1e-4)
            loss, d = ce(z3, np.array([0, 1, -100]))
            assert loss == pytest.approx(1.1269, abs=1e-4) and np.all(d[2] == 0)


def test_first_example_ids_and_instruction_masking(tok):
    train, _, _ = split_instruction_data(load_instruction_data())
    ds = InstructionDataset(train[:3], tok)
    prompt_len, ids = ds[0]
    assert ids[:10] == BOOK_FIRST_IDS
    assert prompt_len == len(tok.encode(format_input(train[0])))
    x, y = InstructionLoader(ds, batch_size=3, mask_instruction=True).collate([0, 1, 2])
    assert np.all(y[0, :prompt_len - 1] == -100) and y[0, prompt_len - 1] == ids[prompt_len]
    _, y_plain = InstructionLoader(ds, batch_size=3).collate([0, 1, 2])
    assert y_plain[0, 0] == ids[1]                       # control: without the option, kept


def test_loaders_batch_8_and_resume_exactly(tok):
    train, test, val = split_instruction_data(load_instruction_data())
    tr, va, te = instruction_loaders(InstructionDataset(train[:40], tok),
                                     InstructionDataset(val[:20], tok),
                                     InstructionDataset(test[:9], tok), batch_size=8)
    assert (len(tr), len(va), len(te)) == (5, 3, 2)          # drop_last only for training
    first = next(iter(tr))
    assert first[0].shape[0] == 8 and first[0].shape == first[1].shape
    state = tr.state_dict()
    rest = [x.copy() for x, _ in tr]
    tr.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, (b, _) in zip(rest, tr, strict=True))


def test_users_json_and_jsonl_with_clear_errors(tmp_path, tok):
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."},
            {"instruction": "Add.", "input": "1+1", "output": "2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_instruction_data(tmp_path / "d.json") == rows
    assert load_instruction_data(tmp_path / "d.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "x", "output": "y"}))
    with pytest.raises(ValueError, match=r"entry 0 lacks the key\(s\) \['input'\]"):
        load_instruction_data(tmp_path / "bad.jsonl")
    (tmp_path / "obj.json").write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_instruction_data(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError):
        load_instruction_data(tmp_path / "missing.json")
    long = [{"instruction": "word " * 50, "input": "", "output": "x"}]
    with pytest.raises(ValueError, match="entry 0 .* longer than the model's context_length 32"):
        InstructionDataset(long, tok, context_length=32)
    assert len(InstructionDataset(rows, tok, context_length=64)) == 2
