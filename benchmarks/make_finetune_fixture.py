"""Outside values for the chapter 6 classifier with appendix E's LoRA (the head's adapter included):
logits, loss and every parameter's gradient from PyTorch autograd, in float64.

    /work/peer/bin/python benchmarks/make_finetune_fixture.py      # any Python with torch + safetensors

The model is written here in PyTorch from its equations, without minigpt (which this script does not
import): GPT-2 blocks (pre-LN, eps 1e-5, causal attention scaled by 1/sqrt(hs), tanh GELU), q / k / v
from the fused c_attn, each with its own LoRA pair on its column block (the book's W_query, W_key,
W_value adapters), LoRA pairs on c_proj, c_fc, mlp c_proj and on the 2-class head, every adapter
scaled by alpha / r; the head reads one pooled vector per text: the last position ("last", the
book's) or the last real token ("last_nonpad"). The weights are random numbers in minigpt's names
and ``x @ W`` layout (B nonzero, so dA is not zero); ``tests/test_finetune_grads.py`` loads them into
``minigpt.lora.with_lora(GPTModel(...))`` and compares, without torch.

Writes tests/fixtures/finetune/lora_classifier.safetensors: ``param.<name>`` (the weights),
``idx``, ``labels``, ``lengths``, and for each pooling ``<pooling>.logits``, ``<pooling>.loss``,
``<pooling>.grad.<name>``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

V, T, C, H, L, N_CLS, R, ALPHA = 13, 8, 8, 2, 2, 2, 3, 5.0
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "finetune" / "lora_classifier.safetensors"


def shapes() -> dict[str, tuple[int, ...]]:
    s = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(L):
        h = f"h.{i}."
        s |= {h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
              h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
              h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
              h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
              h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
              h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)}
        for j in "qkv":
            s |= {h + f"attn.c_attn.{j}.lora_A": (C, R), h + f"attn.c_attn.{j}.lora_B": (R, C)}
        for name, (n_in, n_out) in (("attn.c_proj", (C, C)), ("mlp.c_fc", (C, 4 * C)),
                                    ("mlp.c_proj", (4 * C, C))):
            s |= {h + name + ".lora_A": (n_in, R), h + name + ".lora_B": (R, n_out)}
    s |= {"ln_f.weight": (C,), "ln_f.bias": (C,), "out_head.weight": (C, N_CLS),
          "out_head.bias": (N_CLS,), "out_head.lora_A": (C, R), "out_head.lora_B": (R, N_CLS)}
    return s


def forward(p: dict[str, torch.Tensor], idx: torch.Tensor, lengths: torch.Tensor, pooling: str):
    s = ALPHA / R
    B, t = idx.shape

    def ln(x, name):
        return F.layer_norm(x, (C,), p[name + ".weight"], p[name + ".bias"], 1e-5)

    def lin(x, name):
        y = x @ p[name + ".weight"] + p[name + ".bias"]
        if name + ".lora_A" in p:
            y = y + s * (x @ p[name + ".lora_A"] @ p[name + ".lora_B"])
        return y

    x = p["wte.weight"][idx] + p["wpe.weight"][:t]
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    for i in range(L):
        h = f"h.{i}."
        a = ln(x, h + "ln_1")
        qkv = a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]
        qkv = qkv + torch.cat([s * (a @ p[h + f"attn.c_attn.{j}.lora_A"] @ p[h + f"attn.c_attn.{j}.lora_B"])
                               for j in "qkv"], dim=-1)
        q, k, v = (z.view(B, t, H, C // H).transpose(1, 2) for z in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, t, C)
        x = x + lin(y, h + "attn.c_proj")
        m = F.gelu(lin(ln(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh")
        x = x + lin(m, h + "mlp.c_proj")
    x = ln(x, "ln_f")
    pos = torch.full((B,), t - 1) if pooling == "last" else lengths - 1
    pooled = x[torch.arange(B), pos]
    return lin(pooled, "out_head")


def main() -> None:
    rng = np.random.default_rng(2026)
    params = {}
    for name, shp in shapes().items():
        scale = 1 / math.sqrt(shp[-1]) if len(shp) == 2 else 0.1
        base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0
        params[name] = base + scale * rng.standard_normal(shp)
    idx = rng.integers(1, V, (3, T))
    lengths = np.array([T, 4, 2])
    idx[np.arange(T)[None, :] >= lengths[:, None]] = 0               # right padding, id 0
    labels = np.array([1, 0, 1])
    out = {f"param.{k}": v for k, v in params.items()}
    out |= {"idx": idx, "labels": labels, "lengths": lengths}
    for pooling in ("last", "last_nonpad"):
        p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        logits = forward(p, torch.tensor(idx), torch.tensor(lengths), pooling)
        loss = F.cross_entropy(logits, torch.tensor(labels))
        loss.backward()
        out[f"{pooling}.logits"] = logits.detach().numpy()
        out[f"{pooling}.loss"] = np.array(loss.item())
        out |= {f"{pooling}.grad.{k}": t.grad.numpy() for k, t in p.items()}
        print(f"{pooling}: loss {loss.item():.6f}, logits {logits.detach().numpy().round(4).tolist()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(OUT),
              metadata={"torch": torch.__version__})
    print(f"wrote {OUT} ({len(out)} tensors)")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    main()
