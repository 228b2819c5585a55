"""Finding the image a label entry names, reading image sizes, and giving images ids.

Shared by the importers whose label files name their image (COCO, labelme, Label Studio)
or give coordinates relative to it (YOLO).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from workbench.core.images import image_header, is_image_file, upright_size

# Label Studio stores uploads as "<8 hex digits>-<original name>".
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the image is shown (EXIF orientation applied, as ultralytics, label
    tools and browsers do), from the file header; None if unreadable (write_canonical reports it)."""
    header = image_header(path)
    return None if header is None else upright_size(*header)


def unique_ids(paths: list[Path], root: Path | None = None) -> list[str]:
    """An image id per path: the file stem where that is unique, else the relative path.

    Colliding stems (``train/x.jpg`` and ``val/x.jpg``) get their path relative to ``root``
    (or the absolute path) without suffix, so ids stay short for the common flat case.
    """
    stems = Counter(p.stem for p in paths)
    rel = []
    for p in paths:
        try:
            r = PurePosixPath(p.relative_to(root).as_posix()) if root is not None else None
        except ValueError:
            r = None
        rel.append(r if r is not None else PurePosixPath(p.as_posix().lstrip("/")))
    without_suffix = [str(r.with_suffix("")) for r in rel]
    taken = Counter(without_suffix)
    out = []
    for p, r, w in zip(paths, rel, without_suffix):
        if stems[p.stem] == 1:
            out.append(p.stem)
        elif taken[w] == 1:
            out.append(w)
        else:  # x.jpg and x.png side by side: only the suffix tells them apart
            out.append(str(r))
    return out


class ImageIndex:
    """Look up images by file name in folders searched recursively, in priority order.

    Each folder is listed only when a lookup reaches it, so a JSON lying in a big folder
    (Downloads) costs nothing while the ``images`` folder given first has the file.
    """

    def __init__(self, folders: list[Path]):
        self.folders = [f for f in folders if f.is_dir()]
        self._listed: dict[Path, tuple[dict[str, list[Path]], dict[str, list[Path]]]] = {}

    def _listing(self, folder: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
        if folder not in self._listed:
            by_name: dict[str, list[Path]] = {}
            by_lower: dict[str, list[Path]] = {}
            for p in sorted(folder.rglob("*")):
                if p.is_file() and is_image_file(p):
                    by_name.setdefault(p.name, []).append(p)
                    by_lower.setdefault(p.name.lower(), []).append(p)
            self._listed[folder] = (by_name, by_lower)
        return self._listed[folder]

    def find(self, name: str, *, strip_upload_prefix: bool = False) -> list[Path]:
        """Files called ``name`` in the first folder that has any (exact case, then any case).

        With ``strip_upload_prefix`` a Label Studio upload name ``8f3a2b1c-x.jpg`` also
        matches ``x.jpg`` when no file carries the prefixed name.
        """
        name = PurePosixPath(name.replace("\\", "/")).name
        names = [name]
        if strip_upload_prefix and UPLOAD_PREFIX.match(name):
            names.append(UPLOAD_PREFIX.sub("", name, count=1))
        for candidate in names:
            for folder in self.folders:
                by_name, by_lower = self._listing(folder)
                hits = by_name.get(candidate) or by_lower.get(candidate.lower())
                if hits:
                    return list(hits)
        return []


def resolve_relative(name: str, bases: list[Path]) -> Path | None:
    """``name`` as an absolute path, or relative to the first base where it exists."""
    name = name.replace("\\", "/")
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in bases:
        cand = Path(os.path.normpath(base / name))  # "lm/../voc/x.jpg" -> "voc/x.jpg"
        if cand.is_file():
            return cand
    return None


def find_one_json(src: Path, what: str) -> Path:
    """``src`` itself, or the single ``.json`` file in the folder ``src``."""
    if src.is_file():
        return src
    found = sorted(p for p in src.glob("*.json") if not p.name.startswith("."))
    if len(found) != 1:
        n = "no .json file" if not found else f"{len(found)} .json files ({', '.join(p.name for p in found)})"
        raise ValueError(f"{src}: expected one {what} .json file, found {n}; pass the file itself")
    return found[0]
