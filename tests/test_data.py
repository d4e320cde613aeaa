"""The data pipeline: windows, the book's loaders (9 train + 1 val batches), seeded shuffling,
drop_last, exact resume."""
import json

import numpy as np
import pytest

from minigpt.training.data import DataLoader, GPTDatasetV1, create_dataloader_v1, train_val_split, windows



def test_windows_shift_and_count():
    ids = np.arange(10)
    x, y = windows(ids, max_length=4, stride=3)
    assert x.shape == y.shape == (2, 4) and x.dtype == np.int64      # starts range(0, 6, 3)
    assert x.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert (y == x + 1).all()
    assert len(windows(ids, 9, 1)[0]) == 1                            # len(ids) - max_length = 1 start


def test_windows_errors():
    with pytest.raises(ValueError, match="more than max_length=4"):
        windows([1, 2, 3, 4], 4, 1)
    with pytest.raises(ValueError, match="stride"):
        windows(range(10), 4, 0)
    with pytest.raises(ValueError, match="max_length"):
        windows(range(10), 0, 1)
    with pytest.raises(ValueError, match="1-D"):
        windows(np.zeros((3, 3)), 1, 1)


def test_book_window_counts(tok, verdict):
    ids = tok.encode(verdict)
    assert len(windows(ids, 4, 1)[0]) == 5_141
    assert len(windows(ids, 4, 4)[0]) == 1_286
    assert len(windows(ids, 256, 128)[0]) == 39


def test_book_first_batches(tok, verdict):
    loader = create_dataloader_v1(verdict, batch_size=1, max_length=4, stride=1, shuffle=False, tokenizer=tok)
    it = iter(loader)
    x, y = next(it)
    assert x.tolist() == [[40, 367, 2885, 1464]] and y.tolist() == [[367, 2885, 1464, 1807]]
    x, y = next(it)
    assert x.tolist() == [[367, 2885, 1464, 1807]] and y.tolist() == [[2885, 1464, 1807, 3619]]
    loader = create_dataloader_v1(verdict, batch_size=8, max_length=4, stride=4, shuffle=False, tokenizer=tok)
    x, y = next(iter(loader))
    assert x.shape == (8, 4)
    assert x[0].tolist() == [40, 367, 2885, 1464] and x[-1].tolist() == [284, 3285, 326, 11]


def test_book_train_val_loaders(tok, verdict):
    train, val = train_val_split(verdict, 0.9)
    assert len(train) == 18_431 and train + val == verdict
    tl = create_dataloader_v1(train, batch_size=2, max_length=256, stride=256, shuffle=True,
                              drop_last=True, tokenizer=tok)
    vl = create_dataloader_v1(val, batch_size=2, max_length=256, stride=256, shuffle=False,
                              drop_last=False, tokenizer=tok)
    assert (len(tl), len(vl)) == (9, 1)
    tb = list(tl)
    vb = list(vl)
    assert len(tb) == 9 and all(x.shape == (2, 256) for x, _ in tb)
    assert sum(x.size for x, _ in tb) == 4_608 and sum(x.size for x, _ in vb) == 512


def test_shuffle_seeded_and_drop_last():
    x, y = windows(np.arange(100), 4, 4)                              # 24 windows
    a = DataLoader(x, y, batch_size=5, shuffle=True, drop_last=True, seed=1)
    b = DataLoader(x, y, batch_size=5, shuffle=True, drop_last=True, seed=1)
    c = DataLoader(x, y, batch_size=5, shuffle=True, drop_last=False, seed=2)
    ea, eb = [bx for bx, _ in a], [bx for bx, _ in b]
    assert len(ea) == len(a) == 4 and all(bx.shape == (5, 4) for bx in ea)
    assert all((p == q).all() for p, q in zip(ea, eb, strict=True))  # same seed, same order
    ec = [bx for bx, _ in c]
    assert len(ec) == len(c) == 5 and ec[-1].shape == (4, 4)
    assert sorted(np.concatenate(ec)[:, 0].tolist()) == list(range(0, 96, 4))   # a permutation
    e2 = [bx for bx, _ in a]                                          # epoch 2: another order
    assert not all((p == q).all() for p, q in zip(ea, e2, strict=True))
    assert a.epoch == 2 and a.batch == 0


def test_exact_resume(tok, verdict):
    x, y = windows(tok.encode(verdict), 32, 32)
    ref = DataLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=7)
    full = [bx.copy() for _ in range(3) for bx, _ in ref]            # three epochs
    run = DataLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=7)
    got = []
    for bx, _ in run:
        got.append(bx.copy())
        if len(got) == 5:
            break
    state = json.loads(json.dumps(run.state_dict()))                 # JSON round trip, as a checkpoint
    assert state == {"epoch": 0, "batch": 5, "seed": 7}
    resumed = DataLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=0)
    resumed.load_state_dict(state)
    while len(got) < len(full):
        for bx, _ in resumed:
            got.append(bx.copy())
    assert all((p == q).all() for p, q in zip(full, got, strict=True))
    with pytest.raises(ValueError, match="outside"):
        resumed.load_state_dict({"epoch": 0, "batch": 10_000, "seed": 1})
    with pytest.raises(ValueError, match="lacks"):
        resumed.load_state_dict({"epoch": 0})


def test_dataset_and_loader_errors(tok):
    ds = GPTDatasetV1("Hello, world. " * 20, tok, max_length=8, stride=8)
    bx, by = ds[0]
    assert bx.shape == (8,) and (by[:-1] == bx[1:]).all()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="GPTDatasetV1"):
        DataLoader(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="train_ratio"):
        train_val_split("abc", 1.5)


def test_evaluation_inside_an_epoch_does_not_disturb_it():
    """train.py's pattern: while a training iteration is live, calc_loss_loader saves the state,
    reads a few batches from the same loader and restores it; training continues unchanged."""
    x, y = windows(np.arange(200), 4, 4)                              # 49 windows
    ref = [bx.copy() for bx, _ in DataLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=3)]
    loader = DataLoader(x, y, batch_size=4, shuffle=True, drop_last=True, seed=3)
    got = []
    for bx, _ in loader:
        got.append(bx.copy())
        state = loader.state_dict()
        for i, _ in enumerate(loader):                                 # the evaluation
            if i >= 2:
                break
        loader.load_state_dict(state)
    assert len(got) == len(ref) == 12
    assert all((p == q).all() for p, q in zip(ref, got, strict=True))
    assert loader.state_dict() == {"epoch": 1, "batch": 0, "seed": 3}
