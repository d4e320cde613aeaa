import os

import pytest

# Tests are small; keep BLAS single-threaded so timings and reductions are stable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_numba_thread():
    """For tests on tiny tensors: with two threads every kernel call wakes Numba's pool, which on a
    busy 2-core machine costs ~20 ms a call (a 24-step run: 35 s against 0.3 s); the kernels'
    parallel paths are tested in the kernel tests."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)
