"""The suite's own rules, each with a negative control: the global-settings guard of conftest.py
fails a test that leaks a setting, hypothesis is derandomized, ``slow`` is out of the default run."""

import configparser
import os
import signal
from pathlib import Path

import numba
import numpy as np
from hypothesis import settings

from minigpt import backend

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def test_guard_names_every_setting_it_finds_changed(settings_guard, tmp_path, monkeypatch):
    before = settings_guard.snapshot()
    assert settings_guard.changed(before, settings_guard.snapshot()) == []
    other = "numpy" if backend.get_backend() == "numba" else "numba"
    threads = 1 if numba.get_num_threads() != 1 else min(2, numba.config.NUMBA_NUM_THREADS)
    try:
        backend.set_backend(other)
        numba.set_num_threads(threads)
        np.seterr(all="raise")
        os.environ["MINIGPT_KERNELS"] = other
        os.chdir(tmp_path)
        np.set_printoptions(precision=3)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        changed = "\n".join(settings_guard.changed(before, settings_guard.snapshot()))
    finally:
        settings_guard.restore(before)
    assert "kernel backend" in changed and repr(other) in changed
    assert "NumPy error state" in changed and "'raise'" in changed
    assert "environment variable MINIGPT_KERNELS" in changed and "<unset>" in changed
    assert "working directory" in changed
    assert "print options (np.get_printoptions): precision=8 -> 3" in changed   # the option only
    assert "SIGTERM handler" in changed
    if threads != numba.get_num_threads():      # a 1-thread Numba cannot change its count
        assert "Numba threads" in changed
    assert settings_guard.changed(before, settings_guard.snapshot()) == []   # all put back


def test_guard_fails_the_leaking_test_and_restores_for_the_next(pytester):
    """A test that switches the backend and does not switch it back errors at teardown with the
    setting's name; the test after it sees the original backend again."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_leak=f"""
        from minigpt import backend

        def test_leaks():
            backend.set_backend({"numpy" if backend.get_backend() == "numba" else "numba"!r})

        def test_restores_itself():
            with backend.use("numpy"):
                pass

        def test_after():
            assert backend.get_backend() == {backend.get_backend()!r}
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*test_leaks left global settings changed*",
                                 "*kernel backend (minigpt.backend.get_backend)*"])


def test_hypothesis_is_derandomized_by_default():
    assert settings.default.derandomize is True
    assert settings.default.database is None
    assert settings.get_profile("dev").derandomize is False   # the opt-in random profile


def test_slow_tests_are_out_of_the_default_run_and_in_with_m_slow(pytester):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    section = "\n".join(f"{k} = " + v.replace("\n", "\n    ")
                        for k, v in cfg["tool:pytest"].items() if k != "testpaths")
    pytester.makefile(".cfg", setup=f"[tool:pytest]\n{section}\n")
    pytester.makepyfile(test_two="""
        import pytest

        def test_fast():
            pass

        @pytest.mark.slow
        def test_slow():
            pass
        """)
    default = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    default.assert_outcomes(passed=1, deselected=1)
    assert default.ret == 0
    only_slow = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "slow")
    only_slow.assert_outcomes(passed=1, deselected=1)
    only_slow.stdout.fnmatch_lines(["*1 passed*"])
