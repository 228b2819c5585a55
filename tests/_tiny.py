"""Tiny real-data datasets for the training, prediction and tiling tests (fast on 2 CPU cores)."""
from __future__ import annotations

from pathlib import Path

from workbench.data.canonical import write_canonical
from workbench.data.importers import read_raw
from workbench.core.paths import VENDORED


def tiny_bccd(out: Path, *, n_train: int = 8, n_val: int = 4) -> Path:
    """A canonical dataset of the first real BCCD images of the official train and val splits."""
    raw = read_raw(VENDORED["bccd"], "voc")
    train = [im for im in raw.images if im.meta.get("split") == "train"][:n_train]
    val = [im for im in raw.images if im.meta.get("split") == "val"][:n_val]
    raw.images = train + val
    # the full class list keeps class ids identical to a whole-BCCD dataset
    return write_canonical(raw, out, classes=["Platelets", "RBC", "WBC"])
