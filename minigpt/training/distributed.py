"""Data parallelism over MPI: the communicator the training loop talks to, with a one-process stand-in.

    mpirun -n 2 minigpt train ...           # two processes ("ranks"), one global batch per step

Each optimizer step, every rank reads the same global batch of B windows from the same loader and
keeps its own shard of B / N rows; its gradient is weighted by its share of the batch's targets, so
that one ``allreduce_sum_`` of the flat gradient buffer leaves on every rank the gradient of the
mean loss over the whole global batch - the gradient one process would compute from all B rows, up to
the order of the additions (docs/distributed.md, "exactness"). Every rank then applies the same AdamW
step to the same parameters. Rank 0 alone prints, evaluates, samples and writes checkpoints; every
rank reads them on resume.

Which communicator: :func:`get_communicator` returns an :class:`MPICommunicator` over
``MPI.COMM_WORLD`` when the process was started by an MPI launcher (``mpirun`` sets
``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE`` or ``PMIX_RANK``) and mpi4py is installed (``pip install -e
'.[mpi]'``); otherwise the :class:`SingleProcess` stand-in, whose collectives do nothing. mpi4py is
imported only under a launcher, so a plain ``minigpt train`` is unchanged (and does not need MPI).

Identical bits on every rank. Open MPI's all-reduce algorithms either reduce each chunk on one rank
and then copy it to all (ring, reduce + broadcast) or pair ranks symmetrically (recursive doubling,
where a + b and b + a are the same float): every rank receives the same bits, so the ranks' weights
never drift apart. :meth:`Communicator.check_same` verifies it at every checkpoint (one checksum).

Waiting without spinning. MPI's blocking calls busy-poll a core; while rank 0 alone evaluates or
writes a checkpoint the others would steal its cores. :meth:`Communicator.wait_for_all` is a
barrier that sleeps between polls instead.
"""

from __future__ import annotations

import os
import socket
import time
import zlib

import numpy as np

LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
INSTALL_HINT = "install it with: pip install -e '.[mpi]' (mpi4py and Open MPI's mpirun)"


class Communicator:
    """What the training loop needs from MPI. This base class is the one-process stand-in."""

    rank: int = 0          # this process's index, 0..size-1
    size: int = 1          # N, the number of processes
    local_size: int = 1    # processes on this machine (for the default thread count)
    local_rank: int = 0    # this process's index among them (0 warms the machine's kernel cache)
    host: str = socket.gethostname()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over the ranks, in place; every rank gets the same bits. Returns ``buf``."""
        return buf

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects)."""
        return [obj]

    def wait_for_all(self, poll: float = 0.002) -> None:
        """A barrier that sleeps between polls (for waits while rank 0 alone works)."""

    def check_same(self, flat: np.ndarray, what: str = "the parameters") -> None:
        """Raise if ``flat`` differs between ranks (compares one CRC-32 per rank)."""
        if self.size == 1:
            return
        crcs = self.allgather(zlib.crc32(np.ascontiguousarray(flat).view(np.uint8)))
        if len(set(crcs)) > 1:
            raise RuntimeError(f"{what} differ between ranks (CRC-32 per rank: {crcs}); the "
                               "all-reduce did not give every rank the same bits")

    def describe(self) -> str:
        return "1 process"


class SingleProcess(Communicator):
    """One process, no MPI: every collective is the identity."""


class MPICommunicator(Communicator):
    """``MPI.COMM_WORLD`` through mpi4py's buffer interface (no pickling of arrays)."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)   # the ranks sharing this machine
        self.local_size, self.local_rank = node.Get_size(), node.Get_rank()
        node.Free()
        self.host = MPI.Get_processor_name()

    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        if not buf.flags.c_contiguous:
            raise ValueError("allreduce_sum_ needs a contiguous buffer (the flat gradient buffer)")
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def wait_for_all(self, poll: float = 0.002) -> None:
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(poll)

    def describe(self) -> str:
        hosts = len(set(self.allgather(self.host)))
        return f"{self.size} MPI ranks on {hosts} host{'s' if hosts > 1 else ''}"


def launched_by_mpi(environ=None) -> bool:
    """True when an MPI launcher (mpirun, mpiexec, srun with PMI) started this process."""
    env = os.environ if environ is None else environ
    return any(v in env for v in LAUNCHER_VARS)


_world: Communicator | None = None


def get_communicator() -> Communicator:
    """The process's communicator (created once): MPI under a launcher, else ``SingleProcess``.

    Raises ValueError when a launcher started more than one process but mpi4py is missing (each
    process would otherwise train alone and they would overwrite each other's checkpoints).
    """
    global _world
    if _world is not None:
        return _world
    if not launched_by_mpi():
        _world = SingleProcess()
        return _world
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
        if size > 1:
            raise ValueError(f"started by an MPI launcher with {size} processes, but mpi4py is not "
                             f"installed; {INSTALL_HINT}") from e
        _world = SingleProcess()
        return _world
    _world = MPICommunicator()
    return _world


def refuse_ranks(command: str, why: str) -> None:
    """Raise ValueError when an MPI launcher started ``command`` as several processes.

    For the commands that run in one process (``minigpt finetune``, ``minigpt dpo``): under
    ``mpirun -n N`` each rank would run the whole job, print everything N times and write the same
    checkpoints. ``why`` says what keeps the command in one process."""
    comm = get_communicator()
    if comm.size > 1:
        raise ValueError(f"minigpt {command} runs in one process ({why}), but the MPI launcher "
                         f"started {comm.size} processes: each would run the whole job and write "
                         "the same checkpoints. Run it without mpirun (data parallel over MPI: "
                         "minigpt train, minigpt instruct)")


def default_threads(comm: Communicator, cores: int | None = None) -> int:
    """Threads per rank so that ranks x threads on this machine does not exceed its cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, comm.local_size))


def shard(B: int, comm: Communicator, accum: int) -> tuple[int, int]:
    """(first row, rows) of this rank's shard of a global batch of B rows, after checking that B
    splits into N ranks x ``accum`` micro-batches of equal size."""
    n = comm.size * accum
    if accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {accum}")
    if B % n:
        fits = [d for d in range(1, B + 1) if B % (d * accum) == 0]
        raise ValueError(
            f"the global batch of {B} windows does not split into {comm.size} rank(s) x {accum} "
            f"accumulation step(s) of equal size; use a --batch-size divisible by {n}, or a rank "
            f"count among {fits} (mpirun -n ...), or another --grad-accum")
    rows = B // comm.size
    return comm.rank * rows, rows
