"""Two-stage coarse-to-fine detection on large images, with ROI packing.

Stage 1 (coarse): the image is downscaled by ``coarse_scale`` and a (cheap or the same)
detector runs on it, tiled if the small image is larger than ``coarse_tile``. Its boxes,
mapped back to full resolution, propose regions:

1. keep boxes with ``score >= region_conf`` and longer side in ``[min_size, max_size]``;
2. suppress near-duplicates (NMS, IoU >= ``region_nms``);
3. expand each by ``margin`` px on every side (clipped to the image, rounded outwards);
4. merge regions overlapping by IoS >= ``region_merge`` (and > 0) into their union,
   repeatedly until none do (``region_merge=None``: never merge; overlapping regions then
   both go to stage 2 and the stage-2 merge removes duplicate cells).

Stage 2 (fine): regions are cut out at full resolution; a region larger than ``canvas`` is
tiled (``tile_overlap``) into pieces no larger than a canvas. Pieces are *packed* into
``canvas`` x ``canvas`` canvases by a first-fit shelf packer (tallest first, ``gap`` px of
``fill`` between pieces, so no detection can span two pieces), the fine detector runs on
the canvases in batches, and each canvas box is *unpacked*: given to the piece it overlaps
most (dropped when less than ``min_inside`` of it lies in that piece: a detection on the
fill), clipped to the piece and shifted back — an exact inverse of the packing (tested).
Boxes of different pieces are merged like tiles (:func:`workbench.inference.merging.merge_table`).

Detectors are the callables of :mod:`workbench.inference.tiled_inference` (8-bit RGB/grey arrays in,
box tables out); give the fine detector ``imgsz = canvas`` and the coarse one
``imgsz = coarse_tile`` so both see native-resolution pixels of their inputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from workbench.inference.merging import METHODS, METRICS, merge_table, nms, overlap_pairs, union_boxes
from workbench.core.tables import BOX_COLUMNS, PREDICTION_COLUMNS, empty_boxes, empty_predictions
from workbench.inference.tiled_inference import (
    Detector, TileSettings, detect_batches, sort_table, tile_windows, tiled_predict_image, check_image, touches_inner_edge)

LAYOUT_COLUMNS = ["piece", "region", "canvas", "cx", "cy", "x0", "y0", "x1", "y1"]


@dataclass(frozen=True)
class TwoStageSettings:
    """Every threshold of the two-stage path, with its default."""

    # stage 1: proposals
    coarse_scale: float = 0.5  # stage-1 image scale (0 < s <= 1)
    coarse_tile: int | None = None  # stage-1 tile side on the small image (None: canvas)
    region_conf: float = 0.1  # stage-1 boxes with score >= this propose regions
    min_size: float = 0.0  # drop proposals whose longer side (full-res px) is below this
    max_size: float | None = None  # drop proposals whose longer side is above this (None: no limit)
    region_nms: float = 0.7  # IoU at which near-duplicate proposals are suppressed
    margin: float = 16.0  # full-res px added on every side of a proposal
    region_merge: float | None = 0.0  # IoS at which regions merge into their union (0: any overlap)
    # stage 2: packing and fine detection
    canvas: int = 640  # canvas side (the fine detector's imgsz)
    gap: int = 8  # px of fill between packed pieces
    tile_overlap: float = 0.2  # overlap of the pieces of a region larger than a canvas
    fill: str | int = "median"  # canvas background: "median" colour of the image, or a grey value
    min_inside: float = 0.5  # canvas boxes with less than this share inside one piece are dropped
    batch: int = 16  # canvases (and stage-1 tiles) per detector call
    merge: str = "nms"  # cross-piece merge (see workbench.inference.tiled_inference.TileSettings)
    merge_metric: str = "ios"
    merge_thr: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.coarse_scale <= 1:
            raise ValueError(f"coarse_scale must lie in (0, 1], got {self.coarse_scale}")
        for name in ("region_conf", "region_nms", "min_inside", "merge_thr"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.region_merge is not None and not 0 <= self.region_merge <= 1:
            raise ValueError(f"region_merge must lie in [0, 1] or be None, got {self.region_merge}")
        if self.margin < 0 or self.min_size < 0 or self.gap < 0:
            raise ValueError("margin, min_size and gap must be >= 0")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        if self.canvas < 16 or (self.coarse_tile is not None and self.coarse_tile < 16):
            raise ValueError("canvas and coarse_tile must be >= 16 px")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must lie in [0, 1), got {self.tile_overlap}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.merge not in METHODS or self.merge_metric not in METRICS:
            raise ValueError(f"merge must be one of {METHODS} and merge_metric one of {METRICS}")
        if not (self.fill == "median" or (isinstance(self.fill, (int, np.integer)) and 0 <= self.fill <= 255)):
            raise ValueError(f"fill must be 'median' or a grey value 0..255, got {self.fill!r}")

    def label(self) -> str:
        return (f"scale {self.coarse_scale:g}, conf {self.region_conf:g}, margin {self.margin:g}, "
                f"merge {self.region_merge}")


# ----------------------------------------------------------------------------- stage 1

def propose_regions(boxes: pd.DataFrame, *, image_size: tuple[int, int],
                    settings: TwoStageSettings = TwoStageSettings()) -> np.ndarray:
    """``(k, 4)`` int regions ``x0 y0 x1 y1`` from stage-1 boxes in full-resolution pixels.

    ``image_size`` is ``(height, width)``; steps 1-4 of the module docstring.
    """
    h, w = image_size
    s = settings
    if boxes.empty:
        return np.zeros((0, 4), dtype=np.int64)
    xyxy = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    score = boxes["score"].to_numpy(dtype=float)
    side = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
    keep = (score >= s.region_conf) & (side >= s.min_size)
    if s.max_size is not None:
        keep &= side <= s.max_size
    xyxy, score = xyxy[keep], score[keep]
    if not len(xyxy):
        return np.zeros((0, 4), dtype=np.int64)
    xyxy = xyxy[nms(xyxy, score, threshold=s.region_nms, metric="iou")]
    grown = np.column_stack([np.floor(xyxy[:, 0] - s.margin), np.floor(xyxy[:, 1] - s.margin),
                             np.ceil(xyxy[:, 2] + s.margin), np.ceil(xyxy[:, 3] + s.margin)])
    grown = np.clip(grown, 0, [w, h, w, h])
    grown = grown[(grown[:, 2] > grown[:, 0]) & (grown[:, 3] > grown[:, 1])]
    if s.region_merge is not None:
        grown = merge_regions(grown, threshold=s.region_merge)
    return grown.astype(np.int64)


def merge_regions(regions: np.ndarray, *, threshold: float = 0.0) -> np.ndarray:
    """Union of regions overlapping by IoS >= ``threshold`` (and > 0), repeated until stable."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    regions = np.asarray(regions, dtype=float).reshape(-1, 4)
    while len(regions) > 1:
        i, j, _ = overlap_pairs(regions, metric="ios", threshold=threshold)
        if not len(i):
            break
        graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(regions),) * 2)
        n, label = connected_components(graph, directed=False)
        regions = union_boxes(regions, label, n)
    return regions


def coarse_detect(image: np.ndarray, detector: Detector, *, settings: TwoStageSettings = TwoStageSettings()
                  ) -> pd.DataFrame:
    """Stage-1 boxes (``x1 y1 x2 y2 class score``) in full-resolution pixels."""
    import cv2

    h, w = image.shape[:2]
    s = settings
    if s.coarse_scale < 1:
        size = (max(1, round(w * s.coarse_scale)), max(1, round(h * s.coarse_scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        small = image
    tiles = TileSettings(tile=s.coarse_tile or s.canvas, overlap=s.tile_overlap, batch=s.batch, merge="nms",
                         merge_metric="iou", merge_thr=0.5)
    table = tiled_predict_image(small, detector, settings=tiles)
    fx, fy = w / small.shape[1], h / small.shape[0]
    out = table[BOX_COLUMNS].copy()
    out[["x1", "x2"]] = out[["x1", "x2"]].to_numpy(dtype=float) * fx
    out[["y1", "y2"]] = out[["y1", "y2"]].to_numpy(dtype=float) * fy
    return out


# ----------------------------------------------------------------------------- packing

def split_regions(regions: np.ndarray, *, canvas: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Pieces (``(m, 4)`` int windows, each at most ``canvas`` a side) and the region of each."""
    pieces, owner = [], []
    for r, (x0, y0, x1, y1) in enumerate(np.asarray(regions, dtype=np.int64).reshape(-1, 4)):
        if x1 - x0 <= canvas and y1 - y0 <= canvas:
            pieces.append((x0, y0, x1, y1))
            owner.append(r)
            continue
        for wx0, wy0, wx1, wy1 in tile_windows(int(y1 - y0), int(x1 - x0), tile=canvas, overlap=overlap):
            pieces.append((x0 + wx0, y0 + wy0, x0 + wx1, y0 + wy1))
            owner.append(r)
    return np.asarray(pieces, dtype=np.int64).reshape(-1, 4), np.asarray(owner, dtype=np.int64)


def pack_shelves(sizes: np.ndarray, *, canvas: int, gap: int = 0) -> np.ndarray:
    """First-fit decreasing-height shelf packing of ``(n, 2)`` int ``w h`` sizes into canvases.

    Returns ``(n, 3)`` int ``canvas x y`` (top-left corner of each item). Items keep ``gap``
    px from each other (not from the canvas border); every item must fit in one canvas.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if np.any(sizes > canvas) or np.any(sizes < 1):
        raise ValueError(f"every item must be 1..{canvas} px a side; got sizes {sizes[(sizes > canvas).any(1) | (sizes < 1).any(1)][:3].tolist()}")
    out = np.zeros((len(sizes), 3), dtype=np.int64)
    shelves: list[list[int]] = []  # [canvas, y, height, next x]
    next_y: list[int] = []  # per canvas: y where its next shelf starts
    for k in np.lexsort((-sizes[:, 0], -sizes[:, 1])):  # tallest first, then widest
        w, h = int(sizes[k, 0]), int(sizes[k, 1])
        for shelf in shelves:
            if h <= shelf[2] and shelf[3] + w <= canvas:
                out[k] = (shelf[0], shelf[3], shelf[1])
                shelf[3] += w + gap
                break
        else:
            c = next((c for c, y in enumerate(next_y) if y + h <= canvas), None)
            if c is None:
                c = len(next_y)
                next_y.append(0)
            shelves.append([c, next_y[c], h, w + gap])
            out[k] = (c, 0, next_y[c])
            next_y[c] += h + gap
    return out


def layout_pieces(regions: np.ndarray, *, canvas: int, gap: int, overlap: float) -> pd.DataFrame:
    """The packing of ``regions``: one row per piece (:data:`LAYOUT_COLUMNS`); ``cx cy`` is the
    piece's top-left corner on canvas ``canvas``, ``x0 y0 x1 y1`` its window in the image."""
    pieces, owner = split_regions(regions, canvas=canvas, overlap=overlap)
    place = pack_shelves(pieces[:, 2:] - pieces[:, :2], canvas=canvas, gap=gap)
    return pd.DataFrame({"piece": np.arange(len(pieces)), "region": owner, "canvas": place[:, 0],
                         "cx": place[:, 1], "cy": place[:, 2], "x0": pieces[:, 0], "y0": pieces[:, 1],
                         "x1": pieces[:, 2], "y1": pieces[:, 3]}, columns=LAYOUT_COLUMNS)


def render_canvases(image: np.ndarray, layout: pd.DataFrame, *, canvas: int, fill: str | int = "median"
                    ) -> list[np.ndarray]:
    """The canvases of ``layout``: pieces copied at full resolution onto ``fill``."""
    n = int(layout["canvas"].max()) + 1 if len(layout) else 0
    value = background(image) if fill == "median" else np.full(image.shape[2:] or (), fill, dtype=np.uint8)
    canvases = [np.empty((canvas, canvas, *image.shape[2:]), dtype=image.dtype) for _ in range(n)]
    for c in canvases:
        c[...] = value
    for r in layout.itertuples(index=False):
        w, h = r.x1 - r.x0, r.y1 - r.y0
        canvases[r.canvas][r.cy:r.cy + h, r.cx:r.cx + w] = image[r.y0:r.y1, r.x0:r.x1]
    return canvases


def background(image: np.ndarray) -> np.ndarray:
    """Median colour of the image (from a strided sample: cheap on large images)."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 65536)))
    sample = image[::step, ::step].reshape(-1, *image.shape[2:])
    return np.median(sample, axis=0).round().astype(image.dtype)


def pack_boxes(boxes: pd.DataFrame, layout: pd.DataFrame) -> pd.DataFrame:
    """Image boxes (with a ``piece`` column) to canvas coordinates (``canvas`` column added)."""
    lay = layout.set_index("piece").loc[boxes["piece"].to_numpy()]
    d = (lay[["x0", "y0"]].to_numpy() - lay[["cx", "cy"]].to_numpy()).astype(float)
    out = boxes.copy()
    out[["x1", "x2"]] = out[["x1", "x2"]].to_numpy(dtype=float) - d[:, [0]]
    out[["y1", "y2"]] = out[["y1", "y2"]].to_numpy(dtype=float) - d[:, [1]]
    return out.assign(canvas=lay["canvas"].to_numpy())


def unpack_boxes(boxes: pd.DataFrame, layout: pd.DataFrame, *, min_inside: float = 0.5) -> pd.DataFrame:
    """Canvas boxes (with a ``canvas`` column) back to image coordinates, with their ``piece``.

    Each box goes to the piece of its canvas it overlaps most; it is dropped when less than
    ``min_inside`` of its area lies in that piece, otherwise clipped to it and shifted.
    """
    if boxes.empty or layout.empty:
        return boxes.iloc[:0].assign(piece=pd.Series(dtype=np.int64))
    xyxy = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    cv = boxes["canvas"].to_numpy(dtype=np.int64)
    best = np.full(len(boxes), -1, dtype=np.int64)
    share = np.zeros(len(boxes))
    lay = layout.to_numpy(dtype=np.int64)  # columns as LAYOUT_COLUMNS
    col = {c: k for k, c in enumerate(LAYOUT_COLUMNS)}
    rects = np.column_stack([lay[:, col["cx"]], lay[:, col["cy"]],
                             lay[:, col["cx"]] + lay[:, col["x1"]] - lay[:, col["x0"]],
                             lay[:, col["cy"]] + lay[:, col["y1"]] - lay[:, col["y0"]]]).astype(float)
    for c in np.unique(cv):
        bi = np.flatnonzero(cv == c)
        pi = np.flatnonzero(lay[:, col["canvas"]] == c)
        if not len(pi):
            continue
        b, r = xyxy[bi][:, None, :], rects[pi][None, :, :]
        iw = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
        ih = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
        area = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[:, 0]
        inter = iw * ih
        k = inter.argmax(axis=1)
        top = inter[np.arange(len(bi)), k]
        # a zero-area box counts as inside the piece that contains it
        inside_pt = ((b[..., 0] >= r[..., 0]) & (b[..., 2] <= r[..., 2]) & (b[..., 1] >= r[..., 1])
                     & (b[..., 3] <= r[..., 3]))
        zero = area <= 0
        k = np.where(zero, inside_pt.argmax(axis=1), k)
        share[bi] = np.where(zero, inside_pt.any(axis=1).astype(float), top / np.where(zero, 1, area))
        best[bi] = pi[k]
    keep = (best >= 0) & (share >= min_inside) & (share > 0)
    best, xyxy = best[keep], xyxy[keep]
    rect = rects[best]
    clipped = np.column_stack([np.clip(xyxy[:, 0], rect[:, 0], rect[:, 2]), np.clip(xyxy[:, 1], rect[:, 1], rect[:, 3]),
                               np.clip(xyxy[:, 2], rect[:, 0], rect[:, 2]), np.clip(xyxy[:, 3], rect[:, 1], rect[:, 3])])
    dx = (lay[best, col["x0"]] - lay[best, col["cx"]]).astype(float)
    dy = (lay[best, col["y0"]] - lay[best, col["cy"]]).astype(float)
    out = boxes[keep].drop(columns="canvas").reset_index(drop=True)
    out[["x1", "x2"]] = clipped[:, [0, 2]] + dx[:, None]
    out[["y1", "y2"]] = clipped[:, [1, 3]] + dy[:, None]
    out["piece"] = lay[best, col["piece"]]
    return out


# ----------------------------------------------------------------------------- both stages

def fine_detect(image: np.ndarray, regions: np.ndarray, detector: Detector, *,
                settings: TwoStageSettings = TwoStageSettings()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 2: (merged boxes ``x1 y1 x2 y2 class score`` in image pixels, the layout)."""
    s = settings
    layout = layout_pieces(regions, canvas=s.canvas, gap=s.gap, overlap=s.tile_overlap)
    if layout.empty:
        return empty_boxes(), layout
    canvases = render_canvases(image, layout, canvas=s.canvas, fill=s.fill)
    raw = detect_batches(detector, canvases, batch=s.batch).rename(columns={"item": "canvas"})
    raw = raw[[*BOX_COLUMNS, "canvas"]]
    boxes = unpack_boxes(raw, layout, min_inside=s.min_inside)
    if boxes.empty:
        return empty_boxes(), layout
    boxes["class"] = boxes["class"].astype(str)
    win = layout.set_index("piece").loc[boxes["piece"].to_numpy(), ["x0", "y0", "x1", "y1"]].to_numpy(dtype=float)
    local = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float) - np.tile(win[:, :2], 2)
    size = np.tile([image.shape[1], image.shape[0]], (len(boxes), 1)).astype(float)
    boxes["cut"] = touches_inner_edge(local, win, size)
    merged = merge_table(boxes, method=s.merge, metric=s.merge_metric, threshold=s.merge_thr, by=("class",),
                         source="piece", cut="cut")
    return merged[BOX_COLUMNS].reset_index(drop=True), layout


def two_stage_predict_image(image: np.ndarray, coarse: Detector, fine: Detector | None = None, *,
                            settings: TwoStageSettings = TwoStageSettings(), name: str = "image"
                            ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Both stages on one 8-bit image: (prediction table, info).

    ``fine`` defaults to ``coarse``. ``info``: ``stage1_s``, ``stage2_s``, ``regions``,
    ``pieces``, ``canvases``, ``area_share`` (piece pixels / image pixels), ``proposals``,
    ``region_boxes`` (the ``(k, 4)`` regions).
    """
    image = check_image(image, name)
    fine = fine or coarse
    t0 = time.perf_counter()
    proposals = coarse_detect(image, coarse, settings=settings)
    regions = propose_regions(proposals, image_size=image.shape[:2], settings=settings)
    t1 = time.perf_counter()
    boxes, layout = fine_detect(image, regions, fine, settings=settings)
    t2 = time.perf_counter()
    piece_px = float(((layout["x1"] - layout["x0"]) * (layout["y1"] - layout["y0"])).sum()) if len(layout) else 0.0
    info = {"image": name, "stage1_s": t1 - t0, "stage2_s": t2 - t1, "proposals": int(len(proposals)),
            "regions": int(len(regions)), "pieces": int(len(layout)),
            "canvases": int(layout["canvas"].max() + 1) if len(layout) else 0,
            "area_share": piece_px / float(image.shape[0] * image.shape[1]), "region_boxes": regions}
    table = boxes.assign(image=name)[PREDICTION_COLUMNS] if len(boxes) else empty_predictions()
    return sort_table(table, {name: 0}), info


def two_stage_predict(coarse: Detector, images: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], *,
                      fine: Detector | None = None, settings: TwoStageSettings = TwoStageSettings()
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`two_stage_predict_image` over images: (prediction table, one info row per image)."""
    items = images.items() if isinstance(images, Mapping) else images
    parts, infos, order = [], [], {}
    for name, image in items:
        order[str(name)] = len(order)
        table, info = two_stage_predict_image(image, coarse, fine, settings=settings, name=str(name))
        parts.append(table)
        infos.append({k: v for k, v in info.items() if k != "region_boxes"})
    table = pd.concat(parts, ignore_index=True) if parts else empty_predictions()
    return sort_table(table, order), pd.DataFrame(infos)


def predict_two_stage(model: Any, source: Any, *, settings: TwoStageSettings = TwoStageSettings(),
                      coarse_model: Any = None, conf: float = 0.25, iou: float = 0.7, device: str | None = None,
                      split: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two-stage prediction with YOLO runs/weights over a prediction source (files, folder, dataset).

    ``model`` is the fine detector (run at ``imgsz = canvas``); ``coarse_model`` the stage-1
    detector (default: the same weights, at ``imgsz = coarse_tile or canvas``, score floor
    ``min(conf, region_conf)``). Returns (prediction table, one info row per image).
    """
    from workbench.inference.tiled_inference import YoloDetector, read_images

    fine = YoloDetector(model, conf=conf, iou=iou, imgsz=settings.canvas, device=device)
    coarse = YoloDetector(coarse_model if coarse_model is not None else fine.model,
                          conf=min(conf, settings.region_conf), iou=iou,
                          imgsz=settings.coarse_tile or settings.canvas, max_det=fine.max_det, device=device)
    return two_stage_predict(coarse, read_images(source, normalisation=fine.normalisation, split=split),
                             fine=fine, settings=settings)
