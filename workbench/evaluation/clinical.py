"""Clinical rates of a detector or cascade on a labelled test set, per image group, with CIs.

One class-agnostic matching (:func:`workbench.evaluation.metrics.match` with ``class_agnostic=True``, IoU
>= ``iou_thr``, default 0.5; every prediction in the table is used, none is capped) pairs
each ground-truth (GT) cell with at most one prediction. ``positive`` names the classes that
count as positive (e.g. aberrant cells, micronuclei); all other classes are negative. Then:

* **detection rate** = GT cells matched by any prediction / all GT cells
  (whatever the two classes are);
* **correct classification rate** = matched GT cells whose prediction has the GT's class
  (the exact class, not only the positive/negative side) / matched GT cells;
* **false-positive (FP) rate** = predictions of a positive class that are *not truly
  positive* / all predictions of a positive class. A prediction is truly positive when it is
  matched to a GT cell of a positive class (any positive class: with several positive
  classes, mixing them up is a classification error, not a false positive). An unmatched
  (spurious) prediction and one matched to a negative GT cell are not truly positive;
* **false-negative (FN) rate** = GT cells of a positive class that are *not reported as
  positive* / all GT cells of a positive class. Not reported = missed by the detector, or
  matched to a prediction of a negative class.

A rate whose denominator is zero (e.g. the FN rate of images without positive cells) is
NaN, never 0 or 1. GT marked ``ignore``/``iscrowd`` and predictions matched to it count
nowhere. Confidence intervals: percentile bootstrap over images (seeded): images are drawn
with replacement, and each rate is recomputed as the ratio of the summed counts (a pooled,
cell-weighted rate, the same definition as the point estimate). Images without any cell and
any prediction are part of the resampled set (pass every test image, via ``images`` or
``meta``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation import metrics

RATES = ("detection_rate", "classification_rate", "fp_rate", "fn_rate")
# (numerator, denominator) columns of the per-image count table for each rate
_PARTS = {"detection_rate": ("n_detected", "n_gt"), "classification_rate": ("n_correct", "n_detected"),
          "fp_rate": ("n_false_pos", "n_pred_pos"), "fn_rate": ("n_false_neg", "n_gt_pos")}
COUNT_COLUMNS = ["n_gt", "n_detected", "n_correct", "n_pred", "n_pred_pos", "n_false_pos",
                 "n_gt_pos", "n_false_neg"]
ALL = "all"
NO_GROUP = "(none)"
DEFINITIONS = {
    "matching": "one class-agnostic COCO greedy matching (workbench.evaluation.metrics.match, class_agnostic=True) "
                "at IoU >= iou_thr of the predictions scoring >= score_thr (the operating point; all of them "
                "when score_thr is null), with no max_dets cap",
    "detection_rate": "GT cells matched by any prediction / GT cells",
    "classification_rate": "matched GT cells whose prediction has the GT's exact class / matched GT cells",
    "fp_rate": "predictions of a positive class not matched to a positive GT cell (spurious, or matched to "
               "a negative GT cell) / predictions of a positive class",
    "fn_rate": "positive GT cells missed or matched to a prediction of a negative class / positive GT cells",
    "ci": "percentile bootstrap over images (pooled counts per resample); NaN when a denominator is 0",
}


# ----------------------------------------------------------------------------- counts

def _image_list(gt: pd.DataFrame, pred: pd.DataFrame, images: Iterable[str] | None,
                meta: pd.DataFrame | None) -> list[str]:
    if images is not None:
        return [str(i) for i in dict.fromkeys(images)]
    if meta is not None:
        return [str(i) for i in _meta_index(meta)]
    return sorted(set(gt["image"].astype(str)) | set(pred["image"].astype(str)))


def _meta_index(meta: pd.DataFrame) -> pd.Index:
    if "image_id" in meta.columns:
        return pd.Index(meta["image_id"].astype(str))
    if "image" in meta.columns:
        return pd.Index(meta["image"].astype(str))
    return meta.index.astype(str)


def _check_positive(positive: Sequence[str] | str, gt: pd.DataFrame, pred: pd.DataFrame,
                    classes: Sequence[str] | None) -> list[str]:
    pos = [positive] if isinstance(positive, str) else [str(c) for c in positive]
    if not pos:
        raise ValueError("positive: name at least one positive class")
    if classes is not None:
        unknown = sorted(set(pos) - {str(c) for c in classes})
        if unknown:
            raise ValueError(f"positive classes {unknown} are not among the classes {list(classes)}")
    else:
        seen = set(gt["class"].astype(str)) | set(pred["class"].astype(str))
        if seen and not set(pos) & seen:
            raise ValueError(f"positive classes {pos} occur neither in the GT nor in the predictions "
                             f"(classes seen: {sorted(seen)}); check the spelling, or pass classes=")
    return pos


def cell_matches(gt: pd.DataFrame, pred: pd.DataFrame, *, iou_thr: float = 0.5) -> pd.DataFrame:
    """The one class-agnostic match table behind every rate (no detection is capped)."""
    cap = metrics.default_max_dets(gt, class_agnostic=True)
    if len(pred):
        cap = max(cap, int(pred["image"].astype(str).value_counts().max()))
    return metrics.match(gt, pred, iou_thr=iou_thr, max_dets=cap, class_agnostic=True)


def image_counts(gt: pd.DataFrame, pred: pd.DataFrame, *, positive: Sequence[str] | str,
                 images: Iterable[str] | None = None, iou_thr: float = 0.5,
                 classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per image: the numerators and denominators of the four rates (see module docstring).

    Columns: image, n_gt, n_detected, n_correct, n_pred, n_pred_pos, n_false_pos, n_gt_pos,
    n_false_neg. Rows and predictions of images outside ``images`` are left out.
    """
    pos = _check_positive(positive, gt, pred, classes)
    names = _image_list(gt, pred, images, None)
    keep = set(names)
    gt = gt[gt["image"].astype(str).isin(keep)].reset_index(drop=True)
    pred = pred[pred["image"].astype(str).isin(keep)].reset_index(drop=True)
    return counts_from_matches(cell_matches(gt, pred, iou_thr=iou_thr), positive=pos, images=names)


def counts_from_matches(m: pd.DataFrame, *, positive: Sequence[str], images: Sequence[str]) -> pd.DataFrame:
    """The per-image counts of :func:`image_counts` from any class-agnostic match table
    (``image kind outcome gt_class pred_class`` as :func:`workbench.evaluation.metrics.match` writes it),
    so other matching criteria (e.g. centre distance for tiny objects) give the same rates."""
    names = list(images)
    m = m[m["image"].astype(str).isin(set(names))]
    is_gt = (m["kind"] == "gt").to_numpy()
    outcome = m["outcome"].astype(str).to_numpy()
    matched = outcome == "tp"
    gt_cls = m["gt_class"].astype(object).to_numpy()
    pred_cls = m["pred_class"].astype(object).to_numpy()
    gt_pos = np.isin(gt_cls, list(positive))
    pred_pos = np.isin(pred_cls, list(positive))
    g = is_gt & (outcome != "ignored")
    p = ~is_gt & (outcome != "ignored")
    flags = {
        "n_gt": g,
        "n_detected": g & matched,
        "n_correct": g & matched & (gt_cls == pred_cls),
        "n_pred": p,
        "n_pred_pos": p & pred_pos,
        "n_false_pos": p & pred_pos & ~(matched & gt_pos),
        "n_gt_pos": g & gt_pos,
        "n_false_neg": g & gt_pos & ~(matched & pred_pos),
    }
    idx = pd.Index(names).get_indexer(m["image"].astype(str))
    out = pd.DataFrame({"image": pd.Series(names, dtype=str)})
    for col, f in flags.items():
        out[col] = np.bincount(idx[f], minlength=len(names)).astype(np.int64)
    return out


# ----------------------------------------------------------------------------- rates + CIs

def rates_from_counts(counts: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95) -> pd.DataFrame:
    """Pooled rates of a per-image count table with bootstrap CIs over its rows.

    Returns columns metric, value, lo, hi, count (numerator), total (denominator).
    ``n_boot=0``: no intervals (lo, hi NaN).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci!r}")
    c = counts[COUNT_COLUMNS].to_numpy(dtype=float)
    col = {name: k for k, name in enumerate(COUNT_COLUMNS)}
    num = np.array([col[_PARTS[r][0]] for r in RATES])
    den = np.array([col[_PARTS[r][1]] for r in RATES])
    sums = c.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(sums[den] > 0, sums[num] / sums[den], np.nan)
    lo = np.full(len(RATES), np.nan)
    hi = np.full(len(RATES), np.nan)
    n = len(c)
    if n_boot and n:
        rng = np.random.default_rng(seed)
        boot = np.empty((n_boot, len(COUNT_COLUMNS)))
        step = max(1, 2_000_000 // max(n, 1))  # bounds the weight matrix in memory
        for s in range(0, n_boot, step):
            k = min(step, n_boot - s)
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(float)
            boot[s:s + k] = w @ c
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(boot[:, den] > 0, boot[:, num] / boot[:, den], np.nan)
        q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
        for j in range(len(RATES)):
            v = r[:, j][~np.isnan(r[:, j])]
            if v.size:
                lo[j], hi[j] = np.percentile(v, q)
    return pd.DataFrame({"metric": list(RATES), "value": value, "lo": lo, "hi": hi,
                         "count": sums[num].astype(np.int64), "total": sums[den].astype(np.int64)})


def clinical_rates(gt: pd.DataFrame, pred: pd.DataFrame, *, positive: Sequence[str] | str,
                   group_by: str | None = None, meta: pd.DataFrame | None = None,
                   images: Iterable[str] | None = None, n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95, iou_thr: float = 0.5, score_thr: float | None = None,
                   classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy table of the four rates overall (group ``"all"``) and per ``group_by`` value.

    ``meta``: per-image table (index, ``image_id`` or ``image`` column = image names) holding
    ``group_by``; its images are the evaluated set unless ``images`` is given. Predictions with
    ``score < score_thr`` are dropped first (default: every row of ``pred`` counts, i.e. the
    table is what the system reports). Columns: group, metric, value, lo, hi, count, total,
    n_images.
    """
    gt, pred = _tables(gt, pred, score_thr)
    names = _image_list(gt, pred, images, meta)
    counts = image_counts(gt, pred, positive=positive, images=names, iou_thr=iou_thr, classes=classes)
    parts = [rates_from_counts(counts, n_boot=n_boot, seed=seed, ci=ci).assign(group=ALL, n_images=len(counts))]
    if group_by is not None:
        for value, rows in _groups(counts["image"], meta, group_by).items():
            sub = counts.iloc[rows]
            parts.append(rates_from_counts(sub, n_boot=n_boot, seed=seed, ci=ci)
                         .assign(group=value, n_images=len(sub)))
    out = pd.concat(parts, ignore_index=True)
    out.attrs.update(positive=_check_positive(positive, gt, pred, classes), iou_thr=iou_thr,
                     n_boot=n_boot, seed=seed, ci=ci, group_by=group_by)
    return out[["group", "metric", "value", "lo", "hi", "count", "total", "n_images"]]


def _tables(gt: pd.DataFrame, pred: pd.DataFrame, score_thr: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    for name, df, cols in (("gt", gt, ["image", "class", "x1", "y1", "x2", "y2"]),
                           ("pred", pred, ["image", "class", "x1", "y1", "x2", "y2", "score"])):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}; it has {list(df.columns)}")
    if score_thr is not None:
        pred = pred[pred["score"].to_numpy(dtype=float) >= score_thr]
    return gt, pred.reset_index(drop=True)


def _groups(image_names: pd.Series, meta: pd.DataFrame | None, group_by: str) -> dict[str, np.ndarray]:
    if meta is None:
        raise ValueError(f"group_by={group_by!r} needs meta= (the per-image table holding that column)")
    if group_by not in meta.columns:
        raise ValueError(f"group_by: meta has no column {group_by!r}; it has {list(meta.columns)}")
    values = pd.Series(meta[group_by].to_numpy(), index=_meta_index(meta))
    if values.index.has_duplicates:
        raise ValueError("meta lists some images twice; it must have one row per image")
    labels = values.reindex(image_names.astype(str).to_numpy())
    labels = labels.astype(object).where(labels.notna() & (labels.astype(str) != ""), NO_GROUP).astype(str)
    codes, uniques = pd.factorize(labels.to_numpy(), sort=True)
    return {str(u): np.flatnonzero(codes == k) for k, u in enumerate(uniques)}


def clinical_report(gt: pd.DataFrame, pred: pd.DataFrame, *, positive: Sequence[str] | str,
                    group_by: str | None = None, meta: pd.DataFrame | None = None,
                    n_boot: int = 1000, seed: int = 0, ci: float = 0.95, iou_thr: float = 0.5,
                    images: Iterable[str] | None = None, score_thr: float | None = None,
                    classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The clinical rates as a JSON-ready dict for ``metrics.json``::

        {"positive": [...], "iou_thr": .., "definitions": {..}, "bootstrap": {..},
         "n_images": .., "predictions_outside_images": ..,
         "overall": {"detection_rate": {"value", "lo", "hi", "count", "total"}, ...},
         "group_by": name or None, "groups": {value: {..., "n_images": n}}}
    """
    gt, pred = _tables(gt, pred, score_thr)
    names = _image_list(gt, pred, images, meta)
    outside = int((~pred["image"].astype(str).isin(set(names))).sum())
    table = clinical_rates(gt, pred, positive=positive, group_by=group_by, meta=meta, images=names,
                           n_boot=n_boot, seed=seed, ci=ci, iou_thr=iou_thr, classes=classes)

    def block(rows: pd.DataFrame) -> dict[str, Any]:
        return {r.metric: {"value": _num(r.value), "lo": _num(r.lo), "hi": _num(r.hi),
                           "count": int(r.count), "total": int(r.total)} for r in rows.itertuples()}

    groups = {}
    for g, rows in table[table["group"] != ALL].groupby("group", sort=True):
        groups[str(g)] = {**block(rows), "n_images": int(rows["n_images"].iloc[0])}
    overall = table[table["group"] == ALL]
    return {"positive": table.attrs["positive"], "iou_thr": iou_thr, "score_thr": score_thr,
            "definitions": DEFINITIONS,
            "bootstrap": {"n_boot": n_boot, "seed": seed, "ci": ci, "unit": "image"},
            "n_images": len(names), "predictions_outside_images": outside,
            "overall": block(overall), "group_by": group_by, "groups": groups}


def _num(v: Any) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


# ----------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class QualityTargets:
    """Acceptance targets: detection and classification rates at least, FP and FN rates below."""

    detection_rate: float
    classification_rate: float
    fp_rate: float
    fn_rate: float

    def rules(self) -> dict[str, tuple[str, float]]:
        return {"detection_rate": (">=", self.detection_rate),
                "classification_rate": (">=", self.classification_rate),
                "fp_rate": ("<", self.fp_rate), "fn_rate": ("<", self.fn_rate)}


PRESETS: dict[str, QualityTargets] = {
    # targets stated for the published cascades (detection 99 %, classification 90 / 95 %,
    # FP < 30 / 20 %, FN < 1 %)
    "chromosome_aberrations": QualityTargets(0.99, 0.90, 0.30, 0.01),
    "micronuclei": QualityTargets(0.99, 0.95, 0.20, 0.01),
}


def quality_targets(targets: str | QualityTargets | Mapping[str, float]) -> QualityTargets:
    """A preset name, a :class:`QualityTargets` or a mapping of the four rates."""
    if isinstance(targets, QualityTargets):
        return targets
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise ValueError(f"unknown quality target preset {targets!r}; presets: {sorted(PRESETS)}")
        return PRESETS[targets]
    missing = sorted(set(RATES) - set(targets))
    extra = sorted(set(targets) - set(RATES))
    if missing or extra:
        raise ValueError(f"quality targets need exactly {list(RATES)}; missing {missing}, unknown {extra}")
    return QualityTargets(**{k: float(targets[k]) for k in RATES})


def pass_fail(rates: pd.DataFrame, targets: str | QualityTargets | Mapping[str, float]) -> pd.DataFrame:
    """Compare a :func:`clinical_rates` table (or :func:`compare_systems`) with targets.

    Adds rule, target, ``passed`` (the point estimate meets the target) and ``passed_ci``
    (the whole CI meets it: ``lo`` for at-least targets, ``hi`` for below targets); both are
    <NA> where the value (or bound) is NaN.
    """
    t = quality_targets(targets)
    rules = t.rules()
    out = rates.copy()
    out["rule"] = out["metric"].map(lambda m: rules[m][0])
    out["target"] = out["metric"].map(lambda m: rules[m][1]).astype(float)
    at_least = (out["rule"] == ">=").to_numpy()
    value = out["value"].to_numpy(dtype=float)
    bound = np.where(at_least, out["lo"].to_numpy(dtype=float), out["hi"].to_numpy(dtype=float))
    target = out["target"].to_numpy()

    def judge(v: np.ndarray) -> pd.arrays.BooleanArray:
        ok = np.where(at_least, v >= target, v < target)
        return pd.arrays.BooleanArray(ok, np.isnan(v))

    out["passed"] = judge(value)
    out["passed_ci"] = judge(bound)
    out.attrs.update(rates.attrs, targets=asdict(t))
    return out


# ----------------------------------------------------------------------------- comparison

def compare_systems(gt: pd.DataFrame, preds: Mapping[str, pd.DataFrame], *,
                    positive: Sequence[str] | str, group_by: str | None = None,
                    meta: pd.DataFrame | None = None, images: Iterable[str] | None = None,
                    n_boot: int = 1000, seed: int = 0, ci: float = 0.95, iou_thr: float = 0.5,
                    classes: Sequence[str] | None = None) -> pd.DataFrame:
    """The rates of several systems (e.g. ``{"detector-only": .., "cascade": ..}``) on the same
    images, as one tidy table with a ``system`` column first.

    The image set is fixed once (``images``, else ``meta``'s, else every image of the GT and
    of all prediction tables) so every system is judged on exactly the same images, and each
    uses the same bootstrap seed (the same resamples of images).
    """
    if not preds:
        raise ValueError("preds: give at least one prediction table")
    if images is None and meta is None:
        images = sorted(set(gt["image"].astype(str)).union(*(set(p["image"].astype(str)) for p in preds.values())))
    elif images is None:
        images = list(_meta_index(meta))
    images = list(images)
    parts = []
    for name, pred in preds.items():
        parts.append(clinical_rates(gt, pred, positive=positive, group_by=group_by, meta=meta, images=images,
                                    n_boot=n_boot, seed=seed, ci=ci, iou_thr=iou_thr, classes=classes)
                     .assign(system=str(name)))
    out = pd.concat(parts, ignore_index=True)
    return out[["system", *[c for c in out.columns if c != "system"]]]
