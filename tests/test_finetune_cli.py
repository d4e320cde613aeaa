"""``minigpt finetune`` / ``minigpt classify`` and the finetuning loop: exact resume (in process,
and after kill -9 of the command), the LoRA checkpoint's extra rows, the book's helpers."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from minigpt.training.checkpoint import model_from_checkpoint, read_state


def labelled_file(tmp_path, n=48):
    """A small TSV of two kinds of texts (so a tiny model can learn them quickly)."""
    rng = random.Random(0)
    rows = ["text\tlabel"]
    for i in range(n):
        spam = i % 2 == 0
        words = (["win", "cash", "prize", "call", "now", "free"] if spam
                 else ["see", "you", "at", "home", "later", "ok"])
        rows.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
                    + f"\t{'spam' if spam else 'ham'}")
    path = tmp_path / "texts.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


ARGS = ["--init", "random", "--n-layers", "2", "--emb-dim", "16", "--n-heads", "2",
        "--context-length", "16", "--batch-size", "4", "--dropout", "0.1", "--lr", "3e-3",
        "--max-steps", "24", "--eval-freq", "5", "--eval-iter", "2", "--checkpoint-every", "1",
        "--threads", "1", "--no-progress", "--no-plot", "--seed", "5"]


def run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "minigpt.cli", "finetune", *args],
                            stdout=kw.get("out", subprocess.PIPE), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NUMBA_NUM_THREADS": "2"})


def latest_step(run_dir):
    try:
        return read_state(run_dir)["step"]
    except (OSError, ValueError):
        return 0


def tensors(run_dir):
    from safetensors.numpy import load_file

    from minigpt.training.checkpoint import resolve

    d = resolve(run_dir)
    return {f"{f}:{k}": v for f in ("model.safetensors", "optimizer.safetensors")
            for k, v in load_file(str(d / f)).items()}


@pytest.mark.slow     # three processes of the command: about a minute on a busy 2-core machine
@pytest.mark.parametrize("lora", [False, True], ids=["all-trainable", "lora"])
def test_finetune_kill_minus_9_and_resume_is_bit_identical(tmp_path, lora):
    data = labelled_file(tmp_path)
    args = [data, *ARGS] + (["--lora", "2", "--lora-alpha", "4"] if lora else [])
    args[0:1] = ["--data", data]
    ref = run_cli(*args, "--checkpoint-dir", str(tmp_path / "ref"), "--checkpoint-every", "24")
    run_dir = tmp_path / "killed"
    proc = run_cli(*args, "--checkpoint-dir", str(run_dir), out=subprocess.DEVNULL)
    target = random.randint(1, 18)
    deadline = time.time() + 120
    while latest_step(run_dir) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()                                              # SIGKILL: nothing is saved on the way out
    _, err = proc.communicate()
    killed_at = latest_step(run_dir)
    assert proc.returncode == -9 and 0 < killed_at < 24, err
    out, err = ref.communicate()
    assert ref.returncode == 0, err
    resumed = run_cli("--resume", "--checkpoint-dir", str(run_dir))
    out2, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert f"resumed from {run_dir}" in out2
    a, b = tensors(tmp_path / "ref"), tensors(run_dir)
    assert a.keys() == b.keys() and (not lora or any("lora_B" in k for k in a))
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"{k} (killed at {killed_at})")
    summary = json.loads(out.splitlines()[-1].removeprefix("summary "))
    assert json.loads(out2.splitlines()[-1].removeprefix("summary "))["test_accuracy"] == \
        summary["test_accuracy"]
    # the checkpoint rebuilds the model with its adapters and frozen flags; classify reads it
    model, _ = model_from_checkpoint(run_dir)
    assert model.cfg.lora_rank == (2 if lora else 0)
    assert model.num_trainable == summary["trainable"] < summary["total"] or not lora
    got = subprocess.run([sys.executable, "-m", "minigpt.cli", "classify", "--checkpoint",
                          str(run_dir), "--text", "win cash now", "--json"],
                         capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    rec = json.loads(got.stdout)
    assert rec["label"] in ("ham", "spam") and 0.5 <= rec["probability"] <= 1


@functools.cache
def gpt2_tokenizer():
    from minigpt.tokenizer import Tokenizer

    return Tokenizer.gpt2()


def _setup(tmp_path, lora: bool):
    """A tiny classifier (LoRA or every parameter trainable), its optimizer and loaders, built the
    way the command builds them."""
    from minigpt.cli.finetune import BOOK, build_data, build_model
    from minigpt.training.optim import AdamW

    o = {**BOOK, "data": labelled_file(tmp_path), "init": "random", "n_layers": 2, "emb_dim": 16,
         "n_heads": 2, "context_length": 16, "batch_size": 4, "dropout": 0.1, "balance": False,
         "lora": 2 if lora else 0, "lora_alpha": 4.0, "trainable": "lora" if lora else "last-block",
         "seed": 5}
    _, datasets, loaders, train_eval = build_data(o, gpt2_tokenizer(), 16)
    model = build_model(o, 2)
    return model, AdamW(model, lr=3e-3, weight_decay=0.1), loaders, train_eval


@pytest.mark.parametrize("lora", [False, True], ids=["last-block", "lora"])
def test_finetune_resumes_bit_identically_from_any_checkpoint(tmp_path, lora, one_numba_thread):
    """In process (the kill -9 version above runs the command): a run of 14 steps over two epochs
    (8 batches each), checkpointed every step; a fresh model resumed from a checkpoint in the
    middle ends with the same bits, history included. LoRA rows and frozen flags come back."""
    import shutil

    from minigpt.training.checkpoint import LATEST, step_dir_name
    from minigpt.training.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(max_steps=14, eval_freq=3, eval_iter=2, checkpoint_every=1,
                                keep_last=0, seed=5, plot=False, progress=False,
                                checkpoint_dir=str(tmp_path / "ref"), lr=3e-3)
    model, opt, (tr, va, _), ev = _setup(tmp_path, lora)
    trainable = model.trainable_names()
    ref = finetune(model, opt, tr, va, settings=settings, train_eval_loader=ev, print_fn=lambda s: None)
    assert ref.step == 14 and len(ref.train_accs) == 1 and len(tr) == 8
    k = 11                                              # in the second epoch
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copytree(tmp_path / "ref" / step_dir_name(k), run / step_dir_name(k))
    (run / LATEST).write_text(step_dir_name(k) + "\n")
    model2, opt2, (tr2, va2, _), ev2 = _setup(tmp_path, lora)
    model2.flat_params[...] = 0                         # all of it must come from the checkpoint
    settings.checkpoint_dir = str(run)
    res = finetune(model2, opt2, tr2, va2, settings=settings, train_eval_loader=ev2, resume=True,
                   print_fn=lambda s: None)
    assert model2.flat_params.tobytes() == model.flat_params.tobytes()
    assert opt2.m.tobytes() == opt.m.tobytes() and opt2.t == opt.t == 14
    assert res.train_losses == ref.train_losses and res.train_accs == ref.train_accs
    assert model2.trainable_names() == trainable
    rebuilt, _ = model_from_checkpoint(run)             # extra rows (LoRA) rebuilt from state.json
    assert rebuilt.flat_params.tobytes() == model.flat_params.tobytes()
    assert rebuilt.trainable_names() == trainable and (".lora_" in " ".join(trainable)) == lora


def test_the_books_helpers_and_choices(tmp_path):
    from minigpt.training.finetune import (
        calc_accuracy_loader,
        calc_loss_loader,
        choose_trainable,
        classify_review,
    )
    model, _, (tr, va, te), _ = _setup(tmp_path, False)
    assert model.trainable_names() == [n for n in model.params
                                       if n.startswith(("h.1.", "ln_f.", "out_head."))]
    assert choose_trainable(model, "head") == ["out_head.weight", "out_head.bias"]
    assert len(choose_trainable(model, "last-two")) == len(model.params) - 2      # not wte, wpe
    with pytest.raises(ValueError, match="LoRA adapters"):
        choose_trainable(model, "lora")
    acc = calc_accuracy_loader(te, model)
    preds = [classify_review(t, model, gpt2_tokenizer(), 16)[0] for t in ("win cash", "see you")]
    assert 0 <= acc <= 1 and all(p in (0, 1) for p in preds)
    assert calc_loss_loader(va, model, 1) == pytest.approx(model.loss(*_first(va)[:2],
                                                                     lengths=_first(va)[2]))


def _first(loader):
    return next(iter(loader))


@pytest.mark.parametrize("name", ["ch06_classification", "appendixE_lora"])
def test_chapter_scripts_print_the_books_numbers(name, capsys, monkeypatch, restore_global_settings):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--no-train"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.count("[ok]") >= 5
    # negative control: one count off by one is reported and fails the script
    mod.FAILED.clear()
    real = mod.count
    monkeypatch.setattr(mod, "count", lambda *a, **k: real(*a, **k) + 1)
    assert mod.main(["--no-train"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
