"""Importers: one module per annotation format, each parsing a source into a RawDataset.

Importers never write; :func:`workbench.data.canonical.write_canonical` validates and writes.
Formats are looked up by name so a missing optional parser never breaks the others.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from workbench.data.canonical import RawDataset, write_canonical
from workbench.core.images import Normalisation
from workbench.data.outputs import check_outside


@dataclass(frozen=True)
class Importer:
    """One input format: the module of this package whose ``read(src, **options) -> RawDataset``
    parses it, and the ``read`` options the command line offers for it (``python -m workbench
    convert`` refuses the flags of other formats' options)."""

    module: str
    options: frozenset[str] = frozenset()


# The input formats, by name: the one list (``convert --format`` offers exactly these).
FORMATS: dict[str, Importer] = {
    "voc": Importer("voc"),
    "monuseg": Importer("imagescope", frozenset({"class_name", "use_annotation_names"})),
    "masks": Importer("masks", frozenset({"class_names", "connectivity", "instances", "allow_lossy_masks"})),
    "yolo": Importer("yolo", frozenset({"names"})),
    "coco": Importer("coco", frozenset({"images"})),
    "labelme": Importer("labelme", frozenset({"images"})),
    "labelstudio": Importer("labelstudio", frozenset({"images", "image_key"})),
}
# Other names :func:`read_raw` accepts for a format (the importer module's own name).
ALIASES = {"imagescope": "monuseg"}


def read_raw(src: str | Path, fmt: str, **options: Any) -> RawDataset:
    """Parse ``src`` in format ``fmt`` (a key of :data:`FORMATS` or :data:`ALIASES`) without writing anything."""
    name = ALIASES.get(fmt, fmt)
    if name not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted([*FORMATS, *ALIASES])}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source does not exist")
    module = importlib.import_module(f".{FORMATS[name].module}", __name__)
    return module.read(src, **options)


def convert(src: str | Path, fmt: str, out: str | Path, *, classes: Iterable[str] | None = None,
            normalisation: Normalisation = Normalisation(), strict: bool = False,
            overwrite: bool = False, discard_versions: bool = False, command: str = "",
            **options: Any) -> Path:
    """Import ``src`` (format ``fmt``) into a new canonical dataset folder ``out``.

    ``out`` must lie outside the source and the ``images`` folder (checked before reading);
    see :func:`workbench.data.canonical.write_canonical` for locking and ``discard_versions``.
    """
    check_outside(out, [src, options.get("images")])
    raw = read_raw(src, fmt, **options)
    return write_canonical(raw, out, classes=classes, normalisation=normalisation, strict=strict,
                           overwrite=overwrite, discard_versions=discard_versions, command=command)
