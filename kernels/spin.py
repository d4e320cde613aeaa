"""Threads meeting inside compiled code: an atomic counter and a spinning barrier, for Numba.

``kernels/decode.py`` runs a whole decode step as ONE Numba call per thread, and its threads meet
after every stage (a block has four). Handing each stage to a pool thread from Python costs a
wake-up of a sleeping thread: about 0.1 ms on this project's 2-core VM (measured: median 96 us
from ``pool.submit`` to the job running, after 0.3 ms idle), 49 times per GPT-2 token. Threads
that are already running and wait for each other by spinning on a shared counter meet in well
under a microsecond.

Numba has no atomics of its own, so two LLVM instructions are emitted here (``numba.extending.
intrinsic``):

    atomic_add(a, i, v)   a[i] += v, atomically; returns the old value     (atomicrmw add, seq_cst)
    atomic_load(a, i)     a[i], read from memory every time                 (load atomic, acquire)

A plain ``a[i]`` read in a loop may be hoisted out of it by the compiler (nothing in the loop
writes ``a``), and the loop would never see the other thread's write; an atomic load is not. The
``seq_cst`` add also orders the thread's earlier plain stores (its outputs) before the counter
moves, and the ``acquire`` load orders the other thread's later reads after it sees the counter: a
thread that passed the barrier sees every output written before it.

    barrier(sync, nparts, passed) -> passed + 1, or -1 when the others did not come

``sync[0]`` counts arrivals since it was zeroed; the k-th barrier (``passed`` = k - 1 before it) is
passed when it reaches k * nparts. One counter serves a whole call: no reset between barriers.
After ``SPIN_POLLS`` polls it calls ``sched_yield()`` between polls: on a machine with fewer free
cores than threads (another process running) the thread it waits for may be queued behind it on
the same core, and spinning would only burn that thread's time slice. If the others have not
arrived after ``SPIN_LIMIT`` polls (many seconds) it gives up, so a thread that never started
turns into an error in Python instead of a hang.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

SPIN_POLLS = 1 << 10            # polls with ``pause`` (~10-100 us), then with ``sched_yield``
SPIN_LIMIT = 1 << 24           # polls before a barrier gives up (~10 s: most of them yield)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _item_pointer(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx])


@intrinsic
def atomic_add(typingctx, a, i, v):
    """a[i] += v atomically (a: 1-D int64 array); returns a[i] before the add."""
    if not (isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1):
        return None
    sig = types.int64(a, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")
    return sig, codegen


@intrinsic
def atomic_load(typingctx, a, i):
    """a[i] read from memory (a: 1-D int64 array), never from a copy the compiler kept."""
    if not (isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1):
        return None
    sig = types.int64(a, types.intp)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)
    return sig, codegen


@intrinsic
def cpu_relax(typingctx):
    """x86 ``pause`` (a hint that this is a spin loop; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """The C library's ``sched_yield()``: let another runnable thread have this core."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()
    return sig, codegen


@njit(nogil=True, cache=True)
def barrier(sync, nparts, passed, limit=SPIN_LIMIT):
    """Wait until all ``nparts`` threads have arrived here ``passed + 1`` times in all; -1 after
    ``limit`` polls without that."""
    target = (passed + 1) * nparts
    atomic_add(sync, 0, 1)
    polls = 0
    while atomic_load(sync, 0) < target:
        if polls < SPIN_POLLS:
            cpu_relax()
        else:                  # still waiting: maybe the thread it waits for shares this core
            sched_yield()
        polls += 1
        if polls > limit:
            return -1
    return passed + 1
