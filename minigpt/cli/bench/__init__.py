"""``minigpt bench``: how fast minigpt runs on this machine, against NumPy twins and PyTorch.

    __init__.py      the command: its options and ``run``
    configs.py       the model shapes it times (``--config``)

    system.py        the header: CPU, threads actually used, NumPy's BLAS, Numba and its threading layer
    kernel_times.py  every Numba kernel, cold (compile; cache load) and warm, against its NumPy twin
    torch_child.py   the same GPT-2 in PyTorch eager, a standalone script run by path: a plain
                     PyTorch process that never imports minigpt, kernels or Numba
    torch_peer.py    torch_child's model inside this process (``--same-process`` only)
    isolated.py      a whole training step and KV-cached greedy decode, minigpt vs PyTorch, each in
                     its own fresh process, alternating (the default of ``minigpt bench``)
    spread.py        each side's median and spread over its processes; the flag on a ratio
    model_bench.py   the same interleaved in one process (``--same-process``: misleading, the thread
                     pools interfere); per-phase profile; GEMM rate and MFU
    memory.py        peak resident memory (VmHWM) of each, one fresh subprocess per measurement
    startup.py       compile time of a fresh process: empty Numba cache vs populated cache

Every figure is measured by the command that prints it; ``docs/kernels.md`` shows a full run.
"""

from __future__ import annotations

import argparse

HELP = ("benchmark: Numba kernels vs NumPy twins, training step and KV-cached decode vs PyTorch "
        "(if installed), peak memory, per-phase profile, start-up compile time")

SECTIONS = ("kernels", "train", "decode", "memory", "profile", "startup")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="all", choices=["tiny", "small", "gpt2", "long", "all"],
                        help="model/batch: small (V 4096, ctx 256, C 256, 8 heads, 4 layers, "
                        "batch 16x128), gpt2 (124M, batch 4x128), long (V 50257, ctx 1024, C 256, "
                        "8 heads, 4 layers, batch 2x1024: T = 1024), all = small and gpt2 (not "
                        "long), tiny = a smoke test")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed training steps per process (each process times its own after "
                        "2 warm-up; decode times (steps+1)//2 runs per process)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of one minigpt process then one PyTorch process per row; each "
                        "side's figure is the median over its processes, with the slowest and "
                        "fastest, and a ratio whose spread is wider than its distance from 1 is "
                        "flagged with '!'")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for minigpt and PyTorch (default: OMP_NUM_THREADS, else "
                        "Numba's count)")
    parser.add_argument("--decode-tokens", type=int, default=64,
                        help="new tokens per greedy decode")
    parser.add_argument("--same-process", action="store_true",
                        help="time minigpt and PyTorch interleaved in ONE process (the old way). "
                        "Misleading: the thread pools and minigpt's thread/malloc settings are "
                        "shared, and on a busy machine PyTorch collapses (2 cores, 'small', 2 "
                        "threads: one process gave minigpt 3566 vs PyTorch 593 tok/s, ratio 6.0; "
                        "each in its own process 6750 vs 5303, ratio 1.27; idle, the two agreed "
                        "more closely). By default each runs in its own fresh process, "
                        "alternating; see docs/kernels.md")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections to run: " + ", ".join(SECTIONS))


def run(args: argparse.Namespace) -> int:
    from kernels.blas import default_threads
    from minigpt.cli.bench.configs import ALL
    from minigpt.cli.bench.report import run as run_report

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if args.decode_tokens < 1:
        raise ValueError(f"--decode-tokens must be >= 1, got {args.decode_tokens}")
    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise ValueError(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    configs = list(ALL) if args.config == "all" else [args.config]
    run_report(configs, args.steps, threads, args.decode_tokens, sections,
               same_process=args.same_process, rounds=args.rounds)
    return 0
