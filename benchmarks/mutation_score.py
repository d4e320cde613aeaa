"""Mutation score of the backward passes: does the test suite notice when the math is wrong?

Targets, found by AST on whatever the tree holds when this runs (no names are hard-coded):
every function whose name contains ``backward`` in ``minigpt/layers/*.py`` and ``kernels/*.py``,
plus the functions of the same file they use (called or referenced by name, transitively): the
Numba kernels a wrapper launches, a per-row helper a kernel inlines, softmax_backward, ...

Mutants, one small change each (the usual mutation operators):
    binop       + <-> -,  * <-> /,  // -> *,  % -> //,  ** -> *
    neg         unary minus removed;  -(...) added to an arithmetic right-hand side or return
    not         ``not`` removed
    compare     < <-> <=,  > <-> >=,  == <-> !=,  is <-> is not,  in <-> not in
    boolop      and <-> or
    const       0 -> 1, 1 -> 0, 0.5 -> 1.0, c -> c + 1 (numbers only)
    axis        axis=a -> a + 1 and a - 1
    keepdims    keepdims=True <-> False
    augassign   x += v -> x = v and x -= v (and likewise for -=, *=, /=)
    slice       a[lo:hi] -> a[lo + 1:hi] and a[lo:hi - 1]
    range       range(lo, hi) -> range(lo + 1, hi) and range(lo, hi - 1)
    transpose   x.T, x.transpose(...), x.swapaxes(...) -> x
    reduce      .sum( <-> .mean(,  min( <-> max(

Each mutant is written into a COPY of the tree (``--workdir``, the real files are never touched)
and the kill stages run there, stopping at the first failure:
    1. python -m minigpt gradcheck --kernels both --layers-only --no-negative
    2. python -m pytest -x -q tests/test_kernels*.py tests/test_layers*.py tests/test_gradcheck.py
    3. python -m pytest -x -q   (the whole default suite; only with ``--suite``)
Every run gets its own NUMBA_CACHE_DIR, a copy of the unmutated tree's cache without the mutated
file's entries, so a mutated kernel is really recompiled. A mutant that runs past ``--timeout``
counts as killed (status "timeout"). Results are appended to a JSON-lines file (resumable: a mutant
already in it is not run again).

    score = killed / (mutants run - equivalent)

Equivalent mutants (a change that cannot change any result) are listed with the reason in
benchmarks/mutation_equivalent.json, keyed by the mutant's id: file::function::kind::change::n, the
changed source snippet and its occurrence number, so edits elsewhere do not break the key.

    python benchmarks/mutation_score.py --list                      # the mutants, no run
    python benchmarks/mutation_score.py --file softmax --sample 20 --seed 1
    python benchmarks/mutation_score.py --function layernorm_backward --limit 5
    python benchmarks/mutation_score.py --id 'kernels/softmax.py::_softmax_bwd::...'  # one mutant
    python benchmarks/mutation_score.py --report                    # score of the results file
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_GLOBS = ("minigpt/layers/*.py", "kernels/*.py")
RESULTS = ROOT / "benchmarks" / "mutation_results.jsonl"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"
DEFAULT_TESTS = ("tests/test_kernels*.py", "tests/test_layers*.py", "tests/test_gradcheck.py")
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".peer", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "*.egg-info", "mutation_results*.jsonl")


# --- finding the targets --------------------------------------------------------------------------
def target_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """The module's functions whose name contains 'backward', plus the same-file functions they
    use by name, transitively (a kernel launched through ``kernel = a if ... else b`` included)."""
    top = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    chosen = [name for name in top if "backward" in name]
    todo = list(chosen)
    while todo:
        fn = top[todo.pop()]
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and node.id in top and node.id not in chosen:
                chosen.append(node.id)
                todo.append(node.id)
    return [top[name] for name in top if name in chosen]   # in file order


# --- the mutants ------------------------------------------------------------------------------------
@dataclass
class Mutant:
    file: str          # relative to the root, e.g. "kernels/softmax.py"
    function: str
    line: int
    kind: str
    original: str      # the source snippet replaced
    mutated: str       # what replaces it
    start: tuple       # (line, byte column) of the snippet
    end: tuple
    occurrence: int = 0

    @property
    def id(self) -> str:
        return (f"{self.file}::{self.function}::{self.kind}::{_squash(self.original)} -> "
                f"{_squash(self.mutated)}::{self.occurrence}")


def _squash(text: str) -> str:
    return " ".join(text.split())


BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
OP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
           ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}
COMPARE_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
                ast.In: ast.NotIn, ast.NotIn: ast.In}
AUG_SWAP = {ast.Add: (None, ast.Sub), ast.Sub: (None, ast.Add), ast.Mult: (None, ast.Div),
            ast.Div: (None, ast.Mult)}
REDUCE_SWAP = {"sum": "mean", "mean": "sum", "min": "max", "max": "min"}


def _const_mutation(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value == 0:
        return type(value)(1)
    if value == 1:
        return type(value)(0)
    if value == 0.5:
        return 1.0
    return value + 1


def _axis_value(node: ast.expr):
    """The int of ``axis=`` when it is a literal (``-1`` included), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(
            node.value, bool):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int)):
        return -node.operand.value
    return None


class _Collector:
    """Walks one target function and lists its mutants."""

    def __init__(self, source: str, rel: str, fn: ast.FunctionDef):
        self.source, self.rel, self.fn = source, rel, fn
        self.mutants: list[Mutant] = []
        self.skip: set[int] = set()        # ids of nodes another rule already owns

    def seg(self, node) -> str:
        return ast.get_source_segment(self.source, node)

    def add(self, node, kind: str, mutated: str, original: str | None = None) -> None:
        self.mutants.append(Mutant(self.rel, self.fn.name, node.lineno, kind,
                                   self.seg(node) if original is None else original, mutated,
                                   (node.lineno, node.col_offset),
                                   (node.end_lineno, node.end_col_offset)))

    def run(self) -> list[Mutant]:
        body = self.fn.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]                                  # the docstring
        for stmt in body:
            for node in ast.walk(stmt):
                self.visit(node)
        return self.mutants

    def visit(self, node) -> None:
        if isinstance(node, ast.keyword) and node.arg == "axis":
            v = _axis_value(node.value)
            if v is not None:
                self.skip.update(id(n) for n in ast.walk(node.value))
                for new in (v + 1, v - 1):
                    self.add(node.value, "axis", str(new))
        elif isinstance(node, ast.keyword) and node.arg == "keepdims" and isinstance(
                node.value, ast.Constant) and isinstance(node.value.value, bool):
            self.skip.add(id(node.value))
            self.add(node.value, "keepdims", str(not node.value.value))
        elif id(node) in self.skip:
            return
        elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
            new = OP_TEXT[BINOP_SWAP[type(node.op)]]
            self.add(node, "binop", f"({self.seg(node.left)}) {new} ({self.seg(node.right)})")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            self.add(node, "neg", f"({self.seg(node.operand)})")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, "not", f"({self.seg(node.operand)})")
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(
                node.ops[0]) in COMPARE_SWAP:
            new = OP_TEXT[COMPARE_SWAP[type(node.ops[0])]]
            self.add(node, "compare",
                     f"({self.seg(node.left)}) {new} ({self.seg(node.comparators[0])})")
        elif isinstance(node, ast.BoolOp):
            new = " or " if isinstance(node.op, ast.And) else " and "
            self.add(node, "boolop", new.join(f"({self.seg(v)})" for v in node.values))
        elif isinstance(node, ast.Constant):
            new = _const_mutation(node.value)
            if new is not None:
                self.add(node, "const", repr(new))
        elif isinstance(node, ast.Assign | ast.Return) and isinstance(node.value, ast.BinOp):
            self.add(node.value, "neg", f"-({self.seg(node.value)})")
        elif isinstance(node, ast.AugAssign) and type(node.op) in AUG_SWAP:
            target, value = self.seg(node.target), self.seg(node.value)
            for op in AUG_SWAP[type(node.op)]:
                new = f"{target} = {value}" if op is None else f"{target} {OP_TEXT[op]}= {value}"
                self.add(node, "augassign", new)
            if isinstance(node.value, ast.BinOp):
                self.add(node.value, "neg", f"-({value})")
        elif isinstance(node, ast.Slice):
            if node.lower is not None:
                self.add(node.lower, "slice", f"({self.seg(node.lower)}) + 1")
            if node.upper is not None:
                self.add(node.upper, "slice", f"({self.seg(node.upper)}) - 1")
        elif isinstance(node, ast.Call):
            self.visit_call(node)
        elif isinstance(node, ast.Attribute) and node.attr == "T":
            self.add(node, "transpose", f"({self.seg(node.value)})")

    def visit_call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "range" and node.args:
            if len(node.args) >= 2:
                self.add(node.args[0], "range", f"({self.seg(node.args[0])}) + 1")
            stop = node.args[1] if len(node.args) >= 2 else node.args[0]
            self.add(stop, "range", f"({self.seg(stop)}) - 1")
        elif isinstance(func, ast.Name) and func.id in ("min", "max"):
            self.add(func, "reduce", REDUCE_SWAP[func.id])
        elif isinstance(func, ast.Attribute) and func.attr in ("transpose", "swapaxes"):
            self.add(node, "transpose", f"({self.seg(func.value)})")
        elif isinstance(func, ast.Attribute) and func.attr in REDUCE_SWAP:
            # replace just the method name: the snippet is "value.attr"
            self.mutants.append(Mutant(
                self.rel, self.fn.name, func.lineno, "reduce", self.seg(func),
                f"({self.seg(func.value)}).{REDUCE_SWAP[func.attr]}",
                (func.lineno, func.col_offset), (func.end_lineno, func.end_col_offset)))


def all_mutants(root: Path = ROOT) -> list[Mutant]:
    mutants = []
    for pattern in TARGET_GLOBS:
        for path in sorted(glob.glob(str(root / pattern))):
            rel = str(Path(path).relative_to(root))
            source = Path(path).read_text(encoding="utf-8")
            for fn in target_functions(ast.parse(source)):
                found = _Collector(source, rel, fn).run()
                found.sort(key=lambda m: (m.start, m.end, m.kind, m.mutated))
                seen: dict[str, int] = {}
                for m in found:
                    key = m.id
                    m.occurrence = seen.get(key, 0)
                    seen[key] = m.occurrence + 1
                mutants.extend(found)
    return mutants


def apply(source: str, m: Mutant) -> str:
    """The source with the snippet at m.start..m.end replaced (columns are UTF-8 byte offsets)."""
    data = source.encode("utf-8")
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    lo = starts[m.start[0] - 1] + m.start[1]
    hi = starts[m.end[0] - 1] + m.end[1]
    if data[lo:hi].decode("utf-8") != m.original:
        raise RuntimeError(f"the source changed under mutant {m.id}")
    out = (data[:lo] + m.mutated.encode("utf-8") + data[hi:]).decode("utf-8")
    compile(out, m.file, "exec")                           # every mutant must be valid Python
    return out


# --- running -----------------------------------------------------------------------------------------
def stages(args) -> list[tuple[str, list[str]]]:
    py = sys.executable
    tests = sorted({t for pattern in args.tests for t in glob.glob(str(ROOT / pattern))})
    out = [("gradcheck", [py, "-m", "minigpt", "gradcheck", "--kernels", "both", "--layers-only",
                          "--no-negative"]),
           ("tests", [py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                      *[str(Path(t).relative_to(ROOT)) for t in tests]])]
    if args.suite:
        out.append(("suite", [py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]))
    return out


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[str, float, str]:
    """-> (status 'pass' | 'fail' | 'timeout', seconds, last lines of output)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", time.perf_counter() - t0, out[-1500:]
    status = "pass" if proc.returncode == 0 else "fail"
    return status, time.perf_counter() - t0, out[-1500:]


def _env(copy: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), NUMBA_CACHE_DIR=str(cache),
               OMP_NUM_THREADS="1")
    env.pop("HYPOTHESIS_PROFILE", None)
    return env


def sync_copy(copy: Path) -> None:
    """Make ``copy`` hold the tree's current files (mtimes kept, so Numba's cache stays valid)."""
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)


def _drop_cache_entries(cache: Path, rel: str) -> None:
    """Delete the Numba cache entries of the mutated module (and of any file of the same folder
    that imports it, in case a kernel there inlined one of its functions)."""
    stem = Path(rel).stem
    module = rel[:-3].replace("/", ".")
    folder = (ROOT / rel).parent
    stems = {stem} | {p.stem for p in folder.glob("*.py") if module in p.read_text(encoding="utf-8")}
    for f in cache.rglob("*"):
        if f.is_file() and f.name.split(".")[0] in stems:
            f.unlink()


def run_mutant(m: Mutant, args, copy: Path, baseline_cache: Path) -> dict:
    path = copy / m.file
    original = path.read_text(encoding="utf-8")
    stat = path.stat()
    cache = copy.parent / "numba-cache-mutant"
    if cache.exists():
        shutil.rmtree(cache)
    shutil.copytree(baseline_cache, cache)
    _drop_cache_entries(cache, m.file)
    pyc = list((path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"))
    record = {"id": m.id, **{k: v for k, v in asdict(m).items() if k not in ("start", "end")}}
    t0 = time.perf_counter()
    try:
        for f in pyc:
            f.unlink()
        path.write_text(apply(original, m), encoding="utf-8")
        status, by, tail = "survived", None, ""
        for name, cmd in stages(args):
            result, _, out = _run(cmd, copy, _env(copy, cache), args.timeout)
            if result != "pass":
                status = "killed" if result == "fail" else "timeout"
                by, tail = name, out
                break
    finally:
        path.write_text(original, encoding="utf-8")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        for f in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            f.unlink()
    record.update(status=status, killed_by=by, seconds=round(time.perf_counter() - t0, 1),
                  reproduce=f"python benchmarks/mutation_score.py --rerun --id '{m.id}' --results "
                            "/tmp/one.jsonl" + (" --suite" if args.suite else ""),
                  output_tail=tail[-600:] if status != "survived" else "",
                  date=time.strftime("%Y-%m-%d"))
    return record


def baseline(args, copy: Path, cache: Path) -> None:
    """The unmutated copy must pass every stage (and fills the Numba cache the mutants reuse)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, cmd in stages(args):
        result, secs, out = _run(cmd, copy, _env(copy, cache), args.timeout * 3)
        print(f"baseline {name}: {result} in {secs:.0f} s", flush=True)
        if result != "pass":
            sys.exit(f"the unmutated tree fails stage {name!r}; fix that first:\n{out}")


# --- report -------------------------------------------------------------------------------------------
def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    latest = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            latest[r["id"]] = r
    return list(latest.values())


def report(results: list[dict], equivalent: dict) -> float | None:
    eq = [r for r in results if r["id"] in equivalent]
    killed = [r for r in results if r["status"] in ("killed", "timeout")]
    survivors = [r for r in results if r["status"] == "survived" and r["id"] not in equivalent]
    wrongly_eq = [r for r in eq if r["status"] != "survived"]
    denom = len(results) - len(eq)
    score = len(killed) / denom if denom else None
    timeouts = sum(r["status"] == "timeout" for r in results)
    secs = [r["seconds"] for r in results]
    print(f"\nmutants run: {len(results)}  killed: {len(killed)} (of which {timeouts} by timeout)  "
          f"equivalent: {len(eq)}  survivors: {len(survivors)}")
    if score is not None:
        print(f"mutation score = killed / (run - equivalent) = {len(killed)}/{denom} = {score:.1%}")
    if secs:
        print(f"time per mutant: mean {sum(secs) / len(secs):.0f} s, max {max(secs):.0f} s")
    for r in survivors:
        print(f"  SURVIVED {r['file']}:{r['line']} {r['function']} [{r['kind']}] "
              f"{_squash(r['original'])!r} -> {_squash(r['mutated'])!r}\n    {r['reproduce']}")
    for r in eq:
        print(f"  equivalent {r['file']}:{r['line']} {r['function']} [{r['kind']}] "
              f"{_squash(r['original'])!r} -> {_squash(r['mutated'])!r}: "
              f"{equivalent[r['id']]['reason']}")
    for r in wrongly_eq:
        print(f"  NOTE: listed as equivalent but {r['status']}: {r['id']}")
    return score


# --- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", action="append", default=[],
                   help="only files whose path contains this (repeatable)")
    p.add_argument("--function", action="append", default=[],
                   help="only functions whose name matches this glob or contains it (repeatable)")
    p.add_argument("--kind", action="append", default=[], help="only these mutation kinds")
    p.add_argument("--id", action="append", default=[], help="only the mutant with this id")
    p.add_argument("--sample", type=int, help="a random sample of N mutants (after the filters)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--limit", type=int, help="run at most this many (after --sample)")
    p.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS),
                   help="test files (globs) of stage 2")
    p.add_argument("--suite", action="store_true",
                   help="stage 3: the whole default suite for mutants stages 1-2 missed")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per stage and mutant")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines results (appended)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/minigpt-mutation"),
                   help="where the copy of the tree and the Numba caches live")
    p.add_argument("--rerun", action="store_true", help="run mutants already in the results too")
    p.add_argument("--skip-baseline", action="store_true",
                   help="reuse the Numba cache of an earlier baseline without running the stages on "
                        "the unmutated tree (only when that run passed on this same tree)")
    p.add_argument("--list", action="store_true", help="print the selected mutants and stop")
    p.add_argument("--report", action="store_true", help="print the score of --results and stop")
    args = p.parse_args(argv)

    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    if args.report:
        report(load_results(args.results), equivalent)
        return 0

    mutants = all_mutants()
    total = len(mutants)
    if args.file:
        mutants = [m for m in mutants if any(f in m.file for f in args.file)]
    if args.function:
        mutants = [m for m in mutants if any(fnmatch.fnmatch(m.function, f) or f in m.function
                                             for f in args.function)]
    if args.kind:
        mutants = [m for m in mutants if m.kind in args.kind]
    if args.id:
        mutants = [m for m in mutants if m.id in args.id]
    if args.sample is not None and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample),
                         key=lambda m: (m.file, m.start))
    done = {r["id"] for r in load_results(args.results)}
    if not args.rerun:
        mutants = [m for m in mutants if m.id not in done]
    if args.limit is not None:
        mutants = mutants[:args.limit]
    functions = sorted({(m.file, m.function) for m in all_mutants()})
    print(f"{total} mutants in {len(functions)} target functions; {len(mutants)} selected to run")
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line} {m.function} [{m.kind}] {_squash(m.original)!r} -> "
                  f"{_squash(m.mutated)!r}  id={m.id}")
        return 0
    if not mutants:
        report(load_results(args.results), equivalent)
        return 0

    copy = args.workdir / "tree"
    baseline_cache = args.workdir / "numba-cache-baseline"
    sync_copy(copy)
    if not (args.skip_baseline and baseline_cache.is_dir()):
        baseline(args, copy, baseline_cache)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(mutants, 1):
        r = run_mutant(m, args, copy, baseline_cache)
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        print(f"[{i}/{len(mutants)}] {r['status']:8} {r['seconds']:6.0f} s  {m.file}:{m.line} "
              f"{m.function} [{m.kind}] {_squash(m.original)[:50]!r} -> "
              f"{_squash(m.mutated)[:50]!r}" + (f" (by {r['killed_by']})" if r["killed_by"] else ""),
              flush=True)
    report([r for r in load_results(args.results) if r["id"] in {m.id for m in mutants}]
           if args.id else load_results(args.results), equivalent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
