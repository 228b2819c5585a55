"""Writing a dataset folder safely when several commands (or users) share a disk.

:func:`exclusive_output` wraps :func:`workbench.core.atomic.new_folder` with what an import or
export into a shared folder needs:

* **One writer per output.** An exclusive lock (``.<name>.lock`` beside the folder, held with
  ``flock``, so a killed process never leaves it held) makes a second ``convert`` into the same
  ``--out`` fail at once with a clear message, instead of both reporting success and one
  result being lost.
* **No silent replacement.** Just before the finished folder is renamed into place, ``out`` is
  checked again: a folder that appeared meanwhile (another tool, another user) is not
  replaced unless ``overwrite``.
* **Corrections are kept.** ``overwrite`` refuses to delete a dataset holding label versions
  (``versions/``, written by the napari inspector) unless ``discard_versions``.
* **Stale temporaries are cleaned.** ``.<name>.XXXXXXXX.partial`` folders left by a killed
  writer (SIGKILL, power loss) are removed while the lock is held: no live writer owns them.

:func:`check_outside` refuses an output inside the source it is read from (a re-run would
import its own previous output) and a source inside the output (``--overwrite`` would delete it).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from workbench.core.atomic import new_folder

try:  # POSIX; elsewhere the lock file's creation alone is the lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputBusyError(FileExistsError):
    """Another writer holds the output folder; the message names the folder and the holder."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output folder: a hidden sibling, so the folder itself stays clean."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def check_outside(out: str | os.PathLike, sources: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an ``out`` that lies inside a source folder, or holds a source (file or folder).

    Raises ``ValueError`` naming both paths.
    """
    o = Path(out).resolve()
    for src in sources:
        if src is None:
            continue
        s = Path(src).resolve()
        if s.is_dir() and (o == s or s in o.parents):
            raise ValueError(f"{out}: the output lies inside the source {src}; a re-run would import "
                             f"the previous output as source data. Choose an --out outside {src}")
        if o == s or o in s.parents:
            raise ValueError(f"{out}: the output holds the source {src}; --overwrite would delete it. "
                             f"Choose an --out outside the source")


@contextlib.contextmanager
def exclusive_output(out: str | os.PathLike, *, overwrite: bool = False, discard_versions: bool = False,
                     removed: list[Path] | None = None) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` if the block succeeds (see the module docstring).

    Raises :class:`OutputBusyError` when another writer holds ``out``, ``FileExistsError`` when
    ``out`` is not empty (without ``overwrite``) or was created by someone else during the write,
    and ``ValueError`` when ``overwrite`` would delete label versions. Stale temporaries that
    were removed are appended to ``removed``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        stale = remove_stale_temporaries(out)
        if removed is not None:
            removed.extend(stale)
        if overwrite and not discard_versions:
            _refuse_if_versions(out)
        existed = out.exists() and any(out.iterdir())
        with new_folder(out, overwrite=overwrite) as tmp:
            yield tmp
            if not existed and not overwrite and out.exists() and any(out.iterdir()):
                raise FileExistsError(f"{out}: another writer created this folder while this one ran; "
                                      "it was not replaced (use --overwrite to replace it)")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporaries of earlier, interrupted writes of ``out``; return what was removed.

    Only call while holding ``out``'s lock: then no live writer owns them.
    """
    names = re.compile(rf"^\.{re.escape(out.name)}\.(?:[a-z0-9_]{{8}}\.partial|old-\d+)$")
    if not out.parent.is_dir():
        return []
    stale = sorted(p for p in out.parent.iterdir() if p.is_dir() and names.match(p.name))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _refuse_if_versions(out: Path) -> None:
    versions = out / "versions"
    if versions.is_dir() and any(versions.iterdir()):
        n = sum(1 for p in versions.iterdir() if p.is_dir())
        raise ValueError(f"{out}: holds {n} label version(s) in versions/ (corrections made in the "
                         "inspector); --overwrite would delete them. Export them first "
                         "(workbench.inspection.feedback.export_version), write to another --out, "
                         "or pass --discard-versions")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still holding the lock: a waiting writer re-checks the inode
        os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    for _ in range(5):
        if fcntl is None:  # pragma: no cover - Windows: creating the file is the lock
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise OutputBusyError(_busy_message(out, path)) from None
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(_busy_message(out, path)) from None
            try:  # the holder we waited for may have unlinked the file: lock the current one
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        return fd
    raise OutputBusyError(_busy_message(out, path))


def _busy_message(out: Path, path: Path) -> str:
    try:
        holder = path.read_text(encoding="utf-8").strip() or "unknown process"
    except OSError:
        holder = "unknown process"
    return (f"{out}: another command is writing this folder right now ({holder}, lock {path}); "
            "wait for it to finish or choose another --out")
