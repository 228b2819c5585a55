"""The pure core of label corrections: which edit actions turn one image's old boxes into its new ones.

Old and new boxes of one image are paired one-to-one by IoU
(:func:`workbench.evaluation.metrics.box_iou`, greedy, highest IoU first, same class preferred on
ties); a pair whose class differs is a ``relabel``, whose size differs a ``resize``, whose
position alone differs a ``move`` (a pair can be ``relabel`` and ``move``/``resize``: one row
each); unpaired old boxes are ``delete``, unpaired new boxes ``add``. A box dragged so far
that it no longer overlaps its old place (IoU < ``iou_min``) reads as delete + add.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from workbench.evaluation.metrics import box_iou

__all__ = ["ACTIONS", "BOX", "CHANGE_COLUMNS", "DIFF_COLUMNS", "changes_table", "diff_boxes", "pair_boxes"]

ACTIONS = ("add", "delete", "move", "resize", "relabel")
CHANGE_COLUMNS = ["image", "action", "before", "after", "time"]
DIFF_COLUMNS = ["action", "old_index", "new_index", "class_before", "class_after",
                "x1_before", "y1_before", "x2_before", "y2_before",
                "x1_after", "y1_after", "x2_after", "y2_after"]
BOX = ["x1", "y1", "x2", "y2"]


def _boxes(df: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("class", *BOX) if c not in df.columns]
    if missing:
        raise ValueError(f"{name} boxes lack column(s) {missing}; have {list(df.columns)}")
    xyxy = df[BOX].to_numpy(dtype=float).reshape(-1, 4)
    return xyxy, df["class"].astype(str).to_numpy(dtype=object)


def pair_boxes(old: pd.DataFrame, new: pd.DataFrame, *, iou_min: float = 0.3,
               tol: float = 1e-6) -> np.ndarray:
    """For every new box the index of its old box (or -1): one-to-one, greedy by IoU.

    Boxes equal within ``tol`` pixels count as IoU 1 (so zero-area boxes pair too); on equal
    IoU a same-class partner is preferred, then table order.
    """
    a, ca = _boxes(old, "old")
    b, cb = _boxes(new, "new")
    out = np.full(len(b), -1, dtype=np.int64)
    if not len(a) or not len(b):
        return out
    iou = box_iou(a, b)
    equal = (np.abs(a[:, None, :] - b[None, :, :]) <= tol).all(-1)
    iou = np.where(equal, 1.0, iou)
    i, j = np.nonzero(iou >= iou_min)
    same = ca[i] == cb[j]
    order = np.lexsort((j, i, ~same, -iou[i, j]))
    used_old = np.zeros(len(a), bool)
    for k in order:
        if not used_old[i[k]] and out[j[k]] < 0:
            used_old[i[k]] = True
            out[j[k]] = i[k]
    return out


def diff_boxes(old: pd.DataFrame, new: pd.DataFrame, *, iou_min: float = 0.3,
               tol: float = 1e-6) -> pd.DataFrame:
    """The edit actions turning ``old`` boxes into ``new`` boxes (one image), as a table.

    Both tables have ``class, x1, y1, x2, y2`` (pixels). Returns :data:`DIFF_COLUMNS`, one row
    per action (add, delete, move, resize, relabel), ``old_index``/``new_index`` being row
    positions (``<NA>`` on the missing side). Coordinates closer than ``tol`` are equal.
    """
    a, ca = _boxes(old, "old")
    b, cb = _boxes(new, "new")
    partner = pair_boxes(old, new, iou_min=iou_min, tol=tol)
    rows: list[tuple] = []
    nan4 = (np.nan,) * 4
    for j, i in enumerate(partner):
        if i < 0:
            rows.append(("add", None, j, None, cb[j], *nan4, *b[j]))
            continue
        if ca[i] != cb[j]:
            rows.append(("relabel", i, j, ca[i], cb[j], *a[i], *b[j]))
        if np.any(np.abs(a[i] - b[j]) > tol):
            wh_a, wh_b = a[i, 2:] - a[i, :2], b[j, 2:] - b[j, :2]
            action = "resize" if np.any(np.abs(wh_a - wh_b) > tol) else "move"
            rows.append((action, i, j, ca[i], cb[j], *a[i], *b[j]))
    for i in sorted(set(range(len(a))) - set(partner[partner >= 0].tolist())):
        rows.append(("delete", i, None, ca[i], None, *a[i], *nan4))
    out = pd.DataFrame(rows, columns=DIFF_COLUMNS)
    out["old_index"] = out["old_index"].astype("Int64")
    out["new_index"] = out["new_index"].astype("Int64")
    for c in DIFF_COLUMNS[5:]:
        out[c] = out[c].astype(float)
    order = {a: k for k, a in enumerate(("delete", "add", "relabel", "move", "resize"))}
    return out.sort_values(["action", "old_index", "new_index"], key=lambda s: s.map(order) if s.name == "action" else s,
                           kind="stable").reset_index(drop=True)


def _box_text(cls: Any, xyxy: np.ndarray) -> str:
    if cls is None or (isinstance(cls, float) and np.isnan(cls)):
        return ""
    return json.dumps({"class": str(cls), "box": [round(float(v), 3) for v in xyxy]})


def changes_table(image: str, diff: pd.DataFrame, time: str) -> pd.DataFrame:
    """``changes.csv`` rows (image, action, before, after, time) of one image's diff."""
    before = [_box_text(r.class_before, np.array([r.x1_before, r.y1_before, r.x2_before, r.y2_before]))
              for r in diff.itertuples(index=False)]
    after = [_box_text(r.class_after, np.array([r.x1_after, r.y1_after, r.x2_after, r.y2_after]))
             for r in diff.itertuples(index=False)]
    return pd.DataFrame({"image": [image] * len(diff), "action": diff["action"].tolist(),
                         "before": before, "after": after, "time": [time] * len(diff)},
                        columns=CHANGE_COLUMNS)
