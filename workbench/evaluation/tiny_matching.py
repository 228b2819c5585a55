"""Matching criteria for tiny objects: IoU, centre distance and IoU with a minimum box size.

A 1 px shift of a 5x5 box drops its IoU with the truth to 0.67 (two shifts: 0.36), and two
independent annotations of the same MNFinder image agree only at mask IoU 0.65, so IoU >= 0.5
misjudges micronuclei. Criteria (see :class:`Criterion`):

* ``iou`` – IoU >= ``threshold`` (the COCO rule);
* ``centre`` – distance between box centres <= ``threshold`` pixels;
* ``min_size_iou`` – IoU >= ``threshold`` after both boxes are grown about their centres to
  at least ``min_size`` px per side (a 5x5 box shifted by 1 px keeps IoU 0.78 at 8 px).

Criteria are chosen per class (``{"mn": centre 3 px, "nucleus": IoU 0.5}``) and every
number produced here carries the criterion's label. Matching is one-to-one and greedy like
COCO's: per image and class, predictions in descending score order (stable) each take the
unmatched ground truth (GT) that fits best (highest IoU, or smallest distance; ties go to the
earlier GT). The match table has the columns of :func:`workbench.evaluation.metrics.match` (plus
``distance`` and ``criterion``), so :func:`workbench.evaluation.metrics.prf_from_matches` reads it;
with an ``iou`` criterion the outcomes equal ``metrics.match`` (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation import metrics

KINDS = ("iou", "centre", "min_size_iou")
BOX = ["x1", "y1", "x2", "y2"]


@dataclass(frozen=True)
class Criterion:
    """When a prediction matches a GT box: ``kind`` (see module docstring), its ``threshold``
    (IoU in (0, 1], or pixels for ``centre``) and ``min_size`` (px, ``min_size_iou`` only)."""

    kind: str = "iou"
    threshold: float = 0.5
    min_size: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"criterion kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "centre":
            if not np.isfinite(self.threshold) or self.threshold < 0:
                raise ValueError(f"centre distance threshold must be >= 0 px, got {self.threshold}")
        elif not 0 < self.threshold <= 1:
            raise ValueError(f"IoU threshold must lie in (0, 1], got {self.threshold}")
        if self.kind == "min_size_iou" and not self.min_size > 0:
            raise ValueError(f"min_size_iou needs min_size > 0 px, got {self.min_size}")

    def label(self) -> str:
        if self.kind == "centre":
            return f"centre<={self.threshold:g}px"
        if self.kind == "min_size_iou":
            return f"IoU{self.threshold:g}@min{self.min_size:g}px"
        return f"IoU{self.threshold:g}"


IOU50 = Criterion("iou", 0.5)
CENTRE3 = Criterion("centre", 3.0)
MIN8_IOU50 = Criterion("min_size_iou", 0.5, 8.0)
# the criteria reported for every study; the first is the headline for micronuclei
STANDARD = {"centre<=3px": CENTRE3, "IoU0.5@min8px": MIN8_IOU50, "IoU0.5": IOU50}
TINY_DEFAULTS = {"mn": CENTRE3, "nucleus": IOU50}

PerClass = Criterion | Mapping[str, Criterion]


# ----------------------------------------------------------------------------- geometry

def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` Euclidean distances between the centres of ``x1 y1 x2 y2`` boxes."""
    a, b = _boxes(a), _boxes(b)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    return np.sqrt(((ca[:, None, :] - cb[None, :, :]) ** 2).sum(axis=2))


def grow_to(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """Boxes grown symmetrically about their centres to at least ``min_size`` px per side."""
    b = _boxes(boxes).copy()
    for lo, hi in ((0, 2), (1, 3)):
        short = np.maximum(min_size - (b[:, hi] - b[:, lo]), 0) / 2
        b[:, lo] -= short
        b[:, hi] += short
    return b


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``x1 y1 x2 y2`` boxes (no +1 pixel, as in workbench.evaluation.metrics)."""
    return metrics.box_iou(_boxes(a), _boxes(b))


def fit_matrix(gt: np.ndarray, pred: np.ndarray, criterion: Criterion) -> tuple[np.ndarray, np.ndarray]:
    """(``ok``, ``goodness``) ``(N_gt, N_pred)``: whether each pair matches under ``criterion``
    and how well (higher is better: IoU, or minus the distance); plus IoU and distance."""
    if criterion.kind == "centre":
        d = centre_distance(gt, pred)
        return d <= criterion.threshold, -d
    if criterion.kind == "min_size_iou":
        iou = iou_matrix(grow_to(gt, criterion.min_size), grow_to(pred, criterion.min_size))
    else:
        iou = iou_matrix(gt, pred)
    return iou >= min(criterion.threshold, 1 - 1e-10), iou


def _boxes(a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be an (n, 4) array of x1 y1 x2 y2, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- matching

def criterion_for(criteria: PerClass, cls: str) -> Criterion:
    """The criterion of class ``cls`` (a single criterion applies to every class)."""
    if isinstance(criteria, Criterion):
        return criteria
    if cls not in criteria:
        raise ValueError(f"no matching criterion for class {cls!r}; criteria are given for {sorted(criteria)}")
    return criteria[cls]


def _greedy(ok: np.ndarray, good: np.ndarray) -> np.ndarray:
    """For predictions in score order (columns), the GT row each takes (-1: none)."""
    n_gt, n_pred = ok.shape
    taken = np.zeros(n_gt, bool)
    out = np.full(n_pred, -1, dtype=np.int64)
    for j in range(n_pred):
        cand = np.flatnonzero(ok[:, j] & ~taken)
        if cand.size:
            g = cand[np.argmax(good[cand, j])]  # first maximum: earlier GT wins ties
            out[j] = g
            taken[g] = True
    return out


def match(gt: pd.DataFrame, pred: pd.DataFrame, criteria: PerClass = TINY_DEFAULTS, *,
          class_agnostic: bool = False) -> pd.DataFrame:
    """One-to-one greedy matching under per-class criteria, as a tidy table.

    Columns as :func:`workbench.evaluation.metrics.match` (``kind image class gt_id pred_id gt_class
    pred_class x1 y1 x2 y2 score iou outcome``) plus ``distance`` (centre distance to the
    partner, px) and ``criterion`` (label of the criterion applied). With ``class_agnostic``
    predictions may match GT of any class and the GT's class chooses the criterion (the
    table of clinical rates). Outcomes: 'tp', 'fp', 'fn'; no capping, no crowd.
    """
    g = metrics.parse_gt(gt).frame.reset_index(drop=True)
    p = metrics.parse_pred(pred).frame.reset_index(drop=True)
    g_box, p_box = g[BOX].to_numpy(float), p[BOX].to_numpy(float)
    g_img, p_img = g["image"].astype(str).to_numpy(), p["image"].astype(str).to_numpy()
    g_cls, p_cls = g["class"].astype(str).to_numpy(), p["class"].astype(str).to_numpy()
    score = p["score"].to_numpy(float)
    g_partner = np.full(len(g), -1, dtype=np.int64)
    p_partner = np.full(len(p), -1, dtype=np.int64)
    for cls in sorted(set(g_cls)):  # fail early, naming the class without a criterion
        criterion_for(criteria, cls)
    keys = sorted(set(zip(g_img, g_cls if not class_agnostic else [""] * len(g)))
                  | set(zip(p_img, p_cls if not class_agnostic else [""] * len(p))))
    for img, cls in keys:
        gi = np.flatnonzero((g_img == img) & ((g_cls == cls) | class_agnostic))
        pi = np.flatnonzero((p_img == img) & ((p_cls == cls) | class_agnostic))
        if not len(gi) or not len(pi):
            continue
        pi = pi[np.argsort(-score[pi], kind="stable")]
        ok = np.zeros((len(gi), len(pi)), bool)
        good = np.zeros((len(gi), len(pi)))
        for c in sorted(set(g_cls[gi])):  # rows of each GT class judged by that class's criterion
            rows = np.flatnonzero(g_cls[gi] == c)
            ok[rows], good[rows] = fit_matrix(g_box[gi[rows]], p_box[pi], criterion_for(criteria, c))
        taken = _greedy(ok, good)
        hit = taken >= 0
        p_partner[pi[hit]] = gi[taken[hit]]
        g_partner[gi[taken[hit]]] = pi[hit]
    return _table(g, p, g_partner, p_partner, criteria, class_agnostic)


def _pair_values(a: np.ndarray, b: np.ndarray, partner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and centre distance of each row of ``a`` with its partner row of ``b`` (NaN if none)."""
    iou = np.full(len(a), np.nan)
    dist = np.full(len(a), np.nan)
    hit = np.flatnonzero(partner >= 0)
    if hit.size:
        x, y = a[hit], b[partner[hit]]
        iw = np.clip(np.minimum(x[:, 2], y[:, 2]) - np.maximum(x[:, 0], y[:, 0]), 0, None)
        ih = np.clip(np.minimum(x[:, 3], y[:, 3]) - np.maximum(x[:, 1], y[:, 1]), 0, None)
        inter = iw * ih
        union = (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1]) + (y[:, 2] - y[:, 0]) * (y[:, 3] - y[:, 1]) - inter
        iou[hit] = np.divide(inter, union, out=np.zeros(len(hit)), where=union > 0)
        dist[hit] = np.hypot((x[:, 0] + x[:, 2] - y[:, 0] - y[:, 2]) / 2, (x[:, 1] + x[:, 3] - y[:, 1] - y[:, 3]) / 2)
    return iou, dist


def _ids(partner: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(np.maximum(partner, 0), partner < 0)


def _table(g: pd.DataFrame, p: pd.DataFrame, g_partner: np.ndarray, p_partner: np.ndarray,
           criteria: PerClass, class_agnostic: bool) -> pd.DataFrame:
    g_box, p_box = g[BOX].to_numpy(float), p[BOX].to_numpy(float)
    g_cls, p_cls = g["class"].astype(str).to_numpy(object), p["class"].astype(str).to_numpy(object)
    score = p["score"].to_numpy(float)
    g_iou, g_dist = _pair_values(g_box, p_box, g_partner)
    p_iou, p_dist = _pair_values(p_box, g_box, p_partner)
    g_hit, p_hit = g_partner >= 0, p_partner >= 0

    def label(cls: str) -> str:
        try:
            return criterion_for(criteria, cls).label()
        except ValueError:
            return ""

    gt_rows = pd.DataFrame({
        "kind": "gt", "image": g["image"].astype(str).to_numpy(), "class": g_cls,
        "gt_id": _ids(np.arange(len(g))), "pred_id": _ids(g_partner), "gt_class": g_cls,
        "pred_class": np.where(g_hit, p_cls[np.maximum(g_partner, 0)] if len(p) else None, None),
        **{c: g_box[:, i] for i, c in enumerate(BOX)},
        "score": np.where(g_hit, score[np.maximum(g_partner, 0)] if len(p) else np.nan, np.nan),
        "iou": g_iou, "distance": g_dist, "outcome": np.where(g_hit, "tp", "fn"),
        "criterion": [label(c) for c in g_cls]})
    pred_rows = pd.DataFrame({
        "kind": "pred", "image": p["image"].astype(str).to_numpy(), "class": p_cls,
        "gt_id": _ids(p_partner), "pred_id": _ids(np.arange(len(p))),
        "gt_class": np.where(p_hit, g_cls[np.maximum(p_partner, 0)] if len(g) else None, None),
        "pred_class": p_cls, **{c: p_box[:, i] for i, c in enumerate(BOX)}, "score": score,
        "iou": p_iou, "distance": p_dist, "outcome": np.where(p_hit, "tp", "fp"),
        "criterion": [label(c) for c in (np.where(p_hit, g_cls[np.maximum(p_partner, 0)] if len(g) else "", p_cls))]})
    out = pd.concat([df for df in (gt_rows, pred_rows) if len(df)] or [gt_rows], ignore_index=True)
    out.attrs.update(class_agnostic=class_agnostic, criteria=describe(criteria))
    return out


def describe(criteria: PerClass) -> dict[str, str] | str:
    """Labels of per-class criteria (or of the single criterion), for reports."""
    if isinstance(criteria, Criterion):
        return criteria.label()
    return {c: k.label() for c, k in sorted(criteria.items())}


# ----------------------------------------------------------------------------- precision / recall

def prf(gt: pd.DataFrame, pred: pd.DataFrame, criteria: PerClass = TINY_DEFAULTS, *,
        score_thr: float = 0.5) -> pd.DataFrame:
    """Precision, recall and F1 per class (and ``all``) under ``criteria``, with a
    ``criterion`` column naming the criterion of each class row."""
    table = metrics.prf_from_matches(match(gt, pred, criteria), score_thr=score_thr)
    table["criterion"] = [describe(criteria) if isinstance(criteria, Criterion)
                          else (criteria[c].label() if c in criteria else "per class")
                          for c in table["class"]]
    return table


def prf_by_criterion(gt: pd.DataFrame, pred: pd.DataFrame, criteria: Mapping[str, Criterion] = STANDARD, *,
                     classes: Sequence[str] | None = None, score_thr: float = 0.5) -> pd.DataFrame:
    """One P/R/F1 row per (criterion, class): every class judged by each criterion in turn.

    ``classes`` restricts the rows (default: the classes present). Columns: criterion, class,
    n_gt, n_pred, tp, fp, fn, precision, recall, f1.
    """
    rows = []
    for name, crit in criteria.items():
        t = metrics.prf_from_matches(match(gt, pred, crit), score_thr=score_thr)
        t.insert(0, "criterion", name)
        rows.append(t if classes is None else t[t["class"].isin(list(classes))])
    return pd.concat(rows, ignore_index=True)


def clinical_counts(gt: pd.DataFrame, pred: pd.DataFrame, *, positive: Sequence[str] | str,
                    criteria: PerClass = TINY_DEFAULTS, images: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-image counts of :func:`workbench.evaluation.clinical.image_counts`, but matched class-agnostically
    under per-class ``criteria`` (the GT's class chooses), for :func:`clinical.rates_from_counts`."""
    pos = [positive] if isinstance(positive, str) else list(positive)
    from workbench.evaluation.clinical import counts_from_matches

    m = match(gt, pred, criteria, class_agnostic=True)
    names = list(dict.fromkeys(images)) if images is not None else sorted(set(m["image"].astype(str)))
    return counts_from_matches(m, positive=pos, images=names)
