"""``minigpt gradcheck``: prove every hand-written backward against finite differences, and show that
the check catches deliberately wrong backwards."""

from __future__ import annotations

import argparse
import time

from minigpt import gradcheck as gc

HELP = ("Check every backward pass (each layer, one block, the whole model tied and untied, with and "
        "without dropout, at T = 5 and at the training-shape T = 33 where the BLAS attention "
        "kernels run) against float64 central differences, then run deliberately wrong backwards "
        "and, on the numba path, Numba kernels with one bug each, that the check must catch. "
        "Prints a table: tensor, max abs error, max relative error, verdict.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers-only", action="store_true", help="skip the whole-model checks")
    p.add_argument("--no-negative", action="store_true", help="skip the negative controls")
    p.add_argument("--verbose", "-v", action="store_true", help="one row per tensor (default: "
                   "one row per tensor too, grouped; -v adds the equation column)")
    p.add_argument("--kernels", choices=("numba", "numpy", "both"), default=None,
                   help="which layer code to check: the Numba kernels, the NumPy reference code or "
                        "both, one after the other (default: MINIGPT_KERNELS, else numba)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for BLAS and Numba (default: 1; the matrices here are tiny, and "
                        "more threads only spin)")


def _row(cols, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True))


def run(args) -> int:
    from minigpt import backend
    from minigpt.training.loop import set_num_threads

    set_num_threads(args.threads)
    names = [backend.get_backend()] if args.kernels is None else (
        ["numba", "numpy"] if args.kernels == "both" else [args.kernels])
    status = 0
    for name in names:
        with backend.use(name):
            print(f"=== layers on the {name} path (MINIGPT_KERNELS={name}) ===")
            status |= _run_one(args)
        print()
    return status


def _run_one(args) -> int:
    t_start = time.perf_counter()
    print(f"float64 central differences, h = {gc.EPS:g}; pass when |analytic - numeric| <= "
          f"{gc.ATOL:g} + {gc.RTOL:g} * |numeric| for every element (docs/derivations.md eq. 10.2)\n")
    from minigpt import backend

    results, negatives = gc.run_all(include_model=not args.layers_only,
                                    include_negative=not args.no_negative)
    header = ["check", "tensor", "elements", "max abs err", "max rel err", "verdict"]
    widths = [40, 22, 8, 11, 11, 7]
    if args.verbose:
        header.append("eq.")
        widths.append(8)
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    for r in results:
        cols = [r.check, r.tensor, r.n_checked, f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}",
                "ok" if r.passed else "FAIL"]
        if args.verbose:
            cols.append(r.equation)
        print(_row(cols, widths))
    n_fail = sum(not r.passed for r in results)
    n_elems = sum(r.n_checked for r in results)
    worst = max((r.max_abs_err for r in results), default=0.0)
    print(f"\n{len(results) - n_fail}/{len(results)} tensors pass ({n_elems:,} elements checked, "
          f"worst abs error {worst:.1e})")

    missed = 0
    if negatives:
        print("\nnegative controls (deliberately wrong backwards, then Numba kernels with one bug; "
              "each must FAIL the same check):")
        for name, (caught, res, error) in negatives.items():
            missed += not caught
            if error:
                print(f"  BROKEN  {name:64} {error}")
                continue
            worst = max(res, key=lambda r: r.max_abs_err)
            print(f"  {'caught' if caught else 'MISSED':6}  {name:64} worst error "
                  f"{worst.max_abs_err:.2e} ({worst.check}: {worst.tensor})")
        if not backend.numba_enabled():
            print("  (the kernel controls run on the numba path: they edit the Numba kernels)")
    print(f"\n{time.perf_counter() - t_start:.1f} s")
    if n_fail or missed:
        print(f"FAILED: {n_fail} tensor(s) disagree, {missed} negative control(s) not caught "
              f"(MISSED: the check passed a wrong backward; BROKEN: the control proved nothing)")
        return 1
    print("all gradients agree with finite differences; every negative control was caught")
    return 0
