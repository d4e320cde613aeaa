"""minigpt vs Hugging Face transformers on GPT-2 checkpoints with odd shapes, in float64.

Run (needs torch + transformers; NOT a dependency of minigpt or its tests):

    python3 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch==2.13.0 transformers numpy numba regex safetensors tqdm
    /work/venv-hf/bin/pip install -e .
    /work/venv-hf/bin/python benchmarks/check_transformers_parity.py [--write-fixture]

What it checks, for a tied and an untied head:
1. transformers -> minigpt: a GPT2LMHeadModel with random non-trivial weights (LN scales far from 1,
   non-zero biases) and odd shapes (V=257, T=64, C=48, H=3, L=2, eps 1e-5, gelu_new) is written with
   transformers' own ``save_pretrained``, loaded by ``minigpt.GPTModel.from_pretrained`` in float64;
   logits, the cross-entropy loss (with an ignored -100 target), every gradient (torch autograd vs
   minigpt's hand-written backward; the tied head's gradient is the sum of both uses) and 20 greedy
   tokens must agree (relative error <= 1e-9 for numbers, identical tokens);
2. the same weights under the book's names (``tok_emb``, ``trf_blocks.{i}.att.W_query`` ... in
   ``nn.Linear`` (out, in) layout, with the stored ``att.mask`` buffers) give the same logits;
3. minigpt -> transformers: a minigpt model (perturbed away from its init; with and without qkv bias)
   saved by ``save_pretrained`` loads in ``GPT2LMHeadModel.from_pretrained`` with the same logits;
4. a 50257-token model saved with its tokenizer files: ``AutoTokenizer`` gives minigpt's token ids
   and ``pipeline("text-generation")`` minigpt's greedy text.

``--write-fixture`` also writes tests/fixtures/gpt2_tiny/ (the tied checkpoint as transformers wrote
it, in float32, and expected.safetensors with transformers' float64 outputs), which the test suite
uses to check parity without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError as e:  # torch/transformers are only for this check
    print(f"skipped: this check needs torch and transformers ({e}); see the docstring")
    sys.exit(0)

import minigpt
from minigpt.generate import generate
from minigpt.pretrained import from_pretrained, save_pretrained
from minigpt.safetensors_io import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2_tiny"
V, T, C, H, L = 257, 64, 48, 3, 2
TOL = 1e-9
FULL_GRADS = ("wte.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias", "ln_f.weight")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def hf_model(tied: bool, seed: int) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H,
                     layer_norm_epsilon=1e-5, activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
                     bos_token_id=V - 1, eos_token_id=V - 1)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                new = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                new = 0.1 * torch.randn(p.shape, generator=g)
            else:
                new = 0.2 * torch.randn(p.shape, generator=g)
            p.copy_(new.float())                 # float32-representable: the F32 file is exact
    model.eval()
    return model


def torch_outputs(model: GPT2LMHeadModel, idx: np.ndarray, targets: np.ndarray, prompt: np.ndarray,
                  n_new: int):
    model.zero_grad()
    out = model(torch.from_numpy(idx))
    logits = out.logits
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1),
                           ignore_index=-100)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        key = name.removeprefix("transformer.")
        grads[key] = p.grad.detach().numpy().copy()
    with torch.no_grad():
        gen = model.generate(torch.from_numpy(prompt), max_new_tokens=n_new, do_sample=False,
                             pad_token_id=V - 1, eos_token_id=None)
    return logits.detach().numpy(), float(loss.detach()), grads, gen.numpy()


def book_state(hf_dir: Path) -> dict[str, np.ndarray]:
    """The HF checkpoint renamed to the book's modules, in nn.Linear (out, in) layout."""
    s = {k.removeprefix("transformer."): v for k, v in load_file(hf_dir / "model.safetensors").items()}
    out = {"tok_emb.weight": s["wte.weight"], "pos_emb.weight": s["wpe.weight"],
           "final_norm.scale": s["ln_f.weight"], "final_norm.shift": s["ln_f.bias"],
           "out_head.weight": s.get("lm_head.weight", s["wte.weight"])}
    for i in range(L):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        w, bias = s[h + "attn.c_attn.weight"], s[h + "attn.c_attn.bias"]
        for j, nm in enumerate(("query", "key", "value")):
            out[b + f"att.W_{nm}.weight"] = np.ascontiguousarray(w[:, j * C:(j + 1) * C].T)
            out[b + f"att.W_{nm}.bias"] = bias[j * C:(j + 1) * C]
        out[b + "att.out_proj.weight"] = np.ascontiguousarray(s[h + "attn.c_proj.weight"].T)
        out[b + "att.out_proj.bias"] = s[h + "attn.c_proj.bias"]
        out[b + "ff.layers.0.weight"] = np.ascontiguousarray(s[h + "mlp.c_fc.weight"].T)
        out[b + "ff.layers.0.bias"] = s[h + "mlp.c_fc.bias"]
        out[b + "ff.layers.2.weight"] = np.ascontiguousarray(s[h + "mlp.c_proj.weight"].T)
        out[b + "ff.layers.2.bias"] = s[h + "mlp.c_proj.bias"]
        out[b + "norm1.scale"], out[b + "norm1.shift"] = s[h + "ln_1.weight"], s[h + "ln_1.bias"]
        out[b + "norm2.scale"], out[b + "norm2.shift"] = s[h + "ln_2.weight"], s[h + "ln_2.bias"]
        out[b + "att.mask"] = np.triu(np.ones((T, T), np.float32), k=1)  # the book's buffer
    return out


def check(label: str, err: float, failures: list[str], tol: float = TOL) -> None:
    ok = err <= tol
    print(f"  {label:<52s} rel err {err:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"{label}: {err:.2e}")


def hf_to_minigpt(tied: bool, work: Path, failures: list[str], write_fixture: bool) -> None:
    print(f"transformers -> minigpt, {'tied' if tied else 'untied'} head, V={V} T={T} C={C} H={H} L={L}")
    model = hf_model(tied, seed=1 if tied else 2)
    d = work / f"hf_{'tied' if tied else 'untied'}"
    model.save_pretrained(d)                                      # transformers writes the files
    keys = sorted(load_file(d / "model.safetensors"))
    print(f"  transformers wrote {len(keys)} tensors, e.g. {keys[0]}, {keys[-1]}")
    tmodel = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    tmodel.eval()
    rng = np.random.default_rng(5)
    idx = rng.integers(0, V, size=(2, 13), dtype=np.int64)
    targets = rng.integers(0, V, size=(2, 13), dtype=np.int64)
    targets[1, 4] = -100
    prompt = idx[:, :5].copy()
    n_new = 20
    t_logits, t_loss, t_grads, t_gen = torch_outputs(tmodel, idx, targets, prompt, n_new)

    m = from_pretrained(d, dtype=np.float64)
    logits = m.forward(idx)
    check("logits", rel(logits, t_logits), failures)
    loss, grads = m.loss_and_grads(idx, targets)
    check("loss", rel(loss, t_loss), failures)
    worst = max(((rel(grads[k], t_grads[k]), k) for k in grads), key=lambda x: x[0])
    if set(grads) != set(t_grads):
        failures.append(f"gradient names differ: {sorted(set(grads) ^ set(t_grads))}")
    check(f"gradients, all {len(grads)} (worst: {worst[1]})", worst[0], failures)
    gen = generate(m, prompt, max_new_tokens=n_new, temperature=0.0)
    same = np.array_equal(gen, t_gen)
    print(f"  greedy tokens ({n_new} new, 2 rows) identical: {same}")
    if not same:
        failures.append("greedy tokens differ")

    b = work / f"book_{'tied' if tied else 'untied'}.safetensors"
    save_file(book_state(d), b)
    mb = from_pretrained(b, dtype=np.float64, n_heads=H)
    check("book names (tok_emb, trf_blocks.*, (out,in)) logits", rel(mb.forward(idx), t_logits),
          failures)
    if mb.cfg.tie_weights != tied:
        failures.append(f"book file: tie_weights inferred {mb.cfg.tie_weights}, expected {tied}")

    if write_fixture and tied:
        FIXTURE.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            (FIXTURE / f).write_bytes((d / f).read_bytes())
        names = sorted(t_grads)
        expected = {
            "idx": idx, "targets": targets, "prompt": prompt, "greedy": t_gen,
            "logits": t_logits, "loss": np.array(t_loss, np.float64),
            "grad_norms": np.array([np.linalg.norm(t_grads[k]) for k in names], np.float64),
        }
        for k in FULL_GRADS:
            expected["grad." + k] = t_grads[k]
        save_file(expected, FIXTURE / "expected.safetensors", metadata={
            "grad_norm_names": json.dumps(names), "transformers": transformers.__version__,
            "torch": torch.__version__, "generated_by": "benchmarks/check_transformers_parity.py"})
        print(f"  wrote fixture {FIXTURE.relative_to(ROOT)}")


def minigpt_to_hf(qkv_bias: bool, tied: bool, work: Path, failures: list[str]) -> None:
    print(f"minigpt -> transformers, qkv_bias={qkv_bias}, tied={tied}")
    cfg = minigpt.GPTConfig(vocab_size=V, context_length=T, emb_dim=C, n_heads=H, n_layers=L,
                            drop_rate=0.0, qkv_bias=qkv_bias, tie_weights=tied)
    m = minigpt.GPTModel(cfg, seed=11, dtype=np.float64)
    rng = np.random.default_rng(3)
    m.flat_params += 0.1 * rng.standard_normal(m.flat_params.shape)  # LN != 1, biases != 0
    d = work / f"mg_{qkv_bias}_{tied}"
    save_pretrained(m, d)
    tmodel = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    tmodel.eval()
    idx = rng.integers(0, V, size=(3, 17), dtype=np.int64)
    with torch.no_grad():
        t_logits = tmodel(torch.from_numpy(idx)).logits.numpy()
    check("logits (transformers loading minigpt's files)", rel(m.forward(idx), t_logits), failures)
    back = from_pretrained(d, dtype=np.float64)
    if not np.array_equal(back.flat_params, m.flat_params) or back.cfg != cfg:
        failures.append(f"save/load round trip changed the model (qkv_bias={qkv_bias}, tied={tied})")


def tokenizer_files(work: Path, failures: list[str]) -> None:
    """save_pretrained also writes GPT-2's tokenizer files: AutoTokenizer and pipeline() work."""
    from transformers import AutoTokenizer, pipeline
    print("minigpt -> transformers, a 50257-token model with its tokenizer files")
    cfg = minigpt.GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2,
                            n_layers=2, drop_rate=0.0, qkv_bias=True, tie_weights=True)
    m = minigpt.GPTModel(cfg, seed=5, dtype=np.float32)
    d = save_pretrained(m, work / "with_tokenizer")
    tok = minigpt.Tokenizer.gpt2()
    hf_tok = AutoTokenizer.from_pretrained(d)
    texts = ["Every effort moves you", "Hello, world! <|endoftext|> In the sunlit terraces",
             "  multiple   spaces\n\nand newlines", "naïve café, 日本語, emoji 🙂", "1234567 it's"]
    same = all(hf_tok.encode(t) == tok.encode(t, allowed_special="all") for t in texts)
    print(f"  AutoTokenizer ids == minigpt.Tokenizer.gpt2() ids on {len(texts)} texts: {same}")
    if not same:
        failures.append("tokenizer ids differ")
    gen = pipeline("text-generation", model=str(d), device="cpu")
    prompt = "Every effort moves you"
    out = gen(prompt, max_new_tokens=10, do_sample=False)[0]["generated_text"]
    ids = generate(m, np.array([tok.encode(prompt)]), max_new_tokens=10, temperature=0.0)
    ours = tok.decode(ids[0].tolist())
    print(f"  pipeline('text-generation') greedy == minigpt generate: {out == ours}")
    if out != ours:
        failures.append(f"pipeline text differs: {out!r} vs {ours!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-fixture", action="store_true",
                    help=f"also write {FIXTURE.relative_to(ROOT)} for the test suite")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy "
          f"{np.__version__}, float64, tolerance {TOL:g} relative")
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for tied in (True, False):
            hf_to_minigpt(tied, work, failures, args.write_fixture)
        for qkv_bias, tied in ((True, True), (False, False)):
            minigpt_to_hf(qkv_bias, tied, work, failures)
        tokenizer_files(work, failures)
    print("ALL OK" if not failures else "FAILURES:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
