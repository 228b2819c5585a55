"""Detection and counting metrics over the project's box tables.

One matching routine backs every metric in this module: AP, the tidy match
table, precision/recall/F1 at a score threshold, the confusion matrix and the
bootstrap intervals. It reproduces pycocotools' ``COCOeval`` for
``iouType='bbox'`` and area range ``'all'``:

* IoU without the +1 pixel, computed the way pycocotools' C code does it
  (from ``x, y, w, h`` with ``w = x2 - x1``), so values are bit-identical;
  crowd ground truth uses ``intersection / detection area``.
* Per image and class, detections are sorted by score, descending, with a
  stable sort (ties keep table order), cut to ``max_dets``, and each one in
  turn takes the unmatched ground truth (GT) of highest IoU at or above the
  threshold; on equal IoU the later GT in table order wins, regular GT is
  preferred to crowd/ignored GT, and crowd GT may absorb any number of
  detections. Detections matched to crowd/ignored GT count neither as TP nor
  as FP.
* AP uses COCO's 101-point interpolated precision; classes without
  (non-ignored) GT get NaN where pycocotools has -1 and are left out of the
  means, as pycocotools does.

Only area range ``'all'`` is computed; COCO's small/medium/large breakdown is
not. Differences from pycocotools, all deliberate:

* ``ignore`` in the GT table is honoured (the GT is treated like a GT outside
  the area range in pycocotools: regular IoU, matched detections ignored);
  pycocotools itself overwrites a JSON ``ignore`` flag with ``iscrowd``.
* Score ties across images are broken by image name order (pycocotools: by
  image id; :func:`gt_to_coco` numbers images in name order, so both agree).
* ``max_dets`` defaults to a cap above the densest image (see
  :func:`default_max_dets`) instead of COCO's 100, which silently truncates
  images of several hundred cells.

Tables (the project's contract)
-------------------------------
GT: ``image`` (str), ``class`` (str), ``x1 y1 x2 y2`` (float pixels), optional
``iscrowd`` / ``ignore`` (bool, default False). Predictions: ``image``,
``class``, ``x1 y1 x2 y2``, ``score``; extra columns are carried into match
tables.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "BOX_COLUMNS",
    "COCO_IOU_THRESHOLDS",
    "MISSED",
    "OVERALL",
    "RECALL_THRESHOLDS",
    "SPURIOUS",
    "CountResult",
    "EvalResult",
    "bootstrap_ci",
    "box_iou",
    "confusion_from_matches",
    "confusion_matrix",
    "count_metrics",
    "default_max_dets",
    "evaluate",
    "gt_from_coco",
    "gt_to_coco",
    "match",
    "precision_recall_f1",
    "preds_from_coco",
    "preds_to_coco",
    "prf_from_matches",
]

# Same floats as pycocotools' Params (np.linspace), so threshold ties agree.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)
COCO_MAX_DETS = 100
BOX_COLUMNS: tuple[str, ...] = ("x1", "y1", "x2", "y2")
GT_COLUMNS: tuple[str, ...] = ("image", "class", *BOX_COLUMNS)
PRED_COLUMNS: tuple[str, ...] = ("image", "class", *BOX_COLUMNS, "score")
MISSED = "missed"
SPURIOUS = "spurious"
OVERALL = "all"
# pycocotools compares IoU with min(t, 1 - 1e-10) so that t = 1.0 can match.
_IOU_CAP = 1 - 1e-10
# Upper bound on candidate (detection, GT) pairs held in memory at once.
_PAIR_CHUNK = 2_000_000


# --------------------------------------------------------------------------
# Input parsing and validation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Boxes:
    """A validated GT or prediction table as flat arrays, in table order."""

    image: np.ndarray  # object array of str
    cls: np.ndarray  # object array of str
    xyxy: np.ndarray  # (N, 4) as given
    xywh: np.ndarray  # (N, 4) as pycocotools sees it
    score: np.ndarray  # (N,) zeros for GT
    crowd: np.ndarray  # (N,) bool, False for predictions
    ignore: np.ndarray  # (N,) bool: crowd or ignore
    frame: pd.DataFrame  # the input, for extra columns

    def __len__(self) -> int:
        return len(self.image)


def _require_columns(df: Any, name: str, required: Sequence[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} table is missing column(s) {missing}; it has {list(df.columns)}"
        )


def _numeric(df: pd.DataFrame, col: str, name: str) -> np.ndarray:
    try:
        values = pd.to_numeric(df[col], errors="raise").to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} column '{col}' must be numeric: {exc}") from exc
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{name} column '{col}' has NaN or infinite values at row position(s) {rows}"
        )
    return values


def _labels(df: pd.DataFrame, col: str, name: str) -> np.ndarray:
    series = df[col]
    missing = series.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise ValueError(f"{name} column '{col}' has missing values at row position(s) {rows}")
    return series.astype(str).to_numpy(dtype=object)


def _flag(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df[col].fillna(False).astype(bool).to_numpy()


def _parse(df: Any, name: str, *, is_pred: bool) -> _Boxes:
    _require_columns(df, name, PRED_COLUMNS if is_pred else GT_COLUMNS)
    xyxy = np.column_stack([_numeric(df, c, name) for c in BOX_COLUMNS]) if len(df) else np.zeros((0, 4))
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    negative = (w < 0) | (h < 0)
    if negative.any():
        rows = np.flatnonzero(negative)[:5].tolist()
        raise ValueError(
            f"{name} table has boxes with x2 < x1 or y2 < y1 (negative width or height) "
            f"at row position(s) {rows}"
        )
    n = len(df)
    score = _numeric(df, "score", name) if is_pred else np.zeros(n)
    crowd = np.zeros(n, bool) if is_pred else _flag(df, "iscrowd")
    ignore = np.zeros(n, bool) if is_pred else (crowd | _flag(df, "ignore"))
    return _Boxes(
        image=_labels(df, "image", name),
        cls=_labels(df, "class", name),
        xyxy=xyxy,
        xywh=np.column_stack([xyxy[:, 0], xyxy[:, 1], w, h]),
        score=score,
        crowd=crowd,
        ignore=ignore,
        frame=df,
    )


def _parse_gt(gt: Any) -> _Boxes:
    return _parse(gt, "gt", is_pred=False)


def _parse_pred(pred: Any) -> _Boxes:
    return _parse(pred, "pred", is_pred=True)


def _subset(b: _Boxes, keep: np.ndarray) -> _Boxes:
    return _Boxes(
        image=b.image[keep],
        cls=b.cls[keep],
        xyxy=b.xyxy[keep],
        xywh=b.xywh[keep],
        score=b.score[keep],
        crowd=b.crowd[keep],
        ignore=b.ignore[keep],
        frame=b.frame.iloc[np.flatnonzero(keep)],
    )


def _check_thresholds(values: Iterable[float], name: str = "iou_thresholds") -> np.ndarray:
    thr = np.asarray(list(values), dtype=float).ravel()
    if thr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(thr)) or np.any(thr <= 0) or np.any(thr > 1):
        raise ValueError(f"{name} must lie in (0, 1], got {thr.tolist()}")
    return thr


def _check_max_dets(max_dets: Any) -> int:
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
    return int(max_dets)


def _sorted_union(*arrays: Iterable[str]) -> list[str]:
    names: set[str] = set()
    for a in arrays:
        names.update(str(x) for x in a)
    return sorted(names)


# --------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------


def _iou_xywh(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Elementwise IoU of broadcastable ``x, y, w, h`` arrays (pycocotools' bbIou)."""
    # Right/bottom edges as x + w, not x2: that is what pycocotools computes
    # from COCO's xywh boxes, so even last-bit rounding agrees with it.
    iw = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    da = d[..., 2] * d[..., 3]
    ga = g[..., 2] * g[..., 3]
    union = np.where(crowd, da, da + ga - inter)
    return np.divide(inter, union, out=np.zeros(inter.shape), where=overlap)


def box_iou(a: np.ndarray, b: np.ndarray, *, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU matrix between two sets of ``x1, y1, x2, y2`` boxes (COCO: no +1).

    Parameters
    ----------
    a : (N, 4) array
        Boxes, usually detections.
    b : (M, 4) array
        Boxes, usually ground truth.
    crowd : (M,) bool array, optional
        For crowd boxes of ``b`` the union is the area of the box from ``a``
        (COCO's crowd rule), so a detection inside a crowd region scores 1.

    Returns
    -------
    (N, M) float array.
    """
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    for name, boxes in (("a", a), ("b", b)):
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"box_iou: {name} has NaN or infinite coordinates")
        if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
            raise ValueError(f"box_iou: {name} has boxes with negative width or height")
    crowd_b = np.zeros(len(b), bool) if crowd is None else np.asarray(crowd, bool).ravel()
    if crowd_b.shape != (len(b),):
        raise ValueError(f"box_iou: crowd must have length {len(b)}, got {crowd_b.shape}")
    to_xywh = lambda x: np.column_stack([x[:, 0], x[:, 1], x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]])
    return _iou_xywh(to_xywh(a)[:, None, :], to_xywh(b)[None, :, :], crowd_b[None, :])


# --------------------------------------------------------------------------
# The one matching routine
# --------------------------------------------------------------------------


def default_max_dets(gt: pd.DataFrame, *, class_agnostic: bool = False) -> int:
    """Default detection cap per image (and class): never below COCO's 100.

    The cap is the smallest multiple of 100 that is at least twice the largest
    GT count of one image and class (one image, with ``class_agnostic``).
    Twice leaves room for a detector's false positives and duplicates so the
    cap does not cut true positives off the tail; rounding to hundreds keeps
    it stable across small data changes. Data with at most 50 boxes per image
    and class therefore gets exactly COCO's default of 100 (and COCO's
    numbers), while MoNuSeg tiles (~300-500 nuclei) get 1000.
    """
    return _default_max_dets(_parse_gt(gt), class_agnostic=class_agnostic)


def _default_max_dets(g: _Boxes, *, class_agnostic: bool) -> int:
    if len(g) == 0:
        return COCO_MAX_DETS
    keys = pd.Series(g.image) if class_agnostic else pd.Series(g.image + "\x00" + g.cls)
    largest = int(keys.value_counts().max())
    return max(COCO_MAX_DETS, 100 * math.ceil(2 * largest / 100))


@dataclass(frozen=True)
class _Core:
    """Result of matching at several IoU thresholds.

    Detections are in canonical order (group, score descending, table order);
    GT in (group, ignored last, table order), as pycocotools orders them.
    """

    thresholds: np.ndarray  # (T,)
    images: list[str]
    classes: list[str]
    max_dets: int
    class_agnostic: bool
    d_pos: np.ndarray  # row position in the prediction table
    d_img: np.ndarray
    d_cls: np.ndarray
    d_score: np.ndarray
    d_rank: np.ndarray  # rank inside its group
    d_kept: np.ndarray  # rank < max_dets
    d_gt: np.ndarray  # (T, D) canonical GT index, -1 if unmatched
    d_iou: np.ndarray  # (T, D)
    g_pos: np.ndarray
    g_img: np.ndarray
    g_cls: np.ndarray
    g_ign: np.ndarray
    g_crowd: np.ndarray
    g_dt: np.ndarray  # (T, G) canonical detection index, -1 if unmatched
    g_iou: np.ndarray  # (T, G)


def _candidate_pairs(
    d_gid: np.ndarray,
    d_box: np.ndarray,
    g_gid: np.ndarray,
    g_box: np.ndarray,
    g_crowd: np.ndarray,
    min_iou: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, GT) pairs of one group with IoU >= ``min_iou``, sorted.

    A sweep along x avoids the full D x G matrix: GT sorted by (group, x1)
    are keyed ``group * span + x1`` so one searchsorted finds, for every
    detection, the GT of its group whose x1 lies in
    ``[x1_det - widest GT - 1, x2_det + 1]``, a superset of those that can
    overlap it. Exact IoU then filters the candidates.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(d_gid) == 0 or len(g_gid) == 0:
        return empty
    n_groups = int(max(d_gid.max(), g_gid.max())) + 1
    widest = np.zeros(n_groups)
    np.maximum.at(widest, g_gid, g_box[:, 2])
    lo_x = min(d_box[:, 0].min(), g_box[:, 0].min())
    hi_x = max((d_box[:, 0] + d_box[:, 2]).max(), (g_box[:, 0] + g_box[:, 2]).max())
    # Wider than any query window, so windows never reach a neighbour group.
    span = (hi_x - lo_x) + widest.max() + 4.0
    order = np.lexsort((g_box[:, 0], g_gid))
    key = g_gid[order] * span + (g_box[order, 0] - lo_x)
    base = d_gid * span
    start = np.searchsorted(key, base + (d_box[:, 0] - widest[d_gid] - 1.0 - lo_x), side="left")
    stop = np.searchsorted(key, base + (d_box[:, 0] + d_box[:, 2] + 1.0 - lo_x), side="right")
    count = np.maximum(stop - start, 0)
    csum = np.cumsum(count)
    parts = []
    lo, n_det = 0, len(d_gid)
    while lo < n_det:
        done = csum[lo - 1] if lo else 0
        hi = min(max(int(np.searchsorted(csum, done + _PAIR_CHUNK, side="right")), lo + 1), n_det)
        n = count[lo:hi]
        di = np.repeat(np.arange(lo, hi), n)
        within = np.arange(di.size) - np.repeat(np.cumsum(n) - n, n)
        gj = order[np.repeat(start[lo:hi], n) + within]
        iou = _iou_xywh(d_box[di], g_box[gj], g_crowd[gj])
        keep = iou >= min_iou
        parts.append((di[keep], gj[keep], iou[keep]))
        lo = hi
    di = np.concatenate([p[0] for p in parts])
    gj = np.concatenate([p[1] for p in parts])
    iou = np.concatenate([p[2] for p in parts])
    o = np.lexsort((gj, di))
    return di[o], gj[o], iou[o]


def _greedy(
    di: np.ndarray,
    gj: np.ndarray,
    iou: np.ndarray,
    n_det: int,
    g_ign: np.ndarray,
    g_crowd: np.ndarray,
    thr: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy assignment at every threshold, from candidate pairs.

    Pairs must be sorted by (detection, GT), both in canonical order.
    Detections whose candidate GT no other detection can take are resolved
    all at once; only detections competing for a non-crowd GT go through the
    sequential loop, which follows COCOeval.evaluateImg line by line.
    """
    n_thr = len(thr)
    d_gt = np.full((n_thr, n_det), -1, dtype=np.int64)
    d_iou = np.full((n_thr, n_det), np.nan)
    if di.size == 0:
        return d_gt, d_iou
    n_gt = len(g_ign)
    contested = (np.bincount(gj, minlength=n_gt) >= 2) & ~g_crowd
    hard_det = np.zeros(n_det, bool)
    hard_det[di[contested[gj]]] = True
    hard = hard_det[di]

    # Uncontested: best candidate by (regular before ignored, IoU, later GT).
    e = np.flatnonzero(~hard)
    edi, egj, eiou = di[e], gj[e], iou[e]
    o = np.lexsort((egj, eiou, ~g_ign[egj], edi))
    edi, egj, eiou = edi[o], egj[o], eiou[o]
    for t, th in enumerate(thr):
        sel = np.flatnonzero(eiou >= th)
        if sel.size == 0:
            continue
        last = sel[np.r_[edi[sel[1:]] != edi[sel[:-1]], True]]
        d_gt[t, edi[last]] = egj[last]
        d_iou[t, edi[last]] = eiou[last]

    # Contested: sequential, in detection order.
    h = np.flatnonzero(hard)
    if h.size:
        hdi, hgj, hiou = di[h], gj[h], iou[h]
        cut = np.flatnonzero(np.r_[True, hdi[1:] != hdi[:-1], True])
        dets = hdi[cut[:-1]].tolist()
        ign = g_ign[hgj].tolist()
        crowd = g_crowd[hgj].tolist()
        gl, vl = hgj.tolist(), hiou.tolist()
        cands = [
            list(zip(gl[a:b], vl[a:b], ign[a:b], crowd[a:b])) for a, b in zip(cut[:-1], cut[1:])
        ]
        for t, th in enumerate(thr.tolist()):
            taken: set[int] = set()
            for d, cs in zip(dets, cands):
                best, m, m_ign = th, -1, False
                for g, v, ig, cr in cs:
                    if g in taken and not cr:
                        continue
                    # Matched a regular GT already: ignored GT (sorted last) cannot win.
                    if m >= 0 and not m_ign and ig:
                        break
                    if v < best:
                        continue
                    best, m, m_ign = v, g, ig
                if m >= 0:
                    taken.add(m)
                    d_gt[t, d] = m
                    d_iou[t, d] = best
    return d_gt, d_iou


def _run_core(
    g: _Boxes,
    p: _Boxes,
    thresholds: np.ndarray,
    *,
    max_dets: int | None,
    class_agnostic: bool,
    classes: Sequence[str] | None = None,
    images: Iterable[str] = (),
) -> _Core:
    """Match ``p`` to ``g`` at all ``thresholds`` (the single matching)."""
    thresholds = _check_thresholds(thresholds)
    if max_dets is None:
        max_dets = _default_max_dets(g, class_agnostic=class_agnostic)
    max_dets = _check_max_dets(max_dets)
    all_images = _sorted_union(g.image, p.image, images)
    class_list = list(classes) if classes is not None else _sorted_union(g.cls, p.cls)
    img_index = pd.Index(all_images)
    cls_index = pd.Index(class_list)
    g_img = img_index.get_indexer(g.image).astype(np.int64)
    p_img = img_index.get_indexer(p.image).astype(np.int64)
    g_cls = cls_index.get_indexer(g.cls).astype(np.int64)
    p_cls = cls_index.get_indexer(p.cls).astype(np.int64)
    if (g_cls < 0).any() or (p_cls < 0).any():
        raise ValueError("internal: rows with undeclared classes must be dropped before matching")
    n_cls = max(len(class_list), 1)
    g_gid = g_img if class_agnostic else g_img * n_cls + g_cls
    p_gid = p_img if class_agnostic else p_img * n_cls + p_cls

    # Canonical orders: what pycocotools' stable sorts produce. The class key
    # only matters when matching across classes, where pycocotools
    # (useCats=0) concatenates the per-class lists in category order.
    d_ord = np.lexsort((np.arange(len(p)), p_cls, -p.score, p_gid))
    g_ord = np.lexsort((np.arange(len(g)), g_cls, g.ignore, g_gid))
    d_gid = p_gid[d_ord]
    n_det = len(d_ord)
    idx = np.arange(n_det)
    new_group = np.r_[True, d_gid[1:] != d_gid[:-1]] if n_det else np.zeros(0, bool)
    d_rank = idx - np.maximum.accumulate(np.where(new_group, idx, 0)) if n_det else idx
    d_kept = d_rank < max_dets

    g_ign = g.ignore[g_ord]
    g_crowd = g.crowd[g_ord]
    thr_eff = np.minimum(thresholds, _IOU_CAP)
    kept = np.flatnonzero(d_kept)
    di, gj, iou = _candidate_pairs(
        d_gid[kept], p.xywh[d_ord][kept], g_gid[g_ord], g.xywh[g_ord], g_crowd, float(thr_eff.min())
    )
    k_gt, k_iou = _greedy(di, gj, iou, len(kept), g_ign, g_crowd, thr_eff)
    d_gt = np.full((len(thresholds), n_det), -1, dtype=np.int64)
    d_iou = np.full((len(thresholds), n_det), np.nan)
    d_gt[:, kept] = k_gt
    d_iou[:, kept] = k_iou

    # GT side: the last detection matched (matters only for crowd GT), as
    # pycocotools' gtMatches keeps it; canonical order = processing order.
    g_dt = np.full((len(thresholds), len(g)), -1, dtype=np.int64)
    g_iou = np.full((len(thresholds), len(g)), np.nan)
    for t in range(len(thresholds)):
        hit = np.flatnonzero(d_gt[t] >= 0)
        np.maximum.at(g_dt[t], d_gt[t, hit], hit)
        got = g_dt[t] >= 0
        g_iou[t, got] = d_iou[t, g_dt[t, got]]

    return _Core(
        thresholds=thresholds,
        images=all_images,
        classes=class_list,
        max_dets=max_dets,
        class_agnostic=class_agnostic,
        d_pos=d_ord,
        d_img=p_img[d_ord],
        d_cls=p_cls[d_ord],
        d_score=p.score[d_ord],
        d_rank=d_rank,
        d_kept=d_kept,
        d_gt=d_gt,
        d_iou=d_iou,
        g_pos=g_ord,
        g_img=g_img[g_ord],
        g_cls=g_cls[g_ord],
        g_ign=g_ign,
        g_crowd=g_crowd,
        g_dt=g_dt,
        g_iou=g_iou,
    )


# --------------------------------------------------------------------------
# Match table
# --------------------------------------------------------------------------

_MATCH_COLUMNS = (
    "kind", "image", "class", "gt_id", "pred_id", "gt_class", "pred_class",
    *BOX_COLUMNS, "score", "iou", "outcome",
)  # fmt: skip


def _extras(g: _Boxes, p: _Boxes) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def _match_table(core: _Core, g: _Boxes, p: _Boxes, t: int) -> pd.DataFrame:
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
        GT and prediction tables (see module docstring).
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
    g, p = _parse_gt(gt), _parse_pred(pred)
    thr = _check_thresholds([iou_thr], "iou_thr")
    core = _run_core(g, p, thr, max_dets=max_dets, class_agnostic=class_agnostic)
    return _match_table(core, g, p, 0)


# --------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _APInputs:
    """Per-class detection flags in COCO's accumulation order."""

    det_img: list[np.ndarray]  # per class (N_k,)
    det_score: list[np.ndarray]
    tp: list[np.ndarray]  # per class (T, N_k) bool
    fp: list[np.ndarray]
    npig: np.ndarray  # (K, I) non-ignored GT per class and image
    n_thr: int


def _ap_inputs(core: _Core, rows: Sequence[int]) -> _APInputs:
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
    return _APInputs(
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


def _precision_curves(
    inp: _APInputs, img_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Precision (T, R, K) with NaN for classes without GT, recall (T, K)."""
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


def _map(prec: np.ndarray, rows: slice | np.ndarray | None = None) -> float:
    """Mean over thresholds, recall points and classes with GT, as COCO's summarize."""
    p = prec if rows is None else prec[rows]
    valid = ~np.isnan(p[0, 0, :]) if p.size else np.zeros(0, bool)
    if p.shape[0] == 0 or not valid.any():
        return float("nan")
    return float(np.mean(p[:, :, valid]))


def _index_of(thresholds: np.ndarray, value: float) -> int | None:
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


def _pr_curves(core: _Core, inp: _APInputs, prec: np.ndarray, where: list[np.ndarray]) -> pd.DataFrame:
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


def _select_classes(g: _Boxes, p: _Boxes, classes: Sequence[str] | None) -> tuple[_Boxes, _Boxes]:
    """Drop rows of undeclared classes, like pycocotools with ``params.catIds``."""
    if classes is None:
        return g, p
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicates: {names}")
    allowed = set(names)
    keep_g = np.fromiter((c in allowed for c in g.cls), bool, len(g))
    keep_p = np.fromiter((c in allowed for c in p.cls), bool, len(p))
    return _subset(g, keep_g), _subset(p, keep_p)


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
    g, p = _select_classes(_parse_gt(gt), _parse_pred(pred), classes)
    thr = _check_thresholds(iou_thresholds)
    core = _run_core(g, p, thr, max_dets=max_dets, class_agnostic=False, classes=classes)
    inp = _ap_inputs(core, list(range(len(thr))))
    prec, rec, where = _precision_curves(inp)
    t50 = _index_of(thr, 0.5)
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
        map50=_map(prec, slice(t50, t50 + 1)) if t50 is not None else float("nan"),
        map50_95=_map(prec),
        per_class=per_class,
        max_dets=core.max_dets,
        iou_thresholds=tuple(float(t) for t in thr),
        pr_curves=_pr_curves(core, inp, prec, where),
        precision=prec,
        recall=rec,
        classes=tuple(core.classes),
        n_capped=int((~core.d_kept).sum()),
    )


# --------------------------------------------------------------------------
# Precision / recall / F1 and confusion matrix
# --------------------------------------------------------------------------


def _check_matches(matches: Any, *, class_agnostic: bool) -> None:
    _require_columns(matches, "matches", ("kind", "class", "gt_class", "pred_class", "score", "outcome"))
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
        names = _sorted_union(gt_cls[is_gt], pred_cls[~is_gt])
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


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CountResult:
    """Per-image counts and their summary.

    ``table``: image, n_gt, n_pred, error (= n_pred - n_gt), abs_error,
    rel_error (abs_error / n_gt, NaN when n_gt == 0). ``mae``: mean abs_error;
    ``mean_error``: mean signed error (bias); ``mean_rel_error``: mean
    rel_error over images with GT; ``pearson_r``: correlation of n_gt and
    n_pred (NaN with fewer than 2 images or a constant count).
    """

    table: pd.DataFrame
    mae: float
    mean_error: float
    mean_rel_error: float
    pearson_r: float
    n_images: int


def _per_image_counts(
    g: _Boxes, p: _Boxes, images: list[str], score_thr: float
) -> tuple[np.ndarray, np.ndarray]:
    index = pd.Index(images)
    reg = ~g.ignore
    n_gt = np.bincount(index.get_indexer(g.image[reg]), minlength=len(images))
    above = p.score >= score_thr
    n_pred = np.bincount(index.get_indexer(p.image[above]), minlength=len(images))
    return n_gt, n_pred


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else float("nan")


def count_metrics(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    score_thr: float = 0.5,
    images: Iterable[str] | None = None,
) -> CountResult:
    """Per-image GT count vs predicted count (predictions with score >= ``score_thr``).

    Crowd/ignored GT rows are not counted. Images are those of either table
    plus ``images`` (pass the full list so images with no cells and no
    predictions count as exact zeros). Filter both tables first for one
    class.
    """
    g, p = _parse_gt(gt), _parse_pred(pred)
    names = _sorted_union(g.image, p.image, () if images is None else images)
    n_gt, n_pred = _per_image_counts(g, p, names, score_thr)
    err = n_pred - n_gt
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(n_gt > 0, np.abs(err) / np.maximum(n_gt, 1), np.nan)
    table = pd.DataFrame(
        {"image": names, "n_gt": n_gt, "n_pred": n_pred, "error": err, "abs_error": np.abs(err), "rel_error": rel}
    )
    has_gt = n_gt > 0
    return CountResult(
        table=table,
        mae=float(np.abs(err).mean()) if len(names) else float("nan"),
        mean_error=float(err.mean()) if len(names) else float("nan"),
        mean_rel_error=float(rel[has_gt].mean()) if has_gt.any() else float("nan"),
        pearson_r=_pearson(n_gt.astype(float), n_pred.astype(float)),
        n_images=len(names),
    )


# --------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------


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
    g, p = _parse_gt(gt), _parse_pred(pred)
    ap_thr = _check_thresholds(iou_thresholds)
    prf_thr = _check_thresholds([iou_thr], "iou_thr")
    thr = np.r_[ap_thr, prf_thr]
    core = _run_core(g, p, thr, max_dets=max_dets, class_agnostic=False, images=() if images is None else images)
    n_img = len(core.images)
    inp = _ap_inputs(core, list(range(len(ap_thr))))
    t50 = _index_of(ap_thr, 0.5)

    # Per-image TP / FP / GT at the P/R/F1 threshold, from the same matching.
    t = len(thr) - 1
    hit = core.d_gt[t] >= 0
    on_ign = hit & core.g_ign[np.maximum(core.d_gt[t], 0)] if len(g) else hit
    counted = core.d_kept & (core.d_score >= score_thr)
    tp_img = np.bincount(core.d_img[counted & hit & ~on_ign], minlength=n_img).astype(float)
    fp_img = np.bincount(core.d_img[counted & ~hit], minlength=n_img).astype(float)
    gt_img = inp.npig.sum(axis=0)
    n_gt_cnt, n_pred_cnt = _per_image_counts(g, p, core.images, score_thr)
    abs_err = np.abs(n_pred_cnt - n_gt_cnt).astype(float)

    def headline(w: np.ndarray | None) -> list[float]:
        prec, _, _ = _precision_curves(inp, w)
        ww = np.ones(n_img) if w is None else w
        tp, fp, ng = tp_img @ ww, fp_img @ ww, gt_img @ ww
        return [
            _map(prec, slice(t50, t50 + 1)) if t50 is not None else float("nan"),
            _map(prec),
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


# --------------------------------------------------------------------------
# COCO JSON conversion
# --------------------------------------------------------------------------


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
    g = _parse_gt(gt)
    names = _sorted_union(g.image, () if images is None else images)
    cls_names = [str(c) for c in classes] if classes is not None else _sorted_union(g.cls)
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
    p = _parse_pred(pred)
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
