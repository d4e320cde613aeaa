"""Shared fixtures, the hypothesis profile and the guard that no test leaves a global setting changed.

Imports of the project here are plain imports: if ``minigpt`` or ``kernels`` cannot be imported the
run stops with a collection error instead of skipping tests.
"""

import os
import signal
from importlib import resources

import numpy as np
import pytest
from hypothesis import settings

# Tests are small; keep BLAS single-threaded so timings and reductions are stable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numba  # noqa: E402  (after OMP_NUM_THREADS, which the BLAS reads when it loads)

import kernels.blas  # noqa: E402
from minigpt import backend  # noqa: E402

# --- hypothesis: the same examples on every run --------------------------------------------------
# "ci" (the default): examples derived from each test's source, no example database, no deadline
# (timings on a shared 2-core machine are noise). A failure therefore reproduces on every run.
# "dev": random examples and the local database, to hunt for new failures:
#     HYPOTHESIS_PROFILE=dev python -m pytest    (or: python -m pytest --hypothesis-profile dev)
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
# explicit: with CI=true in the environment, hypothesis's own defaults are derandomized too
settings.register_profile("dev", deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- global settings: no test may leave one changed ----------------------------------------------
GUARDED_ENV_PREFIXES = ("MINIGPT_", "NUMBA_", "OMP_", "OPENBLAS_", "MKL_")
UNSET = "<unset>"

# The products configure their thread split on first use (kernels.blas.gemm); do it now, once, so
# the first test that multiplies a large matrix is not blamed for the change.
kernels.blas.set_threads(kernels.blas.default_threads())


def global_settings() -> dict:
    """Every process-wide setting a test could change and forget: thread counts, the kernel
    backend, NumPy's error state and print options, the working directory, environment variables."""
    state = {
        "Numba threads (numba.get_num_threads)": numba.get_num_threads(),
        "product threads (kernels.blas.get_threads)": kernels.blas.get_threads(),
        "kernel backend (minigpt.backend.get_backend)": backend.get_backend(),
        "NumPy error state (np.geterr)": np.geterr(),
        "NumPy print options (np.get_printoptions)": np.get_printoptions(),
        "working directory (os.getcwd)": os.getcwd(),
        "SIGINT handler (signal.getsignal)": signal.getsignal(signal.SIGINT),
        "SIGTERM handler (signal.getsignal)": signal.getsignal(signal.SIGTERM),
    }
    lib = kernels.blas._openblas()
    if lib is not None:
        state["OpenBLAS threads (openblas_get_num_threads)"] = int(lib["get"]())
    for name in sorted(os.environ):
        if name.startswith(GUARDED_ENV_PREFIXES):
            state[f"environment variable {name}"] = os.environ[name]
    return state


def changed_settings(before: dict, after: dict) -> list[str]:
    """One line per setting that differs: 'name: before -> after' (an env var may come or go;
    of a dict of options only the options that differ)."""
    lines = []
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key, UNSET), after.get(key, UNSET)
        if old != new and isinstance(old, dict) and isinstance(new, dict):
            lines.append(f"{key}: " + ", ".join(f"{k}={old.get(k)!r} -> {new.get(k)!r}"
                                                for k in old | new if old.get(k) != new.get(k)))
        elif old != new:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


def restore_settings(before: dict) -> None:
    """Put back every setting of ``before`` that differs now (used after a failure, so one bad test
    does not make the later ones fail, and by the ``restore_global_settings`` fixture)."""
    now = global_settings()
    if now["Numba threads (numba.get_num_threads)"] != before["Numba threads (numba.get_num_threads)"]:
        numba.set_num_threads(before["Numba threads (numba.get_num_threads)"])
    key = "product threads (kernels.blas.get_threads)"
    if now[key] != before[key]:
        kernels.blas.set_threads(before[key])
    backend.set_backend(before["kernel backend (minigpt.backend.get_backend)"])
    np.seterr(**before["NumPy error state (np.geterr)"])
    np.set_printoptions(**before["NumPy print options (np.get_printoptions)"])
    os.chdir(before["working directory (os.getcwd)"])
    for sig in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, sig), before[f"{sig} handler (signal.getsignal)"])
    key = "OpenBLAS threads (openblas_get_num_threads)"
    if key in before:
        kernels.blas._openblas()["set"](before[key])
    prefix = "environment variable "
    for key in set(before) | set(now):
        if key.startswith(prefix):
            name = key[len(prefix):]
            if key in before:
                os.environ[name] = before[key]
            else:
                os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _no_global_setting_left_changed(request):
    """Fails the test (at teardown, naming the setting) that changed a global setting and did not
    put it back; the setting is then restored so the tests after it run as usual."""
    before = global_settings()
    yield
    changed = changed_settings(before, global_settings())
    if changed:
        restore_settings(before)
        pytest.fail(f"{request.node.nodeid} left global settings changed (restore them in the test, "
                    "e.g. with try/finally or the restore_global_settings fixture):\n    "
                    + "\n    ".join(changed), pytrace=False)


@pytest.fixture
def restore_global_settings():
    """For a test that changes a global setting on purpose (a CLI run with --threads, say): every
    setting the guard watches is put back after the test."""
    before = global_settings()
    yield
    restore_settings(before)


@pytest.fixture
def settings_guard():
    """The guard's functions, for the guard's own negative controls (tests/test_hygiene.py)."""
    from types import SimpleNamespace

    return SimpleNamespace(snapshot=global_settings, changed=changed_settings,
                           restore=restore_settings)


@pytest.fixture
def one_numba_thread():
    """For tests on tiny tensors: with two threads every kernel call wakes Numba's pool, which on a
    busy 2-core machine costs ~20 ms a call (a 24-step run: 35 s against 0.3 s); the kernels'
    parallel paths are tested in the kernel tests."""
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
