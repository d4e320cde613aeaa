"""The PyTorch peer: the same GPT-2 in PyTorch eager, built only when torch is installed.

Same architecture as ``minigpt.GPTModel`` with the bench configs: pre-LN blocks, one fused qkv
projection with bias, causal ``scaled_dot_product_attention``, GELU (tanh), tied LM head, dropout 0,
``torch.optim.AdamW``. Weights are copied from a minigpt model, so both compute the same function
(the bench checks the first losses agree). Decoding uses its own simple KV cache: preallocated
(B, H, T_max, hs) keys and values per layer, one new token per step.
"""

from __future__ import annotations

import numpy as np

from minigpt.cli.bench.system import torch_or_none


def build(model, threads: int):
    """A torch copy of the minigpt ``model`` (float32) -> (module, torch). Given a ``GPTConfig``
    instead, PyTorch's own initialisation is kept (the memory bench: no minigpt copy in memory)."""
    torch = torch_or_none()
    if torch is None:
        raise ImportError("PyTorch not installed")
    torch.set_num_threads(threads)
    nn, F = torch.nn, torch.nn.functional
    cfg = getattr(model, "cfg", model)
    C, H = cfg.emb_dim, cfg.n_heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def attend(self, x, kv=None, t0=0):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
            if kv is not None:                      # KV cache: store, then attend over all so far
                kc, vc = kv
                kc[:, :, t0:t0 + T] = k
                vc[:, :, t0:t0 + T] = v
                k, v = kc[:, :, :t0 + T], vc[:, :, :t0 + T]
            causal = T > 1                          # one new token sees every cached key
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

        def forward(self, x, kv=None, t0=0):
            x = x + self.attend(x, kv, t0)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, C)
            self.wpe = nn.Embedding(cfg.context_length, C)
            self.h = nn.ModuleList([Block() for _ in range(cfg.n_layers)])
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, kv=None, t0=0):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t0, t0 + T))
            for i, blk in enumerate(self.h):
                x = blk(x, None if kv is None else kv[i], t0)
            return self.ln_f(x) @ self.wte.weight.T          # tied head

    net = GPT()
    net.n_heads = H
    if not hasattr(model, "params"):
        return net, torch
    p = model.params
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        net.wte.weight.copy_(t(p["wte.weight"]))
        net.wpe.weight.copy_(t(p["wpe.weight"]))
        net.ln_f.weight.copy_(t(p["ln_f.weight"]))
        net.ln_f.bias.copy_(t(p["ln_f.bias"]))
        for i, blk in enumerate(net.h):
            h = f"h.{i}."
            for mod, name in ((blk.ln_1, "ln_1"), (blk.ln_2, "ln_2")):
                mod.weight.copy_(t(p[h + name + ".weight"]))
                mod.bias.copy_(t(p[h + name + ".bias"]))
            for mod, name in ((blk.c_attn, "attn.c_attn"), (blk.c_proj, "attn.c_proj"),
                              (blk.c_fc, "mlp.c_fc"), (blk.mlp_proj, "mlp.c_proj")):
                mod.weight.copy_(t(p[h + name + ".weight"].T))   # (in, out) -> nn.Linear's (out, in)
                mod.bias.copy_(t(p[h + name + ".bias"]))
    return net, torch


def train_step_fn(net, torch, idx: np.ndarray, targets: np.ndarray, lr: float, wd: float):
    """-> step() running forward, loss, backward and AdamW once; returns the loss."""
    F = torch.nn.functional
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    ti, tt = torch.from_numpy(idx), torch.from_numpy(targets)
    V = net.wte.weight.shape[0]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(ti).view(-1, V), tt.view(-1))
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def greedy_decode(net, torch, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy decoding with the peer's KV cache: prompt (B, P) -> (B, P + n_new) ids."""
    cfg_T = net.wpe.weight.shape[0]
    B, P = prompt.shape
    n_heads = net.n_heads
    hs = net.wte.weight.shape[1] // n_heads
    T_max = min(cfg_T, P + n_new)
    kv = [(torch.zeros(B, n_heads, T_max, hs), torch.zeros(B, n_heads, T_max, hs)) for _ in net.h]
    out = np.empty((B, P + n_new), dtype=np.int64)
    out[:, :P] = prompt
    with torch.no_grad():
        logits = net(torch.from_numpy(prompt), kv, 0)[:, -1]
        for i in range(n_new):
            nxt = torch.argmax(logits, dim=-1)                       # (B,)
            out[:, P + i] = nxt.numpy()
            if i + 1 < n_new:
                logits = net(nxt[:, None], kv, P + i)[:, -1]
    return out
