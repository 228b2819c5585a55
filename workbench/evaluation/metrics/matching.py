"""The one matching routine behind every metric: COCOeval's greedy assignment, vectorised.

It reproduces pycocotools' ``COCOeval`` for ``iouType='bbox'`` and area range ``'all'``:

* IoU as in :mod:`.iou` (bit-identical to pycocotools; crowd GT uses intersection / detection area).
* Per image and class, detections are sorted by score, descending, with a
  stable sort (ties keep table order), cut to ``max_dets``, and each one in
  turn takes the unmatched ground truth (GT) of highest IoU at or above the
  threshold; on equal IoU the later GT in table order wins, regular GT is
  preferred to crowd/ignored GT, and crowd GT may absorb any number of
  detections. Detections matched to crowd/ignored GT count neither as TP nor
  as FP.

Differences from pycocotools, all deliberate:

* ``ignore`` in the GT table is honoured (the GT is treated like a GT outside
  the area range in pycocotools: regular IoU, matched detections ignored);
  pycocotools itself overwrites a JSON ``ignore`` flag with ``iscrowd``.
* Score ties across images are broken by image name order (pycocotools: by
  image id; :func:`~workbench.evaluation.metrics.coco.gt_to_coco` numbers images in name
  order, so both agree).
* ``max_dets`` defaults to a cap above the densest image (see
  :func:`default_max_dets`) instead of COCO's 100, which silently truncates
  images of several hundred cells.

:func:`run_core` matches at several IoU thresholds at once and returns a :class:`MatchCore`
(arrays in canonical order) that the match table, AP, counting and bootstrap all read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation.metrics.boxes import Boxes, check_max_dets, check_thresholds, parse_gt, sorted_union
from workbench.evaluation.metrics.iou import iou_xywh

__all__ = ["COCO_MAX_DETS", "MatchCore", "default_max_dets", "run_core"]

COCO_MAX_DETS = 100
# pycocotools compares IoU with min(t, 1 - 1e-10) so that t = 1.0 can match.
_IOU_CAP = 1 - 1e-10
# Upper bound on candidate (detection, GT) pairs held in memory at once.
_PAIR_CHUNK = 2_000_000


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
    return _default_max_dets(parse_gt(gt), class_agnostic=class_agnostic)


def _default_max_dets(g: Boxes, *, class_agnostic: bool) -> int:
    if len(g) == 0:
        return COCO_MAX_DETS
    keys = pd.Series(g.image) if class_agnostic else pd.Series(g.image + "\x00" + g.cls)
    largest = int(keys.value_counts().max())
    return max(COCO_MAX_DETS, 100 * math.ceil(2 * largest / 100))


@dataclass(frozen=True)
class MatchCore:
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
        iou = iou_xywh(d_box[di], g_box[gj], g_crowd[gj])
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


def run_core(
    g: Boxes,
    p: Boxes,
    thresholds: np.ndarray,
    *,
    max_dets: int | None,
    class_agnostic: bool,
    classes: Sequence[str] | None = None,
    images: Iterable[str] = (),
) -> MatchCore:
    """Match ``p`` to ``g`` at all ``thresholds`` (the single matching).

    ``classes`` fixes the class axis (rows of other classes must be dropped first);
    ``images`` adds images that have no rows in either table.
    """
    thresholds = check_thresholds(thresholds)
    if max_dets is None:
        max_dets = _default_max_dets(g, class_agnostic=class_agnostic)
    max_dets = check_max_dets(max_dets)
    all_images = sorted_union(g.image, p.image, images)
    class_list = list(classes) if classes is not None else sorted_union(g.cls, p.cls)
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

    return MatchCore(
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
