"""``minigpt bench``: kernels vs their NumPy twins, a training step and cached decoding vs PyTorch
(when installed; each implementation in its own fresh process, alternating), peak memory, per-phase
profile and start-up compile time. See docs/kernels.md."""

from __future__ import annotations

import argparse

HELP = ("benchmark: Numba kernels vs NumPy twins, training step and KV-cached decode vs PyTorch "
        "(if installed), peak memory, per-phase profile, start-up compile time")

SECTIONS = ("kernels", "train", "decode", "memory", "profile", "startup")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="all", choices=["tiny", "small", "gpt2", "all"],
                        help="model/batch: small (V 4096, ctx 256, C 256, 8 heads, 4 layers, "
                        "batch 16x128), gpt2 (124M, batch 4x128), all = small and gpt2, tiny = "
                        "a smoke test")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed training steps per implementation (decode runs steps/2, >= 3)")
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
    from minigpt.bench.report import run as run_report

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.decode_tokens < 1:
        raise ValueError(f"--decode-tokens must be >= 1, got {args.decode_tokens}")
    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise ValueError(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    configs = ["small", "gpt2"] if args.config == "all" else [args.config]
    run_report(configs, args.steps, threads, args.decode_tokens, sections,
               same_process=args.same_process)
    return 0
