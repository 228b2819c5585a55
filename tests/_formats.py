"""Helpers for the format tests: a real BCCD subset in VOC layout and a box comparison."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from conftest import BCCD
from workbench.data.canonical import Dataset, RawDataset

# 30 real images: the first 28 by name plus two with quirks (00338: a zero-area RBC box,
# 00133: no WBC).
_ALL = sorted(p.stem for p in (BCCD / "Annotations").glob("*.xml"))
SUBSET = _ALL[:28] + ["BloodImage_00133", "BloodImage_00338"]


def copy_voc_subset(dest: Path, ids: list[str] = SUBSET, *, drop_xml: tuple[str, ...] = ()) -> Path:
    """A VOC tree (with the official split lists) holding ``ids``; ``drop_xml`` images are
    copied without their XML, so they import as unlabelled."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dest / sub).mkdir(parents=True)
    for i in ids:
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", dest / "JPEGImages")
        if i not in drop_xml:
            shutil.copy(BCCD / "Annotations" / f"{i}.xml", dest / "Annotations")
    keep = set(ids)
    for split in ("train", "val"):
        lines = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{x}\n" for x in lines if x in keep))
    return dest


def labelled_ids(ds: Dataset) -> set[str]:
    return set(ds.images.loc[ds.images["labelled"].astype(str) == "True", "image_id"])


def assert_same_boxes(a: Dataset, b: Dataset, *, ids: set[str] | None = None, tol: float = 1.0) -> int:
    """Every box of ``a`` has a box of the same class in ``b`` within ``tol`` px (one-to-one).

    Compares the images ``ids`` (default: all of ``a``) and returns the number of boxes.
    """
    assert a.classes == b.classes
    ids = set(a.images["image_id"]) if ids is None else ids
    oa = a.objects[a.objects["image_id"].isin(ids)]
    ob = b.objects[b.objects["image_id"].isin(ids)]
    assert len(oa) == len(ob), f"{len(oa)} boxes before, {len(ob)} after"
    assert oa["class"].value_counts().to_dict() == ob["class"].value_counts().to_dict()
    cols = ["x1", "y1", "x2", "y2"]
    gb = {k: g for k, g in ob.groupby(["image_id", "class"])}
    for key, ga in oa.groupby(["image_id", "class"]):
        gbk = gb.get(key)
        assert gbk is not None and len(gbk) == len(ga), f"{key}: box counts differ"
        pa, pb = ga[cols].to_numpy(float), gbk[cols].to_numpy(float)
        cost = np.abs(pa[:, None, :] - pb[None, :, :]).max(axis=2)
        r, c = linear_sum_assignment(cost)
        worst = cost[r, c].max()
        assert worst <= tol, f"{key}: a box moved by {worst:.3f} px"
    return len(oa)


def raw_as_dataset(raw: RawDataset) -> SimpleNamespace:
    """The parts of a Dataset that :func:`assert_same_boxes` reads, straight from an importer
    (no image decoding: fast enough for whole datasets)."""
    rows = [(im.image_id, o.cls, o.x1, o.y1, o.x2, o.y2) for im in raw.images for o in (im.objects or [])]
    objects = pd.DataFrame(rows, columns=["image_id", "class", "x1", "y1", "x2", "y2"])
    images = pd.DataFrame({"image_id": [im.image_id for im in raw.images]})
    classes = raw.classes if raw.classes is not None else sorted(set(objects["class"]))  # as write_canonical
    return SimpleNamespace(classes=classes, images=images, objects=objects)
