"""The one atomic writer: a reader of ``path`` sees the old file or the new one, never half of one.

Every file minigpt writes (checkpoints, ``latest``, safetensors weights, config.json, the vocabulary
files of ``save_pretrained``, the loss plot, a log truncated on resume) goes through ``atomic_path``:

    1. the writer writes a temporary file beside ``path`` (same directory, so same file system);
    2. the temporary file is fsync'ed: its bytes are on disk before its name is;
    3. ``os.replace`` renames it over ``path`` (atomic on POSIX and Windows);
    4. the directory is fsync'ed, so the rename itself survives a power cut.

A crash, Ctrl-C or ``kill -9`` before step 3 leaves the old file (or none) and at most a stray
``.<name>.*.tmp`` file; an exception inside the block deletes the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's) bytes to disk. Some platforms cannot open a directory:
    then the rename is still atomic, only not yet durable, and nothing is raised."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on leaving the block it replaces ``path`` (steps 2-4).

    ``suffix`` keeps a file type for writers that look at it (matplotlib wants ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
