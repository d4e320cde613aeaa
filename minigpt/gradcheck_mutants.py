"""Negative controls on the kernel path: Numba kernels with one deliberate bug, built at run time.

The controls in ``minigpt.gradcheck`` swap in a wrong NumPy backward. That proves the checker can
fail, but not that it can fail on the code training actually runs: the Numba kernels (and from
T = 32 on, the BLAS attention of ``kernels/attention_blas.py``). A control here breaks a kernel
itself:

1. read the kernel module's own source text (``kernels/attention.py`` say);
2. make ONE targeted edit inside one named function (the causal bound, the 1/sqrt(hs) scale, which
   buffer dq and dk go to, the mean term of layernorm), refusing with ``MutantError`` unless the
   text to replace occurs exactly once there, so a refactor of the kernel cannot silently turn a
   control into a no-op;
3. compile the edited module afresh as a new module object, Numba cache off (``cache=True`` ->
   ``cache=False``: the real kernels' on-disk cache is neither read nor written);
4. put the mutant where the code looks the kernel up at call time (``kernels.attention``'s
   ``heads_forward`` / ``heads_backward``, ``kernels.attention_blas``'s, ``minigpt.kernel_ops``'s
   ``layernorm_backward``), run the very gradient check the real kernel passes, and put the real kernel back.

The patched kernel is wrapped in a call counter: a control whose mutant was never called (because
the layers now look the kernel up somewhere else) raises ``MutantError`` instead of passing
vacuously. The real modules are never modified.

Why these bugs: each is one a hand-written kernel really gets wrong. A forward whose causal bound is
off by one (query i also sees key i + 1) with a backward that keeps the right bound; a backward
that forgets to scale the scores' gradient by 1/sqrt(hs) (eq. 6.7); dq and dk written into each
other's buffer; the layernorm backward without its -mean(g) term (eq. 2.6). A leak of the future
written identically into forward AND backward would be a consistent (non-causal) function whose
gradient is right: that is a bug of the forward, which the attention tests against the NumPy
reference and the book's numbers catch, not a gradient check.

To re-point a control after the kernels move: change its ``patch`` and ``source`` lines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

from minigpt.gradcheck import CheckResult, check_layer


class MutantError(RuntimeError):
    """A control that would prove nothing: its edit no longer matches, or its kernel is not used."""


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new`` inside function ``function`` of module ``module``."""

    module: str       # e.g. "kernels.attention"
    function: str     # the top-level function whose source is edited
    old: str          # must occur exactly once in that function
    new: str


@dataclass(frozen=True)
class KernelControl:
    """A kernel with a bug, and the gradient check (a ``LAYER_CASES`` name) it must fail."""

    name: str
    patch: tuple[str, str]    # (module, attribute) where the layer code looks the kernel up
    source: tuple[str, str]   # (module, function) whose mutant copy replaces it
    edits: tuple[Edit, ...]
    check: str                # minigpt.gradcheck.LAYER_CASES key, run on the numba path


def _edit_function(src: str, edit: Edit) -> str:
    """Apply ``edit`` inside the source lines of its top-level function (decorators included)."""
    tree = ast.parse(src)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == edit.function]
    if len(nodes) != 1:
        raise MutantError(f"{edit.module} has no top-level function {edit.function!r}: the control "
                          f"must be updated to the kernel's new layout")
    node = nodes[0]
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    lines = src.splitlines(keepends=True)
    body = "".join(lines[start:node.end_lineno])
    if body.count(edit.old) != 1:
        raise MutantError(f"expected exactly one {edit.old!r} in {edit.module}.{edit.function}, "
                          f"found {body.count(edit.old)}: the kernel changed, update the control")
    before, after = "".join(lines[:start]), "".join(lines[node.end_lineno:])
    return before + body.replace(edit.old, edit.new) + after


def _compile_copy(module_name: str, edits: tuple[Edit, ...], replace: list) -> types.ModuleType:
    """A fresh copy of ``module_name`` with ``edits`` applied, Numba's disk cache off. Names the
    copy imported that are originals in ``replace`` ((original, mutant) pairs) now name the mutant.
    """
    original = importlib.import_module(module_name)
    src = inspect.getsource(original)
    for e in edits:
        src = _edit_function(src, e)
    src = src.replace("cache=True", "cache=False")
    copy = types.ModuleType(f"{module_name}__mutant")
    exec(compile(src, f"<mutant of {module_name}>", "exec"), copy.__dict__)  # noqa: S102
    for name, value in list(copy.__dict__.items()):
        for orig, mutant in replace:
            if value is orig:
                copy.__dict__[name] = mutant
    return copy


@cache
def build_mutant(control: KernelControl) -> Callable:
    """The mutant of ``control.source``: its module and every module an edit touches, recompiled.

    An edited module the source module imports from (kernels.softmax's causal softmax, used by the
    BLAS attention) is compiled first, and the source module's copy calls its mutant functions.
    """
    replace: list = []                  # (original object, its mutant copy)
    src_module, func = control.source
    for module_name in dict.fromkeys(e.module for e in control.edits):
        if module_name == src_module:
            continue
        original = importlib.import_module(module_name)
        edits = tuple(e for e in control.edits if e.module == module_name)
        copy = _compile_copy(module_name, edits, [])
        replace += [(value, getattr(copy, n)) for n, value in vars(original).items()
                    if callable(value) and n in vars(copy)]
    copy = _compile_copy(src_module, tuple(e for e in control.edits if e.module == src_module),
                         replace)
    return getattr(copy, func)


@contextmanager
def patched(control: KernelControl) -> Iterator[list[int]]:
    """Run a block with the mutant in place of the real kernel; yields the mutant's call count."""
    owner = importlib.import_module(control.patch[0])
    attr = control.patch[1]
    real = getattr(owner, attr)
    mutant = build_mutant(control)
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return mutant(*args, **kwargs)

    setattr(owner, attr, counted)
    try:
        yield calls
    finally:
        setattr(owner, attr, real)


def run_control(control: KernelControl) -> list[CheckResult]:
    """The control's gradient check with the mutant kernel in place, on the numba path."""
    from minigpt import backend

    with backend.use("numba"), patched(control) as calls:
        results = check_layer(control.check)
    if calls[0] == 0:
        raise MutantError(f"{control.patch[0]}.{control.patch[1]} was never called by the "
                          f"{control.check!r} check: the control proved nothing; re-point its "
                          f"patch")
    return [CheckResult(f"NEG {r.check}", r.tensor, r.equation, r.n_checked, r.max_abs_err,
                        r.max_rel_err, r.passed) for r in results]


# --- the controls ---------------------------------------------------------------------------------
# Fused kernel (kernels/attention.py): T < 32, the "attention" check (T = 5).
# BLAS kernels (kernels/attention_blas.py, softmax in kernels/softmax.py): T >= 32, T = 33 here.
_FUSED, _BLAS, _SOFTMAX, _LN = "kernels.attention", "kernels.attention_blas", "kernels.softmax", \
    "kernels.layernorm"
_SMALL, _LONG = "attention", "attention (T=33)"

KERNEL_CONTROLS: tuple[KernelControl, ...] = (
    KernelControl(
        "fused attention forward: a query also sees the next key",
        patch=(_FUSED, "heads_forward"), source=(_FUSED, "heads_forward"),
        edits=(Edit(_FUSED, "_attn_fwd_bh", "last = i + off", "last = min(i + off + 1, Tk - 1)"),),
        check=_SMALL),
    KernelControl(
        "BLAS attention forward: a query also sees the next key",
        patch=(_BLAS, "heads_forward"), source=(_BLAS, "heads_forward"),
        edits=(Edit(_SOFTMAX, "_softmax_fwd", "last = min(i + off, Tk - 1)",
                    "last = min(i + off + 1, Tk - 1)"),),
        check=_LONG),
    KernelControl(
        "fused attention backward without the 1/sqrt(hs) scale",
        patch=(_FUSED, "heads_backward"), source=(_FUSED, "heads_backward"),
        edits=(Edit(_FUSED, "_attn_bwd", "(dp[j] - inner) * scale", "(dp[j] - inner)"),),
        check=_SMALL),
    KernelControl(
        "BLAS attention backward without the 1/sqrt(hs) scale",
        patch=(_BLAS, "heads_backward"), source=(_BLAS, "heads_backward"),
        edits=(Edit(_BLAS, "heads_backward", "dw *= q.dtype.type(1.0 / np.sqrt(hs))",
                    "dw *= q.dtype.type(1.0)"),),
        check=_LONG),
    KernelControl(
        "fused attention backward with dq and dk swapped",
        patch=(_FUSED, "heads_backward"), source=(_FUSED, "heads_backward"),
        edits=(Edit(_FUSED, "_attn_bwd", "dq[_ix(sdq, b, h, i, d)] = dQ[i, d]",
                    "dq[_ix(sdq, b, h, i, d)] = dK[i, d]"),
               Edit(_FUSED, "_attn_bwd", "dk[_ix(sdk, b, h, j, d)] = dK[j, d]",
                    "dk[_ix(sdk, b, h, j, d)] = dQ[j, d]")),
        check=_SMALL),
    KernelControl(
        "BLAS attention backward with dq and dk swapped",
        patch=(_BLAS, "heads_backward"), source=(_BLAS, "heads_backward"),
        edits=(Edit(_BLAS, "heads_backward", "bmm(dw, k, out=dq)", "bmm(dw, k, out=dk)"),
               Edit(_BLAS, "heads_backward", "bmm(dw.swapaxes(-1, -2), q, out=dk)",
                    "bmm(dw.swapaxes(-1, -2), q, out=dq)")),
        check=_LONG),
    KernelControl(
        "layernorm kernel backward without its mean term",
        patch=("minigpt.kernel_ops", "layernorm_backward"), source=(_LN, "layernorm_backward"),
        edits=(Edit(_LN, "_ln_bwd", "- sg - xhat[n, c] * sgx", "- xhat[n, c] * sgx"),),
        check="layernorm"),
)
