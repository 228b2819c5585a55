"""The box tables metrics read, parsed and checked once into flat arrays.

GT: ``image`` (str), ``class`` (str), ``x1 y1 x2 y2`` (float pixels), optional ``iscrowd`` /
``ignore`` (bool, default False). Predictions: ``image``, ``class``, ``x1 y1 x2 y2``, ``score``;
extra columns are carried into match tables. :func:`parse_gt` and :func:`parse_pred` turn a table
into :class:`Boxes` or raise ``ValueError`` naming the table, column and rows; the small checkers
below validate the options every metric shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from workbench.core.tables import require_columns

__all__ = [
    "BOX_COLUMNS", "GT_COLUMNS", "PRED_COLUMNS", "Boxes", "check_max_dets", "check_thresholds",
    "parse_gt", "parse_pred", "sorted_union",
]  # fmt: skip

BOX_COLUMNS: tuple[str, ...] = ("x1", "y1", "x2", "y2")
GT_COLUMNS: tuple[str, ...] = ("image", "class", *BOX_COLUMNS)
PRED_COLUMNS: tuple[str, ...] = ("image", "class", *BOX_COLUMNS, "score")


@dataclass(frozen=True)
class Boxes:
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

    def subset(self, keep: np.ndarray) -> Boxes:
        """The rows where the boolean mask ``keep`` is true, in table order."""
        return Boxes(
            image=self.image[keep],
            cls=self.cls[keep],
            xyxy=self.xyxy[keep],
            xywh=self.xywh[keep],
            score=self.score[keep],
            crowd=self.crowd[keep],
            ignore=self.ignore[keep],
            frame=self.frame.iloc[np.flatnonzero(keep)],
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


def _parse(df: Any, name: str, *, is_pred: bool) -> Boxes:
    require_columns(df, name, PRED_COLUMNS if is_pred else GT_COLUMNS)
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
    return Boxes(
        image=_labels(df, "image", name),
        cls=_labels(df, "class", name),
        xyxy=xyxy,
        xywh=np.column_stack([xyxy[:, 0], xyxy[:, 1], w, h]),
        score=score,
        crowd=crowd,
        ignore=ignore,
        frame=df,
    )


def parse_gt(gt: Any) -> Boxes:
    """Validate a GT table and return it as :class:`Boxes` (``score`` zeros).

    Raises ``TypeError`` for a non-DataFrame and ``ValueError`` for missing columns, missing
    labels, non-finite coordinates or boxes with ``x2 < x1`` / ``y2 < y1``.
    """
    return _parse(gt, "gt", is_pred=False)


def parse_pred(pred: Any) -> Boxes:
    """Validate a prediction table (GT columns plus a finite ``score``) and return :class:`Boxes`.

    Predictions are never crowd or ignored; errors as :func:`parse_gt`.
    """
    return _parse(pred, "pred", is_pred=True)


def check_thresholds(values: Iterable[float], name: str = "iou_thresholds") -> np.ndarray:
    """IoU thresholds as a float array; ``ValueError`` unless non-empty and all in (0, 1]."""
    thr = np.asarray(list(values), dtype=float).ravel()
    if thr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(thr)) or np.any(thr <= 0) or np.any(thr > 1):
        raise ValueError(f"{name} must lie in (0, 1], got {thr.tolist()}")
    return thr


def check_max_dets(max_dets: Any) -> int:
    """``max_dets`` as an int; ``ValueError`` unless a positive integer (bools rejected)."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
    return int(max_dets)


def sorted_union(*arrays: Iterable[str]) -> list[str]:
    """Sorted distinct names (as str) over all ``arrays``: the image or class axis of a result."""
    names: set[str] = set()
    for a in arrays:
        names.update(str(x) for x in a)
    return sorted(names)
