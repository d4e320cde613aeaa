"""The training loop: evaluation like the book, logs, and exact resume after a crash or Ctrl-C."""

import json
import math
import signal

import numpy as np
import pytest

from minigpt.training.checkpoint import list_checkpoints, read_state
from minigpt.config import GPTConfig
from minigpt.training.data import DataLoader, windows
from minigpt.model import GPTModel
from minigpt.training.optim import AdamW
from minigpt.training.loop import (
    NonFiniteLossError,
    TrainSettings,
    calc_loss_loader,
    read_log,
    train,
    train_model_simple,
)


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tests/conftest.py


CFG = GPTConfig(vocab_size=31, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1)


def make_data(n_tokens=200, seed=0):
    # a learnable stream: mostly "next = previous + 1 (mod V)", with some noise
    rng = np.random.default_rng(seed)
    ids = np.cumsum(rng.choice([1, 1, 1, 2], size=n_tokens)) % CFG.vocab_size
    x, y = windows(ids, max_length=8, stride=8)
    split = int(0.8 * len(x))
    return (DataLoader(x[:split], y[:split], batch_size=3, shuffle=True, drop_last=True, seed=7),
            DataLoader(x[:split], y[:split], batch_size=3),  # unshuffled copy for loss estimates
            DataLoader(x[split:], y[split:], batch_size=3))


def settings(tmp_path, **kw):
    base = {"epochs": 4, "lr": 3e-3, "warmup_steps": 3, "min_lr": 3e-4, "clip": 1.0, "eval_freq": 2,
            "eval_iter": 2, "checkpoint_dir": str(tmp_path), "checkpoint_every": 2, "progress": False,
            "plot": False, "seed": 11}
    base.update(kw)
    return TrainSettings(**base)


def run(tmp_path, resume=False, crash_after=None, sigint_after=None, **kw):
    model = GPTModel(CFG, seed=1)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    train_loader, train_eval, val_loader = make_data()
    loader = train_loader
    if crash_after is not None or sigint_after is not None:
        loader = Interrupting(train_loader, crash_after, sigint_after)
    res = train(model, opt, loader, val_loader, settings=settings(tmp_path, **kw),
                train_eval_loader=train_eval, resume=resume, print_fn=lambda s: None)
    return model, opt, res


class Interrupting:
    """Wraps a loader: raises (a crash) or sends SIGINT (Ctrl-C) after n batches in this process."""

    def __init__(self, loader, crash_after=None, sigint_after=None):
        self.loader, self.crash_after, self.sigint_after, self.n = loader, crash_after, sigint_after, 0

    def __len__(self):
        return len(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, s):
        self.loader.load_state_dict(s)

    def __iter__(self):
        for batch in self.loader:
            if self.crash_after is not None and self.n == self.crash_after:
                raise RuntimeError("simulated crash")
            if self.sigint_after is not None and self.n == self.sigint_after:
                signal.raise_signal(signal.SIGINT)
            self.n += 1
            yield batch


def test_calc_loss_loader_is_mean_of_batch_means():
    model = GPTModel(CFG, seed=0)
    _, train_eval, _ = make_data()
    per_batch = [model.loss(x, y) for x, y in train_eval]
    assert calc_loss_loader(train_eval, model) == pytest.approx(np.mean(per_batch))
    assert calc_loss_loader(train_eval, model, num_batches=2) == pytest.approx(np.mean(per_batch[:2]))
    assert calc_loss_loader(train_eval, model, num_batches=999) == pytest.approx(np.mean(per_batch))
    assert math.isnan(calc_loss_loader([], model))


def test_loss_falls_and_log_is_written(tmp_path):
    model, opt, res = run(tmp_path, epochs=8, plot=True)
    assert len(make_data()[0]) == 6  # 24 windows, 19 for training, // 3 = 6 batches per epoch
    assert res.status == "done" and res.step == 8 * 6
    assert res.train_losses[-1] < res.train_losses[0] - 0.5
    assert res.eval_steps == list(range(0, 48, 2))  # the book's global_step % eval_freq == 0
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == res.eval_steps
    assert log[-1]["tokens_seen"] == res.track_tokens_seen[-1] == 47 * 3 * 8  # after update index 46
    assert read_state(tmp_path)["step"] == 48
    try:  # the plot is an optional extra: drawn when matplotlib is installed, skipped quietly if not
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "losses.png").exists()
    else:
        assert (tmp_path / "losses.png").stat().st_size > 1000


def test_crash_and_resume_is_bit_identical(tmp_path):
    ref_model, ref_opt, ref = run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crash", crash_after=9)  # dies in epoch 2, after the step-8 checkpoint
    assert read_state(tmp_path / "crash")["step"] == 8
    model, opt, res = run(tmp_path / "crash", resume=True)
    np.testing.assert_array_equal(model.flat_params, ref_model.flat_params)
    np.testing.assert_array_equal(opt.m, ref_opt.m)
    assert res.train_losses == ref.train_losses and res.step == ref.step
    assert [r["step"] for r in read_log(tmp_path / "crash")] == ref.eval_steps


def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path):
    handler = signal.getsignal(signal.SIGINT)   # SIG_IGN, not Python's, under nohup or `cmd &`
    ref_model, _, _ = run(tmp_path / "ref")
    _, _, res = run(tmp_path / "int", sigint_after=6, checkpoint_every=None)
    # the signal came while the 7th batch was being fetched: that step is not taken
    assert res.status == "interrupted" and res.step == 6
    assert read_state(tmp_path / "int")["step"] == 6
    model, _, res2 = run(tmp_path / "int", resume=True, checkpoint_every=None)
    assert res2.status == "done"
    np.testing.assert_array_equal(model.flat_params, ref_model.flat_params)
    assert signal.getsignal(signal.SIGINT) is handler  # the handler the run found is restored


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    model = GPTModel(CFG, seed=1)
    opt = AdamW(model, lr=3e-3)
    real = model.loss_and_grads
    calls = {"n": 0}

    def poisoned(x, y, rng=None):
        calls["n"] += 1
        loss, g = real(x, y, rng=rng)
        return (float("nan") if calls["n"] == 6 else loss), g

    model.loss_and_grads = poisoned
    train_loader, train_eval, val_loader = make_data()
    with pytest.raises(NonFiniteLossError, match=r"step 5.*step-00000004"):
        train(model, opt, train_loader, val_loader, settings=settings(tmp_path),
              train_eval_loader=train_eval, print_fn=lambda s: None)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    assert opt.t == 5  # the poisoned step did not reach the optimizer


def test_non_finite_gradient_with_a_finite_loss_stops_too(tmp_path):
    # an overflow in the backward must not reach the weights even without clipping
    model = GPTModel(CFG, seed=1)
    opt = AdamW(model, lr=3e-3)
    real = model.loss_and_grads
    calls = {"n": 0}

    def overflowing(x, y, rng=None):
        calls["n"] += 1
        loss, g = real(x, y, rng=rng)
        if calls["n"] == 4:
            g["wpe.weight"][0, 0] = np.inf
        return loss, g

    model.loss_and_grads = overflowing
    train_loader, train_eval, val_loader = make_data()
    with pytest.raises(NonFiniteLossError, match=r"gradient norm inf\) at step 3"):
        train(model, opt, train_loader, val_loader, settings=settings(tmp_path, clip=None),
              train_eval_loader=train_eval, print_fn=lambda s: None)
    assert np.isfinite(model.flat_params).all() and opt.t == 3
    assert read_state(tmp_path)["step"] == 2


def test_max_steps_and_book_signature(tmp_path):
    _, _, res = run(tmp_path, max_steps=7, checkpoint_every=None)
    assert res.step == 7 and read_state(tmp_path)["step"] == 7
    model = GPTModel(CFG, seed=1)
    opt = AdamW(model, lr=1e-3, weight_decay=0.1)
    train_loader, _, val_loader = make_data()
    tl, vl, seen = train_model_simple(model, train_loader, val_loader, opt, num_epochs=1,
                                      eval_freq=2, eval_iter=1, start_context="", tokenizer=None)
    assert len(tl) == len(vl) == len(seen) == 3 and seen == [24, 72, 120]


def test_bad_settings_are_clear(tmp_path):
    model = GPTModel(CFG)
    with pytest.raises(ValueError, match="no batches"):
        train(model, AdamW(model), DataLoader(np.zeros((1, 8), int), np.zeros((1, 8), int),
                                              batch_size=2, drop_last=True),
              settings=settings(tmp_path))
    with pytest.raises(ValueError, match="checkpoint directory"):
        run(tmp_path, resume=True, checkpoint_dir=None)


def test_log_survives_a_resume_without_duplicates(tmp_path):
    run(tmp_path, epochs=2)
    n = len(read_log(tmp_path))
    run(tmp_path, resume=True, epochs=2)  # already done: nothing new
    assert len(read_log(tmp_path)) == n
    assert all(json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines())


# --- the command line, end to end: kill -9 at a random moment, resume, compare bit for bit ---------
TINY = ["--tokenizer", "300", "--context-length", "16", "--emb-dim", "16", "--n-heads", "2",
        "--n-layers", "2", "--batch-size", "4", "--dropout", "0.1", "--lr", "3e-3", "--warmup-steps",
        "4", "--min-lr", "3e-4", "--clip", "1.0", "--max-steps", "60", "--eval-freq", "7",
        "--eval-iter", "2", "--checkpoint-every", "1", "--threads", "1", "--no-progress", "--no-plot",
        "--sample-tokens", "0", "--seed", "5"]


def tiny_text(tmp_path):
    from minigpt.cli.train import load_text

    path = tmp_path / "story.txt"
    path.write_text(load_text("the-verdict")[:3000], encoding="utf-8")
    return str(path)


def final_params(run_dir, optimizer=False):
    from safetensors.numpy import load_file

    from minigpt.training.checkpoint import resolve

    names = ["model.safetensors"] + (["optimizer.safetensors"] if optimizer else [])
    tensors = {f"{f}:{k}": v for f in names for k, v in load_file(str(resolve(run_dir) / f)).items()}
    return tensors, read_state(run_dir)


# For the kill -9 test: large enough that at 2 threads each dense product is split into 2 BLAS calls
# (>= kernels.blas.MIN_SPLIT_MACS multiply-adds), layernorm and GELU run their parallel kernels
# (B*T*C >= their SERIAL_BELOW) and attention its BLAS path, bmm split over the batch (T >= 32).
KILL = ["--tokenizer", "300", "--context-length", "32", "--emb-dim", "64", "--n-heads", "4",
        "--n-layers", "2", "--batch-size", "16", "--stride", "8", "--dropout", "0.1", "--lr", "3e-3",
        "--warmup-steps", "4", "--min-lr", "3e-4", "--clip", "1.0", "--max-steps", "60",
        "--eval-freq", "7", "--eval-iter", "2", "--checkpoint-every", "1", "--no-progress",
        "--no-plot", "--sample-tokens", "0", "--seed", "5"]


def test_kill_config_reaches_the_parallel_paths():
    import kernels.blas
    import kernels.gelu
    import kernels.layernorm
    from kernels.attention import BLAS_MIN_T

    opt = dict(zip(KILL[::2], KILL[1::2], strict=True))
    B, T, C = (int(opt[k]) for k in ("--batch-size", "--context-length", "--emb-dim"))
    assert T >= BLAS_MIN_T and B >= 2
    assert B * T * C >= max(kernels.layernorm.SERIAL_BELOW, kernels.gelu.SERIAL_BELOW)
    # the smallest product of a step, the attention output projection (B*T, C) @ (C, C)
    assert B * T * C * C >= kernels.blas.MIN_SPLIT_MACS and min(B * T, C) // 16 >= 2


def latest_step(run_dir):
    """The step of the run's latest checkpoint, or 0 (none yet, or it was just pruned)."""
    try:
        return read_state(run_dir)["step"]
    except (OSError, ValueError):
        return 0


def _nudge_one_ulp(run_dir):
    """Move one element of the latest checkpoint's first parameter by one ulp, and update the file
    hash its state records (loading verifies it)."""
    import json

    from safetensors.numpy import load_file, save_file

    from minigpt.training.checkpoint import MODEL_FILE, STATE_FILE, _sha256, resolve

    ckpt = resolve(run_dir)
    tensors = load_file(str(ckpt / MODEL_FILE))
    name = sorted(tensors)[0]
    flat = tensors[name].reshape(-1)
    flat[0] = np.nextafter(flat[0], np.inf)
    save_file(tensors, str(ckpt / MODEL_FILE))
    meta = json.loads((ckpt / STATE_FILE).read_text())
    meta["files"][MODEL_FILE] = _sha256(ckpt / MODEL_FILE)
    (ckpt / STATE_FILE).write_text(json.dumps(meta, indent=1))


@pytest.mark.parametrize("threads", [1, 2])
def test_cli_kill_minus_9_and_resume_is_bit_identical(tmp_path, threads):
    """Three processes, as a user would run them: one uninterrupted run, one killed with SIGKILL at a
    random moment, and its resume; all at ``threads`` threads. Each process runs the kernels' cached
    code (minigpt/training/kernel_cache.py), so the resumed run must end with the same parameters and AdamW
    moments to the last bit. A copy of the killed run whose checkpoint has one parameter moved by
    one ulp is resumed too: it must not end bit-identical, which shows that the comparison sees
    rounding-level differences. (It used to be a resume at 1 thread of a 2-thread run; since dW is
    added by BLAS itself, kernels.blas.gemm_acc, this run gives the same bits at 1 and 2 threads.)
    Processes run two at a time (the result must not depend on the load either)."""
    import os
    import random
    import shutil
    import subprocess
    import sys
    import time

    text = tiny_text(tmp_path)
    cli = [sys.executable, "-m", "minigpt.cli", "train"]
    args = [*KILL, "--threads", str(threads)]
    env = {**os.environ, "NUMBA_NUM_THREADS": str(max(threads, 2))}  # else capped by the core count

    def start(*extra, out=subprocess.PIPE):
        return subprocess.Popen([*cli, *extra], stdout=out, stderr=subprocess.PIPE, text=True,
                                env=env)

    # the reference saves only at the end: checkpointing every step must not change the trajectory
    ref_run = start(text, *args, "--checkpoint-dir", str(tmp_path / "ref"), "--checkpoint-every", "60")
    run_dir = tmp_path / "killed"
    proc = start(text, *args, "--checkpoint-dir", str(run_dir), out=subprocess.DEVNULL)
    target = random.randint(1, 50)  # kill after a random step, at a random moment of the next one
    deadline = time.time() + 300
    while latest_step(run_dir) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.05))
    proc.kill()  # SIGKILL: no handler runs, no chance to save
    _, err = proc.communicate()
    killed_at = latest_step(run_dir)
    assert proc.returncode == -9 and 0 < killed_at < 60, err
    print(f"{threads} thread(s): killed with SIGKILL after step {target}, latest checkpoint at "
          f"step {killed_at}")
    out, err = ref_run.communicate()
    assert ref_run.returncode == 0, err
    ref, ref_state = final_params(tmp_path / "ref", optimizer=True)
    assert ref_state["step"] == 60

    # control: the same resume from a copy whose checkpoint has one parameter moved by one ulp
    other_dir = tmp_path / "one-ulp"
    shutil.copytree(run_dir, other_dir, symlinks=True)
    _nudge_one_ulp(other_dir)
    other = start("--resume", "--checkpoint-dir", str(other_dir))
    resumed = start("--resume", "--checkpoint-dir", str(run_dir))
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert f"resumed from {run_dir}" in out
    got, state = final_params(run_dir, optimizer=True)
    assert state["step"] == 60
    assert got.keys() == ref.keys()
    for name in ref:  # tensor by tensor, bit for bit
        np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{name} (killed at {killed_at})")
    assert [r["step"] for r in read_log(run_dir)] == [r["step"] for r in read_log(tmp_path / "ref")]

    _, err = other.communicate()
    assert other.returncode == 0, err
    diff, _ = final_params(other_dir, optimizer=True)
    assert any(not np.array_equal(diff[k], ref[k]) for k in ref), \
        f"a resume from a checkpoint one ulp off ended bit-identical too (killed at {killed_at})"
    for k in ref:
        np.testing.assert_allclose(diff[k], ref[k], rtol=1e-2, atol=1e-4, err_msg=k)


def test_cli_resume_refuses_changed_options_and_generate_works(tmp_path, capsys):
    from minigpt.cli import main

    text = tiny_text(tmp_path)
    run_dir = str(tmp_path / "run")
    assert main(["train", text, *[a if a != "60" else "5" for a in TINY], "--checkpoint-dir", run_dir]) == 0
    assert main(["train", "--resume", "--checkpoint-dir", run_dir, "--lr", "0.1"]) == 2
    assert "--lr (saved 0.003)" in capsys.readouterr().err
    assert main(["train", text, *TINY, "--checkpoint-dir", run_dir]) == 2  # would overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", "--checkpoint-dir", run_dir, "--max-steps", "8"]) == 0
    assert read_state(run_dir)["step"] == 8
    capsys.readouterr()
    assert main(["generate", "--checkpoint", run_dir, "--prompt", "I had", "-n", "5"]) == 0
    assert capsys.readouterr().out.startswith("I had")


def test_help_reads_cold(capsys, monkeypatch):
    from minigpt.cli import main

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal width
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "minigpt train --quick" in out and "--resume" in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert max(len(line) for line in out.splitlines()) <= 84


def test_init_like_torch_matches_pytorch_defaults():
    from minigpt.training.loop import init_like_torch

    cfg = GPTConfig(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
    model = GPTModel(cfg, seed=0)
    init_like_torch(model, seed=3)
    p = model.params
    assert abs(p["wte.weight"].std() - 1.0) < 0.05 and abs(p["wpe.weight"].std() - 1.0) < 0.15
    for name, fan_in in [("h.0.attn.c_attn.weight", 32), ("h.1.mlp.c_proj.weight", 128),
                         ("h.1.mlp.c_proj.bias", 128), ("h.0.mlp.c_fc.bias", 32), ("lm_head.weight", 32)]:
        bound = 1 / np.sqrt(fan_in)  # nn.Linear: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert np.abs(p[name]).max() <= bound and np.abs(p[name]).max() > 0.9 * bound, name
    assert np.all(p["h.1.ln_2.weight"] == 1) and np.all(p["ln_f.bias"] == 0)
    other = GPTModel(cfg, seed=99)
    init_like_torch(other, seed=3)
    np.testing.assert_array_equal(other.flat_params, model.flat_params)  # the seed decides
    x = np.random.default_rng(0).integers(0, 300, size=(2, 16))
    assert abs(model.loss(x, x) - np.log(300)) < 0.5  # near uniform, as the book's 10.98 for V=50257


def test_cli_recompute_switches_give_the_same_bits_and_resume(tmp_path, monkeypatch):
    """--recompute-attention and --recompute-mlp change what a block keeps, not the numbers: five
    steps with both give the checkpoint of five steps without, bit for bit (dropout on, T = 16:
    the attention is kept by default), and a run may resume with the switches changed. A spy on
    the blocks shows the switches reached them."""
    import minigpt.model
    from minigpt.cli import main

    seen = []
    real = minigpt.model.block_forward

    def spy(*a, **kw):
        seen.append((kw.get("recompute_attention"), kw.get("recompute_mlp")))
        return real(*a, **kw)

    monkeypatch.setattr(minigpt.model, "block_forward", spy)
    text = tiny_text(tmp_path)
    short = [a if a != "60" else "5" for a in TINY]
    runs = {}
    for name, extra, want in (("plain", [], (None, False)),
                              ("again", ["--recompute-attention", "--recompute-mlp"], (True, True))):
        run_dir = str(tmp_path / name)
        seen.clear()
        assert main(["train", text, *short, "--checkpoint-dir", run_dir, *extra]) == 0
        assert want in seen
        runs[name] = final_params(run_dir, optimizer=True)[0]
    assert runs["plain"].keys() == runs["again"].keys()
    for k in runs["plain"]:
        assert np.array_equal(runs["plain"][k], runs["again"][k]), k
    assert main(["train", "--resume", "--checkpoint-dir", str(tmp_path / "plain"),
                 "--recompute-attention", "--max-steps", "6"]) == 0
    assert read_state(str(tmp_path / "plain"))["step"] == 6
