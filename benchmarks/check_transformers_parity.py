"""minigpt vs Hugging Face transformers on GPT-2 checkpoints with odd shapes, in float64.

Run (needs torch + transformers; NOT a dependency of minigpt or its tests):

    python3 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch==2.13.0 transformers numpy numba regex safetensors tqdm
    /work/venv-hf/bin/pip install -e . --no-deps
    /work/venv-hf/bin/python benchmarks/check_transformers_parity.py [--write-fixture]

What it checks, for three shapes (``SHAPES``: V=257 T=64 C=48 H=3 L=2, the fixture's; V=257 T=40
C=48 H=3 L=5 with inputs and generation filling the whole context; V=1001 T=40 C=35 H=5 L=3, head
size 7) and a tied and an untied head:
1. transformers -> minigpt: a GPT2LMHeadModel with random non-trivial weights (LN scales far from 1,
   non-zero biases) is written with transformers' own ``save_pretrained``, loaded by
   ``minigpt.from_pretrained`` in float64; logits, the cross-entropy loss (with an ignored
   -100 target), every gradient (torch autograd vs minigpt's hand-written backward; the tied head's
   gradient is the sum of both uses) and greedy tokens must agree (relative error <= 1e-9 for
   numbers, identical tokens);
2. the same weights under the book's names (``tok_emb``, ``trf_blocks.{i}.att.W_query`` ... in
   ``nn.Linear`` (out, in) layout, with the stored ``att.mask`` buffers, in a file named like the
   book's ``gpt2-small-124M.safetensors``, no config.json) give the same logits;
3. the same weights in the hub's own layout (no ``transformer.`` prefix, ``h.{i}.attn.bias`` /
   ``attn.masked_bias`` buffers stored, as openai-community/gpt2's model.safetensors) give the same
   logits, and so does the checkpoint transformers writes in shards (``max_shard_size``:
   model-0000k-of-0000n.safetensors + model.safetensors.index.json); a stored head that differs
   from wte under a "tied" config is refused;
4. minigpt -> transformers: a minigpt model (perturbed away from its init; with and without qkv bias)
   saved by ``save_pretrained`` loads in ``GPT2LMHeadModel.from_pretrained`` with the same logits;
5. a 50257-token model saved with its tokenizer files: ``AutoTokenizer`` gives minigpt's token ids
   and ``pipeline("text-generation")`` minigpt's greedy text;
6. the commands end to end on a transformers-written 50257-token checkpoint: ``minigpt eval --model
   DIR --text the-verdict --dtype float64 --json`` (a subprocess) against the book's procedure
   written here with torch and transformers' own tokenizer (90/10 character split, 256-token
   windows, batches of 2, mean of per-batch mean losses), and ``minigpt generate --model DIR``
   greedy text against ``model.generate``.

``--write-fixture`` also writes tests/fixtures/gpt2_tiny/ (the first shape's tied checkpoint as
transformers wrote it, in float32, and expected.safetensors with transformers' float64 outputs),
which the test suite uses to check parity without torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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

from safetensors.numpy import load_file as _load_file

import minigpt
from minigpt.training.checkpoint import save_tensors as save_file
from minigpt.inference.generate import generate
from minigpt.weights.pretrained import SafetensorsError, from_pretrained, save_pretrained


def load_file(path) -> dict:
    return _load_file(str(path))


ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2_tiny"
TOL = 1e-9
FULL_GRADS = ("wte.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias", "ln_f.weight")
VERDICT = ROOT / "minigpt" / "assets" / "texts" / "the-verdict.txt"
GPT2_FILES = ROOT / "minigpt" / "assets" / "gpt2"  # OpenAI's encoder.json + vocab.bpe


@dataclass(frozen=True)
class Shape:
    """A model shape and the inputs used on it: ``batch`` x ``seq`` tokens for logits/loss/grads,
    a ``batch`` x ``prompt`` prompt continued greedily by ``n_new`` tokens."""

    V: int
    T: int
    C: int
    H: int
    L: int
    batch: int
    seq: int
    prompt: int
    n_new: int

    def __str__(self) -> str:
        return f"V={self.V} T={self.T} C={self.C} H={self.H} (hs={self.C // self.H}) L={self.L}"


SHAPES = (
    Shape(257, 64, 48, 3, 2, batch=2, seq=13, prompt=5, n_new=20),    # the fixture's
    Shape(257, 40, 48, 3, 5, batch=2, seq=40, prompt=5, n_new=35),    # fills the context exactly
    Shape(1001, 40, 35, 5, 3, batch=3, seq=40, prompt=7, n_new=33),   # head size 7, odd width
)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def randomize(model: GPT2LMHeadModel, seed: int) -> GPT2LMHeadModel:
    """Non-trivial float32-representable weights (so the F32 file is exact): LN scales 1 + 0.3 N,
    biases 0.1 N, matrices 0.2 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                new = 1.0 + 0.3 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                new = 0.1 * torch.randn(p.shape, generator=g)
            else:
                new = 0.2 * torch.randn(p.shape, generator=g)
            p.copy_(new.float())
    model.eval()
    return model


def hf_model(sh: Shape, tied: bool, seed: int) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=sh.V, n_positions=sh.T, n_embd=sh.C, n_layer=sh.L, n_head=sh.H,
                     layer_norm_epsilon=1e-5, activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
                     bos_token_id=sh.V - 1, eos_token_id=sh.V - 1)
    torch.manual_seed(seed)
    return randomize(GPT2LMHeadModel(cfg), seed)


def torch_outputs(model: GPT2LMHeadModel, idx: np.ndarray, targets: np.ndarray, prompt: np.ndarray,
                  n_new: int):
    V = model.config.vocab_size
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


def hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    return {k.removeprefix("transformer."): v for k, v in load_file(hf_dir / "model.safetensors").items()}


def book_state(hf_dir: Path, sh: Shape) -> dict[str, np.ndarray]:
    """The HF checkpoint renamed to the book's modules, in nn.Linear (out, in) layout."""
    s, C = hf_tensors(hf_dir), sh.C
    out = {"tok_emb.weight": s["wte.weight"], "pos_emb.weight": s["wpe.weight"],
           "final_norm.scale": s["ln_f.weight"], "final_norm.shift": s["ln_f.bias"],
           "out_head.weight": s.get("lm_head.weight", s["wte.weight"])}
    for i in range(sh.L):
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
        out[b + "att.mask"] = np.triu(np.ones((sh.T, sh.T), np.float32), k=1)  # the book's buffer
    return out


def hub_layout(hf_dir: Path, sh: Shape, dest: Path) -> Path:
    """The checkpoint as openai-community/gpt2 stores it: no ``transformer.`` prefix, the causal
    mask ``h.{i}.attn.bias`` (1, 1, T, T) and ``attn.masked_bias`` stored, no lm_head."""
    s = hf_tensors(hf_dir)
    for i in range(sh.L):
        s[f"h.{i}.attn.bias"] = np.tril(np.ones((sh.T, sh.T), np.float32))[None, None]
        s[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    dest.mkdir()
    save_file(s, dest / "model.safetensors", metadata={"format": "pt"})
    (dest / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    return dest


def check(label: str, err: float, failures: list[str], tol: float = TOL) -> None:
    ok = err <= tol
    print(f"  {label:<58s} rel err {err:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"{label}: {err:.2e}")


def same_tokens(label: str, a: np.ndarray, b: np.ndarray, failures: list[str]) -> None:
    same = np.array_equal(a, b)
    print(f"  {label}: {'identical' if same else 'DIFFER'}")
    if not same:
        failures.append(f"{label} differ")


def hf_to_minigpt(k: int, sh: Shape, tied: bool, work: Path, failures: list[str],
                  write_fixture: bool) -> None:
    print(f"transformers -> minigpt, {'tied' if tied else 'untied'} head, {sh}")
    model = hf_model(sh, tied, seed=(1 if tied else 2) + 10 * k)
    d = work / f"hf_{k}_{'tied' if tied else 'untied'}"
    model.save_pretrained(d)                                      # transformers writes the files
    keys = sorted(load_file(d / "model.safetensors"))
    print(f"  transformers wrote {len(keys)} tensors, e.g. {keys[0]}, {keys[-1]}")
    tmodel = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    tmodel.eval()
    rng = np.random.default_rng(5 + k)
    idx = rng.integers(0, sh.V, size=(sh.batch, sh.seq), dtype=np.int64)
    targets = rng.integers(0, sh.V, size=(sh.batch, sh.seq), dtype=np.int64)
    targets[1, 4] = -100
    prompt = idx[:, :sh.prompt].copy()
    t_logits, t_loss, t_grads, t_gen = torch_outputs(tmodel, idx, targets, prompt, sh.n_new)

    m = from_pretrained(d, dtype=np.float64)
    logits = m.forward(idx)
    check(f"logits ({sh.batch} x {sh.seq} tokens)", rel(logits, t_logits), failures)
    loss, grads = m.loss_and_grads(idx, targets)
    check("loss", rel(loss, t_loss), failures)
    worst = max(((rel(grads[n], t_grads[n]), n) for n in grads), key=lambda x: x[0])
    if set(grads) != set(t_grads):
        failures.append(f"gradient names differ: {sorted(set(grads) ^ set(t_grads))}")
    check(f"gradients, all {len(grads)} (worst: {worst[1]})", worst[0], failures)
    gen = generate(m, prompt, max_new_tokens=sh.n_new, temperature=0.0)
    same_tokens(f"greedy tokens ({sh.n_new} new, {sh.batch} rows, to length {gen.shape[1]})", gen,
                t_gen, failures)

    b = work / f"{k}_{'tied' if tied else 'untied'}" / "gpt2-small-124M.safetensors"
    b.parent.mkdir()
    save_file(book_state(d, sh), b)
    mb = from_pretrained(b, dtype=np.float64, n_heads=sh.H)
    check("book names (tok_emb, trf_blocks.*, (out,in)), no config", rel(mb.forward(idx), t_logits),
          failures)
    if mb.cfg.tie_weights != tied:
        failures.append(f"book file: tie_weights inferred {mb.cfg.tie_weights}, expected {tied}")

    if tied:
        hub = hub_layout(d, sh, work / f"hub_{k}")
        check("hub layout (no prefix, attn.bias/masked_bias buffers)",
              rel(from_pretrained(hub, dtype=np.float64).forward(idx), t_logits), failures)
        sharded = work / f"sharded_{k}"
        model.save_pretrained(sharded, max_shard_size="100KB")   # transformers' sharded layout
        n_shards = len(list(sharded.glob("model-*-of-*.safetensors")))
        if not (sharded / "model.safetensors.index.json").is_file() or n_shards < 2:
            failures.append(f"transformers did not shard the checkpoint ({n_shards} files)")
        check(f"sharded by transformers ({n_shards} files + index.json)",
              rel(from_pretrained(sharded, dtype=np.float64).forward(idx), t_logits), failures)
        s = dict(load_file(d / "model.safetensors"))
        s["lm_head.weight"] = s["transformer.wte.weight"] * 1.5    # a head that is not wte
        save_file(s, d / "model.safetensors")
        try:
            from_pretrained(d, dtype=np.float64)
            failures.append("a stored head that differs from wte under a tied config was accepted")
            print("  untied head under a tied config: ACCEPTED (FAIL)")
        except SafetensorsError as e:
            print(f"  untied head under a tied config refused: {str(e).split(': ', 1)[1]}")
        model.save_pretrained(d)                                    # restore the files

    if write_fixture and tied and k == 0:
        FIXTURE.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            (FIXTURE / f).write_bytes((d / f).read_bytes())
        names = sorted(t_grads)
        expected = {
            "idx": idx, "targets": targets, "prompt": prompt, "greedy": t_gen,
            "logits": t_logits, "loss": np.array(t_loss, np.float64),
            "grad_norms": np.array([np.linalg.norm(t_grads[n]) for n in names], np.float64),
        }
        for n in FULL_GRADS:
            expected["grad." + n] = t_grads[n]
        save_file(expected, FIXTURE / "expected.safetensors", metadata={
            "grad_norm_names": json.dumps(names), "transformers": transformers.__version__,
            "torch": torch.__version__, "generated_by": "benchmarks/check_transformers_parity.py"})
        print(f"  wrote fixture {FIXTURE.relative_to(ROOT)}")


def minigpt_to_hf(sh: Shape, qkv_bias: bool, tied: bool, work: Path, failures: list[str]) -> None:
    print(f"minigpt -> transformers, qkv_bias={qkv_bias}, tied={tied}, {sh}")
    cfg = minigpt.GPTConfig(vocab_size=sh.V, context_length=sh.T, emb_dim=sh.C, n_heads=sh.H,
                            n_layers=sh.L, drop_rate=0.0, qkv_bias=qkv_bias, tie_weights=tied)
    m = minigpt.GPTModel(cfg, seed=11, dtype=np.float64)
    rng = np.random.default_rng(3)
    m.flat_params += 0.1 * rng.standard_normal(m.flat_params.shape)  # LN != 1, biases != 0
    d = work / f"mg_{sh.V}_{sh.L}_{qkv_bias}_{tied}"
    save_pretrained(m, d)
    tmodel = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    tmodel.eval()
    idx = rng.integers(0, sh.V, size=(3, min(17, sh.T)), dtype=np.int64)
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


def minigpt_cli(*argv: str) -> str:
    """``minigpt <argv>`` in a subprocess (this interpreter); its stdout."""
    code = "import sys; from minigpt.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"minigpt {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def book_loss_torch(model: GPT2LMHeadModel, ids: list[int], drop_last: bool) -> tuple[float, int]:
    """The book's calc_loss_loader, written here: GPTDatasetV1 windows (max_length = stride = 256),
    batches of 2 in order, the mean of per-batch mean cross-entropies. -> (loss, windows)."""
    starts = range(0, len(ids) - 256, 256)
    x = torch.tensor([ids[i:i + 256] for i in starts])
    y = torch.tensor([ids[i + 1:i + 257] for i in starts])
    n = len(x) // 2 * 2 if drop_last else len(x)
    losses = []
    with torch.no_grad():
        for b in range(0, n, 2):
            logits = model(x[b:b + 2]).logits
            losses.append(float(F.cross_entropy(logits.flatten(0, 1), y[b:b + 2].flatten())))
    return sum(losses) / len(losses), len(x)


def commands_end_to_end(work: Path, failures: list[str]) -> None:
    """``minigpt eval`` and ``minigpt generate`` on a transformers-written 50257-token checkpoint."""
    from transformers import GPT2TokenizerFast
    print("minigpt eval / generate on a checkpoint transformers wrote (V=50257 T=256 C=32 H=4 L=2)")
    cfg = GPT2Config(vocab_size=50257, n_positions=256, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(7)
    model = randomize(GPT2LMHeadModel(cfg), 7)
    d = work / "hf_50257"
    model.save_pretrained(d)
    model = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    model.eval()
    tok_dir = work / "gpt2_tokenizer"                              # OpenAI's files, HF's names
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_bytes((GPT2_FILES / "encoder.json").read_bytes())
    (tok_dir / "merges.txt").write_bytes((GPT2_FILES / "vocab.bpe").read_bytes())
    tok = GPT2TokenizerFast.from_pretrained(tok_dir)
    if len(tok) != 50257 or tok.encode("Every effort moves you") != [6109, 3626, 6100, 345]:
        failures.append("transformers' GPT-2 tokenizer did not load (book ids for the prompt)")
        return
    text = VERDICT.read_text(encoding="utf-8")
    split = int(0.9 * len(text))                                   # the book's character split
    want = {}
    for name, part, drop_last in (("train", text[:split], True), ("val", text[split:], False)):
        ids = tok.encode(part)
        want[f"{name}_loss"], want[f"{name}_windows"] = book_loss_torch(model, ids, drop_last)
        want[f"{name}_tokens"] = len(ids)
    got = json.loads(minigpt_cli("eval", "--model", str(d), "--text", "the-verdict",
                                 "--dtype", "float64", "--json"))
    counts = {k: (got[k], want[k]) for k in want if not k.endswith("_loss")}
    print(f"  tokens / windows (minigpt, torch): {counts}")
    if any(a != b for a, b in counts.values()):
        failures.append(f"eval counts differ: {counts}")
    for split_name in ("train", "val"):
        k = f"{split_name}_loss"
        check(f"minigpt eval {k} {got[k]:.6f} vs torch {want[k]:.6f}", rel(got[k], want[k]), failures)

    prompt = "Every effort moves you"
    out = minigpt_cli("generate", "--model", str(d), "--prompt", prompt, "-n", "15", "--dtype",
                      "float64", "--no-eos").rstrip("\n")
    with torch.no_grad():
        gen = model.generate(torch.tensor([tok.encode(prompt)]), max_new_tokens=15,
                             do_sample=False, pad_token_id=50256, eos_token_id=None)
    ref = prompt + tok.decode(gen[0, len(tok.encode(prompt)):].tolist())
    print(f"  minigpt generate greedy == transformers generate: {out == ref}")
    if out != ref:
        failures.append(f"generate text differs: {out!r} vs {ref!r}")


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
        for k, sh in enumerate(SHAPES):
            for tied in (True, False):
                hf_to_minigpt(k, sh, tied, work, failures, args.write_fixture)
        for sh in (SHAPES[0], SHAPES[2]):
            for qkv_bias, tied in ((True, True), (False, False)):
                minigpt_to_hf(sh, qkv_bias, tied, work, failures)
        tokenizer_files(work, failures)
        commands_end_to_end(work, failures)
    print("ALL OK" if not failures else "FAILURES:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
