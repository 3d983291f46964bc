"""Atomic file and directory writes: a reader (or a crash) sees the old version or the new one, never half.

Everything goes through a temporary entry next to the target (same directory, so the final rename
stays on one file system and is atomic), named ``TMP_PREFIX`` + target name + a random tag, so that
:func:`remove_stale_temporaries` can find what an interrupted write left behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "TMP_PREFIX",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "remove_stale_temporaries",
    "replace_dir",
]

TMP_PREFIX = ".tmp-"


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh name for a temporary entry beside ``path`` (not created)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}{suffix}")


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary binary file beside ``path``, flush it to disk, then rename
    it into place (e.g. ``lambda f: fig.savefig(f, format="png")``). Missing parent folders are made;
    on any failure the temporary file is removed and ``path`` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, ".tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never reuse an entry; permissions follow the umask
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Rename directory ``src`` to ``dst``; an existing ``dst`` is first moved aside, then deleted."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        # a directory cannot be renamed over a non-empty one; aside-then-rename keeps the window tiny
        old = dst.with_name(f"{TMP_PREFIX}old-{dst.name}.{uuid.uuid4().hex[:8]}")
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary directory that becomes ``final`` on success and vanishes on failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete what an interrupted write left behind (``.tmp-*`` entries) in ``directory``; returns them."""
    directory = Path(directory)
    stale = sorted(directory.glob(f"{TMP_PREFIX}*")) if directory.is_dir() else []
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return stale
