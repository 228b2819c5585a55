"""Smaller canonical datasets made from a larger one (label-efficiency curves, smoke profiles).

Subsets are *nested*: for one seed, the 10% subset lies inside the 25% subset, which lies
inside the 50% one, so a label-efficiency curve compares like with like. Images and labels
are hard-linked (copied where links are impossible); the source is never modified.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from workbench.core.atomic import new_folder
from workbench.data.canonical import read_classes, read_meta, save_meta


def _rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def choose(meta: pd.DataFrame, *, keep: dict[str, float | int], seed: int = 0) -> pd.Series:
    """Boolean mask over ``meta``: per split, a fraction (float <= 1) or a count (int) of images.

    Splits not named in ``keep`` are kept whole. Selection is by a seeded hash order, so
    a smaller share is always contained in a larger one (nested).
    """
    mask = pd.Series(True, index=meta.index)
    for split, amount in keep.items():
        rows = meta.index[meta["split"] == split]
        if not len(rows):
            raise ValueError(f"no images in split {split!r} to subsample")
        if isinstance(amount, float) and not 0 < amount <= 1:
            raise ValueError(f"fraction for {split!r} must be in (0, 1], got {amount}")
        n = max(1, round(amount * len(rows))) if isinstance(amount, float) else min(int(amount), len(rows))
        if n < 1:
            raise ValueError(f"count for {split!r} must be >= 1, got {amount}")
        order = sorted(rows, key=lambda i: _rank(seed, str(meta.at[i, "image_id"])))
        mask.loc[order[n:]] = False
    return mask


def subset_dataset(src: str | Path, out: str | Path, *, keep: dict[str, float | int], seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write a canonical dataset holding the images of ``src`` chosen by :func:`choose`."""
    src, out = Path(src), Path(out)
    meta = read_meta(src)
    mask = choose(meta, keep=keep, seed=seed)
    sub = meta[mask].reset_index(drop=True)
    classes = read_classes(src)
    with new_folder(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for rel in list(sub["file"]) + [f for f in sub["label_file"] if f]:
            _link(src / rel, tmp / rel)
        kept = set(sub["image_id"])
        objects = pd.read_csv(src / "objects.csv", dtype={"image_id": str}, keep_default_na=False)
        objects[objects["image_id"].isin(kept)].to_csv(tmp / "objects.csv", index=False)
        if (src / "problems.csv").exists():
            shutil.copyfile(src / "problems.csv", tmp / "problems.csv")
        info = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
        info["subset_of"] = {"dataset": str(src.resolve()), "keep": keep, "seed": seed,
                             "images": int(len(sub)), "of_images": int(len(meta))}
        info["images"] = int(len(sub))
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        save_meta(tmp, sub, classes)
    return out


def _link(a: Path, b: Path) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copyfile(a, b)
