"""Percentile bootstrap intervals over images for the headline metrics, from one matching.

Matching is done once; each resample replays it with per-image weights (an image drawn ``w``
times counts ``w`` times), which equals re-evaluating the resampled data set up to the order of
tied scores. The estimates equal :func:`~.ap.evaluate`, :func:`~.prf.precision_recall_f1`
(micro) and :func:`~.counting.count_metrics` on the full data.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation.metrics.ap import (COCO_IOU_THRESHOLDS, ap_inputs, mean_ap, precision_curves,
                                             threshold_index)
from workbench.evaluation.metrics.boxes import check_thresholds, parse_gt, parse_pred
from workbench.evaluation.metrics.counting import per_image_counts
from workbench.evaluation.metrics.matching import run_core

__all__ = ["bootstrap_ci"]


def bootstrap_ci(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int | None = None,
    images: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Percentile bootstrap intervals over images for the headline metrics.

    Images (of either table, plus ``images``) are resampled with
    replacement ``n_boot`` times. Matching is done once: an image drawn
    ``w`` times contributes its detections' TP/FP flags and its GT counts
    with weight ``w``, which is exactly the AP of the resampled data set up
    to the order of tied scores.

    Returns
    -------
    DataFrame
        Rows map50, map50_95, precision, recall, f1 (micro, at ``score_thr``
        and ``iou_thr``), count_mae; columns metric, estimate (on the full
        data, equal to :func:`evaluate` etc.), lo, hi. ``attrs`` holds
        n_boot, seed, ci.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci!r}")
    g, p = parse_gt(gt), parse_pred(pred)
    ap_thr = check_thresholds(iou_thresholds)
    prf_thr = check_thresholds([iou_thr], "iou_thr")
    thr = np.r_[ap_thr, prf_thr]
    core = run_core(g, p, thr, max_dets=max_dets, class_agnostic=False, images=() if images is None else images)
    n_img = len(core.images)
    inp = ap_inputs(core, list(range(len(ap_thr))))
    t50 = threshold_index(ap_thr, 0.5)

    # Per-image TP / FP / GT at the P/R/F1 threshold, from the same matching.
    t = len(thr) - 1
    hit = core.d_gt[t] >= 0
    on_ign = hit & core.g_ign[np.maximum(core.d_gt[t], 0)] if len(g) else hit
    counted = core.d_kept & (core.d_score >= score_thr)
    tp_img = np.bincount(core.d_img[counted & hit & ~on_ign], minlength=n_img).astype(float)
    fp_img = np.bincount(core.d_img[counted & ~hit], minlength=n_img).astype(float)
    gt_img = inp.npig.sum(axis=0)
    n_gt_cnt, n_pred_cnt = per_image_counts(g, p, core.images, score_thr)
    abs_err = np.abs(n_pred_cnt - n_gt_cnt).astype(float)

    def headline(w: np.ndarray | None) -> list[float]:
        prec, _, _ = precision_curves(inp, w)
        ww = np.ones(n_img) if w is None else w
        tp, fp, ng = tp_img @ ww, fp_img @ ww, gt_img @ ww
        return [
            mean_ap(prec, slice(t50, t50 + 1)) if t50 is not None else float("nan"),
            mean_ap(prec),
            tp / (tp + fp) if tp + fp else float("nan"),
            tp / ng if ng else float("nan"),
            2 * tp / (tp + fp + ng) if tp + fp + ng else float("nan"),
            float(abs_err @ ww / n_img) if n_img else float("nan"),
        ]

    names = ["map50", "map50_95", "precision", "recall", "f1", "count_mae"]
    estimate = headline(None)
    rng = np.random.default_rng(seed)
    samples = np.full((n_boot, len(names)), np.nan)
    if n_img:
        for b in range(n_boot):
            w = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img).astype(float)
            samples[b] = headline(w)
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    lo, hi = [], []
    for j in range(len(names)):
        col = samples[:, j][~np.isnan(samples[:, j])]
        lo.append(float(np.percentile(col, lo_q)) if col.size else float("nan"))
        hi.append(float(np.percentile(col, hi_q)) if col.size else float("nan"))
    out = pd.DataFrame({"metric": names, "estimate": estimate, "lo": lo, "hi": hi})
    out.attrs.update(n_boot=int(n_boot), seed=seed, ci=ci)
    return out
