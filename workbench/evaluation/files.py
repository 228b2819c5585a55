"""``evaluate``: ground truth + predictions (files) -> metrics.json, tidy tables and a PR figure.

GT is a canonical dataset folder (``split`` selects one split; unlabelled images are left
out, images without boxes count as negatives) or a COCO JSON. Predictions are a prediction
table (CSV/parquet: image, x1, y1, x2, y2, class, score) or a COCO results JSON.
All numbers come from :mod:`workbench.evaluation.metrics` (one matching behind every figure).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.evaluation import metrics
from workbench.core.atomic import new_folder


@dataclass
class GroundTruth:
    boxes: pd.DataFrame  # image, class, x1, y1, x2, y2
    images: list[str]  # every evaluated image, with or without boxes
    classes: list[str]
    meta: pd.DataFrame | None  # per-image table (canonical datasets), index image id
    coco: dict[str, Any] | None  # the COCO document when GT came from one
    source: str


def load_ground_truth(path: str | Path, *, split: str | None = None) -> GroundTruth:
    """Read GT from a canonical dataset folder or a COCO JSON file."""
    path = Path(path)
    if path.is_dir():
        from workbench.data.canonical import load_dataset

        ds = load_dataset(path)
        from workbench.data.canonical import select_split

        meta = select_split(ds.images, split or None, path)
        meta = meta[meta["labelled"].astype(str).str.lower() == "true"]
        boxes = ds.objects[ds.objects["image_id"].isin(set(meta["image_id"]))]
        boxes = boxes.rename(columns={"image_id": "image"})[["image", "class", "x1", "y1", "x2", "y2"]]
        return GroundTruth(boxes.reset_index(drop=True), meta["image_id"].astype(str).tolist(), ds.classes,
                           meta.set_index("image_id"), None, str(path) + (f" (split {split})" if split else ""))
    if path.suffix.lower() == ".json":
        coco = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(coco, dict) or "images" not in coco:
            raise ValueError(f"{path}: not a COCO ground-truth JSON (needs 'images', 'annotations', 'categories')")
        boxes = metrics.gt_from_coco(coco)
        classes = [c["name"] for c in sorted(coco.get("categories", []), key=lambda c: c["id"])]
        return GroundTruth(boxes, list(boxes.attrs["images"]), classes, None, coco, str(path))
    raise ValueError(f"{path}: ground truth must be a canonical dataset folder or a COCO .json file")


def load_predictions(path: str | Path, gt: GroundTruth) -> pd.DataFrame:
    """Read a prediction table (CSV/parquet) or a COCO results JSON (needs COCO-compatible GT)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: prediction file not found")
    if path.suffix.lower() == ".json":
        results = json.loads(path.read_text(encoding="utf-8"))
        coco = gt.coco if gt.coco is not None else metrics.gt_to_coco(gt.boxes, images=gt.images, classes=gt.classes)
        return metrics.preds_from_coco(results, coco)
    from workbench.core.tables import read_predictions

    return _align_image_names(read_predictions(path), gt)


def _align_image_names(pred: pd.DataFrame, gt: GroundTruth) -> pd.DataFrame:
    """Let predictions name images by file stem when the GT names them by file name (COCO)."""
    known = set(gt.images)
    by_stem: dict[str, list[str]] = {}
    for name in gt.images:
        by_stem.setdefault(Path(name).stem, []).append(name)
    unique = {stem: names[0] for stem, names in by_stem.items() if len(names) == 1}
    names = pred["image"].astype(str)
    mapped = names.where(names.isin(known), names.map(unique).fillna(names))
    return pred.assign(image=mapped)


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    return v


def evaluate_tables(gt: GroundTruth, pred: pd.DataFrame, *, max_dets: int | None = None,
                    score_thr: float = 0.5, iou_thr: float = 0.5, n_boot: int = 1000,
                    seed: int = 0) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Compute the metrics document and tidy tables (pure: no file I/O)."""
    known = set(gt.images)
    outside = sorted(set(pred["image"].astype(str)) - known)
    if len(pred) and len(outside) == pred["image"].astype(str).nunique():
        # every score would be 0 for a reason that is not the model's: say so instead
        raise ValueError(f"no prediction names an image of the ground truth {gt.source}: predictions name "
                         f"{outside[:3]}{' ...' if len(outside) > 3 else ''}, the ground truth "
                         f"{sorted(known)[:3]}{' ...' if len(known) > 3 else ''} (image ids of a canonical "
                         "dataset, or file names / stems of a COCO file)")
    pred = pred[pred["image"].astype(str).isin(known)].reset_index(drop=True)
    result = metrics.evaluate(gt.boxes, pred, max_dets=max_dets, classes=gt.classes)
    matches = metrics.match(gt.boxes, pred, iou_thr=iou_thr, max_dets=result.max_dets)
    prf = metrics.prf_from_matches(matches, score_thr=score_thr)
    confusion = metrics.confusion_matrix(gt.boxes, pred, score_thr=score_thr, iou_thr=iou_thr,
                                         classes=gt.classes, max_dets=result.max_dets)
    counts = metrics.count_metrics(gt.boxes, pred, score_thr=score_thr, images=gt.images)
    ci = (metrics.bootstrap_ci(gt.boxes, pred, n_boot=n_boot, seed=seed, score_thr=score_thr,
                               iou_thr=iou_thr, max_dets=result.max_dets, images=gt.images)
          if n_boot > 0 else pd.DataFrame(columns=["metric", "estimate", "lo", "hi"]))
    overall = prf[prf["class"] == metrics.OVERALL].iloc[0].to_dict() if (prf["class"] == metrics.OVERALL).any() else {}
    doc = {
        "gt": gt.source, "n_images": len(gt.images), "n_gt": int(len(gt.boxes)), "n_pred": int(len(pred)),
        "classes": gt.classes,
        "map50": result.map50, "map50_95": result.map50_95,
        "per_class": result.per_class,
        "max_dets": result.max_dets, "max_dets_note": "detections kept per image and class; COCO's default 100 "
        "would truncate dense images (see workbench.evaluation.metrics.default_max_dets)",
        "n_capped": result.n_capped, "iou_thresholds": list(result.iou_thresholds),
        "score_thr": score_thr, "iou_thr": iou_thr,
        "precision": overall.get("precision"), "recall": overall.get("recall"), "f1": overall.get("f1"),
        "counting": {"mae": counts.mae, "mean_error": counts.mean_error,
                     "mean_rel_error": counts.mean_rel_error, "pearson_r": counts.pearson_r},
        "ci": {r.metric: {"lo": r.lo, "hi": r.hi, "estimate": r.estimate} for r in ci.itertuples()},
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "image"},
        "predictions_outside_gt_images": len(outside),
    }
    tables = {"per_class": result.per_class_table(), "pr_curves": result.pr_curves, "prf": prf,
              "confusion": confusion, "counts": counts.table, "bootstrap": ci, "matches": matches}
    return _clean(doc), tables


def evaluate_files(gt_path: str | Path, pred_path: str | Path, out: str | Path, *, split: str | None = None,
                   max_dets: int | None = None, score_thr: float = 0.5, iou_thr: float = 0.5,
                   n_boot: int = 1000, seed: int = 0, overwrite: bool = True,
                   extra: Callable[[GroundTruth, pd.DataFrame], dict[str, Any]] | None = None) -> Path:
    """Evaluate ``pred_path`` against ``gt_path``; write ``out/metrics.json``, CSV tables and
    ``out/pr_curves.{png,pdf}``. ``extra(gt, pred)`` may add sections (e.g. clinical rates)."""
    gt = load_ground_truth(gt_path, split=split)
    pred = load_predictions(pred_path, gt)
    doc, tables = evaluate_tables(gt, pred, max_dets=max_dets, score_thr=score_thr, iou_thr=iou_thr,
                                  n_boot=n_boot, seed=seed)
    doc["pred"] = str(pred_path)
    if extra is not None:
        doc.update(_clean(extra(gt, pred)))
    from workbench.report.study_plots import pr_curves

    with new_folder(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        fig = pr_curves(tables["pr_curves"], title=f"PR curves (IoU 0.5) — mAP50 {doc['map50'] or float('nan'):.3f}")
        from workbench.report.figures import save_figure

        save_figure(fig, tmp / "pr_curves", caption=f"Precision-recall at IoU 0.5, {gt.source} vs {pred_path}",
                    provenance={"gt": gt.source, "pred": str(pred_path), "max_dets": doc["max_dets"]}, dpi=150)
    return Path(out)
