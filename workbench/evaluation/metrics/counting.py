"""Counting: per-image GT count against predicted count, no matching involved.

Counts are what a lab reads off an image, so an image with no cells and no predictions is an
exact zero (pass every image name); crowd/ignored GT rows are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from workbench.evaluation.metrics.boxes import Boxes, parse_gt, parse_pred, sorted_union

__all__ = ["CountResult", "count_metrics", "per_image_counts"]


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


def per_image_counts(
    g: Boxes, p: Boxes, images: list[str], score_thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Non-ignored GT and predictions with ``score >= score_thr`` per image, in ``images`` order."""
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
    g, p = parse_gt(gt), parse_pred(pred)
    names = sorted_union(g.image, p.image, () if images is None else images)
    n_gt, n_pred = per_image_counts(g, p, names, score_thr)
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
