"""COCO object detection JSON: ``images``, ``annotations`` (bbox ``[x, y, w, h]``), ``categories``.

``src`` is the ``.json`` file or a folder holding exactly one. Image files are looked up by
``file_name`` (absolute, or relative to the ``images`` option, then the JSON's folder, then
``images/`` beside it), falling back to the bare file name anywhere below those folders.

Choices (recorded in ``problems.csv``):

* classes are the categories in id order (so ids 1..n keep their order);
* ``iscrowd: 1`` annotations are skipped (a crowd region covers several objects and would
  count as one cell) with a warning naming the annotation;
* polygon segmentations become the object's polygon (the largest part when there are
  several); RLE masks keep only the box;
* an image listed without annotations has no objects (COCO has no "unlabelled" marker); one
  whose annotations were all rejected is imported unlabelled, not as an image without objects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.data.canonical import RawDataset, RawImage, RawObject
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import parse_json
from workbench.data.importers.locate import ImageIndex, find_one_json, resolve_relative, unique_ids


def read(src: Path, *, images: str | Path | None = None, **_: Any) -> RawDataset:
    """Parse a COCO JSON file (or the one JSON in a folder)."""
    json_path = find_one_json(src, "COCO")
    log = ProblemLog()
    doc = parse_json(json_path, log)
    if doc is None:
        raise ValueError(f"{json_path}: cannot read COCO JSON:\n{log.summary()}\n"
                         + "\n".join(str(p) for p in log))
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{json_path}: not a COCO detection file (needs 'images' and 'annotations' lists)")

    classes, cat_name = _categories(doc.get("categories") or [], json_path, log)
    bases = ([Path(images)] if images else []) + [json_path.parent, json_path.parent / "images"]
    index = None  # built only when a file_name does not resolve directly

    records: list[tuple[int, Path, dict]] = []
    for k, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            log.add(json_path, "invalid_image_entry", "image entry lacks 'id' or 'file_name'",
                    action="skipped", severity="error", object=f"images[{k}]")
            continue
        name = str(im["file_name"])
        path = resolve_relative(name, bases)
        if path is None:
            index = index or ImageIndex(bases)
            hits = index.find(name)
            path = hits[0] if hits else None
        if path is None:
            log.add(json_path, "missing_image", f"file {name!r} not found in {', '.join(map(str, bases))}",
                    action="skipped image and its annotations", severity="error", object=f"image id {im['id']}")
            continue
        records.append((im["id"], path, im))

    by_id: dict[Any, list[RawObject]] = {}
    rejected: dict[Any, int] = {}
    for image_id, _, im in records:
        if image_id in by_id:
            log.add(json_path, "duplicate_image_id", f"image id {image_id} is listed twice",
                    action="annotations go to the first", severity="error", object=f"image id {image_id}")
        by_id.setdefault(image_id, [])
    listed = {im.get("id") for im in doc["images"] if isinstance(im, dict)}
    for k, ann in enumerate(doc["annotations"]):
        obj = _annotation(ann, k, cat_name, listed, json_path, log)
        owner = ann.get("image_id") if isinstance(ann, dict) and _hashable(ann.get("image_id")) else None
        if owner in by_id:
            if obj is None:
                rejected[owner] = rejected.get(owner, 0) + 1
            else:
                by_id[owner].append(obj)

    ids = unique_ids([p for _, p, _ in records], None)
    out = []
    seen: set[Any] = set()
    for (image_id, path, im), rid in zip(records, ids):
        if image_id in seen:
            continue
        seen.add(image_id)
        out.append(RawImage(rid, path, by_id[image_id], json_path, _declared(im), {},
                            rejected=rejected.get(image_id, 0)))
    return RawDataset("coco", json_path, out, classes=classes, problems=log,
                      notes={"json": str(json_path), "category_ids": {c: i for i, c in cat_name.items()}})


def _categories(cats: list, json_path: Path, log: ProblemLog) -> tuple[list[str], dict[Any, str]]:
    valid = []
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            log.add(json_path, "invalid_category", "category lacks 'id' or 'name'", action="skipped",
                    severity="error", object=f"categories[{k}]")
            continue
        valid.append(c)
    valid.sort(key=lambda c: (not isinstance(c["id"], (int, float)), c["id"] if isinstance(c["id"], (int, float)) else str(c["id"])))
    classes: list[str] = []
    cat_name: dict[Any, str] = {}
    for c in valid:
        name = str(c["name"]).strip()
        if c["id"] in cat_name:
            log.add(json_path, "duplicate_category_id", f"category id {c['id']} is defined twice",
                    action=f"kept {cat_name[c['id']]!r}", severity="error", object=f"category id {c['id']}")
            continue
        if name in classes:
            log.add(json_path, "duplicate_class_name", f"category name {name!r} is used by two ids",
                    action="both ids map to one class", severity="warning", object=f"category id {c['id']}")
        else:
            classes.append(name)
        cat_name[c["id"]] = name
    return classes, cat_name


def _annotation(ann: Any, k: int, cat_name: dict[Any, str], listed: set[Any], json_path: Path,
                log: ProblemLog) -> RawObject | None:
    ref = f"annotation id {ann.get('id', '?')}" if isinstance(ann, dict) else f"annotations[{k}]"
    if not isinstance(ann, dict) or "image_id" not in ann or not _hashable(ann["image_id"]):
        log.add(json_path, "invalid_annotation", "annotation lacks an 'image_id' (a number or string)",
                action="skipped", severity="error", object=ref)
        return None
    if ann["image_id"] not in listed:
        log.add(json_path, "unknown_image_id", f"image_id {ann['image_id']!r} is not in 'images'",
                action="skipped object", severity="error", object=ref)
        return None
    if ann.get("category_id") not in cat_name:
        log.add(json_path, "unknown_category_id",
                f"category_id {ann.get('category_id')!r} is not in 'categories' (ids {sorted(cat_name, key=str)})",
                action="skipped object", severity="error", object=ref)
        return None
    if ann.get("iscrowd"):
        log.add(json_path, "crowd_annotation", "iscrowd=1 (one region covering several objects)",
                action="skipped object", severity="warning", object=ref)
        return None
    polygon = _largest_polygon(ann.get("segmentation"))
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        if polygon is None:
            log.add(json_path, "invalid_box", f"bbox {bbox!r} is not [x, y, width, height]",
                    action="skipped object", severity="error", object=ref)
            return None
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        log.add(json_path, "invalid_box", f"bbox {bbox!r} is not [x, y, width, height]",
                action="box taken from the polygon", severity="warning", object=ref)
    return RawObject(cat_name[ann["category_id"]], x, y, x + w, y + h, ref, polygon,
                     difficult=bool(ann.get("difficult")))


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _largest_polygon(seg: Any) -> list[tuple[float, float]] | None:
    if not isinstance(seg, list) or not seg:
        return None  # RLE (dict) or no segmentation
    parts = seg if isinstance(seg[0], list) else [seg]
    best, best_area = None, -1.0
    for part in parts:
        try:
            xy = np.asarray(part, dtype=float).reshape(-1, 2)
        except (TypeError, ValueError):
            continue
        if len(xy) < 3:
            continue
        area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
        if area > best_area:
            best, best_area = [(float(a), float(b)) for a, b in xy], area
    return best


def _declared(im: dict) -> tuple[int, int] | None:
    try:
        return int(im["width"]), int(im["height"])
    except (KeyError, TypeError, ValueError):
        return None
