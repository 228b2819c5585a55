"""Class balance for classifier training: undersampling normal cells, or loss weights.

The published cascade trains on as many normal cells as there are positive (abnormal)
cells, drawn at random: ``mode="equal"``. The other modes:

* ``"ratio"``: ``ratio`` normal cells per positive cell (``ratio=1`` is ``"equal"``); classes
  that have fewer cells than asked keep them all;
* ``"weights"``: every cell kept; the loss weights class k by ``n / (K * n_k)`` (inverse
  frequency, mean weight 1 over the samples), so rare classes count as much as common ones;
* ``"none"``: every cell kept, unweighted.

"Normal" classes are ``negative`` (default: the most frequent class); all others are
positive. Sampling is seeded and draws without replacement within each normal class, in
proportion to that class's size when several classes are normal.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MODES = ("equal", "ratio", "weights", "none")


def balance_indices(labels: np.ndarray, classes: Sequence[str], *, mode: str = "equal",
                    negative: Sequence[str] | None = None, ratio: float = 1.0,
                    seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Indices of the training samples to keep (sorted), and a record of what was done.

    The record (JSON-ready) holds mode, negative and positive classes, ratio, seed, the
    counts per class before and after, and the class weights (``None`` unless ``"weights"``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = [str(c) for c in classes]
    if mode not in MODES:
        raise ValueError(f"balance mode must be one of {MODES}, got {mode!r}")
    if mode == "ratio" and (not np.isfinite(ratio) or ratio <= 0):
        raise ValueError(f"balance ratio must be a positive number of normal cells per positive cell, got {ratio!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must index the {len(names)} classes {names}")
    counts = np.bincount(labels, minlength=len(names))
    if negative is None:
        neg = [names[int(np.argmax(counts))]] if labels.size else []
    else:
        neg = [str(c) for c in negative]
        unknown = sorted(set(neg) - set(names))
        if unknown:
            raise ValueError(f"negative classes {unknown} are not among the classes {names}")
    neg_idx = [names.index(c) for c in neg]
    pos_idx = [k for k in range(len(names)) if k not in neg_idx]
    record: dict[str, Any] = {"mode": mode, "negative": neg, "positive": [names[k] for k in pos_idx],
                              "ratio": 1.0 if mode == "equal" else (float(ratio) if mode == "ratio" else None),
                              "seed": int(seed), "counts_before": _counts(counts, names),
                              "class_weights": None}
    keep = np.arange(labels.size)
    if mode in ("equal", "ratio"):
        r = 1.0 if mode == "equal" else float(ratio)
        n_pos = int(counts[pos_idx].sum()) if pos_idx else 0
        target = int(round(r * n_pos))
        neg_total = int(counts[neg_idx].sum()) if neg_idx else 0
        if n_pos == 0 and neg_total:
            raise ValueError(f"balance {mode!r}: no positive cells ({[names[k] for k in pos_idx]}) "
                             f"to balance the normal cells {neg} against; use mode='none' or 'weights'")
        if pos_idx and neg_idx and target < neg_total:
            rng = np.random.default_rng(seed)
            # split the target over the normal classes in proportion to their sizes
            share = np.floor(target * counts[neg_idx] / max(neg_total, 1)).astype(int)
            share[: target - share.sum()] += 1
            mask = np.isin(labels, pos_idx)
            for k, n in zip(neg_idx, share):
                members = np.flatnonzero(labels == k)
                mask[rng.choice(members, size=min(int(n), members.size), replace=False)] = True
            keep = np.flatnonzero(mask)
    elif mode == "weights":
        record["class_weights"] = dict(zip(names, class_weights(labels, len(names)).tolist()))
    record["counts_after"] = _counts(np.bincount(labels[keep], minlength=len(names)), names)
    return keep, record


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (K * n_k)``; 0 for classes without samples."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(float)
    present = counts > 0
    out = np.zeros(n_classes)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return out


def _counts(counts: np.ndarray, names: list[str]) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, counts)}
