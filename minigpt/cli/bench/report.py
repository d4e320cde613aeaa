"""Run the benchmark sections and print them as plain-text tables (``minigpt bench``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from minigpt.cli.bench.configs import CONFIGS


def _rng(d: dict) -> str:
    lo, hi = d["tok_s_range"]
    return f"{d['tok_s']:9.0f} [{lo:.0f}..{hi:.0f}]"


def _ratio(r: dict) -> str:
    """'  1.20 [0.95..1.40] !' (the ratio of medians, its spread, ! when flagged) or '-'."""
    if "ratio" not in r:
        return f"{'-':>6s} {'':13s}  "
    lo, hi = r.get("ratio_range", (r["ratio"], r["ratio"]))
    return f"{r['ratio']:6.2f} [{lo:.2f}..{hi:.2f}] {'!' if r.get('flagged') else ' '}"


def _memory_note(r: dict) -> str | None:
    """'peak memory ... minigpt 450 MiB, PyTorch 680 MiB (0.66)' from the children's ru_maxrss."""
    mg, pt = r.get("minigpt"), r.get("torch")
    if not isinstance(mg, dict) or "peak_mb" not in mg:
        return None
    text = ("peak memory of a timing child (ru_maxrss, largest; counts the weights read from "
            f"file): minigpt {mg['peak_mb']:.0f} MiB")
    if isinstance(pt, dict) and "peak_mb" in pt:
        text += f", PyTorch {pt['peak_mb']:.0f} MiB ({mg['peak_mb'] / pt['peak_mb']:.2f})"
    return text


def _rounds_note(results: dict, n: int, what: str, warmup: int) -> str:
    """'5 rounds: per round a minigpt process then a PyTorch process, each timing 3 steps after 2
    warm-up' (or the in-process note)."""
    r = next(iter(results.values()), {})
    if not r.get("isolated"):
        return f"{n} timed {what} each, after 1 warm-up, orders alternating"
    return (f"{r['rounds']} round(s): per round a minigpt process then a PyTorch process, each "
            f"timing {n} {what} after {warmup} warm-up; figure = median over the processes of each "
            f"process's median, [slowest..fastest process]; ratio [spread], ! = the spread is "
            f"wider than the ratio's distance from 1 (not established)")


def run(configs: list[str], steps: int, threads: int, decode_tokens: int, sections: set[str],
        kernel_config: str = "small", print_fn: Callable[[str], None] = print,
        same_process: bool = False, rounds: int = 5) -> dict:
    """Print the header and every requested section; return the raw results.

    The train and decode sections run minigpt and PyTorch each in its own fresh process,
    alternating (``isolated.py``); ``same_process=True`` times both interleaved in this process
    instead, which is misleading (their thread pools interfere; see docs/kernels.md)."""
    from minigpt import backend
    from minigpt.cli.bench import isolated, kernel_times, memory, model_bench, startup, system

    threads = backend.set_threads(threads)
    if same_process:
        torch = system.torch_or_none()
        if torch is not None:
            torch.set_num_threads(threads)               # the peer runs with the same count
        torch_info = {"torch": torch.__version__, "where": "this process"} if torch else None
    else:                                                # the plain PyTorch child's interpreter
        torch_info = isolated.torch_info()
        if torch_info is not None:
            torch_info["where"] = f"own process ({isolated.torch_python()}, torch_child.py)"
    out: dict = {}
    p = print_fn
    per = "" if same_process else f" per process, {rounds} rounds"
    p(f"minigpt bench: configs {', '.join(configs)}; {steps} timed steps{per}; {threads} "
      f"thread(s); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for line in system.header_lines(torch_info):
        p("  " + line)
    has_torch = torch_info is not None
    n_dec = max(1, (steps + 1) // 2)                     # timed decodes per process
    kw = {} if same_process else {"rounds": rounds}
    timer = model_bench if same_process else isolated
    how = ("interleaved in THIS process (--same-process: thread pools interfere, misleading)"
           if same_process else "each in its own process, alternating")
    for name in configs:
        cfg, B, T = CONFIGS[name]
        p(f"  config {name:6s} V={cfg.vocab_size} ctx={cfg.context_length} C={cfg.emb_dim} "
          f"H={cfg.n_heads} L={cfg.n_layers} ({cfg.n_params() / 1e6:.1f}M params), batch {B} x {T}")

    if "kernels" in sections:
        kc = kernel_config if kernel_config in configs or kernel_config == "small" else configs[0]
        if "tiny" in configs and len(configs) == 1:
            kc = "tiny"
        p("")
        p(f"Kernels: float32, shapes of '{kc}'; both twins validated, then median of 5 warm calls")
        p(f"  {'op':26s} {'NumPy ms':>9s} {'Numba ms':>9s} {'speed-up':>8s} {'max rel err':>11s}")
        rows = kernel_times.warm_times(kc)
        out["kernels"] = rows
        for r in rows:
            p(f"  {r['op']:26s} {r['numpy'] * 1e3:9.2f} {r['numba'] * 1e3:9.2f} "
              f"{r['numpy'] / r['numba']:7.2f}x {r['err']:11.1e}")
        p("  ('gemm' row: NumPy column = a @ b with BLAS's own threads; Numba column = "
          "kernels.blas.gemm, BLAS pinned to 1 thread, split per thread)")
        cold = kernel_times.cold_times("tiny")
        out["kernels_cold"] = cold
        comp, load = cold.get("compile", {}), cold.get("load", {})
        if "error" in comp or "error" in load:
            p(f"  cold: failed: {comp.get('error') or load.get('error')}")
        else:
            p("  Cold, fresh process each, tiny shapes: first call minus second call (ms)")
            p(f"  {'op':26s} {'compile':>9s} {'cache load':>10s}")
            for op in comp:
                p(f"  {op:26s} {comp[op] * 1e3:9.0f} {load[op] * 1e3:10.0f}")
            p(f"  {'total':26s} {sum(comp.values()) * 1e3:9.0f} {sum(load.values()) * 1e3:10.0f}")

    if "train" in sections:
        p("")
        p("Training step (forward, loss, backward, AdamW), float32; tokens/s, median "
          "[slowest..fastest]")
        p(f"  {'config':7s} {'tokens':>6s} {'minigpt tok/s':>24s} {'PyTorch tok/s':>24s} "
          f"{'ratio [spread]':>22s} {'MFU mg/pt':>10s} {'GEMM GF/s':>9s}")
        out["train"] = {}
        for name in configs:
            r = timer.train_step(name, steps, threads, with_torch=has_torch, **kw)
            out["train"][name] = r
            pt = r.get("torch", "PyTorch not installed")
            pts = _rng(pt) if isinstance(pt, dict) else "PyTorch not installed"
            mfu = (f"{r['minigpt']['mfu']:.2f}/" + (f"{pt['mfu']:.2f}" if isinstance(pt, dict) else "-"))
            p(f"  {name:7s} {r['tokens']:6d} {_rng(r['minigpt']):>24s} {pts:>24s} {_ratio(r)} "
              f"{mfu:>10s} {r['gemm_gflops']:9.1f}")
            if "first_loss" in r:
                a, b = r["first_loss"]
                p(f"          first loss: minigpt {a:.6f}, PyTorch {b:.6f} (same weights)")
            if _memory_note(r):
                p("          " + _memory_note(r))
        p(f"  minigpt and PyTorch ran {how}: " + _rounds_note(out["train"], steps, "steps",
                                                                    isolated.TRAIN_WARMUP))
        p("  MFU = model FLOP/s / GEMM GF/s; the GEMM rate is measured in the bench's main process "
          "(fastest call, before and after)")

    if "decode" in sections:
        p("")
        p(f"KV-cached greedy decode, batch 1, 16-token prompt, up to {decode_tokens} new tokens; "
          "tokens/s, median [slowest..fastest]")
        p(f"  {'config':7s} {'new':>4s} {'minigpt tok/s':>24s} {'PyTorch tok/s':>24s} "
          f"{'ratio [spread]':>22s} {'same tokens':>11s}")
        out["decode"] = {}
        n_runs = n_dec if not same_process else max(3, steps // 2)
        for name in configs:
            r = timer.decode(name, decode_tokens, n_runs, threads, with_torch=has_torch, **kw)
            out["decode"][name] = r
            pt = r.get("torch", "PyTorch not installed")
            pts = _rng(pt) if isinstance(pt, dict) else "PyTorch not installed"
            same = f"{r['same_tokens']}/{r['n_new']}" if "same_tokens" in r else "-"
            p(f"  {name:7s} {r['n_new']:4d} {_rng(r['minigpt']):>24s} {pts:>24s} {_ratio(r)} "
              f"{same:>11s}")
            if _memory_note(r):
                p("          " + _memory_note(r))
        p(f"  minigpt and PyTorch ran {how}: " + _rounds_note(out["decode"], n_runs, "runs",
                                                                    isolated.DECODE_WARMUP))

    if "memory" in sections:
        p("")
        p("Peak memory: VmHWM of a fresh process per row (2 training steps, or one decode); "
          "in brackets its RSS after imports")
        p(f"  {'config':7s} {'task':6s} {'minigpt MiB':>18s} {'PyTorch MiB':>18s} {'ratio':>6s} "
          f"{'above imports':>13s}")
        out["memory"] = []
        for name in configs:
            for task in ("train", "decode"):
                mg = memory.measure("minigpt", task, name, threads, decode_tokens)
                pt = memory.measure("torch", task, name, threads, decode_tokens) if has_torch else None
                out["memory"].append((mg, pt))

                def cell(d):
                    if d is None:
                        return "not installed"
                    if "error" in d:
                        return "error: " + d["error"][:30]
                    return f"{d['peak_mb']:8.0f} [{d['base_mb']:.0f}]"
                ok = pt is not None and "error" not in pt and "error" not in mg
                ratio = f"{mg['peak_mb'] / pt['peak_mb']:6.2f}" if ok else "     -"
                above = (f"{(mg['peak_mb'] - mg['base_mb']) / (pt['peak_mb'] - pt['base_mb']):13.2f}"
                         if ok else "            -")
                p(f"  {name:7s} {task:6s} {cell(mg):>18s} {cell(pt):>18s} {ratio} {above}")

    if "profile" in sections:
        for name in configs:
            r = model_bench.phase_profile(name, max(1, min(steps, 3)))
            out.setdefault("profile", {})[name] = r
            p("")
            p(f"Where a minigpt training step goes ('{name}', mean of {r['steps']} steps, "
              f"{r['total_s'] * 1e3:.0f} ms per step; forward + backward per phase)")
            for k, v in r["phases"].items():
                p(f"  {k:32s} {v * 1e3:8.1f} ms {100 * v / r['total_s']:5.1f}%")

    if "startup" in sections:
        p("")
        r = startup.measure()
        out["startup"] = r
        p("Start-up: fresh process, one training step of 'tiny' (NUMBA_CACHE_DIR = a new temp dir)")
        for label, what in (("cold", "empty cache"), ("warm", "cache from the run before")):
            d = r.get(label, {})
            if "error" in d:
                p(f"  {label}: failed: {d['error']}")
                continue
            p(f"  {label} ({what}): whole process {d['process_s']:.2f} s, "
              f"first step {d['first_step_s']:.2f} s, second {d['second_step_s'] * 1e3:.0f} ms "
              f"-> compile/load {d['compile_s']:.2f} s")
    return out
