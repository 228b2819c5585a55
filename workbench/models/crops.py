"""Square cell crops from boxes, in memory and batched (the classifier's input).

Geometry (all boxes ``x1 y1 x2 y2`` in pixels of the image):

* **context padding**: the window is the box grown by ``pad`` x its width on the left and on
  the right, and ``pad`` x its height on top and at the bottom (``pad=0.15`` adds 15 % of the
  box on every side). Boxes narrower than 1 px are treated as 1 px wide.
* the float window is rounded outwards to whole pixels (``floor`` / ``ceil``); pixels of the
  window outside the image take the value ``fill`` (default 0), so a cell cut by the border
  stays centred and at the same scale as elsewhere (no shift, no stretch).
* **resize** to ``size`` x ``size``:

  - ``"letterbox"`` (default): the window is scaled by ``size / max(width, height)`` (aspect
    ratio kept, so round cells stay round and relative size within the window is kept) and
    centred; the bars left over are ``fill``;
  - ``"square"``: the window is first widened to a square around the box centre with real
    image context (no bars except beyond the image border), then scaled;
  - ``"stretch"``: the window is scaled to the square independently in x and y (shape lost).

  Downscaling uses ``cv2.INTER_AREA``, upscaling ``cv2.INTER_LINEAR``.
* **channels**: 8-bit grey images become RGB (channel repeated) so every crop has 3 image
  channels, what ImageNet-pretrained classifiers expect. ``extra`` per-image channels (e.g. a
  segmentation mask or a second stain, ``(H, W)`` or ``(H, W, k)`` uint8) are cropped with the
  same geometry and interpolation and appended; ``box_mask=True`` appends one more channel,
  255 inside the (unpadded) box and 0 outside, telling the classifier which of several
  touching cells is meant.

The per-crop work is one array slice and one ``cv2.resize``; window geometry, the border
padding (once per image) and the box-mask channel are computed for all boxes at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from workbench.core.atomic import new_folder
from workbench.data.canonical import load_dataset, safe_stem
from workbench.core.images import Normalisation, read_image, to_uint8

RESIZE_MODES = ("letterbox", "square", "stretch")
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


@dataclass(frozen=True)
class CropSpec:
    """How crops are cut: output side ``size``, context ``pad``, ``resize`` mode, ``fill``,
    and whether a box-mask channel is appended (see the module docstring)."""

    size: int = 64
    pad: float = 0.15
    resize: str = "letterbox"
    fill: int = 0
    box_mask: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 8:
            raise ValueError(f"crop size must be an integer >= 8 pixels, got {self.size!r}")
        if not np.isfinite(self.pad) or self.pad < 0:
            raise ValueError(f"crop pad must be a non-negative fraction of the box, got {self.pad!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"crop resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"crop fill must be an 8-bit value 0..255, got {self.fill!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CropSpec":
        return cls(**{k: d[k] for k in ("size", "pad", "resize", "fill", "box_mask") if k in d})


@dataclass
class CropSet:
    """Crops with their boxes: ``crops`` (N, S, S, C) uint8, ``table`` one row per crop
    (image, x1..y2, class, label = index into ``classes``; table order = crop order)."""

    crops: np.ndarray
    table: pd.DataFrame
    classes: list[str]
    spec: CropSpec

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy(dtype=np.int64)

    def subset(self, index: np.ndarray) -> "CropSet":
        index = np.asarray(index, dtype=np.int64)
        return CropSet(self.crops[index], self.table.iloc[index].reset_index(drop=True), self.classes, self.spec)


# ----------------------------------------------------------------------------- geometry

def crop_windows(boxes: np.ndarray, spec: CropSpec) -> np.ndarray:
    """Integer windows ``x0 y0 x1 y1`` (end exclusive) around each box, before resizing.

    May extend beyond the image; the outside is ``fill`` in the crop.
    """
    b = _boxes(boxes)
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = w * (0.5 + spec.pad), h * (0.5 + spec.pad)
    if spec.resize == "square":
        hw = hh = np.maximum(hw, hh)
    out = np.column_stack([np.floor(cx - hw), np.floor(cy - hh), np.ceil(cx + hw), np.ceil(cy + hh)])
    # at least one pixel, whatever rounding did
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out.astype(np.int64)


def _placement(win: np.ndarray, spec: CropSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per crop: x/y scale, resized width/height and x/y offset in the output square."""
    ww = (win[:, 2] - win[:, 0]).astype(float)
    wh = (win[:, 3] - win[:, 1]).astype(float)
    s = spec.size
    if spec.resize == "letterbox":
        scale = s / np.maximum(ww, wh)
        tw = np.clip(np.rint(ww * scale), 1, s).astype(np.int64)
        th = np.clip(np.rint(wh * scale), 1, s).astype(np.int64)
        sx = sy = scale
    else:
        tw = th = np.full(len(win), s, dtype=np.int64)
        sx, sy = s / ww, s / wh
    ox, oy = (s - tw) // 2, (s - th) // 2
    return np.column_stack([sx, sy]), np.column_stack([tw, th]), np.column_stack([ox, oy]), np.column_stack([ww, wh])


def box_mask_channel(boxes: np.ndarray, spec: CropSpec) -> np.ndarray:
    """(N, S, S) uint8: 255 where the output pixel centre lies inside the unpadded box."""
    b = _boxes(boxes)
    win = crop_windows(b, spec)
    scale, _, off, _ = _placement(win, spec)
    # box edges in output pixel coordinates
    bx0 = off[:, 0] + (b[:, 0] - win[:, 0]) * scale[:, 0]
    bx1 = off[:, 0] + (np.maximum(b[:, 2], b[:, 0] + 1) - win[:, 0]) * scale[:, 0]
    by0 = off[:, 1] + (b[:, 1] - win[:, 1]) * scale[:, 1]
    by1 = off[:, 1] + (np.maximum(b[:, 3], b[:, 1] + 1) - win[:, 1]) * scale[:, 1]
    centres = np.arange(spec.size) + 0.5
    inside_x = (centres[None, :] >= bx0[:, None]) & (centres[None, :] < bx1[:, None])
    inside_y = (centres[None, :] >= by0[:, None]) & (centres[None, :] < by1[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :]).astype(np.uint8) * 255


# ----------------------------------------------------------------------------- cropping

def crop_image(image: np.ndarray, boxes: np.ndarray, spec: CropSpec = CropSpec(), *,
               extra: np.ndarray | None = None) -> np.ndarray:
    """Crops of one 8-bit image: (N, size, size, C) uint8, C = 3 + extra channels (+1 mask).

    ``image``: (H, W) or (H, W, 3) uint8 (RGB); ``boxes``: (N, 4) ``x1 y1 x2 y2``.
    """
    img = as_rgb(image)
    if extra is not None:
        img = np.concatenate([img, _extra_channels(extra, img.shape[:2])], axis=2)
    b = _boxes(boxes)
    n, c, s = len(b), img.shape[2], spec.size
    out_c = c + int(spec.box_mask)
    out = np.full((n, s, s, out_c), spec.fill, dtype=np.uint8)
    if n == 0:
        return out
    win = crop_windows(b, spec)
    _, size, off, wsize = _placement(win, spec)
    # pad the image once so that every window lies inside it
    h, w = img.shape[:2]
    left = int(max(0, -win[:, 0].min()))
    top = int(max(0, -win[:, 1].min()))
    right = int(max(0, win[:, 2].max() - w))
    bottom = int(max(0, win[:, 3].max() - h))
    if left or top or right or bottom:
        img = np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=spec.fill)
    win = win + np.array([left, top, left, top])
    down = (size[:, 0] < wsize[:, 0]) | (size[:, 1] < wsize[:, 1])
    for i, (x0, y0, x1, y1) in enumerate(win.tolist()):
        tw, th = int(size[i, 0]), int(size[i, 1])
        ox, oy = int(off[i, 0]), int(off[i, 1])
        resized = cv2.resize(img[y0:y1, x0:x1], (tw, th),
                             interpolation=cv2.INTER_AREA if down[i] else cv2.INTER_LINEAR)
        out[i, oy:oy + th, ox:ox + tw, :c] = resized.reshape(th, tw, c)
    if spec.box_mask:
        out[..., c] = box_mask_channel(b, spec)
    return out


def crop_table(boxes: pd.DataFrame, images: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
               spec: CropSpec = CropSpec(), *,
               extra: Mapping[str, np.ndarray] | Callable[[str], np.ndarray] | None = None) -> np.ndarray:
    """Crops for a box table (``image``, ``x1 y1 x2 y2``), in table order.

    ``images`` maps an image name to its 8-bit pixels (a dict, or a function that loads
    them, called once per image); ``extra`` likewise for extra channels.
    """
    missing = [c for c in ["image", *BOX_COLUMNS] if c not in boxes.columns]
    if missing:
        raise ValueError(f"box table lacks columns {missing}; it has {list(boxes.columns)}")
    get = images.__getitem__ if isinstance(images, Mapping) else images
    get_extra = None if extra is None else (extra.__getitem__ if isinstance(extra, Mapping) else extra)
    names = boxes["image"].astype(str).to_numpy()
    xyxy = boxes[BOX_COLUMNS].to_numpy(dtype=float)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    # group rows by image without a Python pass over rows
    codes, uniques = pd.factorize(names)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    for k, name in enumerate(uniques):
        rows = order[bounds[k]:bounds[k + 1]]
        try:
            pixels = get(name)
        except KeyError:
            raise KeyError(f"no pixels for image {name!r} (box table rows {rows[:5].tolist()})") from None
        parts.append((rows, crop_image(pixels, xyxy[rows], spec,
                                       extra=None if get_extra is None else get_extra(name))))
    if not parts:
        return np.zeros((0, spec.size, spec.size, 3 + int(spec.box_mask)), np.uint8)
    channels = {p.shape[3] for _, p in parts}
    if len(channels) > 1:
        raise ValueError(f"images give crops with different channel counts {sorted(channels)}; "
                         "give every image the same extra channels")
    out = np.empty((len(boxes), spec.size, spec.size, channels.pop()), np.uint8)
    for rows, crops in parts:
        out[rows] = crops
    return out


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit image as (H, W, 3): grey repeated, alpha dropped."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"crops need 8-bit images, got dtype {arr.dtype} (convert with "
                         "workbench.core.images.to_uint8 first)")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"image of shape {arr.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")


def _extra_channels(extra: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(extra)
    if arr.dtype != np.uint8:
        raise ValueError(f"extra channels must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[:2] != hw:
        raise ValueError(f"extra channels of shape {arr.shape} do not match the image size {hw}")
    return arr


def _boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ValueError("boxes have NaN or infinite coordinates")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError("boxes have x2 < x1 or y2 < y1")
    return b


# ----------------------------------------------------------------------------- datasets

def read_rgb(path: str | Path, norm: Normalisation = Normalisation()) -> np.ndarray:
    """An image file as 8-bit RGB (H, W, 3) (non-8-bit mapped with ``norm``)."""
    arr, _ = read_image(path)
    return as_rgb(to_uint8(arr, norm)[0])


def dataset_images(root: str | Path, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """8-bit RGB pixels of some images of a canonical dataset, by image id."""
    root = Path(root)
    ds_meta = load_dataset(root).images.set_index("image_id")
    unknown = sorted(set(image_ids) - set(ds_meta.index))
    if unknown:
        raise KeyError(f"{root}: image ids not in meta.csv: {unknown[:5]}")
    return {i: read_rgb(root / ds_meta.at[i, "file"]) for i in dict.fromkeys(image_ids)}


def gt_crops(dataset: str | Path, spec: CropSpec = CropSpec(), *, split: str | None = None,
             classes: Sequence[str] | None = None, min_side: float = 1.0) -> CropSet:
    """Crops of the ground-truth boxes of a canonical dataset (one split, or all images).

    ``classes`` keeps boxes of those classes (in that label order; default all dataset
    classes). Boxes with a side below ``min_side`` pixels (e.g. BCCD's two zero-area boxes)
    are left out; the number is in ``table.attrs["dropped_small"]``.
    """
    root = Path(dataset)
    ds = load_dataset(root)
    names = list(ds.classes) if classes is None else [str(c) for c in classes]
    unknown = sorted(set(names) - set(ds.classes))
    if unknown:
        raise ValueError(f"{root}: classes {unknown} are not in the dataset's classes {ds.classes}")
    meta = ds.images
    if split is not None:
        if split not in set(meta["split"]):
            raise ValueError(f"{root}: no images in split {split!r} "
                             f"(splits: {sorted(set(meta['split']) - {''})}); run 'split' first")
        meta = meta[meta["split"] == split]
    objs = ds.objects[ds.objects["image_id"].isin(set(meta["image_id"])) & ds.objects["class"].isin(names)]
    small = ((objs["x2"] - objs["x1"]) < min_side) | ((objs["y2"] - objs["y1"]) < min_side)
    objs = objs[~small]
    table = (objs.rename(columns={"image_id": "image"})[["image", "class", *BOX_COLUMNS]]
             .reset_index(drop=True))
    table["label"] = pd.Index(names).get_indexer(table["class"]).astype(np.int64)
    files = meta.set_index("image_id")["file"]
    crops = crop_table(table, lambda i: read_rgb(root / files[i]), spec)
    table.attrs["dropped_small"] = int(small.sum())
    return CropSet(crops, table, names, spec)


def export_crops(crops: CropSet, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write crops as PNG files in one folder per class, plus ``crops.csv`` (for inspection).

    Files are ``<class>/<image>_<row>.png`` (row = position in ``crops.table``); with extra
    channels only the first three (RGB) are written, the box mask (if any) is saved as
    ``<class>/<image>_<row>_mask.png``. The folder appears atomically.
    """
    table = crops.table
    n_img = 3
    files = []
    with new_folder(out, overwrite=overwrite) as tmp:
        for cls in crops.classes:
            (tmp / safe_stem(cls)).mkdir(exist_ok=True)
        for row, (image, cls) in enumerate(zip(table["image"].astype(str), table["class"].astype(str))):
            rel = f"{safe_stem(cls)}/{safe_stem(image)}_{row}.png"
            # cv2 writes BGR
            cv2.imwrite(str(tmp / rel), np.ascontiguousarray(crops.crops[row, :, :, n_img - 1::-1]))
            if crops.spec.box_mask:
                cv2.imwrite(str(tmp / rel.replace(".png", "_mask.png")), crops.crops[row, :, :, -1])
            files.append(rel)
        table.assign(file=files).to_csv(tmp / "crops.csv", index=False)
        (tmp / "crop_spec.json").write_text(pd.Series(crops.spec.to_dict()).to_json(indent=1) + "\n",
                                            encoding="utf-8")
    return Path(out)
