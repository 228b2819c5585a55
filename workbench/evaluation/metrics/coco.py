"""COCO JSON conversion: GT and prediction tables to and from pycocotools' dicts and files.

Images get ids 1..N in name order, so pycocotools breaks score ties across images the way
:func:`~.matching.run_core` does (by image name) and both give the same numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from workbench.evaluation.metrics.boxes import GT_COLUMNS, PRED_COLUMNS, parse_gt, parse_pred, sorted_union

__all__ = ["gt_from_coco", "gt_to_coco", "preds_from_coco", "preds_to_coco"]


def _load_json(obj: Any, name: str) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        with open(obj, encoding="utf-8") as fh:
            return json.load(fh)
    return obj


def gt_to_coco(
    gt: pd.DataFrame,
    *,
    images: Iterable[str] | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """GT table to a COCO ground-truth dict (``images``, ``annotations``, ``categories``).

    Images (of the table plus ``images``) get ids 1..N in name order and
    ``file_name`` = the image id; categories ids 1..K in ``classes`` order
    (default sorted); annotations ids 1..M in table order, ``bbox`` =
    ``[x1, y1, x2 - x1, y2 - y1]``, ``area`` = box area. ``ignore`` rows are
    written with ``"ignore": 1`` (pycocotools disregards that flag).
    """
    g = parse_gt(gt)
    names = sorted_union(g.image, () if images is None else images)
    cls_names = [str(c) for c in classes] if classes is not None else sorted_union(g.cls)
    unknown = sorted(set(g.cls) - set(cls_names))
    if unknown:
        raise ValueError(f"gt has classes not in `classes`: {unknown}")
    img_id = {n: i + 1 for i, n in enumerate(names)}
    cat_id = {c: k + 1 for k, c in enumerate(cls_names)}
    only_ignore = g.ignore & ~g.crowd
    anns = []
    for i in range(len(g)):
        x, y, w, h = (float(v) for v in g.xywh[i])
        ann = {
            "id": i + 1,
            "image_id": img_id[g.image[i]],
            "category_id": cat_id[g.cls[i]],
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": int(g.crowd[i]),
        }
        if only_ignore[i]:
            ann["ignore"] = 1
        anns.append(ann)
    return {
        "images": [{"id": img_id[n], "file_name": n} for n in names],
        "annotations": anns,
        "categories": [{"id": cat_id[c], "name": c} for c in cls_names],
    }


def _coco_maps(coco: Mapping[str, Any]) -> tuple[dict[Any, str], dict[Any, str]]:
    for key in ("images", "categories"):
        if key not in coco:
            raise ValueError(f"COCO ground truth has no '{key}' list")
    images = {im["id"]: str(im.get("file_name", im["id"])) for im in coco["images"]}
    if len(set(images.values())) != len(images):
        raise ValueError("COCO ground truth has duplicate image file_name values")
    cats = {c["id"]: str(c["name"]) for c in coco["categories"]}
    if len(set(cats.values())) != len(cats):
        raise ValueError("COCO ground truth has duplicate category names")
    return images, cats


def gt_from_coco(coco: Mapping[str, Any] | str | os.PathLike) -> pd.DataFrame:
    """COCO ground truth (dict or JSON path) to a GT table.

    ``image`` is the image's ``file_name`` (its id as text when absent),
    ``class`` the category name. ``attrs["images"]`` lists every image,
    including those without annotations (pass it as ``images=`` to
    :func:`count_metrics` / :func:`bootstrap_ci`).
    """
    d = _load_json(coco, "coco")
    images, cats = _coco_maps(d)
    rows = []
    for a in d.get("annotations", []):
        x, y, w, h = (float(v) for v in a["bbox"])
        rows.append(
            (images[a["image_id"]], cats[a["category_id"]], x, y, x + w, y + h,
             bool(a.get("iscrowd", 0)), bool(a.get("ignore", 0)))
        )  # fmt: skip
    df = pd.DataFrame(rows, columns=[*GT_COLUMNS, "iscrowd", "ignore"])
    df = df.astype({"image": str, "class": str, "x1": float, "y1": float, "x2": float,
                    "y2": float, "iscrowd": bool, "ignore": bool})  # fmt: skip
    df.attrs["images"] = [images[k] for k in sorted(images)]
    return df


def preds_to_coco(pred: pd.DataFrame, coco_gt: Mapping[str, Any] | str | os.PathLike) -> list[dict[str, Any]]:
    """Prediction table to a COCO results list, ids taken from ``coco_gt``.

    Raises ValueError for images or classes that ``coco_gt`` does not have
    (pycocotools' ``loadRes`` would reject them too).
    """
    p = parse_pred(pred)
    images, cats = _coco_maps(_load_json(coco_gt, "coco_gt"))
    img_id = {v: k for k, v in images.items()}
    cat_id = {v: k for k, v in cats.items()}
    bad_img = sorted(set(p.image) - set(img_id))
    if bad_img:
        raise ValueError(f"pred has images not in the COCO ground truth: {bad_img[:5]}")
    bad_cls = sorted(set(p.cls) - set(cat_id))
    if bad_cls:
        raise ValueError(f"pred has classes not in the COCO ground truth: {bad_cls}")
    return [
        {
            "image_id": img_id[p.image[i]],
            "category_id": cat_id[p.cls[i]],
            "bbox": [float(v) for v in p.xywh[i]],
            "score": float(p.score[i]),
        }
        for i in range(len(p))
    ]


def preds_from_coco(
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    coco_gt: Mapping[str, Any] | str | os.PathLike,
) -> pd.DataFrame:
    """COCO results list (or JSON path) to a prediction table, names from ``coco_gt``."""
    res = _load_json(results, "results")
    images, cats = _coco_maps(_load_json(coco_gt, "coco_gt"))
    rows = []
    for i, r in enumerate(res):
        if r["image_id"] not in images or r["category_id"] not in cats:
            raise ValueError(
                f"result {i} refers to image_id {r['image_id']!r} / category_id "
                f"{r['category_id']!r} missing from the COCO ground truth"
            )
        x, y, w, h = (float(v) for v in r["bbox"])
        rows.append((images[r["image_id"]], cats[r["category_id"]], x, y, x + w, y + h, float(r["score"])))
    df = pd.DataFrame(rows, columns=list(PRED_COLUMNS))
    return df.astype({"image": str, "class": str, "x1": float, "y1": float, "x2": float,
                      "y2": float, "score": float})  # fmt: skip
