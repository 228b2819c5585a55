"""Importers: one module per annotation format, each parsing a source into a RawDataset.

Importers never write; :func:`workbench.data.canonical.write_canonical` validates and writes.
Formats are looked up by name so a missing optional parser never breaks the others.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterable

from workbench.data.canonical import RawDataset, write_canonical
from workbench.core.images import Normalisation

# format name -> module in this package exposing ``read(src, **options) -> RawDataset``
FORMATS = {
    "voc": "voc",
    "monuseg": "imagescope",
    "imagescope": "imagescope",
    "masks": "masks",
    "yolo": "yolo",
    "coco": "coco",
    "labelme": "labelme",
    "labelstudio": "labelstudio",
}


def read_raw(src: str | Path, fmt: str, **options: Any) -> RawDataset:
    """Parse ``src`` in format ``fmt`` (a key of :data:`FORMATS`) without writing anything."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(set(FORMATS))}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source does not exist")
    module = importlib.import_module(f".{FORMATS[fmt]}", __name__)
    return module.read(src, **options)


def convert(src: str | Path, fmt: str, out: str | Path, *, classes: Iterable[str] | None = None,
            normalisation: Normalisation = Normalisation(), strict: bool = False,
            overwrite: bool = False, command: str = "", **options: Any) -> Path:
    """Import ``src`` (format ``fmt``) into a new canonical dataset folder ``out``."""
    raw = read_raw(src, fmt, **options)
    return write_canonical(raw, out, classes=classes, normalisation=normalisation,
                           strict=strict, overwrite=overwrite, command=command)
