"""Checkpoints: exact round trip, atomic layout, and clear refusals of corrupt or mismatched ones."""

import json

import numpy as np
import pytest

from minigpt.training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    read_state,
    resolve,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from minigpt.config import GPTConfig
from minigpt.model import GPTModel
from minigpt.training.optim import AdamW

CFG = GPTConfig(vocab_size=29, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.1)


def trained(seed=0, steps=2):
    model = GPTModel(CFG, seed=seed)
    opt = AdamW(model, lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.integers(0, 29, size=(2, 8))
        model.loss_and_grads(x, np.roll(x, -1, axis=1), rng=rng)
        opt.step()
    return model, opt, rng


def test_round_trip_is_exact(tmp_path):
    model, opt, rng = trained()
    state = {"data": {"epoch": 1, "pos": 3}, "rng": rng_state(rng), "tokens_seen": 32}
    path = save_checkpoint(tmp_path, model, opt, step=2, state=state)
    assert path.name == "step-00000002" and resolve(tmp_path) == path

    model2 = GPTModel(CFG, seed=99)
    opt2 = AdamW(model2, lr=1e-2, weight_decay=0.1)
    meta = load_checkpoint(tmp_path, model2, opt2)
    np.testing.assert_array_equal(model2.flat_params, model.flat_params)
    np.testing.assert_array_equal(opt2.m, opt.m)
    np.testing.assert_array_equal(opt2.v, opt.v)
    assert opt2.t == opt.t == 2 and meta["step"] == 2
    assert meta["state"]["data"] == {"epoch": 1, "pos": 3}
    rng2 = np.random.default_rng(12345)
    set_rng_state(rng2, meta["state"]["rng"])  # survives JSON (128-bit ints included)
    assert rng2.random() == rng.random()


def test_latest_moves_and_old_ones_are_pruned(tmp_path):
    model, opt, _ = trained()
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, model, opt, step=step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000015"]
    assert (tmp_path / "latest").read_text().strip() == "step-00000015"
    assert read_state(tmp_path)["step"] == 15
    # the same step saved twice replaces it
    save_checkpoint(tmp_path, model, opt, step=15, state={"note": "final"})
    assert read_state(tmp_path)["state"] == {"note": "final"}
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path):
    model, opt, _ = trained()
    save_checkpoint(tmp_path, model, opt, step=1)
    # what a kill -9 in the middle of the next save leaves: a half-written temporary directory
    half = tmp_path / ".tmp-step-00000002-999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    assert resolve(tmp_path).name == "step-00000001"
    load_checkpoint(tmp_path, GPTModel(CFG), AdamW(GPTModel(CFG)))
    save_checkpoint(tmp_path, model, opt, step=2)  # the next save cleans it up
    assert not half.exists()


def test_corrupt_files_are_refused(tmp_path):
    model, opt, _ = trained()
    path = save_checkpoint(tmp_path, model, opt, step=3)
    f = path / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path, GPTModel(CFG), AdamW(GPTModel(CFG)))
    f.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, GPTModel(CFG), AdamW(GPTModel(CFG)), check=False)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_state(tmp_path)
    (path / "state.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        read_state(path)


def test_mismatched_model_or_dtype_is_refused(tmp_path):
    model, opt, _ = trained()
    save_checkpoint(tmp_path, model, opt, step=1)
    other = GPTModel(CFG.replace(emb_dim=12, n_heads=3))
    with pytest.raises(CheckpointError, match=r"emb_dim: checkpoint 8, model 12"):
        load_checkpoint(tmp_path, other)
    with pytest.raises(CheckpointError, match="float32"):
        load_checkpoint(tmp_path, GPTModel(CFG, dtype=np.float64))
    m64, _ = model_from_checkpoint(tmp_path, dtype=np.float64)  # an explicit cast is fine
    np.testing.assert_array_equal(m64.flat_params, model.flat_params.astype(np.float64))
    save_checkpoint(tmp_path / "noopt", model, None, step=1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "noopt", GPTModel(CFG), AdamW(GPTModel(CFG)))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint-dir"):
        resolve(tmp_path / "empty")
    (tmp_path / "latest").write_text("step-00000777\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve(tmp_path)


def test_a_corrupt_latest_names_the_older_checkpoint_to_fall_back_to(tmp_path):
    model, opt, _ = trained()
    save_checkpoint(tmp_path, model, opt, step=4)
    save_checkpoint(tmp_path, model, opt, step=6)
    f = tmp_path / "step-00000006" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CheckpointError, match=r"step-00000004\) into .*latest"):
        load_checkpoint(tmp_path, GPTModel(CFG), AdamW(GPTModel(CFG)))
    (tmp_path / "latest").write_text("step-00000004\n")  # what the message says to do
    assert load_checkpoint(tmp_path, GPTModel(CFG), AdamW(GPTModel(CFG)))["step"] == 4
