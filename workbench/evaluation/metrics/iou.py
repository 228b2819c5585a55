"""IoU of axis-aligned boxes, computed the way pycocotools' C code does it.

No +1 pixel, and from ``x, y, w, h`` with ``w = x2 - x1``, so values are bit-identical to
pycocotools; crowd ground truth uses ``intersection / detection area``. :func:`box_iou` is the
public matrix form; :func:`iou_xywh` the elementwise kernel the matching runs on candidate pairs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "iou_xywh"]


def iou_xywh(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
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
    return iou_xywh(to_xywh(a)[:, None, :], to_xywh(b)[None, :, :], crowd_b[None, :])
