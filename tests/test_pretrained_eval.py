"""``minigpt eval`` on a generated checkpoint: the book's windows, batches and loss averaging.

With the real GPT-2 124M weights the same command gives train 3.7547 / val 3.5596 on the-verdict
(book-notes §5); here the code path is checked on a small random model with GPT-2's vocabulary.
"""

from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import pytest

import minigpt
from minigpt.cli import main
from minigpt.cli.eval import evaluate_text, read_text
from minigpt.weights.pretrained import save_pretrained


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = minigpt.GPTConfig(vocab_size=50257, context_length=300, emb_dim=16, n_heads=2,
                            n_layers=1, drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = minigpt.GPTModel(cfg, seed=1, dtype=np.float32)
    model.flat_params += np.random.default_rng(0).normal(0, 0.05, model.num_params).astype(np.float32)
    d = save_pretrained(model, tmp_path_factory.mktemp("eval") / "ckpt")
    return model, d


def test_evaluate_text_is_the_books_procedure(ckpt, tok):
    model, _ = ckpt
    text, _ = read_text("the-verdict")
    r = evaluate_text(model, text, tok)
    # the book's counts (book-notes §5, §9.1): 4,612 / 534 tokens, 18 / 2 windows, 9 / 1 batches
    assert (r["train_tokens"], r["val_tokens"]) == (4612, 534)
    assert (r["train_windows"], r["val_windows"]) == (18, 2)
    assert (r["train_batches"], r["val_batches"]) == (9, 1)
    assert (r["train_batches_total"], r["val_batches_total"]) == (9, 1)
    # independently: windows start at range(0, n - 256, 256); mean over batches of 2 of batch means
    split = int(0.9 * len(text))
    for name, part in (("train", text[:split]), ("val", text[split:])):
        ids = np.array(tok.encode(part), np.int64)
        starts = list(range(0, len(ids) - 256, 256))
        batch_losses = []
        for b in range(0, len(starts), 2):
            s = starts[b:b + 2]
            x = np.stack([ids[i:i + 256] for i in s])
            y = np.stack([ids[i + 1:i + 257] for i in s])
            batch_losses.append(model.loss(x, y))
        assert r[f"{name}_loss"] == pytest.approx(np.mean(batch_losses), rel=1e-12)
        assert r[f"{name}_perplexity"] == pytest.approx(np.exp(np.mean(batch_losses)), rel=1e-12)


def test_mean_of_batch_means_not_token_mean(ckpt, tok):
    """A partial last batch weighs as much as a full one (calc_loss_loader), unlike a token mean."""
    model, _ = ckpt
    text = read_text("the-verdict")[0][-3000:]
    r = evaluate_text(model, text, tok, max_length=12, batch_size=4)
    ids = np.array(tok.encode(text[int(0.9 * len(text)):]), np.int64)
    starts = list(range(0, len(ids) - 12, 12))
    assert len(starts) % 4 != 0 and r["val_windows"] == len(starts)   # a partial last batch
    x = np.stack([ids[i:i + 12] for i in starts])
    y = np.stack([ids[i + 1:i + 13] for i in starts])
    means = [model.loss(x[b:b + 4], y[b:b + 4]) for b in range(0, len(starts), 4)]
    assert r["val_batches"] == len(means) >= 2
    assert r["val_loss"] == pytest.approx(np.mean(means), rel=1e-12)
    token_mean = model.loss(x, y)
    assert abs(r["val_loss"] - token_mean) > 1e-6      # the two averages really differ here


def test_cli_eval_json(ckpt, capsys):
    model, d = ckpt
    assert main(["eval", "--model", str(d), "--text", "the-verdict", "--num-batches", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_batches"] == 1 and out["val_batches"] == 1
    assert out["train_batches_total"] == 9
    assert out["text"] == "the-verdict.txt" and out["characters"] == 20479
    assert np.isfinite(out["train_loss"]) and out["val_perplexity"] == pytest.approx(
        np.exp(out["val_loss"]))


def test_cli_eval_threads(ckpt, capsys, restore_global_settings):
    """--threads 1 sets Numba's pool and the product split; the loss is the same up to summation
    order. The thread counts are put back afterwards (the restore_global_settings fixture)."""
    import numba

    import kernels.blas
    from minigpt import backend

    _, d = ckpt
    args = ["eval", "--model", str(d), "--text", "the-verdict", "--num-batches", "1", "--json"]
    backend.set_threads(2)                 # 2 where Numba can start 2 (then the change shows)
    assert main(args) == 0
    before = json.loads(capsys.readouterr().out)
    assert main([*args, "--threads", "1"]) == 0
    assert numba.get_num_threads() == 1 and kernels.blas.get_threads() == 1
    after = json.loads(capsys.readouterr().out)
    assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-5)


def test_cli_eval_errors(ckpt, tmp_path, capsys):
    _, d = ckpt
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    assert main(["eval", "--model", str(d), "--text", str(short)]) == 2
    assert "too few for one window" in capsys.readouterr().err
    assert main(["eval", "--model", str(d), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "no text file" in capsys.readouterr().err
    assert main(["eval", "--model", str(d), "--text", "the-verdict", "--max-length", "512"]) == 2
    assert "context_length" in capsys.readouterr().err


def test_vocabulary_mismatch_is_reported(tmp_path, tok):
    cfg = minigpt.GPTConfig(vocab_size=300, context_length=64, emb_dim=8, n_heads=2, n_layers=1,
                            drop_rate=0.0, qkv_bias=True, tie_weights=True)
    text, _ = read_text("the-verdict")
    with pytest.raises(ValueError, match="outside the model's vocabulary of 300"):
        evaluate_text(minigpt.GPTModel(cfg), text, tok, max_length=32)


def test_cli_eval_offline_says_where_to_put_the_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGPT_OFFLINE", "1")
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # empty
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "gpt2", "--text", "the-verdict"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cache" / "gpt2" / "model.safetensors") in err
    assert "openai-community/gpt2/resolve/main/model.safetensors" in err
