"""The tidy match table: one row per GT and per prediction, with its partner and outcome.

:func:`match` runs :func:`~workbench.evaluation.metrics.matching.run_core` at one IoU threshold
and turns its canonical-order arrays back into table order, carrying the extra columns of both
tables. P/R/F1, the confusion matrix, clinical rates and the hard-case queue read this table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.evaluation.metrics.boxes import (BOX_COLUMNS, GT_COLUMNS, PRED_COLUMNS, Boxes, check_thresholds,
                                                parse_gt, parse_pred)
from workbench.evaluation.metrics.matching import MatchCore, run_core

__all__ = ["match"]

_MATCH_COLUMNS = (
    "kind", "image", "class", "gt_id", "pred_id", "gt_class", "pred_class",
    *BOX_COLUMNS, "score", "iou", "outcome",
)  # fmt: skip


def _extras(g: Boxes, p: Boxes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extra columns of both tables, renamed where they would collide."""
    g_extra = g.frame[[c for c in g.frame.columns if c not in GT_COLUMNS]]
    p_extra = p.frame[[c for c in p.frame.columns if c not in PRED_COLUMNS]]
    fixed = set(_MATCH_COLUMNS)
    g_names = {c: (f"gt_{c}" if c in fixed or c in p_extra.columns else c) for c in g_extra.columns}
    p_names = {c: (f"pred_{c}" if c in fixed or c in g_extra.columns else c) for c in p_extra.columns}
    return (
        g_extra.rename(columns=g_names).reset_index(drop=True),
        p_extra.rename(columns=p_names).reset_index(drop=True),
    )


def _take(values: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill: Any) -> np.ndarray:
    """``values[idx]`` where ``valid``, ``fill`` elsewhere (``values`` may be empty)."""
    if len(values) == 0:
        return np.full(len(idx), fill, dtype=object if fill is None else None)
    return np.where(valid, values[np.maximum(idx, 0)], fill)


def _ids(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(np.where(valid, values, 0).astype(np.int64), ~valid)


def _match_table(core: MatchCore, g: Boxes, p: Boxes, t: int) -> pd.DataFrame:
    """Tidy rows for every GT and prediction at threshold index ``t``."""
    n_g, n_p = len(g), len(p)
    # Back from canonical to table order.
    g_canon = np.empty(n_g, np.int64)
    g_canon[core.g_pos] = np.arange(n_g)
    d_canon = np.empty(n_p, np.int64)
    d_canon[core.d_pos] = np.arange(n_p)

    g_dt = core.g_dt[t, g_canon]
    g_hit = g_dt >= 0
    g_partner = _take(core.d_pos, g_dt, g_hit, -1)
    gt_rows = pd.DataFrame(
        {
            "kind": "gt",
            "image": g.image,
            "class": g.cls,
            "gt_id": _ids(np.arange(n_g), np.ones(n_g, bool)),
            "pred_id": _ids(g_partner, g_hit),
            "gt_class": g.cls,
            "pred_class": _take(p.cls, g_partner, g_hit, None),
            **{c: g.xyxy[:, i] for i, c in enumerate(BOX_COLUMNS)},
            "score": _take(p.score, g_partner, g_hit, np.nan),
            "iou": core.g_iou[t, g_canon],
            "outcome": np.where(core.g_ign[g_canon], "ignored", np.where(g_hit, "tp", "fn")),
        }
    )

    d_gt = core.d_gt[t, d_canon]
    d_hit = d_gt >= 0
    d_partner = _take(core.g_pos, d_gt, d_hit, -1)
    d_ign = _take(core.g_ign, d_gt, d_hit, False).astype(bool)
    pred_rows = pd.DataFrame(
        {
            "kind": "pred",
            "image": p.image,
            "class": p.cls,
            "gt_id": _ids(d_partner, d_hit),
            "pred_id": _ids(np.arange(n_p), np.ones(n_p, bool)),
            "gt_class": _take(g.cls, d_partner, d_hit, None),
            "pred_class": p.cls,
            **{c: p.xyxy[:, i] for i, c in enumerate(BOX_COLUMNS)},
            "score": p.score,
            "iou": core.d_iou[t, d_canon],
            "outcome": np.where(
                ~core.d_kept[d_canon], "capped",
                np.where(d_ign, "ignored", np.where(d_hit, "tp", "fp")),
            ),  # fmt: skip
        }
    )

    g_extra, p_extra = _extras(g, p)
    gt_rows = pd.concat([gt_rows, g_extra], axis=1)
    pred_rows = pd.concat([pred_rows, p_extra], axis=1)
    parts = [df for df in (gt_rows, pred_rows) if len(df)]
    if parts:
        out = pd.concat(parts, ignore_index=True, sort=False)
    else:
        columns = list(gt_rows.columns) + [c for c in pred_rows.columns if c not in gt_rows.columns]
        out = pd.DataFrame(columns=columns)
    out.attrs.update(
        iou_thr=float(core.thresholds[t]), max_dets=core.max_dets, class_agnostic=core.class_agnostic
    )
    return out


def match(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    iou_thr: float = 0.5,
    max_dets: int | None = None,
    class_agnostic: bool = False,
) -> pd.DataFrame:
    """One-to-one COCO matching of predictions to GT, as a tidy table.

    Parameters
    ----------
    gt, pred : DataFrame
        GT and prediction tables (see :mod:`.boxes`).
    iou_thr : float
        IoU threshold; a pair matches when IoU >= ``iou_thr``.
    max_dets : int, optional
        Detections kept per image and class (per image with
        ``class_agnostic``), highest scores first; default
        :func:`default_max_dets`.
    class_agnostic : bool
        Match across classes (used by :func:`confusion_matrix`); ``outcome``
        'tp' then means "localised", whatever the two classes are.

    Returns
    -------
    DataFrame
        One row per GT (``kind='gt'``) and per prediction (``kind='pred'``),
        GT first, each in table order. ``gt_id`` / ``pred_id`` are row
        positions in ``gt`` / ``pred`` (own id, and the partner's or <NA>);
        ``gt_class`` / ``pred_class`` the two classes; ``x1..y2`` the row's
        own box; ``score`` the prediction's score (for GT rows, the matched
        prediction's, so a GT is found at threshold s when outcome is 'tp'
        and score >= s); ``iou`` with the partner. ``outcome``: 'tp', 'fp',
        'fn', 'ignored' (crowd/ignore GT and predictions matched to them) or
        'capped' (predictions beyond ``max_dets``, which COCO does not
        evaluate). Extra columns of both tables follow, renamed with a
        ``gt_`` / ``pred_`` prefix where names collide.
    """
    g, p = parse_gt(gt), parse_pred(pred)
    thr = check_thresholds([iou_thr], "iou_thr")
    core = run_core(g, p, thr, max_dets=max_dets, class_agnostic=class_agnostic)
    return _match_table(core, g, p, 0)
