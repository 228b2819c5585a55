"""A label version as a full canonical dataset folder, for training and the exporters.

:func:`materialise` writes what :func:`workbench.models.yolo.train` and the exporters read like
any other canonical dataset (images hard-linked). Note: ``convert --overwrite`` replaces the
whole dataset folder, ``versions/`` included; materialise a version (or export it) before
re-importing a dataset over itself.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from workbench.core.atomic import new_folder, write_text
from workbench.core.tables import utc_now
from workbench.data.canonical import read_classes, read_meta, save_meta
from workbench.inspection.corrections.diff import BOX
from workbench.inspection.corrections.versions import (
    CANONICAL, label_name, read_version_boxes, resolve_version, version_dir)

__all__ = ["materialise"]


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard link (same bytes, no space) or copy; used for images, which nothing edits."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def materialise(root: str | Path, version: str | None, out: str | Path, *,
                overwrite: bool = False) -> Path:
    """Write version ``version`` of dataset ``root`` as a full canonical dataset at ``out``.

    Images are hard links (copies across file systems); labels, ``meta.csv`` (labelled,
    n_objects), ``objects.csv`` (polygons kept for images whose labels are unchanged from
    the canonical ones), split lists and ``dataset.yaml`` follow the version;
    ``dataset.json`` records where it came from. The folder appears atomically.
    """
    root, out = Path(root), Path(out)
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise ValueError(f"{out}: materialise outside the source dataset {root}")
    name = resolve_version(root, version)
    vdir = version_dir(root, name)
    meta = read_meta(root)
    classes = read_classes(root)
    boxes = read_version_boxes(root, name)
    counts = boxes.groupby("image").size()
    objects_path = root / "objects.csv"
    old_objects = (pd.read_csv(objects_path, dtype={"image_id": str, "class": str, "polygon": str,
                                                    "source_object": str}, keep_default_na=False)
                   if objects_path.is_file() else pd.DataFrame(columns=["image_id"]))
    with new_folder(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        label_files, same_as_canonical = [], set()
        for image_id, file in meta[["image_id", "file"]].itertuples(index=False):
            src = root / file
            if not src.is_file():
                raise FileNotFoundError(f"{src}: image listed in {root / 'meta.csv'} is missing")
            dest = tmp / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dest)
            lab = vdir / "labels" / label_name(file)
            if lab.is_file():
                shutil.copyfile(lab, tmp / "labels" / lab.name)
                label_files.append(f"labels/{lab.name}")
                canon = root / "labels" / lab.name
                if canon.is_file() and canon.read_bytes() == lab.read_bytes():
                    same_as_canonical.add(str(image_id))
            else:
                label_files.append("")
        new_meta = meta.assign(label_file=label_files,
                               labelled=[bool(f) for f in label_files],
                               n_objects=[int(counts.get(i, 0)) for i in meta["image_id"]])
        keep = old_objects[old_objects["image_id"].isin(same_as_canonical)] if len(old_objects) else old_objects
        fresh = boxes[~boxes["image"].isin(same_as_canonical)]
        fresh_rows = pd.DataFrame({"image_id": fresh["image"], "class": fresh["class"],
                                   **{c: fresh[c] for c in BOX},
                                   "source_object": f"label version {name}", "polygon": ""})
        objects = pd.concat([keep, fresh_rows], ignore_index=True)
        order = {i: k for k, i in enumerate(meta["image_id"])}
        objects = objects.assign(_k=objects["image_id"].map(order)).sort_values("_k", kind="stable").drop(columns="_k")
        objects.to_csv(tmp / "objects.csv", index=False)
        if (root / "problems.csv").is_file():
            shutil.copyfile(root / "problems.csv", tmp / "problems.csv")
        info_path = root / "dataset.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        info.update({"created": utc_now(), "objects": int(len(boxes)),
                     "objects_per_class": {c: int((boxes["class"] == c).sum()) for c in classes},
                     "labels_version": {"dataset": str(r), "version": name,
                                        "summary": (json.loads((vdir / "summary.json").read_text(encoding="utf-8"))
                                                    if name != CANONICAL else None)}})
        write_text(tmp / "dataset.json", json.dumps(info, indent=2, default=str) + "\n")
        save_meta(tmp, new_meta, classes)
    return out
