"""Instruction finetuning and DPO through the training loop: the loss falls, the margin grows, and a
run that crashes resumes to the same bits (the loaders' positions and the objective's checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest

import minigpt
from minigpt.config import GPTConfig
from minigpt.gradcheck_dpo import clone
from minigpt.training.checkpoint import read_state
from minigpt.training.dpo import (
    DPOObjective,
    PreferenceDataset,
    PreferenceLoader,
    evaluate_dpo_loader,
)
from minigpt.training.instruction_data import (
    InstructionDataset,
    InstructionLoader,
    load_instruction_data,
    load_preference_data,
)
from minigpt.training.instruction_eval import (
    automatic_scores,
    generate_response,
    rouge_l,
    word_f1,
)
from minigpt.training.loop import TrainSettings, train
from minigpt.training.optim import AdamW

pytestmark = pytest.mark.usefixtures("one_numba_thread")

CFG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=8, n_heads=2, n_layers=1,
                drop_rate=0.0, qkv_bias=True, tie_weights=True)
# the loop tests fold GPT-2's ids into 100 (+ a pad id), so that a step costs milliseconds
SMALL = GPTConfig(vocab_size=101, context_length=128, emb_dim=16, n_heads=2, n_layers=1,
                  drop_rate=0.0, qkv_bias=True, tie_weights=True)
PAD = 100


@pytest.fixture(scope="module")
def tok():
    return minigpt.Tokenizer.gpt2()


class Folded:
    """GPT-2's ids modulo 100: the same text structure over a 101-token vocabulary."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text):
        return [t % PAD for t in self.tok.encode(text)]


class Crash(RuntimeError):
    pass


def crashing(loader_cls):
    class Crashing(loader_cls):
        crash_after = None
        served = 0

        def __iter__(self):
            for batch in super().__iter__():
                if self.crash_after is not None and Crashing.served >= self.crash_after:
                    raise Crash("simulated crash")
                Crashing.served += 1
                yield batch
    return Crashing


def run_instruct(tok, run_dir, crash_after=None, resume=False):
    ds = InstructionDataset(load_instruction_data()[:12], Folded(tok))
    Loader = crashing(InstructionLoader)
    Loader.crash_after = crash_after
    loader = Loader(ds, batch_size=4, shuffle=True, drop_last=True, seed=7, pad_token_id=PAD)
    evl = InstructionLoader(ds, batch_size=4, pad_token_id=PAD)
    model = minigpt.GPTModel(SMALL, seed=0)
    opt = AdamW(model, lr=1e-2, weight_decay=0.1)
    s = TrainSettings(epochs=2, lr=1e-2, eval_freq=2, eval_iter=1, checkpoint_dir=str(run_dir),
                      checkpoint_every=2, sample_tokens=0, plot=False, progress=False)
    res = train(model, opt, loader, evl, settings=s, train_eval_loader=evl, resume=resume,
                print_fn=lambda *_: None)
    return model, opt, res


def test_instruction_finetuning_learns_and_resumes_bit_identical(tmp_path, tok):
    ref_model, ref_opt, ref = run_instruct(tok, tmp_path / "ref")
    assert ref.step == 6 and ref.train_losses[-1] < ref.train_losses[0] - 0.3
    with pytest.raises(Crash):
        run_instruct(tok, tmp_path / "crash", crash_after=5)      # in epoch 2, after step 4's save
    assert read_state(tmp_path / "crash")["step"] == 4
    model, opt, res = run_instruct(tok, tmp_path / "crash", resume=True)
    np.testing.assert_array_equal(model.flat_params, ref_model.flat_params)
    np.testing.assert_array_equal(opt.m, ref_opt.m)
    assert res.val_losses == ref.val_losses


def run_dpo(tok, run_dir, start, crash_after=None, resume=False):
    ds = PreferenceDataset(load_preference_data()[:12], Folded(tok))
    Loader = crashing(PreferenceLoader)
    Loader.crash_after = crash_after
    loader = Loader(ds, batch_size=4, shuffle=True, drop_last=True, seed=7, pad_token_id=PAD)
    val = PreferenceLoader(PreferenceDataset(load_preference_data()[1045:1049], Folded(tok)),
                           batch_size=4, pad_token_id=PAD)
    policy, reference = clone(start), clone(start)
    objective = DPOObjective(policy, reference, beta=0.1)
    opt = AdamW(policy, lr=3e-3, weight_decay=0.01)
    s = TrainSettings(epochs=2, lr=3e-3, eval_freq=2, eval_iter=1, checkpoint_dir=str(run_dir),
                      checkpoint_every=2, sample_tokens=0, plot=False, progress=False)
    train_eval = PreferenceLoader(ds, 4, pad_token_id=PAD)
    before = evaluate_dpo_loader(objective, train_eval)
    res = train(objective, opt, loader, val, settings=s, train_eval_loader=train_eval,
                resume=resume, print_fn=lambda *_: None)
    return objective, opt, res, before, evaluate_dpo_loader(objective, train_eval)


def test_dpo_through_the_loop_grows_the_margin_and_resumes_bit_identical(tmp_path, tok):
    start = minigpt.GPTModel(SMALL, seed=1, dtype=np.float64)
    frozen = start.flat_params.copy()
    obj, opt, res, before, after = run_dpo(tok, tmp_path / "ref", start)
    assert res.step == 6
    assert before["margin"] == 0.0 and before["loss"] == np.log(2)
    assert after["margin"] > 0 and res.train_losses[-1] < res.train_losses[0]
    assert np.array_equal(obj.reference.flat_params, frozen)              # the reference never moves
    with pytest.raises(Crash):
        run_dpo(tok, tmp_path / "crash", start, crash_after=3)
    assert read_state(tmp_path / "crash")["step"] == 2
    obj2, opt2, res2, _, _ = run_dpo(tok, tmp_path / "crash", start, resume=True)
    np.testing.assert_array_equal(obj2.policy.flat_params, obj.policy.flat_params)
    np.testing.assert_array_equal(opt2.m, opt.m)
    assert res2.val_losses == res.val_losses


def test_responses_stop_at_end_of_text_and_scores(tok):
    class Echo:
        """A stand-in model: greedy logits that spell " Paris." and then the end-of-text."""
        cfg = CFG
        dtype = np.float32

        def __init__(self):
            self.script = tok.encode(" Paris.") + [50256, 11, 11]

        def forward(self, idx, kv_cache=None):
            n = idx.shape[1] if kv_cache is None else kv_cache.pos + idx.shape[1]
            kv_cache.pos = n if kv_cache is not None else None
            logits = np.zeros((1, idx.shape[1], CFG.vocab_size), dtype=np.float32)
            logits[0, -1, self.script[min(n - self.start, len(self.script) - 1)]] = 1.0
            return logits

    model = Echo()
    entry = {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}
    from minigpt.training.instruction_data import format_input
    model.start = len(tok.encode(format_input(entry)))
    assert generate_response(model, tok, entry, max_new_tokens=10) == "Paris."
    assert word_f1("the cat sat", "the cat") == pytest.approx(0.8)
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    s = automatic_scores([{**entry, "model_response": "Paris."},
                          {**entry, "model_response": "London"}])
    assert s["exact_match"] == 50.0 and s["word_f1"] == 50.0


def test_resume_keeps_the_saved_options_unless_given(monkeypatch, tmp_path):
    """--resume: the run's saved options win over this command line's defaults; a run-length
    option given explicitly overrides; an option that would change the trajectory is refused."""
    import minigpt.training.checkpoint as ckpt
    from minigpt.cli.dispatch import build_parser
    from minigpt.cli.instruct import options

    parser = build_parser()
    saved = {**vars(parser.parse_args(["instruct", "--max-steps", "24", "--no-progress",
                                       "--lr", "1e-3", "--checkpoint-dir", str(tmp_path)]))}
    saved = {k: v for k, v in saved.items() if not k.startswith("_") and k != "command"}
    monkeypatch.setattr(ckpt, "list_checkpoints", lambda d: [tmp_path / "step-00000009"])
    monkeypatch.setattr(ckpt, "read_state", lambda d: {"state": {"cli": saved}})
    o = options(parser.parse_args(["instruct", "--resume", "--checkpoint-dir", str(tmp_path)]))
    assert (o["max_steps"], o["progress"], o["lr"], o["resuming"]) == (24, False, 1e-3, True)
    o = options(parser.parse_args(["instruct", "--resume", "--checkpoint-dir", str(tmp_path),
                                   "--max-steps", "30", "--lr", "1e-3"]))
    assert (o["max_steps"], o["lr"]) == (30, 1e-3)
    with pytest.raises(ValueError, match=r"--lr \(saved 0.001\)"):
        options(parser.parse_args(["instruct", "--resume", "--checkpoint-dir", str(tmp_path),
                                   "--lr", "2e-3"]))
    with pytest.raises(ValueError, match="already holds a run"):
        options(parser.parse_args(["instruct", "--checkpoint-dir", str(tmp_path)]))
