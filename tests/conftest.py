import os
from importlib import resources

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


@pytest.fixture(scope="session")
def tok():
    """GPT-2's tokenizer, built once for the whole run."""
    from minigpt import Tokenizer

    return Tokenizer.gpt2()


@pytest.fixture(scope="session")
def verdict() -> str:
    """The bundled the-verdict.txt, exactly as stored (newline="" keeps the book's counts)."""
    path = resources.files("minigpt") / "assets" / "texts" / "the-verdict.txt"
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()
