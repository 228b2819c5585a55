"""The cascade: a YOLO detector finds cells, a crop classifier (re)labels each of them.

Decision rule for every detected box (``fuse``):

* the detector keeps boxes with ``det_score >= det_conf`` (published default 0.5);
* the classifier sees the box's crop (its own crop settings) and gives class probabilities;
  ``cls_class`` is its most probable class and ``cls_prob`` that probability;
* ``final_class = cls_class`` when ``cls_prob >= cls_thr``, else the detector's class
  (``cls_thr = 0``, the default: the classifier always decides);
* ``final_prob`` is the classifier's probability of ``final_class`` and
  ``score = det_score * final_prob`` (how sure the cascade is that this is a cell *and* of
  this class; it ranks boxes for AP). Where the final class is not one the classifier
  knows (a detector class outside the classifier's classes), ``score = det_score``;
* ``changed`` is True where ``final_class != det_class``.

The output has the prediction-table columns ``image x1 y1 x2 y2 class score`` (``class`` =
``final_class``) followed by ``det_class det_score cls_class cls_prob final_class final_prob
changed``, so every table tool (evaluate, clinical rates) reads it as is.

Thresholds are tuned on a validation split with :func:`tune_thresholds` and frozen beside
the classifier as ``<classifier run>/cascade.json`` (detector path, ``det_conf``,
``cls_thr``, what was optimised, on which data); :func:`cascade_predict` reloads it, like
StarDist's ``thresholds.json``. Arguments given to it override the file.

Images are read once per chunk (8-bit RGB, with the detector's training normalisation), the
detector runs on those arrays and the classifier on all crops of the chunk in batches.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation import clinical
from workbench.evaluation import metrics
from workbench.core.atomic import write_text
from workbench.core.tables import PREDICTION_COLUMNS, empty_predictions, utc_now
from workbench.models.classifier import Classifier, load_classifier
from workbench.models.crops import as_rgb, crop_table, read_rgb
from workbench.core.device import pick_device
from workbench.core.images import to_uint8

CASCADE_FILE = "cascade.json"
DEFAULT_DET_CONF = 0.5
DEFAULT_CLS_THR = 0.0
EXTRA_COLUMNS = ["det_class", "det_score", "cls_class", "cls_prob", "final_class", "final_prob", "changed"]
COLUMNS = PREDICTION_COLUMNS + EXTRA_COLUMNS
OBJECTIVES = ("f1", "macro_f1", "correct_rate")
DEFAULT_DET_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_CLS_GRID = (0.0, 0.3, 0.5, 0.7, 0.9)


# ----------------------------------------------------------------------------- cascade.json

def read_cascade(classifier_run: str | Path) -> dict[str, Any] | None:
    """The frozen cascade settings of a classifier run, or None if it has none."""
    path = Path(classifier_run) / CASCADE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    for key in ("det_conf", "cls_thr"):
        if key not in doc:
            raise ValueError(f"{path}: lacks {key!r}")
    return doc


def write_cascade(classifier_run: str | Path, *, detector: str | Path | None, det_conf: float = DEFAULT_DET_CONF,
                  cls_thr: float = DEFAULT_CLS_THR, tuning: Mapping[str, Any] | None = None) -> Path:
    """Freeze the cascade settings beside the classifier (``cascade.json``, atomically)."""
    run = Path(classifier_run)
    if not (run / "run.json").is_file():
        raise FileNotFoundError(f"{run}: not a classifier run folder (no run.json)")
    _check_thresholds(det_conf, cls_thr)
    doc = {"format": "workbench-cascade/1", "created": utc_now(),
           "detector": str(Path(detector).expanduser().resolve()) if detector is not None else None,
           "det_conf": float(det_conf), "cls_thr": float(cls_thr),
           "rule": "final_class = cls_class if cls_prob >= cls_thr else det_class; "
                   "score = det_score * classifier probability of final_class",
           "tuning": dict(tuning) if tuning else None}
    return write_text(run / CASCADE_FILE, json.dumps(doc, indent=2, default=str) + "\n")


def _check_thresholds(det_conf: float, cls_thr: float) -> None:
    if not 0 <= det_conf <= 1 or not 0 <= cls_thr <= 1:
        raise ValueError(f"need 0 <= det_conf <= 1 and 0 <= cls_thr <= 1, got {det_conf}, {cls_thr}")


# ----------------------------------------------------------------------------- the rule

def fuse(det: pd.DataFrame, probs: np.ndarray, classes: Sequence[str], *, cls_thr: float = DEFAULT_CLS_THR) -> pd.DataFrame:
    """Apply the decision rule to detections (prediction table) and their class probabilities.

    ``probs``: (N, K) classifier probabilities over ``classes``, rows aligned with ``det``.
    Returns the cascade table (see the module docstring), in ``det``'s order.
    """
    probs = np.asarray(probs, dtype=float).reshape(len(det), len(classes))
    names = np.asarray([str(c) for c in classes], dtype=object)
    det_class = det["class"].astype(str).to_numpy(dtype=object)
    det_score = det["score"].to_numpy(dtype=float)
    top = probs.argmax(axis=1) if len(det) else np.zeros(0, np.int64)
    cls_class = names[top] if len(det) else np.zeros(0, dtype=object)
    cls_prob = probs[np.arange(len(det)), top] if len(det) else np.zeros(0)
    final_class = np.where(cls_prob >= cls_thr, cls_class, det_class)
    col = pd.Index(names).get_indexer(final_class)
    final_prob = np.where(col >= 0, probs[np.arange(len(det)), np.maximum(col, 0)], np.nan) if len(det) else np.zeros(0)
    score = np.where(np.isnan(final_prob), det_score, det_score * np.nan_to_num(final_prob))
    out = det[["image", "x1", "y1", "x2", "y2"]].reset_index(drop=True).copy()
    out["class"] = pd.Series(final_class, dtype=str)
    out["score"] = score
    out["det_class"] = pd.Series(det_class, dtype=str)
    out["det_score"] = det_score
    out["cls_class"] = pd.Series(cls_class, dtype=str)
    out["cls_prob"] = cls_prob.astype(float)
    out["final_class"] = pd.Series(final_class, dtype=str)
    out["final_prob"] = final_prob.astype(float)
    out["changed"] = (final_class != det_class).astype(bool)
    return out


def detector_only(cascade: pd.DataFrame) -> pd.DataFrame:
    """The detector's own prediction table from a cascade table (same boxes, det class/score)."""
    missing = [c for c in ("det_class", "det_score") if c not in cascade.columns]
    if missing:
        raise ValueError(f"not a cascade table: lacks {missing}")
    return (cascade[["image", "x1", "y1", "x2", "y2"]]
            .assign(**{"class": cascade["det_class"].astype(str), "score": cascade["det_score"].astype(float)})
            .reset_index(drop=True))


def empty_table() -> pd.DataFrame:
    """A cascade table with no rows (the prediction columns and the cascade's own)."""
    return fuse(empty_predictions(), np.zeros((0, 1)), ["?"])


# ----------------------------------------------------------------------------- inference

def _raw(classifier: Classifier, source: Any, *, detector: Any, split: str | None, det_conf: float,
         device: str | None, iou: float, imgsz: int | None, max_det: int | None, batch: int, cls_batch: int,
         chunk: int, extra: Callable[[str], np.ndarray] | None, tiles: Any = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Detections at ``det_conf`` and the classifier's probabilities for each (rows aligned).
    With ``tiles`` (a ``TileSettings``) detection is tiled and merged across tiles first; the
    classifier then sees each merged box's crop of the whole image."""
    from workbench.inference.predict import image_items, load_detector, predict
    from workbench.inference.tiled_inference import YoloDetector, tiled_predict

    loaded = load_detector(detector, imgsz=imgsz, max_det=max_det)
    yolo, imgsz, max_det, norm = loaded.yolo, loaded.imgsz, loaded.max_det, loaded.normalisation
    items = image_items(source, split=split)
    dev = pick_device(device)
    needs = classifier.in_chans - 3 - int(classifier.spec.box_mask)
    if needs and extra is None:
        raise ValueError(f"the classifier expects {needs} extra input channel(s): pass extra= "
                         "(a function image name -> (H, W[, k]) uint8 array)")
    tables, probs = [], []
    for start in range(0, len(items), max(1, chunk)):
        part = items[start:start + chunk]
        pixels = {name: (read_rgb(item, norm) if not isinstance(item, np.ndarray) else as_rgb(to_uint8(item, norm)[0]))
                  for name, item in part}
        if tiles is None:
            det = predict(yolo, pixels, conf=det_conf, iou=iou, imgsz=imgsz, device=dev, max_det=max_det, batch=batch)
        else:
            det = tiled_predict(YoloDetector(yolo, conf=det_conf, iou=iou, imgsz=tiles.tile, max_det=max_det,
                                             device=dev), pixels, settings=tiles)
        crops = crop_table(det, pixels, classifier.spec, extra=extra)
        tables.append(det)
        probs.append(classifier.predict_proba(crops, batch=cls_batch))
    det = pd.concat(tables, ignore_index=True) if tables else empty_predictions()
    p = np.concatenate(probs) if probs else np.zeros((0, len(classifier.classes)), np.float32)
    return det, p


def _resolve(classifier: str | Path | Classifier, detector: Any, det_conf: float | None, cls_thr: float | None,
             device: str | None) -> tuple[Classifier, Any, float, float, dict[str, Any] | None]:
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device=device)
    frozen = read_cascade(clf.path) if clf.path is not None else None
    if detector is None:
        detector = (frozen or {}).get("detector")
        if detector is None:
            where = f"{clf.path / CASCADE_FILE}" if clf.path is not None else "the classifier"
            raise ValueError(f"no detector given and none frozen in {where}; pass detector= "
                             "(a detector run folder or .pt weights)")
    det_conf = float(det_conf if det_conf is not None else (frozen or {}).get("det_conf", DEFAULT_DET_CONF))
    cls_thr = float(cls_thr if cls_thr is not None else (frozen or {}).get("cls_thr", DEFAULT_CLS_THR))
    _check_thresholds(det_conf, cls_thr)
    return clf, detector, det_conf, cls_thr, frozen


def cascade_predict(classifier: str | Path | Classifier, source: Any, *, detector: Any = None,
                    split: str | None = None, det_conf: float | None = None, cls_thr: float | None = None,
                    device: str | None = None, iou: float = 0.7, imgsz: int | None = None,
                    max_det: int | None = None, batch: int = 8, cls_batch: int = 256, chunk: int = 32,
                    extra: Callable[[str], np.ndarray] | None = None, tiles: Any = None) -> pd.DataFrame:
    """Run the cascade over ``source`` (as :func:`workbench.inference.predict.predict` accepts it).

    ``classifier``: a classifier run folder (its ``cascade.json`` supplies the detector and
    thresholds not given here) or a loaded :class:`~workbench.models.classifier.Classifier`.
    ``detector``: detector run folder, .pt, or loaded YOLO. ``tiles``: a
    :class:`~workbench.inference.tiled_inference.TileSettings` for large images: the detector runs on
    batched tiles at ``imgsz = tiles.tile`` and its boxes are merged across tiles before the
    classifier sees each box's crop of the whole image (so a cell cut by a tile edge is
    classified once, from its whole crop). Returns the cascade table (``attrs``: det_conf,
    cls_thr, detector, tiles).
    """
    clf, det_model, det_conf, cls_thr, _ = _resolve(classifier, detector, det_conf, cls_thr, device)
    det, probs = _raw(clf, source, detector=det_model, split=split, det_conf=det_conf, device=device, iou=iou,
                      imgsz=imgsz, max_det=max_det, batch=batch, cls_batch=cls_batch, chunk=chunk, extra=extra,
                      tiles=tiles)
    out = fuse(det, probs, clf.classes, cls_thr=cls_thr) if len(det) else empty_table()
    out.attrs.update(det_conf=det_conf, cls_thr=cls_thr, detector=str(det_model) if isinstance(det_model, (str, Path)) else "loaded model",
                     tiles=None if tiles is None else asdict(tiles))
    return out


# ----------------------------------------------------------------------------- tuning

def _objective(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float) -> dict[str, float]:
    """Every tuning objective of one prediction table (class-aware F1s, class-agnostic rates)."""
    m = metrics.match(gt, pred, iou_thr=iou_thr, max_dets=max(metrics.default_max_dets(gt), len(pred) or 1))
    prf = metrics.prf_from_matches(m, score_thr=0.0)
    per_class = prf[(prf["class"] != metrics.OVERALL) & (prf["n_gt"] > 0)]
    mc = clinical.cell_matches(gt, pred, iou_thr=iou_thr)
    g = ((mc["kind"] == "gt") & (mc["outcome"] != "ignored")).to_numpy()
    found = g & (mc["outcome"] == "tp").to_numpy()
    right = found & (mc["gt_class"].astype(object).to_numpy() == mc["pred_class"].astype(object).to_numpy())
    n_gt, n_found = int(g.sum()), int(found.sum())
    return {"f1": float(prf.loc[prf["class"] == metrics.OVERALL, "f1"].iloc[0]),
            "macro_f1": float(per_class["f1"].fillna(0).mean()) if len(per_class) else float("nan"),
            "correct_rate": right.sum() / n_gt if n_gt else float("nan"),
            "detection_rate": n_found / n_gt if n_gt else float("nan"),
            "classification_rate": right.sum() / n_found if n_found else float("nan"),
            "n_pred": len(pred)}


def tune_thresholds(classifier: str | Path | Classifier, dataset: str | Path, *, detector: Any = None,
                    split: str = "val", objective: str = "f1", det_grid: Sequence[float] = DEFAULT_DET_GRID,
                    cls_grid: Sequence[float] = DEFAULT_CLS_GRID, iou_thr: float = 0.5,
                    device: str | None = None, save: bool = True, **predict_options: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """Choose ``det_conf`` and ``cls_thr`` on a labelled split; freeze them in cascade.json.

    Objectives: ``f1`` (class-aware micro F1 at ``iou_thr``), ``macro_f1`` (mean F1 of the
    classes with GT: rare positive classes weigh as much as common ones), ``correct_rate``
    (share of GT cells both detected and correctly classified = detection rate x
    classification rate). The detector and classifier run once (at the lowest ``det_conf``);
    every grid point is then a filter of those results, exactly what a run at that
    threshold gives (NMS keeps a box only for higher-scoring boxes, which pass any cut that
    it passes). Ties go to the higher ``det_conf``, then the lower ``cls_thr``.

    Returns (the chosen settings, the grid table with every objective per point).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    dgrid = sorted({float(v) for v in det_grid})
    cgrid = sorted({float(v) for v in cls_grid})
    if not dgrid or not cgrid:
        raise ValueError("det_grid and cls_grid must not be empty")
    for d in dgrid:
        for c in cgrid:
            _check_thresholds(d, c)
    clf, det_model, _, _, _ = _resolve(classifier, detector, None, None, device)
    from workbench.evaluation.files import load_ground_truth

    gt = load_ground_truth(dataset, split=split)
    det, probs = _raw(clf, dataset, detector=det_model, split=split, det_conf=dgrid[0], device=device,
                      iou=predict_options.pop("iou", 0.7), imgsz=predict_options.pop("imgsz", None),
                      max_det=predict_options.pop("max_det", None), batch=predict_options.pop("batch", 8),
                      cls_batch=predict_options.pop("cls_batch", 256), chunk=predict_options.pop("chunk", 32),
                      extra=predict_options.pop("extra", None))
    if predict_options:
        raise TypeError(f"unknown options {sorted(predict_options)}")
    labelled = det["image"].astype(str).isin(set(gt.images)).to_numpy()  # unlabelled images: no GT to judge
    det, probs = det[labelled].reset_index(drop=True), probs[labelled]
    rows = []
    scores = det["score"].to_numpy(dtype=float) if len(det) else np.zeros(0)
    for d in dgrid:
        keep = scores >= d
        sub = det[keep].reset_index(drop=True)
        for c in cgrid:
            table = fuse(sub, probs[keep], clf.classes, cls_thr=c) if len(sub) else empty_table()
            rows.append({"det_conf": d, "cls_thr": c, **_objective(gt.boxes, table, iou_thr)})
    grid = pd.DataFrame(rows)
    ranked = grid.assign(_o=grid[objective].fillna(-np.inf)).sort_values(
        ["_o", "det_conf", "cls_thr"], ascending=[False, False, True], kind="stable")
    best = ranked.iloc[0]
    chosen = {"det_conf": float(best["det_conf"]), "cls_thr": float(best["cls_thr"]),
              "objective": objective, "value": float(best[objective]),
              "tuned_on": {"dataset": str(Path(dataset).resolve()), "split": split, "images": len(gt.images),
                           "iou_thr": iou_thr},
              "grid": {"det_conf": dgrid, "cls_thr": cgrid}}
    if save:
        if clf.path is None:
            raise ValueError("save=True needs a classifier run folder (not a loaded model) to write cascade.json")
        write_cascade(clf.path, detector=det_model if isinstance(det_model, (str, Path)) else None,
                      det_conf=chosen["det_conf"], cls_thr=chosen["cls_thr"],
                      tuning={k: v for k, v in chosen.items() if k not in ("det_conf", "cls_thr")})
        write_text(clf.path / "cascade_tuning.csv", grid.to_csv(index=False))
    return chosen, grid


# ----------------------------------------------------------------------------- errors

def attribute_errors(gt: pd.DataFrame, pred: pd.DataFrame, *, iou_thr: float = 0.5,
                     images: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which stage each error comes from, from ONE class-agnostic matching.

    Every GT cell is ``correct`` (matched, final class right), ``missed`` (no detection at
    IoU >= ``iou_thr``: the detector's error) or ``misclassified`` (detected, final class
    wrong: the classifier's error, since it has the last word); every unmatched prediction is
    ``spurious`` (the detector's error: the classifier cannot remove boxes). With a cascade
    table, ``det_class``/``changed`` tell whether the classifier fixed a wrong detector label
    (``fixed``) or broke a right one (``broken``).

    Returns (tidy table: one row per GT cell and per spurious prediction with image, error,
    stage, gt_class, det_class, final_class, changed, gt_id, pred_id, box; summary: one row
    per count with its share).
    """
    if images is not None:
        keep = {str(i) for i in images}
        gt = gt[gt["image"].astype(str).isin(keep)].reset_index(drop=True)
        pred = pred[pred["image"].astype(str).isin(keep)].reset_index(drop=True)
    m = clinical.cell_matches(gt, pred, iou_thr=iou_thr)
    has_det = "det_class" in pred.columns
    det_class_of = (pred["det_class"].astype(str).to_numpy(dtype=object) if has_det
                    else pred["class"].astype(str).to_numpy(dtype=object))
    is_gt = (m["kind"] == "gt").to_numpy()
    outcome = m["outcome"].astype(str).to_numpy()
    pred_id = m["pred_id"].to_numpy(dtype=float, na_value=np.nan)
    has_partner = ~np.isnan(pred_id)
    partner = np.where(has_partner, pred_id, 0).astype(np.int64)
    det_cls = np.where(has_partner, det_class_of[partner] if len(det_class_of) else None, None)
    gt_cls = m["gt_class"].astype(object).to_numpy()
    fin = m["pred_class"].astype(object).to_numpy()
    g = is_gt & (outcome != "ignored")
    s = ~is_gt & (outcome == "fp")
    error = np.full(len(m), "", dtype=object)
    error[g & (outcome == "fn")] = "missed"
    error[g & (outcome == "tp") & (gt_cls == fin)] = "correct"
    error[g & (outcome == "tp") & (gt_cls != fin)] = "misclassified"
    error[s] = "spurious"
    stage = np.select([error == "missed", error == "spurious", error == "misclassified"],
                      ["detector", "detector", "classifier"], default="")
    changed = np.where(has_partner, det_cls != fin, False).astype(bool)
    table = pd.DataFrame({"image": m["image"].astype(str), "error": error, "stage": stage,
                          "gt_class": pd.Series(gt_cls, dtype=object), "det_class": pd.Series(det_cls, dtype=object),
                          "final_class": pd.Series(fin, dtype=object), "changed": changed,
                          "gt_id": m["gt_id"], "pred_id": m["pred_id"],
                          **{c: m[c] for c in ("x1", "y1", "x2", "y2")}, "score": m["score"], "iou": m["iou"]})
    table = table[g | s].reset_index(drop=True)
    tg = table[table["error"] != "spurious"]
    detected = tg["error"].isin(["correct", "misclassified"])
    det_right = detected & (tg["det_class"] == tg["gt_class"])
    fin_right = tg["error"] == "correct"
    n_gt, n_pred = int(len(tg)), int((~is_gt & (outcome != "ignored")).sum())
    rows = [("gt_cells", n_gt, n_gt), ("detected", int(detected.sum()), n_gt),
            ("missed", int((tg["error"] == "missed").sum()), n_gt),
            ("correct", int(fin_right.sum()), n_gt),
            ("misclassified", int((tg["error"] == "misclassified").sum()), int(detected.sum())),
            ("detector_label_right", int(det_right.sum()), int(detected.sum())),
            ("fixed_by_classifier", int((detected & ~det_right & fin_right).sum()), int(detected.sum())),
            ("broken_by_classifier", int((det_right & ~fin_right).sum()), int(detected.sum())),
            ("predictions", n_pred, n_pred),
            ("spurious", int((table["error"] == "spurious").sum()), n_pred)]
    summary = pd.DataFrame(rows, columns=["count", "n", "of"])
    summary["share"] = np.where(summary["of"] > 0, summary["n"] / summary["of"].where(summary["of"] > 0, 1), np.nan)
    summary["stage"] = summary["count"].map({"missed": "detector", "spurious": "detector",
                                             "misclassified": "classifier", "broken_by_classifier": "classifier",
                                             "fixed_by_classifier": "classifier"}).fillna("")
    return table, summary
