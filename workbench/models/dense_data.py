"""Training data of the dense detector (:mod:`workbench.models.dense`): class maps from the
canonical dataset's polygons, the validation split by acquisition set, random crops and their
augmentation, and the network's input scaling.

* Targets are rasterised from ``objects.csv`` polygons, pixel-exact for the masks importer's
  outlines (which run through pixel corners); boxes without a polygon become their inscribed
  ellipse. MN are painted over nuclei; touching nuclei are parted by a 1 px background line.
* Crops (``cfg.crop`` px) are drawn per epoch from seeded generators (one per crop: the same
  crops whatever the batch or a resume), a share ``cfg.mn_crop_share`` centred on a random MN.

``cfg`` is a :class:`workbench.models.dense.DenseConfig` (read by attribute here, so this module
stays below it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

CLASSES = ("background", "nucleus", "mn")  # channel order of the network's output
BACKGROUND, NUCLEUS, MN = 0, 1, 2


def to_input(images: np.ndarray) -> np.ndarray:
    """8-bit images (N, H, W[, C]) -> float32 network input (N, C, H, W), centred and scaled."""
    x = images.astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
    return (x - 0.5) / 0.25


# ----------------------------------------------------------------------------- targets

def parse_polygon(text: Any) -> np.ndarray | None:
    """An ``objects.csv`` polygon (JSON ``[[x, y], ...]`` in pixel edges) as (N, 2) floats, or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    pts = np.asarray(json.loads(text), dtype=float)
    return pts if pts.ndim == 2 and pts.shape[0] >= 3 and pts.shape[1] == 2 else None


def object_pixels(row: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels of one object: those whose centre lies strictly inside its
    polygon (else inside the ellipse inscribed in its box). Coordinates are pixel edges (pixel
    c spans c..c+1). The masks importer's outlines run through pixel corners and cut steps
    diagonally through the centres of pixels that are *not* in the mask, hence "strictly"."""
    from skimage.draw import ellipse

    pts = parse_polygon(getattr(row, "polygon", None))
    if pts is None:
        cy, cx = (row.y1 + row.y2) / 2 - 0.5, (row.x1 + row.x2) / 2 - 0.5
        return ellipse(cy, cx, max((row.y2 - row.y1) / 2, 0.5), max((row.x2 - row.x1) / 2, 0.5), shape=shape)
    c0, r0 = max(int(np.floor(pts[:, 0].min())), 0), max(int(np.floor(pts[:, 1].min())), 0)
    c1, r1 = min(int(np.ceil(pts[:, 0].max())), shape[1]), min(int(np.ceil(pts[:, 1].max())), shape[0])
    rr, cc = np.mgrid[r0:r1, c0:c1]
    rr, cc = rr.ravel(), cc.ravel()
    keep = np.concatenate([strictly_inside(pts, cc[s:s + 20000] + 0.5, rr[s:s + 20000] + 0.5)
                           for s in range(0, len(rr), 20000)] or [np.zeros(0, bool)])
    return rr[keep], cc[keep]


def strictly_inside(pts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie inside the closed polygon ``pts`` and not on its outline
    (even-odd rule; a point on an edge is outside)."""
    x0, y0 = pts[:, 0][None], pts[:, 1][None]
    x1, y1 = np.roll(pts[:, 0], -1)[None], np.roll(pts[:, 1], -1)[None]
    px, py = x[:, None], y[:, None]
    eps = 1e-9
    on_edge = ((np.abs((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) < eps)
               & (px >= np.minimum(x0, x1) - eps) & (px <= np.maximum(x0, x1) + eps)
               & (py >= np.minimum(y0, y1) - eps) & (py <= np.maximum(y0, y1) + eps)).any(1)
    straddles = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    crossings = (straddles & (px < cross_x)).sum(1)
    return (crossings % 2 == 1) & ~on_edge


def rasterise(objects: pd.DataFrame, shape: tuple[int, int], *, mn_class: str = "mn",
              nucleus_class: str = "nucleus", nucleus_gap: bool = True) -> np.ndarray:
    """Class map (uint8: :data:`BACKGROUND`, :data:`NUCLEUS`, :data:`MN`) of one image's objects.

    Nuclei are painted first, MN over them; with ``nucleus_gap`` a nucleus pixel that has a
    4-neighbour of another nucleus becomes background, so touching nuclei stay two components.
    """
    out = np.zeros(shape, np.uint8)
    nuclei = objects[objects["class"].astype(str) == nucleus_class]
    ids = np.zeros(shape, np.int32)
    for k, row in enumerate(nuclei.itertuples(index=False), 1):
        ids[object_pixels(row, shape)] = k
    out[ids > 0] = NUCLEUS
    if nucleus_gap:
        out[touching(ids)] = BACKGROUND
    for row in objects[objects["class"].astype(str) == mn_class].itertuples(index=False):
        out[object_pixels(row, shape)] = MN
    return out


def touching(ids: np.ndarray) -> np.ndarray:
    """Pixels of an instance (id > 0) with a 4-neighbour of another instance; of each touching
    pair only the pixel with the larger id, so the parting line is 1 px wide."""
    hit = np.zeros(ids.shape, bool)
    a, b = ids[1:], ids[:-1]  # vertical neighbours
    differ = (a > 0) & (b > 0) & (a != b)
    hit[1:] |= differ & (a > b)
    hit[:-1] |= differ & (b > a)
    a, b = ids[:, 1:], ids[:, :-1]  # horizontal neighbours
    differ = (a > 0) & (b > 0) & (a != b)
    hit[:, 1:] |= differ & (a > b)
    hit[:, :-1] |= differ & (b > a)
    return hit


# ----------------------------------------------------------------------------- data

@dataclass
class TrainingImages:
    """The 8-bit images of a split with their class maps and MN centres (x, y per image)."""

    ids: list[str]
    images: list[np.ndarray]
    targets: list[np.ndarray]
    mn_centres: list[np.ndarray]


def load_training_images(root: Path, ids: Sequence[str], cfg: Any) -> TrainingImages:
    """Images ``ids`` of canonical dataset ``root`` (as stored, 8-bit) with their class maps."""
    from workbench.data.canonical import read_images

    objects = pd.read_csv(root / "objects.csv", dtype={"image_id": str}, keep_default_na=False)
    by_image = dict(iter(objects.groupby("image_id", sort=False)))
    arrays = read_images(root, list(ids))
    images, targets, centres = [], [], []
    empty = objects.iloc[:0]
    for i in ids:
        img = arrays[str(i)]
        obj = by_image.get(str(i), empty)
        images.append(img)
        targets.append(rasterise(obj, img.shape[:2], mn_class=cfg.mn_class, nucleus_class=cfg.nucleus_class,
                                 nucleus_gap=cfg.nucleus_gap))
        mn = obj[obj["class"].astype(str) == cfg.mn_class]
        centres.append(np.column_stack([(mn["x1"] + mn["x2"]) / 2, (mn["y1"] + mn["y2"]) / 2]).astype(float))
    return TrainingImages([str(i) for i in ids], images, targets, centres)


def split_by_group(meta: pd.DataFrame, *, val_share: float, group_by: str, seed: int) -> tuple[list[str], list[str], str]:
    """(training ids, validation ids, note): whole ``group_by`` groups go to validation (seeded,
    about ``val_share`` of the images); with a single group, images are split one by one."""
    from workbench.data.splits import assign_splits

    if len(meta) < 2:
        raise ValueError(f"need at least 2 training images to hold some out for validation, got {len(meta)}")
    groups = meta[group_by].astype(str) if group_by in meta else pd.Series("", index=meta.index)
    by_group = groups.nunique() >= 2
    ratios = (1 - val_share, val_share)
    split = assign_splits(meta.drop(columns="split", errors="ignore"), ratios=ratios, seed=seed,
                          group_by=group_by if by_group else None, keep_existing=False, exact=True)
    if not (split == "val").any() or not (split == "train").any():  # exact placement on a tiny set
        split = pd.Series(["val" if k == len(meta) - 1 else "train" for k in range(len(meta))], index=meta.index)
    ids = meta["image_id"].astype(str)
    note = (f"validation = whole {group_by!r} groups {sorted(set(groups[split == 'val']))}" if by_group else
            f"one {group_by!r} group only: validation images picked one by one (seeded)")
    return ids[split == "train"].tolist(), ids[split == "val"].tolist(), note


def sample_crop(data: TrainingImages, rng: np.random.Generator, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """One random crop (image, class map) of ``cfg.crop`` px, centred on a random MN with
    probability ``mn_crop_share``; images smaller than the crop are zero-padded."""
    n_mn = np.array([len(c) for c in data.mn_centres])
    c = cfg.crop
    if n_mn.sum() and rng.random() < cfg.mn_crop_share:
        k = int(rng.choice(len(n_mn), p=n_mn / n_mn.sum()))
        cx, cy = data.mn_centres[k][rng.integers(n_mn[k])] + rng.uniform(-c / 3, c / 3, size=2)
    else:
        areas = np.array([t.size for t in data.targets], float)
        k = int(rng.choice(len(areas), p=areas / areas.sum()))
        h, w = data.targets[k].shape
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    img, tgt = data.images[k], data.targets[k]
    h, w = tgt.shape
    x0 = int(np.clip(round(cx - c / 2), 0, max(0, w - c)))
    y0 = int(np.clip(round(cy - c / 2), 0, max(0, h - c)))
    img, tgt = img[y0:y0 + c, x0:x0 + c], tgt[y0:y0 + c, x0:x0 + c]
    if tgt.shape != (c, c):
        pad = ((0, c - tgt.shape[0]), (0, c - tgt.shape[1]))
        img = np.pad(img, pad + ((0, 0),) * (img.ndim - 2))
        tgt = np.pad(tgt, pad)
    return img, tgt


def augment(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """rot90 x flips (both arrays), then intensity jitter of the image: gamma 0.7-1.4, contrast
    0.8-1.25, brightness +-0.08, Gaussian noise sigma 0-0.03 (on 0..1, back to 8 bits)."""
    k = int(rng.integers(4))
    img, tgt = np.rot90(img, k, axes=(0, 1)), np.rot90(tgt, k)
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
    x = (img.astype(np.float32) / 255.0) ** rng.uniform(0.7, 1.4)
    x = (x - x.mean()) * rng.uniform(0.8, 1.25) + x.mean() + rng.uniform(-0.08, 0.08)
    x = x + rng.normal(0, rng.uniform(0, 0.03), size=x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), np.ascontiguousarray(tgt)


def crop_batch(data: TrainingImages, rngs: Sequence[np.random.Generator], cfg: Any, *,
               train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(network input, class maps) of one crop per generator; augmented when ``train``."""
    pairs = [sample_crop(data, r, cfg) for r in rngs]
    if train:
        pairs = [augment(i, t, r) for (i, t), r in zip(pairs, rngs)]
    return to_input(np.stack([p[0] for p in pairs])), np.stack([p[1] for p in pairs]).astype(np.int64)


def epoch_rngs(seed: int, epoch: int, n: int) -> list[np.random.Generator]:
    """One generator per crop of an epoch: the same crops whatever the batch or a resume."""
    return [np.random.default_rng([seed, epoch, i]) for i in range(n)]
