"""minigpt's LoRA against Hugging Face PEFT on GPT-2, in float64 (the book's appendix E).

Run (needs torch + transformers + peft; NOT dependencies of minigpt or its tests):

    python3 -m venv .peer
    .peer/bin/pip install torch==2.13.0 transformers peft numpy numba regex safetensors tqdm huggingface_hub
    .peer/bin/pip install -e . --no-deps
    .peer/bin/python benchmarks/check_peft_adapter.py [--write-fixture]

A tiny GPT-2 (V=31 T=8 C=12 H=3 L=2, qkv bias, tied head) with non-trivial random weights is
written by ``minigpt.save_pretrained`` and read by transformers' ``GPT2LMHeadModel`` in float64.

1. minigpt -> PEFT, for both target sets (the book's q / k / v pairs, written as a rank-3r c_attn
   adapter with a block-diagonal B; PEFT's one pair per module): a minigpt model with LoRA (r=4,
   alpha=6, so s = 1.5; A and B random, B nonzero) saved by ``save_adapter`` is loaded by
   ``PeftModel.from_pretrained``. Logits, the cross-entropy loss (one target -100) and the gradients
   of every A and B (torch autograd vs minigpt's hand-written backward; for the q / k / v pairs, the
   diagonal blocks of PEFT's lora_B gradient) must agree to a relative 1e-10; and minigpt's
   ``merge_lora`` logits must match PEFT's ``merge_and_unload``.
2. PEFT -> minigpt: adapters made and written by PEFT itself (``get_peft_model`` + random lora_B,
   ``save_pretrained``; for the book's layout a c_attn rank_pattern of 3r with the off-diagonal
   blocks of lora_B zeroed) are read by ``load_adapter``; logits and gradients as in 1.

``--write-fixture`` writes tests/fixtures/lora_peft/: the base checkpoint (minigpt's
save_pretrained, float64), the two PEFT-written adapter folders and ``expected.safetensors`` with
PEFT's float64 logits, loss and lora gradients, which tests/test_lora.py checks without torch.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import peft
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2LMHeadModel
except ImportError as e:  # torch / transformers / peft are only for this check
    print(f"skipped: this check needs torch, transformers and peft ({e}); see the docstring")
    sys.exit(0)

from minigpt import GPTConfig, GPTModel, save_pretrained
from minigpt.gradcheck import _randomise
from minigpt.lora import BOOK_TARGETS, PEFT_TARGETS, adapters, merge_lora, with_lora
from minigpt.training.checkpoint import save_tensors
from minigpt.weights.adapter import load_adapter, save_adapter

CFG = GPTConfig(vocab_size=31, context_length=8, emb_dim=12, n_heads=3, n_layers=2, drop_rate=0.0,
                qkv_bias=True, tie_weights=True)
R, ALPHA = 4, 6
TARGETS = {"book": BOOK_TARGETS, "peft": PEFT_TARGETS}
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lora_peft"
TOL = 1e-10


def inputs():
    rng = np.random.default_rng(5)
    idx = rng.integers(0, CFG.vocab_size, (2, CFG.context_length))
    targets = rng.integers(0, CFG.vocab_size, (2, CFG.context_length))
    targets[1, 3] = -100
    return idx, targets


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def torch_run(model, idx, targets):
    """PEFT's logits, loss and lora gradients (key: the module, e.g. 'h.0.attn.c_attn')."""
    model.zero_grad()
    logits = model(torch.tensor(idx)).logits
    loss = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), torch.tensor(targets).reshape(-1),
                           ignore_index=-100)
    loss.backward()
    grads = {}
    for name, prm in model.named_parameters():
        if "lora_" in name:
            key = name.split("transformer.", 1)[1].replace(".default", "")
            grads[key] = prm.grad.detach().numpy().copy()
    return logits.detach().numpy(), float(loss.detach()), grads


def minigpt_grads(m: GPTModel, r: int):
    """minigpt's dA, dB in PEFT's layout: lora_A.weight (k r, in), lora_B.weight (out, k r), the
    q / k / v pairs in the diagonal blocks (and a mask of those blocks)."""
    by_layer: dict[str, list] = {}
    for a in adapters(m):
        by_layer.setdefault(a.layer, []).append(a)
    out, mask = {}, {}
    for layer, pairs in by_layer.items():
        n_out = m.shapes[layer + ".weight"][1]
        dA = np.concatenate([m.grads[a.a_name] for a in pairs], axis=1)
        dB, keep = np.zeros((len(pairs) * r, n_out)), np.zeros((len(pairs) * r, n_out), bool)
        for j, a in enumerate(pairs):
            dB[j * r:(j + 1) * r, a.lo:a.hi] = m.grads[a.b_name]
            keep[j * r:(j + 1) * r, a.lo:a.hi] = True
        out[layer + ".lora_A.weight"], out[layer + ".lora_B.weight"] = dA.T, dB.T
        mask[layer + ".lora_B.weight"] = keep.T
    return out, mask


def compare(tag, m: GPTModel, t_logits, t_loss, t_grads, idx, targets) -> bool:
    logits = m.forward(idx)
    loss, _ = m.loss_and_grads(idx, targets)
    grads, mask = minigpt_grads(m, R)
    e_logits, e_loss = rel(logits, t_logits), abs(loss - t_loss) / abs(t_loss)
    e_grad = max(rel(g[mask[k]] if k in mask else g, t_grads[k][mask[k]] if k in mask else t_grads[k])
                 for k, g in grads.items())
    ok = e_logits < TOL and e_loss < TOL and e_grad < TOL and set(grads) == set(t_grads)
    print(f"{tag:46} logits {e_logits:.1e}  loss {e_loss:.1e}  lora grads {e_grad:.1e} "
          f"({len(grads)} tensors)  {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-fixture", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, peft {peft.__version__}")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    base = GPTModel(CFG, seed=1, dtype=np.float64)
    _randomise(base, np.random.default_rng(2))          # LN scales far from 1, nonzero biases
    save_pretrained(base, work / "base", tokenizer=False)
    hf = GPT2LMHeadModel.from_pretrained(work / "base", dtype=torch.float64,
                                         attn_implementation="eager").eval()
    idx, targets = inputs()
    ok = rel(hf(torch.tensor(idx)).logits.detach().numpy(), base.forward(idx)) < TOL
    print(f"base model logits agree: {ok}")
    expected = {}

    # 1. minigpt -> PEFT
    for kind, tgts in TARGETS.items():
        m = with_lora(base, R, ALPHA, tgts, seed=3)
        rng = np.random.default_rng(4)
        for a in adapters(m):
            m.params[a.b_name][...] = rng.standard_normal(m.shapes[a.b_name]) / 2
        save_adapter(m, work / f"mg_{kind}", base_model_name_or_path=str(work / "base"))
        pm = PeftModel.from_pretrained(copy.deepcopy(hf), work / f"mg_{kind}", is_trainable=True)
        ok &= compare(f"minigpt {kind} adapter -> PEFT", m, *torch_run(pm, idx, targets), idx, targets)
        merged = pm.merge_and_unload()(torch.tensor(idx)).logits.detach().numpy()
        merge_lora(m)
        e = rel(m.forward(idx), merged)
        ok &= e < TOL
        print(f"{'  merged (merge_lora vs merge_and_unload)':46} logits {e:.1e}")

    # 2. PEFT -> minigpt
    for kind, tgts in TARGETS.items():
        pattern = {"c_attn": 3 * R} if kind == "book" else {}
        apattern = {"c_attn": 3 * ALPHA} if kind == "book" else {}
        lc = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj", "c_fc"],
                        fan_in_fan_out=True, lora_dropout=0.0, rank_pattern=pattern,
                        alpha_pattern=apattern, task_type="CAUSAL_LM")
        pm = get_peft_model(copy.deepcopy(hf), lc)
        with torch.no_grad():
            for name, prm in pm.named_parameters():
                if "lora_B" in name:
                    prm.normal_(0, 0.5)
                    if kind == "book" and "c_attn" in name:    # q / k / v: block-diagonal B
                        keep = torch.zeros_like(prm)
                        for j in range(3):
                            keep[j * CFG.emb_dim:(j + 1) * CFG.emb_dim, j * R:(j + 1) * R] = 1
                        prm.mul_(keep)
        pm.save_pretrained(work / f"peft_{kind}")
        t_logits, t_loss, t_grads = torch_run(pm, idx, targets)
        m = with_lora(base, R, ALPHA, tgts, seed=9)
        load_adapter(m, work / f"peft_{kind}")
        ok &= compare(f"PEFT {kind} adapter -> minigpt", m, t_logits, t_loss, t_grads, idx, targets)
        expected[f"{kind}.logits"] = t_logits
        expected[f"{kind}.loss"] = np.array(t_loss)
        expected |= {f"{kind}.grad.{k}": g for k, g in t_grads.items()}

    if args.write_fixture:
        shutil.rmtree(FIXTURE, ignore_errors=True)
        FIXTURE.mkdir(parents=True)
        shutil.copytree(work / "base", FIXTURE / "base")
        for kind in TARGETS:
            shutil.copytree(work / f"peft_{kind}", FIXTURE / f"peft_{kind}",
                            ignore=shutil.ignore_patterns("README.md"))   # PEFT's model card
        expected["idx"], expected["targets"] = idx, targets
        save_tensors(expected, FIXTURE / "expected.safetensors",
                     metadata={"source": f"peft {peft.__version__}, torch {torch.__version__}, "
                                         "benchmarks/check_peft_adapter.py"})
        print(f"fixture written to {FIXTURE}")
    shutil.rmtree(work)
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
