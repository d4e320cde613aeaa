"""The one atomic writer (minigpt/atomic.py): old or new content, never half; nothing left behind."""

from __future__ import annotations

import os

import pytest

from minigpt.atomic import atomic_path, write_text_atomic


def test_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    write_text_atomic(p, "old")
    write_text_atomic(p, "new")
    assert p.read_text() == "new"
    assert sorted(os.listdir(p.parent)) == ["f.txt"]


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    write_text_atomic(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]          # the temporary file is gone


def test_the_temporary_is_beside_the_target_with_the_suffix(tmp_path):
    with atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".plot.png.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "plot.png").read_bytes() == b"x"


def test_every_writer_goes_through_it():
    """No other module renames files into place or makes temporary files of its own: one writer.
    (The checkpoint's directory rename is the one exception: it moves a whole directory.)"""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "minigpt"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "atomic.py" or "cli/bench" in path.as_posix():
            continue
        text = path.read_text(encoding="utf-8")
        if "mkstemp" in text or "os.fsync(" in text:
            offenders.append(path.relative_to(root).as_posix())
        if "os.replace(" in text and path.name != "checkpoint.py":
            offenders.append(path.relative_to(root).as_posix())
    assert offenders == []
