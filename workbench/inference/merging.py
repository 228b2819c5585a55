"""Merge overlapping boxes: non-maximum suppression (NMS) and non-maximum merging (NMM).

Pure functions over ``(n, 4)`` arrays of ``x1 y1 x2 y2`` boxes (pixels, COCO convention:
no +1) and over box tables (the prediction-table columns ``x1 y1 x2 y2 class score`` plus
grouping columns).

Overlap metrics:

* ``"iou"`` – intersection over union;
* ``"ios"`` – intersection over the *smaller* box's area. A cell cut by a tile edge gives
  a partial box inside the whole box seen by the neighbouring tile: its IoU with the whole
  box is small (a half cell: 0.5 at best), its IoS is ~1.

Two boxes interact only when their overlap is ``>= threshold`` and > 0, they share a
``group`` (class, image) and, when ``sources`` is given, they come from *different* sources
(tiles, canvas pieces). Restricting merging to boxes from different tiles keeps the
detector's own decisions inside a tile: two touching nuclei seen whole in one tile stay two,
which a merge over all boxes (SAHI's default greedy NMM) does not guarantee.

* :func:`nms` keeps, in score order, each box not suppressed by a kept box.
* :func:`nmm` (greedy non-maximum *merging*): in score order, each box not yet taken becomes
  a representative and takes every untaken box that overlaps *it* (as NMS suppresses them).
  The group's box is the representative's, completed by union where the cell was cut: when
  the representative is ``cut`` (it touches an inner edge of its tile), it is joined with
  the member of each other source that overlaps it most (a whole view, or the other piece
  of a cell cut in both tiles). Without ``cut`` flags every representative is joined with
  those best members (SAHI's ``GREEDYNMM`` with one box per source). Joining only cut boxes
  keeps whole boxes tight: on real H&E tiles, joining every overlap enlarged boxes past
  IoU 0.5 with the truth, and taking only one box per tile left duplicates behind.

Overlapping pairs are found by a sweep over boxes sorted by ``x1`` (no ``n x n`` matrix), so
an image with tens of thousands of boxes merges in memory proportional to the overlaps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

METRICS = ("iou", "ios")
METHODS = ("nms", "nmm")
_PAIR_CHUNK = 4_000_000  # candidate pairs examined at once (memory bound)


def _check(boxes: np.ndarray, scores: np.ndarray | None, metric: str, threshold: float) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes have NaN or infinite coordinates")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError("boxes have x2 < x1 or y2 < y1")
    if scores is not None and scores.shape != (len(boxes),):
        raise ValueError(f"scores must have shape ({len(boxes)},), got {scores.shape}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")


def _labels(values: Sequence | np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one value per box ({n}), got shape {arr.shape}")
    return pd.factorize(arr, use_na_sentinel=False)[0]


def overlap(a: np.ndarray, b: np.ndarray, *, metric: str = "iou") -> np.ndarray:
    """Overlap of box ``a[k]`` with box ``b[k]`` (element-wise, same length)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    return np.divide(inter, denom, out=np.zeros(inter.shape), where=denom > 0)


def overlap_pairs(boxes: np.ndarray, *, metric: str = "iou", threshold: float = 0.5,
                  groups: Sequence | np.ndarray | None = None,
                  sources: Sequence | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, value)`` with ``i < j`` whose overlap is ``>= threshold`` and > 0.

    Only boxes of the same ``group`` pair up, and (given ``sources``) only boxes of
    different sources. Returned sorted by ``(i, j)``.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    _check(boxes, None, metric, threshold)
    n = len(boxes)
    grp = _labels(groups, n, "groups")
    src = _labels(sources, n, "sources")
    order = np.lexsort((boxes[:, 0], grp)) if grp is not None else np.argsort(boxes[:, 0], kind="stable")
    # Sweep: in x1 order (within a group), box j > i can overlap i only if x1_j < x2_i.
    key_g = grp[order] if grp is not None else np.zeros(n, dtype=np.int64)
    x1 = boxes[order, 0]
    # search within the group's block: offset x by a large per-group shift
    span = float(np.ptp(boxes[:, [0, 2]])) + 1.0 if n else 1.0
    sx1 = x1 + key_g * 2 * span
    sx2 = boxes[order, 2] + key_g * 2 * span
    hi = np.searchsorted(sx1, sx2, side="left")
    start = np.arange(n) + 1
    counts = np.clip(hi - start, 0, None)
    out_i, out_j, out_v = [], [], []
    pos = 0
    while pos < n:
        # chunk rows so that at most _PAIR_CHUNK candidates are materialised
        cum = np.cumsum(counts[pos:])
        end = pos + max(1, int(np.searchsorted(cum, _PAIR_CHUNK, side="right")))
        c = counts[pos:end]
        if c.sum():
            rows = np.repeat(np.arange(pos, end), c)
            offs = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
            cols = start[rows] + offs
            i, j = order[rows], order[cols]
            keep = np.ones(len(i), dtype=bool)
            if src is not None:
                keep &= src[i] != src[j]
            i, j = i[keep], j[keep]
            v = overlap(boxes[i], boxes[j], metric=metric)
            hit = (v >= threshold) & (v > 0)
            out_i.append(i[hit])
            out_j.append(j[hit])
            out_v.append(v[hit])
        pos = end
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j, v = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v)
    lo, hi_ = np.minimum(i, j), np.maximum(i, j)
    srt = np.lexsort((hi_, lo))
    return lo[srt].astype(np.int64), hi_[srt].astype(np.int64), v[srt]


def _neighbours(n: int, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR adjacency (indptr, indices, values) of an undirected pair list."""
    a = np.concatenate([i, j])
    b = np.concatenate([j, i])
    w = np.concatenate([v, v])
    srt = np.argsort(a, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, a + 1, 1)
    return np.cumsum(indptr), b[srt], w[srt]


def _score_order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")  # ties keep input order


def nms(boxes: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5, metric: str = "iou",
        groups: Sequence | np.ndarray | None = None,
        sources: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, in descending score order."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scores = np.asarray(scores, dtype=float).ravel()
    _check(boxes, scores, metric, threshold)
    i, j, v = overlap_pairs(boxes, metric=metric, threshold=threshold, groups=groups, sources=sources)
    indptr, nb, _ = _neighbours(len(boxes), i, j, v)
    removed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for k in _score_order(scores):
        if removed[k]:
            continue
        keep.append(k)
        # neighbours of higher score were handled already; marking them again is harmless
        removed[nb[indptr[k]:indptr[k + 1]]] = True
    return np.asarray(keep, dtype=np.int64)


def nmm(boxes: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5, metric: str = "ios",
        groups: Sequence | np.ndarray | None = None, sources: Sequence | np.ndarray | None = None,
        cut: Sequence | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy non-maximum merging (see the module docstring).

    Returns ``(label, representative, joined)``: ``label[k]`` is the group of box ``k``
    (groups numbered in descending score of their representative), ``representative[g]``
    the index of group ``g``'s highest-scoring box, ``joined[k]`` whether box ``k`` is part
    of its group's union box (representatives always are).
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scores = np.asarray(scores, dtype=float).ravel()
    _check(boxes, scores, metric, threshold)
    src = _labels(sources, len(boxes), "sources")
    is_cut = None if cut is None else np.asarray(cut, dtype=bool).ravel()
    if is_cut is not None and is_cut.shape != (len(boxes),):
        raise ValueError(f"cut must have one value per box ({len(boxes)}), got shape {is_cut.shape}")
    i, j, v = overlap_pairs(boxes, metric=metric, threshold=threshold, groups=groups, sources=sources)
    indptr, nb, val = _neighbours(len(boxes), i, j, v)
    label = np.full(len(boxes), -1, dtype=np.int64)
    joined = np.zeros(len(boxes), dtype=bool)
    reps = []
    for k in _score_order(scores):
        if label[k] >= 0:
            continue
        g = len(reps)
        reps.append(k)
        label[k] = g
        joined[k] = True
        cand, cval = nb[indptr[k]:indptr[k + 1]], val[indptr[k]:indptr[k + 1]]
        free = label[cand] < 0
        cand, cval = cand[free], cval[free]
        if not len(cand):
            continue
        label[cand] = g
        if is_cut is not None and not is_cut[k]:
            continue  # a whole representative keeps its own box
        if src is not None:
            # per other source, the box overlapping the representative most (ties: score, order)
            srt = np.lexsort((cand, -scores[cand], -cval, src[cand]))
            cand = cand[srt]
            cand = cand[np.r_[True, src[cand][1:] != src[cand][:-1]]]
        joined[cand] = True
    return label, np.asarray(reps, dtype=np.int64), joined


def union_boxes(boxes: np.ndarray, label: np.ndarray, n_groups: int, *, joined: np.ndarray | None = None) -> np.ndarray:
    """Enclosing box of each group (``label`` from :func:`nmm`), over the ``joined`` boxes only
    when given."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if joined is not None:
        boxes, label = boxes[joined], np.asarray(label)[joined]
    out = np.empty((n_groups, 4))
    out[:, :2] = np.inf
    out[:, 2:] = -np.inf
    np.minimum.at(out[:, 0], label, boxes[:, 0])
    np.minimum.at(out[:, 1], label, boxes[:, 1])
    np.maximum.at(out[:, 2], label, boxes[:, 2])
    np.maximum.at(out[:, 3], label, boxes[:, 3])
    return out


def merge_table(table: pd.DataFrame, *, method: str = "nmm", metric: str = "ios", threshold: float = 0.5,
                by: Sequence[str] = ("class",), source: str | None = None, cut: str | None = None) -> pd.DataFrame:
    """Merge a box table's rows per ``by`` group (class, and image when present).

    ``table`` has ``x1 y1 x2 y2 score`` and the ``by`` columns; ``source`` names a column
    whose equal values never interact (the tile a box came from), ``cut`` a boolean column
    (the box touches an inner edge of its tile; NMM only). NMS keeps rows; NMM keeps each
    group's representative row with its (completed) box and adds ``n_merged`` (boxes in the
    group). Rows come back in descending score order.
    """
    if method not in METHODS:
        raise ValueError(f"merge method must be one of {METHODS}, got {method!r}")
    missing = [c for c in ("x1", "y1", "x2", "y2", "score", *by, *(c for c in (source, cut) if c)) if c not in table]
    if missing:
        raise ValueError(f"box table lacks columns {missing}")
    if table.empty:
        return table.iloc[:0].assign(n_merged=pd.Series(dtype=np.int64)) if method == "nmm" else table.copy()
    boxes = table[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    scores = table["score"].to_numpy(dtype=float)
    groups = (pd.MultiIndex.from_frame(table[list(by)].astype(str)).factorize()[0] if len(by) else None)
    sources = table[source].to_numpy() if source else None
    if method == "nms":
        keep = nms(boxes, scores, threshold=threshold, metric=metric, groups=groups, sources=sources)
        return table.iloc[keep].reset_index(drop=True)
    label, reps, joined = nmm(boxes, scores, threshold=threshold, metric=metric, groups=groups, sources=sources,
                              cut=table[cut].to_numpy(dtype=bool) if cut else None)
    merged = union_boxes(boxes, label, len(reps), joined=joined)
    out = table.iloc[reps].reset_index(drop=True)
    out[["x1", "y1", "x2", "y2"]] = merged
    out["n_merged"] = np.bincount(label, minlength=len(reps))
    return out
