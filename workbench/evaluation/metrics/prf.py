"""Precision, recall and F1 at a score threshold, and the class confusion matrix, from match tables.

Both read a :func:`~.matches.match` table, so the pairs are those of the one COCO matching; the
``*_from_matches`` forms let a caller match once and cut at several score thresholds (greedy
matching by descending score makes that equal to matching only the predictions above each).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.core.tables import require_columns
from workbench.evaluation.metrics.boxes import sorted_union
from workbench.evaluation.metrics.matches import match

__all__ = [
    "MISSED", "OVERALL", "SPURIOUS", "confusion_from_matches", "confusion_matrix", "precision_recall_f1",
    "prf_from_matches",
]  # fmt: skip

MISSED = "missed"
SPURIOUS = "spurious"
OVERALL = "all"


def _check_matches(matches: Any, *, class_agnostic: bool) -> None:
    require_columns(matches, "matches", ("kind", "class", "gt_class", "pred_class", "score", "outcome"))
    made = matches.attrs.get("class_agnostic")
    if made is not None and bool(made) != class_agnostic:
        kind = "class-agnostic" if class_agnostic else "class-aware"
        raise ValueError(f"this needs a {kind} match table: call match(..., class_agnostic={class_agnostic})")


def _prf_row(name: str, n_gt: int, tp: int, fp: int) -> dict[str, Any]:
    fn = n_gt - tp
    denom_f1 = 2 * tp + fp + fn
    return {
        "class": name,
        "n_gt": n_gt,
        "n_pred": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / n_gt if n_gt else float("nan"),
        "f1": 2 * tp / denom_f1 if denom_f1 else float("nan"),
    }


def prf_from_matches(matches: pd.DataFrame, *, score_thr: float = 0.5) -> pd.DataFrame:
    """Precision, recall and F1 per class and overall from a :func:`match` table.

    Predictions with ``score >= score_thr`` count; 'ignored' and 'capped'
    predictions and crowd/ignored GT count nowhere. Because matching is greedy
    by descending score, cutting at a threshold afterwards gives the same
    pairs as matching only the predictions above it.

    Returns
    -------
    DataFrame
        Columns class, n_gt, n_pred, tp, fp, fn, precision, recall, f1; one
        row per class, then a row ``class == "all"`` with the counts pooled
        over classes (micro average). Precision is NaN without predictions,
        recall NaN without GT; F1 = 2TP / (2TP + FP + FN), NaN only when all
        three are zero.
    """
    _check_matches(matches, class_agnostic=False)
    is_gt = (matches["kind"] == "gt").to_numpy()
    outcome = matches["outcome"].to_numpy()
    cls = matches["class"].astype(str).to_numpy()
    above = (matches["score"].to_numpy(dtype=float, na_value=np.nan) >= score_thr)
    gt_reg = is_gt & (outcome != "ignored")
    pred_tp = ~is_gt & above & (outcome == "tp")
    pred_fp = ~is_gt & above & (outcome == "fp")
    names = sorted(set(cls[gt_reg]) | set(cls[~is_gt]))
    rows = []
    for name in names:
        here = cls == name
        rows.append(_prf_row(name, int((gt_reg & here).sum()), int((pred_tp & here).sum()), int((pred_fp & here).sum())))
    rows.append(_prf_row(OVERALL, int(gt_reg.sum()), int(pred_tp.sum()), int(pred_fp.sum())))
    return pd.DataFrame(rows)


def precision_recall_f1(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    max_dets: int | None = None,
) -> pd.DataFrame:
    """Precision, recall and F1 at a score threshold (see :func:`prf_from_matches`)."""
    return prf_from_matches(match(gt, pred, iou_thr=iou_thr, max_dets=max_dets), score_thr=score_thr)


def confusion_from_matches(
    matches: pd.DataFrame, *, score_thr: float = 0.5, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Class confusion counts from a class-agnostic :func:`match` table.

    Rule: predictions with ``score >= score_thr`` are matched to GT by the
    COCO greedy matching *ignoring class* (``match(..., class_agnostic=True)``);
    each matched pair adds one to (GT class, predicted class). A GT left
    without a prediction adds to column ``"missed"``; a prediction left
    without a GT adds to row ``"spurious"``. Crowd/ignored GT, predictions
    matched to them and capped predictions are left out.

    Returns
    -------
    DataFrame
        Integer counts; index ``gt_class`` (classes, then "spurious"),
        columns ``pred_class`` (classes, then "missed").
    """
    _check_matches(matches, class_agnostic=True)
    is_gt = (matches["kind"] == "gt").to_numpy()
    outcome = matches["outcome"].to_numpy()
    above = matches["score"].to_numpy(dtype=float, na_value=np.nan) >= score_thr
    gt_cls = matches["gt_class"].to_numpy(dtype=object)
    pred_cls = matches["pred_class"].to_numpy(dtype=object)
    if classes is None:
        names = sorted_union(gt_cls[is_gt], pred_cls[~is_gt])
    else:
        names = [str(c) for c in classes]
    clash = {MISSED, SPURIOUS} & set(names)
    if clash:
        raise ValueError(f"class names {sorted(clash)} are reserved for the confusion matrix")
    gt_sel = is_gt & (outcome != "ignored")
    found = gt_sel & (outcome == "tp") & above
    rows_true = np.concatenate([gt_cls[gt_sel], np.full((~is_gt & above & (outcome == "fp")).sum(), SPURIOUS, object)])
    cols_pred = np.concatenate([
        np.where(found[gt_sel], pred_cls[gt_sel], MISSED),
        pred_cls[~is_gt & above & (outcome == "fp")],
    ])  # fmt: skip
    index = [*names, SPURIOUS]
    columns = [*names, MISSED]
    unknown = (set(rows_true) - set(index)) | (set(cols_pred) - set(columns))
    if unknown:
        raise ValueError(f"matches contain classes not in `classes`: {sorted(map(str, unknown))}")
    ri = pd.Index(index).get_indexer(rows_true.astype(str))
    ci = pd.Index(columns).get_indexer(cols_pred.astype(str))
    counts = np.zeros((len(index), len(columns)), dtype=np.int64)
    np.add.at(counts, (ri, ci), 1)
    return pd.DataFrame(
        counts,
        index=pd.Index(index, name="gt_class"),
        columns=pd.Index(columns, name="pred_class"),
    )


def confusion_matrix(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    classes: Sequence[str] | None = None,
    max_dets: int | None = None,
) -> pd.DataFrame:
    """Confusion matrix with explicit "missed" and "spurious" (see :func:`confusion_from_matches`).

    ``max_dets`` here caps detections per image (all classes together).
    """
    m = match(gt, pred, iou_thr=iou_thr, max_dets=max_dets, class_agnostic=True)
    return confusion_from_matches(m, score_thr=score_thr, classes=classes)
