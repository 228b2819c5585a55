"""Export a canonical dataset to YOLO (ultralytics folder), COCO JSON or labelme JSON files.

Boxes come from the canonical ``labels/`` (authoritative, via :func:`load_dataset`);
polygons and the ``difficult`` flag from ``objects.csv`` where its rows still match the labels.
Every export is written atomically to a new path outside the source dataset (folders under
the same exclusive lock as ``convert``), and re-imports with the importer of the same name
(``convert --format yolo|coco|labelme``) to the same images, classes and boxes. Images are
the canonical ones, stored upright, so every reader (pycocotools, labelme, ultralytics) sees
the frame the boxes are in.

Unlabelled images (no label file) stay unlabelled: YOLO writes no label file, labelme no
JSON, and COCO - which cannot say "not labelled" - leaves them out (noted in the result).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from workbench import __version__
from workbench.core.atomic import write_text
from workbench.core.tables import utc_now
from workbench.data.canonical import SPLITS, Dataset, format_yolo_line, load_dataset, select_split
from workbench.core.problems import ProblemLog
from workbench.data.outputs import exclusive_output

LABELME_VERSION = "5.5.0"  # the labelme file format these files follow


@dataclass
class ExportResult:
    """What an export wrote: the path, how many images and boxes, and anything left out."""

    path: Path
    images: int
    objects: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = "".join(f"\n  note: {n}" for n in self.notes)
        return f"wrote {self.path}: {self.images} images, {self.objects} boxes{extra}"


# ----------------------------------------------------------------------------- YOLO

def export_yolo(root: str | Path, out: str | Path, *, split_folders: bool = True,
                overwrite: bool = False) -> ExportResult:
    """Write an ultralytics-ready folder: ``images/<split>/``, ``labels/<split>/``, ``data.yaml``.

    With ``split_folders`` (and a split assigned) images go to ``train``/``val``/``test``
    subfolders; images without a split then go to ``unassigned/`` (not listed in
    ``data.yaml``). Without a split, or ``split_folders=False``, everything is flat and
    ``data.yaml`` uses all images for train and val. Images are hard-linked when possible.
    """
    ds, root, out = _load(root, out)
    meta = ds.images
    has_split = meta["split"].ne("").any()
    boxes = _boxes_by_image(ds)
    notes = []
    with exclusive_output(out, overwrite=overwrite) as tmp:
        n_boxes = 0
        for row in meta.itertuples(index=False):
            sub = (row.split or "unassigned") if (split_folders and has_split) else ""
            src = root / row.file
            name = Path(row.file).name
            dest = tmp / "images" / sub / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dest)
            if row.label_file:
                b = boxes.get(row.image_id, _EMPTY)
                lines = [format_yolo_line(int(c), (x1, y1, x2, y2), int(row.width), int(row.height))
                         for c, x1, y1, x2, y2 in b[["class_id", "x1", "y1", "x2", "y2"]].itertuples(index=False)]
                label = tmp / "labels" / sub / f"{Path(name).stem}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
                n_boxes += len(lines)
        doc: dict[str, Any] = {}
        if split_folders and has_split:
            for s in SPLITS:
                if meta["split"].eq(s).any():
                    doc[s] = f"images/{s}"
            if "val" not in doc and "train" in doc:
                doc["val"] = doc["train"]
                notes.append("no val images: data.yaml uses train for val")
            n_un = int(meta["split"].eq("").sum())
            if n_un:
                notes.append(f"{n_un} image(s) without a split are in images/unassigned (not in data.yaml)")
        else:
            doc["train"] = "images"
            doc["val"] = "images"
        doc["nc"] = len(ds.classes)
        doc["names"] = {i: c for i, c in enumerate(ds.classes)}
        header = (f"# Exported by Cell Workbench {__version__} from {root}\n"
                  "# No 'path' key: ultralytics resolves train/val/test relative to this file.\n")
        write_text(tmp / "data.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return ExportResult(out, len(meta), n_boxes, notes)


def _link_or_copy(src: Path, dest: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"{src}: image listed in meta.csv is missing")
    try:
        os.link(src, dest)  # same file system: no copy, same bytes
    except OSError:
        shutil.copy2(src, dest)


# ----------------------------------------------------------------------------- COCO

def export_coco(root: str | Path, out_json: str | Path, *, split: str | None = None,
                absolute_paths: bool = False, overwrite: bool = False) -> ExportResult:
    """Write one COCO JSON for all images (or one ``split``).

    ``file_name`` is the image's path relative to the JSON's folder (``absolute_paths``:
    absolute), so the JSON re-imports in place; categories are ids 1..n in class order;
    ``segmentation`` holds the polygon where the dataset has one, else is empty; objects
    marked difficult carry ``"difficult": 1`` (pycocotools keeps extra keys; an evaluation that
    honours it ignores them, as VOC's does).
    """
    ds, root, out_json = _load(root, out_json)
    if out_json.exists() and not overwrite:
        raise FileExistsError(f"{out_json}: file exists (use --overwrite to replace it)")
    meta = select_split(ds.images, split, root)
    notes = []
    unlabelled = meta["label_file"].eq("")
    if unlabelled.any():
        notes.append(f"{int(unlabelled.sum())} unlabelled image(s) left out (COCO cannot mark an image "
                     "as not labelled; listed without annotations it would mean 'no objects')")
        meta = meta[~unlabelled]
    boxes = _boxes_by_image(ds)
    extras = _object_extras(ds)
    base = out_json.resolve().parent
    images, annotations = [], []
    for k, row in enumerate(meta.itertuples(index=False), 1):
        path = (root / row.file).resolve()
        images.append({"id": k, "file_name": str(path) if absolute_paths else _relpath(path, base),
                       "width": int(row.width), "height": int(row.height)})
        b = boxes.get(row.image_id, _EMPTY)
        extra = extras.get(row.image_id, [(None, False)] * len(b))
        for (c, x1, y1, x2, y2), (poly, difficult) in zip(
                b[["class_id", "x1", "y1", "x2", "y2"]].itertuples(index=False), extra):
            w, h = x2 - x1, y2 - y1
            seg = [[round(float(v), 2) for xy in poly for v in xy]] if poly else []
            annotations.append({
                "id": len(annotations) + 1, "image_id": k, "category_id": int(c) + 1,
                "bbox": [round(float(v), 3) for v in (x1, y1, w, h)],
                "area": round(float(_polygon_area(poly) if poly else w * h), 3),
                "iscrowd": 0, "segmentation": seg, **({"difficult": 1} if difficult else {})})
    doc = {
        "info": {"description": f"Exported by Cell Workbench {__version__} from {root}",
                 "version": __version__,
                 "date_created": utc_now()},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "none"} for i, c in enumerate(ds.classes)],
    }
    write_text(out_json, json.dumps(doc) + "\n")
    return ExportResult(out_json, len(images), len(annotations), notes)


def _relpath(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute path works
        return str(path)


def _polygon_area(poly: list[tuple[float, float]]) -> float:
    xy = np.asarray(poly, dtype=float)
    return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))


# ----------------------------------------------------------------------------- labelme

def export_labelme(root: str | Path, out_dir: str | Path, *, image_data: bool = False,
                   overwrite: bool = False) -> ExportResult:
    """Write one labelme JSON per labelled image into ``out_dir``.

    Objects with a polygon (MoNuSeg, masks) are ``polygon`` shapes, others ``rectangle``;
    coordinates are rounded to 0.01 px (the labels' own precision, no float noise); a
    difficult object carries ``flags: {"difficult": true}``. ``imagePath`` is relative to the
    JSON (pointing into the canonical dataset); ``image_data`` embeds the image file as base64
    ``imageData`` so the JSON stands alone.
    """
    ds, root, out_dir = _load(root, out_dir)
    meta = ds.images
    boxes = _boxes_by_image(ds)
    extras = _object_extras(ds)
    notes, n_boxes, n_images, n_polygons = [], 0, 0, 0
    final = out_dir.resolve()
    with exclusive_output(out_dir, overwrite=overwrite) as tmp:
        for row in meta.itertuples(index=False):
            if not row.label_file:
                continue
            src = (root / row.file).resolve()
            stem = Path(row.file).stem
            b = boxes.get(row.image_id, _EMPTY)
            extra = extras.get(row.image_id, [(None, False)] * len(b))
            shapes = [_labelme_shape(cls, (x1, y1, x2, y2), poly, difficult) for (cls, x1, y1, x2, y2), (poly, difficult)
                      in zip(b[["class", "x1", "y1", "x2", "y2"]].itertuples(index=False), extra)]
            n_polygons += sum(sh["shape_type"] == "polygon" for sh in shapes)
            doc = {"version": LABELME_VERSION, "flags": {}, "shapes": shapes,
                   "imagePath": _relpath(src, final),
                   "imageData": base64.b64encode(src.read_bytes()).decode("ascii") if image_data else None,
                   "imageHeight": int(row.height), "imageWidth": int(row.width)}
            (tmp / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            n_boxes += len(shapes)
            n_images += 1
        n_un = len(meta) - n_images
        if n_un:
            notes.append(f"{n_un} unlabelled image(s) have no JSON (labelme's way of saying 'not annotated')")
        if n_polygons:
            notes.append(f"{n_polygons} object(s) written as polygon shapes (their box is the polygon's extent)")
    return ExportResult(out_dir, n_images, n_boxes, notes)


def _labelme_shape(cls: str, box: tuple[float, float, float, float], polygon: list | None,
                   difficult: bool) -> dict[str, Any]:
    """One labelme shape: the polygon where there is one, else the box as a rectangle."""
    if polygon:
        kind, points = "polygon", [[round(float(x), 2), round(float(y), 2)] for x, y in polygon]
    else:
        x1, y1, x2, y2 = (round(float(v), 2) for v in box)  # 6-decimal labels: 0.01 px is their precision
        kind, points = "rectangle", [[x1, y1], [x2, y2]]
    return {"label": cls, "points": points, "group_id": None, "description": "", "shape_type": kind,
            "flags": {"difficult": True} if difficult else {}}


# ----------------------------------------------------------------------------- shared

EXPORTERS: dict[str, Callable[..., ExportResult]] = {
    "yolo": export_yolo, "coco": export_coco, "labelme": export_labelme}


def export(root: str | Path, fmt: str, out: str | Path, **options: Any) -> ExportResult:
    """Export the canonical dataset ``root`` as ``fmt`` (a key of :data:`EXPORTERS`) to ``out``."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORTERS)}")
    return EXPORTERS[fmt](root, out, **options)


_EMPTY = pd.DataFrame(columns=["class_id", "class", "x1", "y1", "x2", "y2"])


def _load(root: str | Path, out: str | Path) -> tuple[Dataset, Path, Path]:
    """Load the dataset (refusing malformed labels) and check ``out`` lies outside it."""
    root, out = Path(root), Path(out)
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise ValueError(f"{out}: the export must go outside the source dataset {root}")
    log = ProblemLog()
    ds = load_dataset(root, log)
    bad = ds.objects[ds.objects["class"] == "?"]
    for image_id, cid in bad[["image_id", "class_id"]].itertuples(index=False):
        log.add(f"{root}/labels ({image_id})", "unknown_class",
                f"class id {cid} is not in dataset.yaml names", action="export refused", severity="error")
    if len(log):
        raise ValueError(f"{root}: cannot export, the labels have {len(log)} problem(s):\n"
                         + "\n".join(f"  {p}" for p in log))
    return ds, root, out


def _boxes_by_image(ds: Dataset) -> dict[str, pd.DataFrame]:
    """image_id -> its boxes in label order, clipped to the image.

    Canonical boxes lie inside the image (write_canonical clipped them); the clip only
    removes the rounding of the 6-decimal label files (x2 = 640.0003 on a 640 px image).
    """
    size = ds.images.set_index("image_id")[["width", "height"]]
    obj = ds.objects.join(size, on="image_id")
    for a, lim in (("x1", "width"), ("x2", "width"), ("y1", "height"), ("y2", "height")):
        obj[a] = obj[a].clip(lower=0.0, upper=obj[lim].astype(float))
    return {k: g for k, g in obj.groupby("image_id", sort=False)}


def _object_extras(ds: Dataset) -> dict[str, list[tuple[list[tuple[float, float]] | None, bool]]]:
    """image_id -> (polygon, difficult) per box, from objects.csv where its rows match the labels.

    objects.csv is written in label-line order; if the labels were edited since (counts or
    classes differ) its rows are no longer trustworthy and are dropped for that image.
    """
    path = ds.root / "objects.csv"
    if not path.exists():
        return {}
    objs = pd.read_csv(path, dtype={"image_id": str, "class": str, "polygon": str}, keep_default_na=False)
    has_poly = "polygon" in objs and objs["polygon"].ne("").any()
    difficult = pd.to_numeric(objs.get("difficult", pd.Series(0, index=objs.index)), errors="coerce").fillna(0)
    if not has_poly and not difficult.gt(0).any():
        return {}
    polys = objs["polygon"] if has_poly else pd.Series("", index=objs.index)
    objs = objs.assign(_poly=polys, _difficult=difficult.gt(0))
    boxes = _boxes_by_image(ds)
    out = {}
    for image_id, g in objs.groupby("image_id", sort=False):
        b = boxes.get(image_id)
        if b is None or len(b) != len(g) or list(b["class"]) != list(g["class"]):
            continue
        out[image_id] = [([tuple(p) for p in json.loads(s)] if s else None, bool(d))
                         for s, d in zip(g["_poly"], g["_difficult"])]
    return out
