"""Slice a canonical dataset into a canonical dataset of training patches.

Large, dense images (MoNuSeg: 1000x1000 px, 300-800 nuclei) lose small objects when
ultralytics scales the whole image to ``imgsz``; training on native-resolution tiles keeps
them. Each tile is a new image (``<image id>/x<ox>_y<oy>``) with the boxes that overlap it,
clipped to the tile. A clipped box is kept only if ``clipped area / original area >=
min_visibility``: a sliver of a cell at the edge teaches the detector nothing true.

Tiles inherit their source image's split, so no image leaks between train and val. Each
tile's meta row records ``tile_of`` (source image id), ``tile_x``, ``tile_y`` (offset in
the source image) and ``tile_source_file``. This module makes training data only;
prediction over large images is a separate step.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.data.canonical import RawDataset, RawImage, RawObject, load_dataset, write_canonical
from workbench.core.images import read_image
from workbench.core.problems import ProblemLog


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Offsets along one axis: step ``tile * (1 - overlap)``, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    step = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def clip_boxes(boxes: np.ndarray, window: tuple[int, int, int, int],
               min_visibility: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``(n, 4)`` x1 y1 x2 y2 boxes to ``window`` (x0, y0, x1, y1), in window coordinates.

    Returns (clipped boxes kept, index of each kept box in ``boxes``). A box is kept when
    its visible fraction of area reaches ``min_visibility`` (and it has some area inside);
    a zero-area source box is kept when it lies inside the window.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    x0, y0, x1, y1 = window
    cx1 = np.clip(boxes[:, 0], x0, x1)
    cy1 = np.clip(boxes[:, 1], y0, y1)
    cx2 = np.clip(boxes[:, 2], x0, x1)
    cy2 = np.clip(boxes[:, 3], y0, y1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = np.clip(cx2 - cx1, 0, None) * np.clip(cy2 - cy1, 0, None)
    inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(area > 0, visible / np.where(area > 0, area, 1), inside.astype(float))
    keep = (frac >= min_visibility) & ((visible > 0) | ((area <= 0) & inside))
    idx = np.flatnonzero(keep)
    out = np.stack([cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0], axis=1)[idx]
    return out, idx


def tile_dataset(src: str | Path, out: str | Path, *, tile: int = 640, overlap: float = 0.2,
                 min_visibility: float = 0.5, keep_empty: bool = True,
                 overwrite: bool = False) -> Path:
    """Write a canonical dataset of ``tile`` x ``tile`` patches of ``src`` to ``out``.

    ``overlap`` is the fraction of a tile shared with its neighbour (0 <= overlap < 1);
    images no larger than ``tile`` stay whole. ``keep_empty=False`` leaves out labelled
    tiles without boxes (unlabelled images still give unlabelled tiles).
    """
    if tile < 32:
        raise ValueError(f"tile must be >= 32 px, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    if not 0 < min_visibility <= 1:
        raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
    src = Path(src)
    log = ProblemLog()
    ds = load_dataset(src, log)
    by_image = {k: g for k, g in ds.objects.groupby("image_id", sort=False)}
    images: list[RawImage] = []
    dropped = kept_total = 0
    for row in ds.images.itertuples(index=False):
        path = src / row.file
        arr, _ = read_image(path)  # canonical images are 8-bit already: no normalisation here
        h, w = arr.shape[:2]
        labelled = bool(row.labelled) and str(row.labelled) != "False"
        group = by_image.get(row.image_id)
        boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(float) if group is not None else np.zeros((0, 4))
        classes = group["class"].to_numpy() if group is not None else np.array([], dtype=object)
        hit = np.zeros(len(boxes), dtype=bool)
        for oy in tile_starts(h, tile, overlap):
            for ox in tile_starts(w, tile, overlap):
                win = (ox, oy, min(ox + tile, w), min(oy + tile, h))
                clipped, idx = clip_boxes(boxes, win, min_visibility)
                hit[idx] = True
                touched = _overlapping(boxes, win)
                touched[idx] = False
                dropped += int(touched.sum())  # box pieces in this tile below min_visibility
                kept_total += len(idx)
                if labelled and not keep_empty and len(idx) == 0:
                    continue
                objects = ([RawObject(str(classes[i]), *map(float, b), ref=f"source box {i + 1}")
                            for b, i in zip(clipped, idx)] if labelled else None)
                images.append(RawImage(
                    image_id=f"{row.image_id}/x{ox}_y{oy}", image_path=None, objects=objects,
                    meta={"split": row.split, "tile_of": row.image_id, "tile_x": ox, "tile_y": oy,
                          "tile_source_file": str(path.resolve())},
                    pixels=arr[win[1]:win[3], win[0]:win[2]]))
        for i in np.flatnonzero(~hit):
            log.add(row.label_file or row.file, "box_lost_in_tiling",
                    f"box {classes[i]} {boxes[i].round(1).tolist()} is below min_visibility "
                    f"{min_visibility} in every tile", action="not in any tile", severity="warning",
                    object=f"box {i + 1}")
    if not images:
        raise ValueError(f"{src}: no tiles to write (all tiles empty and keep_empty=False?)")
    notes = {"tiled_from": str(src.resolve()), "tile": tile, "overlap": overlap,
             "min_visibility": min_visibility, "keep_empty": keep_empty,
             "source_images": int(len(ds.images)), "boxes_kept": kept_total,
             "box_pieces_dropped": dropped,
             "source_max_objects": int(pd.to_numeric(ds.images["n_objects"]).max() or 0)}
    raw = RawDataset("tiles", src, images, classes=ds.classes, problems=log, notes=notes)
    return write_canonical(raw, out, classes=ds.classes, overwrite=overwrite,
                           command=f"tile {src} tile={tile} overlap={overlap} min_visibility={min_visibility}")


def _overlapping(boxes: np.ndarray, win: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = win
    return (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)


def read_tile_notes(root: str | Path) -> dict:
    """The tiling settings recorded in a tiled dataset's ``dataset.json`` (empty if not tiled)."""
    info = json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
    return info.get("notes", {}) if info.get("format") == "tiles" else {}
