"""Constructed images of bright rectangles and a fake detector that finds them exactly.

For the large-image tests only (edge cases need known answers; the real-data checks are in
the study and the benchmark).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage


def blob_image(height: int, width: int, boxes: list[tuple[int, int, int, int]], *, value: int = 200,
               rgb: bool = True) -> np.ndarray:
    """A dark image with filled rectangles ``x1 y1 x2 y2`` (pixels [x1, x2) x [y1, y2))."""
    img = np.zeros((height, width), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = value
    return np.repeat(img[..., None], 3, axis=2) if rgb else img


class BlobDetector:
    """Boxes of the connected bright regions of each array; records every call's batch size.

    A box touching the array border (a cell cut by a tile edge) scores 0.6, others 0.9 —
    like a real detector, less sure of a partial cell.
    """

    def __init__(self, threshold: int = 100, cls: str = "cell"):
        self.threshold, self.cls, self.calls = threshold, cls, []

    def __call__(self, arrays):
        self.calls.append(len(arrays))
        return [self._one(a) for a in arrays]

    def _one(self, a: np.ndarray) -> pd.DataFrame:
        grey = a.mean(axis=2) if a.ndim == 3 else a
        labels, _ = ndimage.label(grey > self.threshold)
        rows = []
        h, w = grey.shape
        for sl in ndimage.find_objects(labels):
            y, x = sl
            cut = x.start == 0 or y.start == 0 or x.stop == w or y.stop == h
            rows.append((float(x.start), float(y.start), float(x.stop), float(y.stop), self.cls, 0.6 if cut else 0.9))
        return pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2", "class", "score"]).astype(
            {"x1": float, "y1": float, "x2": float, "y2": float, "class": str, "score": float})


def sorted_boxes(table: pd.DataFrame) -> np.ndarray:
    xyxy = table[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    return xyxy[np.lexsort(xyxy.T[::-1])]
