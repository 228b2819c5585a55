"""Named datasets: the vendored real data, converted once into canonical form and cached.

``prepare("bccd")`` converts ``data/raw/bccd`` into ``data/generated/bccd`` the first time
and reuses it afterwards (the cache is rebuilt when the source's file list changes).
Any other folder is accepted with an explicit ``fmt``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workbench.data.canonical import read_meta
from workbench.data.importers import FORMATS, convert
from workbench.core.paths import GENERATED_DATA_DIR, VENDORED, VENDORED_FORMAT, shared_data_dir

# The fuller copies in ../shared/data (when that folder exists), same formats.
SHARED_SUBPATH = {"bccd": "bccd/BCCD", "monuseg": "monuseg/MoNuSegTrainingData", "mnfinder": "mnfinder"}


def source_path(name: str, *, full: bool = False) -> Path:
    """The raw folder of a named dataset; ``full`` prefers ../shared/data when present."""
    if name not in VENDORED:
        raise ValueError(f"unknown dataset {name!r}; named datasets: {sorted(VENDORED)} (or pass a folder and a format)")
    shared = shared_data_dir()
    if full and shared is not None and (shared / SHARED_SUBPATH[name]).exists():
        return shared / SHARED_SUBPATH[name]
    return VENDORED[name]


def _listing_digest(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(src)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def prepare(dataset: str | Path, *, fmt: str | None = None, out: Path | None = None,
            full: bool = False, split_ratios: tuple[float, ...] = (8, 1, 1), seed: int = 0) -> Path:
    """Return a canonical dataset folder for a dataset name or a raw folder, converting if needed.

    Images without an official split get a seeded, stable ``split_ratios`` split.
    """
    if isinstance(dataset, str) and dataset in VENDORED:
        name, src, fmt = dataset + ("-full" if full else ""), source_path(dataset, full=full), fmt or VENDORED_FORMAT[dataset]
    else:
        src = Path(dataset)
        if fmt is None:
            raise ValueError(f"{src}: give the format of this folder (one of {', '.join(FORMATS)})")
        name = src.name
    if (Path(src) / "meta.csv").exists() and fmt in (None, "canonical"):
        return Path(src)
    out = Path(out) if out is not None else GENERATED_DATA_DIR / name
    digest = _listing_digest(Path(src)) if Path(src).is_dir() else hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16]
    stamp = out / "dataset.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("source_digest") == digest:
            return out
    convert(src, fmt, out, overwrite=True, command=f"workbench.data.datasets.prepare({str(dataset)!r})")
    info = json.loads(stamp.read_text())
    info["source_digest"] = digest
    stamp.write_text(json.dumps(info, indent=2) + "\n")
    meta = read_meta(out)
    if meta["split"].eq("").any():
        from workbench.data.splits import split_dataset

        split_dataset(out, ratios=split_ratios, seed=seed)
    return out
