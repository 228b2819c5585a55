"""Average precision: COCO's 101-point interpolated AP per class, mAP50 and mAP50-95.

:func:`evaluate` matches once at every IoU threshold (:func:`~.matching.run_core`), accumulates
TP/FP flags per class in pycocotools' order (:func:`ap_inputs`) and interpolates precision at
101 recall points (:func:`precision_curves`). Classes without (non-ignored) GT get NaN where
pycocotools has -1 and are left out of the means, as pycocotools does. Only area range ``'all'``
is computed; COCO's small/medium/large breakdown is not. The bootstrap replays the same
inputs with image weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.evaluation.metrics.boxes import Boxes, check_thresholds, parse_gt, parse_pred
from workbench.evaluation.metrics.matching import MatchCore, run_core

__all__ = [
    "COCO_IOU_THRESHOLDS", "RECALL_THRESHOLDS", "APInputs", "EvalResult", "ap_inputs", "evaluate", "mean_ap",
    "precision_curves", "threshold_index",
]  # fmt: skip

# Same floats as pycocotools' Params (np.linspace), so threshold ties agree.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class APInputs:
    """Per-class detection flags in COCO's accumulation order."""

    det_img: list[np.ndarray]  # per class (N_k,)
    det_score: list[np.ndarray]
    tp: list[np.ndarray]  # per class (T, N_k) bool
    fp: list[np.ndarray]
    npig: np.ndarray  # (K, I) non-ignored GT per class and image
    n_thr: int


def ap_inputs(core: MatchCore, rows: Sequence[int]) -> APInputs:
    """TP/FP flags per class at the thresholds ``rows`` of ``core``, in COCO's accumulation order."""
    kept = np.flatnonzero(core.d_kept)
    # pycocotools concatenates images in id order, then merge-sorts by score.
    o = np.lexsort((core.d_rank[kept], core.d_img[kept], -core.d_score[kept], core.d_cls[kept]))
    kept = kept[o]
    d_gt = core.d_gt[np.asarray(rows)][:, kept]
    matched = d_gt >= 0
    on_ignored = matched & core.g_ign[np.maximum(d_gt, 0)] if len(core.g_ign) else matched
    tp = matched & ~on_ignored
    fp = ~matched
    cls = core.d_cls[kept]
    n_cls, n_img = len(core.classes), len(core.images)
    bounds = np.searchsorted(cls, np.arange(n_cls + 1))
    sl = [slice(bounds[k], bounds[k + 1]) for k in range(n_cls)]
    reg = ~core.g_ign
    npig = np.bincount(core.g_cls[reg] * n_img + core.g_img[reg], minlength=n_cls * n_img)
    return APInputs(
        det_img=[core.d_img[kept][s] for s in sl],
        det_score=[core.d_score[kept][s] for s in sl],
        tp=[tp[:, s] for s in sl],
        fp=[fp[:, s] for s in sl],
        npig=npig.reshape(n_cls, n_img).astype(float),
        n_thr=len(rows),
    )


def _interp_precision(
    tp: np.ndarray, fp: np.ndarray, n_pos: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO 101-point interpolated precision for one class.

    ``weights`` (per detection) replays a bootstrap sample in which each
    detection occurs that many times, without building the sample.

    Returns precision (T, R), final recall (T,), and the index of the
    detection that sets each point (T, R), -1 where recall is never reached.
    """
    n_thr, n_det = tp.shape
    n_rec = len(RECALL_THRESHOLDS)
    q = np.zeros((n_thr, n_rec))
    at = np.full((n_thr, n_rec), -1, dtype=np.int64)
    if n_det == 0:
        return q, np.zeros(n_thr), at
    if weights is None:
        tps = np.cumsum(tp, axis=1, dtype=float)
        fps = np.cumsum(fp, axis=1, dtype=float)
    else:
        tps = np.cumsum(tp * weights, axis=1)
        fps = np.cumsum(fp * weights, axis=1)
    rc = tps / n_pos
    pr = tps / (fps + tps + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_thr):
        # Per row: offsetting rows into one sorted array would perturb the
        # recall values and flip exact ties with the recall thresholds.
        inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        ok = inds < n_det
        q[t, ok] = pr[t, inds[ok]]
        at[t, ok] = inds[ok]
    return q, rc[:, -1], at


def precision_curves(
    inp: APInputs, img_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Precision (T, R, K) with NaN for classes without GT, recall (T, K), and per class the
    index of the detection behind each point. ``img_weights`` (per image) replays a bootstrap
    resample (see :func:`_interp_precision`)."""
    n_cls, n_thr = len(inp.tp), inp.n_thr
    prec = np.full((n_thr, len(RECALL_THRESHOLDS), n_cls), np.nan)
    rec = np.full((n_thr, n_cls), np.nan)
    where: list[np.ndarray] = []
    for k in range(n_cls):
        if img_weights is None:
            n_pos, w = inp.npig[k].sum(), None
        else:
            n_pos, w = inp.npig[k] @ img_weights, img_weights[inp.det_img[k]]
        if n_pos == 0:
            where.append(np.full((n_thr, len(RECALL_THRESHOLDS)), -1))
            continue
        q, r, at = _interp_precision(inp.tp[k], inp.fp[k], n_pos, w)
        prec[:, :, k], rec[:, k] = q, r
        where.append(at)
    return prec, rec, where


def mean_ap(prec: np.ndarray, rows: slice | np.ndarray | None = None) -> float:
    """Mean over thresholds, recall points and classes with GT, as COCO's summarize."""
    p = prec if rows is None else prec[rows]
    valid = ~np.isnan(p[0, 0, :]) if p.size else np.zeros(0, bool)
    if p.shape[0] == 0 or not valid.any():
        return float("nan")
    return float(np.mean(p[:, :, valid]))


def threshold_index(thresholds: np.ndarray, value: float) -> int | None:
    """Position of ``value`` (to 1e-12) in ``thresholds``, or None when it is not there."""
    hit = np.flatnonzero(np.isclose(thresholds, value, rtol=0, atol=1e-12))
    return int(hit[0]) if hit.size else None


@dataclass(frozen=True)
class EvalResult:
    """COCO-style AP results (area range 'all' only).

    Attributes
    ----------
    map50, map50_95 : float
        Mean AP over classes with GT at IoU 0.5 and averaged over all
        ``iou_thresholds`` (0.50:0.05:0.95 by default); NaN when no class
        has GT or 0.5 is not among the thresholds.
    per_class : dict
        ``{class: {"ap50", "ap50_95", "n_gt", "n_pred"}}``; AP is NaN for
        classes without non-ignored GT (pycocotools: -1). ``n_gt`` counts
        non-crowd, non-ignored GT.
    max_dets : int
        Detection cap per image and class that was used.
    iou_thresholds : tuple of float
    pr_curves : DataFrame
        Tidy interpolated PR curves: class, iou_thr, recall (the 101 recall
        points), precision, score (score of the detection that sets the
        point, NaN where the recall is never reached).
    precision : (T, 101, K) array
        COCO's ``eval['precision'][..., area 'all', max_dets]`` with NaN for -1.
    recall : (T, K) array
        Final recall per threshold and class.
    classes : tuple of str
        Order of the K axis.
    n_capped : int
        Predictions dropped by ``max_dets``.
    """

    map50: float
    map50_95: float
    per_class: dict[str, dict[str, float]]
    max_dets: int
    iou_thresholds: tuple[float, ...]
    pr_curves: pd.DataFrame
    precision: np.ndarray
    recall: np.ndarray
    classes: tuple[str, ...]
    n_capped: int

    def per_class_table(self) -> pd.DataFrame:
        """``per_class`` as a DataFrame, one row per class."""
        df = pd.DataFrame.from_dict(self.per_class, orient="index")
        return df.rename_axis("class").reset_index()


def _pr_curves(core: MatchCore, inp: APInputs, prec: np.ndarray, where: list[np.ndarray]) -> pd.DataFrame:
    frames = []
    n_thr, n_rec = prec.shape[0], len(RECALL_THRESHOLDS)
    for k, name in enumerate(core.classes):
        if np.isnan(prec[0, 0, k]):
            continue
        at, ds = where[k], inp.det_score[k]
        scores = np.where(at >= 0, ds[np.maximum(at, 0)], np.nan) if len(ds) else np.full(at.shape, np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "class": name,
                    "iou_thr": np.repeat(core.thresholds, n_rec),
                    "recall": np.tile(RECALL_THRESHOLDS, n_thr),
                    "precision": prec[:, :, k].ravel(),
                    "score": scores.ravel(),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             (("class", object), ("iou_thr", float), ("recall", float),
                              ("precision", float), ("score", float))})  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _select_classes(g: Boxes, p: Boxes, classes: Sequence[str] | None) -> tuple[Boxes, Boxes]:
    """Drop rows of undeclared classes, like pycocotools with ``params.catIds``."""
    if classes is None:
        return g, p
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicates: {names}")
    allowed = set(names)
    keep_g = np.fromiter((c in allowed for c in g.cls), bool, len(g))
    keep_p = np.fromiter((c in allowed for c in p.cls), bool, len(p))
    return g.subset(keep_g), p.subset(keep_p)


def evaluate(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int | None = None,
    classes: Sequence[str] | None = None,
) -> EvalResult:
    """COCO AP per class, mAP50 and mAP50-95, equal to pycocotools' numbers.

    Parameters
    ----------
    gt, pred : DataFrame
        GT and prediction tables.
    iou_thresholds : sequence of float
        Default COCO's 0.50:0.05:0.95.
    max_dets : int, optional
        Detections kept per image and class. Default
        :func:`default_max_dets` (100 = COCO for sparse data; above the
        densest image otherwise). Pass 100 to reproduce COCO's default.
    classes : sequence of str, optional
        Classes to evaluate, in output order; rows of other classes are
        dropped (pycocotools' ``params.catIds``). Default: every class seen in
        either table, sorted; those without GT get NaN AP.

    Returns
    -------
    EvalResult
    """
    g, p = _select_classes(parse_gt(gt), parse_pred(pred), classes)
    thr = check_thresholds(iou_thresholds)
    core = run_core(g, p, thr, max_dets=max_dets, class_agnostic=False, classes=classes)
    inp = ap_inputs(core, list(range(len(thr))))
    prec, rec, where = precision_curves(inp)
    t50 = threshold_index(thr, 0.5)
    per_class = {}
    n_pred = np.bincount(core.d_cls, minlength=len(core.classes))
    for k, name in enumerate(core.classes):
        has_gt = not np.isnan(prec[0, 0, k])
        per_class[name] = {
            "ap50": float(np.mean(prec[t50, :, k])) if has_gt and t50 is not None else float("nan"),
            "ap50_95": float(np.mean(prec[:, :, k])) if has_gt else float("nan"),
            "n_gt": int(inp.npig[k].sum()),
            "n_pred": int(n_pred[k]),
        }
    return EvalResult(
        map50=mean_ap(prec, slice(t50, t50 + 1)) if t50 is not None else float("nan"),
        map50_95=mean_ap(prec),
        per_class=per_class,
        max_dets=core.max_dets,
        iou_thresholds=tuple(float(t) for t in thr),
        pr_curves=_pr_curves(core, inp, prec, where),
        precision=prec,
        recall=rec,
        classes=tuple(core.classes),
        n_capped=int((~core.d_kept).sum()),
    )
