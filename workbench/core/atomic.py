"""Atomic file and folder writes: a failed command never leaves half-written output.

The temporary files and folders come from :mod:`tempfile`, which creates them private (0600,
0700); what is renamed into place gets the mode a plain ``open()`` / ``mkdir()`` would have
given it (0666 / 0777 less the umask, usually 0644 / 0755), or keeps the mode of the file it
replaces, so reports and executed notebooks stay readable by others as usual.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, folder: bool = False) -> int:
    """The permission bits a new file (``folder=False``) or folder gets from ``open``/``mkdir``."""
    return (0o777 if folder else 0o666) & ~current_umask()


@contextlib.contextmanager
def new_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that becomes ``path`` only if the block succeeds.

    For writers that take a path (``df.to_parquet(tmp)``, ``torch.save(obj, tmp)``). The file
    keeps the mode of the file it replaces, else gets the umask's default (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default_mode()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically (see :func:`new_file`)."""
    path = Path(path)
    with new_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return path


@contextlib.contextmanager
def new_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``out`` only if the block succeeds.

    An existing non-empty ``out`` is refused unless ``overwrite``; then it is replaced
    only after the new content is complete, so an error keeps the old version intact.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder exists and is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tmp.chmod(default_mode(folder=True))  # mkdtemp makes it 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
