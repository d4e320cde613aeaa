"""Independent check of KV-cached greedy decoding speed: minigpt vs transformers' GPT2LMHeadModel.

Each side runs in its own fresh process, alternating minigpt, transformers, minigpt, ... so that a
slow spell of a shared machine hits both. The transformers child never imports minigpt or
kernels: it reads the weights from a safetensors file and runs a plain greedy loop over
``past_key_values`` (float32, eval, ``torch.set_num_threads(n)``, nothing else changed). The
minigpt child loads the same file into ``GPTModel`` and calls ``generate(..., use_cache=True)``.
Both time the whole generation of ``--new`` tokens after a ``--prompt``-token prompt (the prefill
included), after one untimed warm-up generation whose tokens are compared.

The weights are random (GPT-2 initialisation: normal(0, 0.02), zero biases, unit layernorms;
nothing is downloaded): GPT-2 124M shaped (``--config gpt2``) or the bench's small config
(``--config small``); tied head, qkv bias, no dropout.

    .venv/bin/python benchmarks/check_decode_transformers.py --config gpt2 --threads 2
    .venv/bin/python benchmarks/check_decode_transformers.py --config small --threads 1 --new 64

The parent uses this file's interpreter (it needs NumPy and safetensors); the minigpt child the
same interpreter; the transformers child ``--peer-python`` (default /work/peer/bin/python, a venv
with torch and transformers). Prints each round's tokens/s, the medians, the ratio minigpt /
transformers and whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CONFIGS = {   # name -> vocab, context, emb_dim, heads, layers (as minigpt/cli/bench/configs.py)
    "gpt2": (50257, 1024, 768, 12, 12),
    "small": (4096, 256, 256, 8, 4),
}


def make_weights(name: str, path: str, seed: int = 0) -> None:
    """GPT-2-initialised random weights under Hugging Face GPT-2 names, Conv1D layout (in, out)."""
    from safetensors.numpy import save_file

    V, T, C, H, L = CONFIGS[name]
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = {"wte.weight": normal(V, C), "wpe.weight": normal(T, C, std=0.01),
         "ln_f.weight": np.ones(C, np.float32), "ln_f.bias": np.zeros(C, np.float32)}
    proj_std = 0.02 / np.sqrt(2 * L)
    for i in range(L):
        h = f"h.{i}."
        w.update({
            h + "ln_1.weight": np.ones(C, np.float32), h + "ln_1.bias": np.zeros(C, np.float32),
            h + "attn.c_attn.weight": normal(C, 3 * C), h + "attn.c_attn.bias": normal(3 * C),
            h + "attn.c_proj.weight": normal(C, C, std=proj_std), h + "attn.c_proj.bias": normal(C),
            h + "ln_2.weight": np.ones(C, np.float32), h + "ln_2.bias": np.zeros(C, np.float32),
            h + "mlp.c_fc.weight": normal(C, 4 * C), h + "mlp.c_fc.bias": normal(4 * C),
            h + "mlp.c_proj.weight": normal(4 * C, C, std=proj_std), h + "mlp.c_proj.bias": normal(C),
        })
    save_file(w, path)


# --- the children ----------------------------------------------------------------------------------
def _time(run, reps: int) -> tuple[list, list[float]]:
    first = run()                                        # warm-up (compiles, first touches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return first, times


def child_transformers(spec: dict) -> dict:
    import torch
    from safetensors.numpy import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(spec["threads"])
    V, T, C, H, L = CONFIGS[spec["config"]]
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).eval()
    state = {"transformer." + k: torch.from_numpy(v) for k, v in load_file(spec["weights"]).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias")
               and not m.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit GPT2LMHeadModel: missing {missing}, unexpected "
                         f"{unexpected}")
    prompt = torch.tensor(spec["prompt"], dtype=torch.long)

    def run():
        out_ids = []
        with torch.no_grad():
            out = model(input_ids=prompt, use_cache=True)
            for i in range(spec["new"]):
                nxt = out.logits[:, -1].argmax(dim=-1)   # greedy
                out_ids.append(nxt)
                if i + 1 < spec["new"]:
                    out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values,
                                use_cache=True)
        return torch.stack(out_ids, dim=1).tolist()

    first, times = _time(run, spec["reps"])
    return {"tokens": first, "times": times, "threads": torch.get_num_threads(),
            "imported_minigpt": "minigpt" in sys.modules or "kernels" in sys.modules}


def child_minigpt(spec: dict) -> dict:
    from safetensors.numpy import load_file

    from minigpt import GPTConfig, GPTModel, backend
    from minigpt.inference.generate import generate

    threads = backend.set_threads(spec["threads"])
    V, T, C, H, L = CONFIGS[spec["config"]]
    cfg = GPTConfig(vocab_size=V, context_length=T, emb_dim=C, n_heads=H, n_layers=L,
                    drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = GPTModel(cfg, seed=0, dtype=np.float32, init=None)
    model.load_state_dict(load_file(spec["weights"]))
    prompt = np.asarray(spec["prompt"], dtype=np.int64)
    P = prompt.shape[1]

    def run():
        return generate(model, prompt, spec["new"], temperature=0.0, use_cache=True)[:, P:].tolist()

    first, times = _time(run, spec["reps"])
    return {"tokens": first, "times": times, "threads": threads}


# --- the parent ------------------------------------------------------------------------------------
def run_child(python: str, spec: dict) -> dict:
    env = dict(os.environ)
    if spec["impl"] == "transformers":
        env.pop("PYTHONPATH", None)                      # nothing of this checkout on its path
    proc = subprocess.run([python, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"{spec['impl']} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="gpt2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="new tokens per generation")
    ap.add_argument("--reps", type=int, default=2, help="timed generations per child")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (one child each)")
    ap.add_argument("--peer-python", default="/work/peer/bin/python")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        fn = child_transformers if spec["impl"] == "transformers" else child_minigpt
        print(json.dumps(fn(spec)))
        return
    if args.threads < 1 or args.new < 1 or args.prompt < 1 or args.reps < 1 or args.rounds < 1:
        raise SystemExit("--threads, --prompt, --new, --reps and --rounds must be >= 1")
    V = CONFIGS[args.config][0]
    prompt = np.random.default_rng(1).integers(0, V, (1, args.prompt)).tolist()
    times: dict[str, list[float]] = {"minigpt": [], "transformers": []}
    tokens: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="decode-check-") as tmp:
        weights = os.path.join(tmp, "weights.safetensors")
        make_weights(args.config, weights)
        for r in range(args.rounds):
            order = ("minigpt", "transformers") if r % 2 == 0 else ("transformers", "minigpt")
            for impl in order:
                spec = {"impl": impl, "config": args.config, "threads": args.threads,
                        "weights": weights, "prompt": prompt, "new": args.new, "reps": args.reps}
                py = sys.executable if impl == "minigpt" else args.peer_python
                res = run_child(py, spec)
                if res.get("imported_minigpt"):
                    raise SystemExit("the transformers child imported minigpt; not independent")
                times[impl] += res["times"]
                tokens.setdefault(impl, res["tokens"])
                rate = [args.new / t for t in res["times"]]
                print(f"round {r + 1} {impl:>12}: " + " ".join(f"{x:8.1f}" for x in rate)
                      + " tokens/s", flush=True)
    med = {k: args.new / float(np.median(v)) for k, v in times.items()}
    spread = {k: (args.new / max(v), args.new / min(v)) for k, v in times.items()}
    same = sum(a == b for a, b in zip(tokens["minigpt"][0], tokens["transformers"][0],
                                          strict=True))
    print(f"config {args.config}, {args.threads} thread(s), prompt {args.prompt}, {args.new} new "
          f"tokens, {args.rounds} rounds x {args.reps} generations per side")
    for k in ("minigpt", "transformers"):
        print(f"  {k:>12}: median {med[k]:8.1f} tokens/s (range {spread[k][0]:.1f} - "
              f"{spread[k][1]:.1f})")
    print(f"  ratio minigpt / transformers: {med['minigpt'] / med['transformers']:.2f}")
    print(f"  greedy tokens agree: {same} / {args.new}"
          + ("" if same == args.new else f"  minigpt {tokens['minigpt'][0][:8]}... transformers "
                                          f"{tokens['transformers'][0][:8]}..."))


if __name__ == "__main__":
    main()
