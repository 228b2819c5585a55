"""Per-cell micronucleus (MN) outputs: parent nuclei, MN per nucleus, MN frequency.

All functions are pure, over box tables (``image, class, x1, y1, x2, y2`` [+ ``score``]):

* :func:`assign_parents` – each MN goes to the nearest nucleus of its image (distance from the
  MN centre to the nucleus box, 0 inside; ties by centre distance, then table order), or to
  none when every nucleus is farther than ``max_distance`` px;
* :func:`parents_from_colours` – the truth's parents in MNFinder: an MN is drawn in the
  colour of its cell's nucleus (``source_object`` names the colour; 95% of MN reuse one);
* :func:`cell_table` – one row per cell: nuclei grouped by an optional ``cell`` column
  (two nuclei of one cell = binucleated), with its MN count;
* :func:`mn_frequency` – per image (or per group): cells, cells with >= 1 MN, the MN
  frequency (their share, what a lab reports), MN per cell, binucleated cells.

MNFinder marks no binucleated cells: its reused nucleus colours belong to nuclei hundreds of
pixels apart (checked), so ``binucleated`` is NA unless the nuclei table has ``cell``.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

MN, NUCLEUS = "mn", "nucleus"
BOX = ["x1", "y1", "x2", "y2"]
FREQUENCY_COLUMNS = ["n_cells", "n_cells_with_mn", "mn_frequency", "n_mn", "n_mn_assigned", "mn_per_cell",
                     "n_binucleated", "binucleated_share"]
_COLOUR = re.compile(r"colour (#[0-9a-fA-F]{6})")


def _check(table: pd.DataFrame, name: str, columns: Sequence[str] = ("image", *BOX)) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} table is missing column(s) {missing}; it has {list(table.columns)}")


def split_classes(boxes: pd.DataFrame, *, mn_class: str = MN, nucleus_class: str = NUCLEUS,
                  score_thr: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(MN rows, nucleus rows) of a box table, each re-indexed 0..n-1; ``score_thr`` keeps
    predictions with ``score >= score_thr``."""
    _check(boxes, "boxes", ("image", "class", *BOX))
    if score_thr is not None:
        boxes = boxes[boxes["score"] >= score_thr]
    cls = boxes["class"].astype(str)
    return (boxes[cls == mn_class].reset_index(drop=True), boxes[cls == nucleus_class].reset_index(drop=True))


def box_gap(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(N, M)`` distance from each point ``(x, y)`` to each ``x1 y1 x2 y2`` box (0 inside)."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)[:, None, :]
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)[None, :, :]
    dx = np.maximum(np.maximum(b[..., 0] - p[..., 0], p[..., 0] - b[..., 2]), 0)
    dy = np.maximum(np.maximum(b[..., 1] - p[..., 1], p[..., 1] - b[..., 3]), 0)
    return np.hypot(dx, dy)


def _parent_ids(parent: np.ndarray) -> pd.arrays.IntegerArray:
    """Row positions as a nullable integer array (-1 -> <NA>)."""
    return pd.arrays.IntegerArray(np.maximum(parent, 0).astype(np.int64), parent < 0)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def assign_parents(mn: pd.DataFrame, nuclei: pd.DataFrame, *, max_distance: float = 20.0) -> pd.DataFrame:
    """``mn`` with ``parent`` (row position in ``nuclei``, <NA> if none within ``max_distance``)
    and ``parent_distance`` (px from the MN centre to the parent's box; NaN without parent)."""
    _check(mn, "mn")
    _check(nuclei, "nuclei")
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0 px, got {max_distance}")
    parent = np.full(len(mn), -1, dtype=np.int64)
    gap = np.full(len(mn), np.nan)
    m_img, n_img = mn["image"].astype(str).to_numpy(), nuclei["image"].astype(str).to_numpy()
    m_box, n_box = mn[BOX].to_numpy(float), nuclei[BOX].to_numpy(float)
    for img in np.unique(m_img):
        mi, ni = np.flatnonzero(m_img == img), np.flatnonzero(n_img == img)
        if not len(ni):
            continue
        c = _centres(m_box[mi])
        d = box_gap(c, n_box[ni])
        centre = np.hypot(*(c[:, None, :] - _centres(n_box[ni])[None, :, :]).transpose(2, 0, 1))
        order = np.lexsort((np.broadcast_to(np.arange(len(ni)), d.shape), centre, d), axis=1)[:, 0]
        best = d[np.arange(len(mi)), order]
        ok = best <= max_distance
        parent[mi[ok]] = ni[order[ok]]
        gap[mi[ok]] = best[ok]
    return mn.assign(parent=_parent_ids(parent), parent_distance=gap)


def colour_of(source_object: pd.Series) -> pd.Series:
    """The ``#rrggbb`` mask colour named in MNFinder-style ``source_object`` strings (NA if none)."""
    return source_object.astype(str).str.extract(_COLOUR, expand=False).str.lower()


def parents_from_colours(objects: pd.DataFrame, *, mn_class: str = MN, nucleus_class: str = NUCLEUS
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(MN with ``parent`` from mask colours, nuclei) of a canonical ``objects.csv`` table.

    An MN's parent is the nucleus of the same image drawn in the same colour (the nearest one
    when a colour was reused); <NA> when no nucleus has its colour.
    """
    _check(objects, "objects", ("image_id", "class", *BOX, "source_object"))
    boxes = objects.rename(columns={"image_id": "image"})
    boxes = boxes.assign(colour=colour_of(boxes["source_object"]))
    mn, nuclei = split_classes(boxes, mn_class=mn_class, nucleus_class=nucleus_class)
    parent = np.full(len(mn), -1, dtype=np.int64)
    gap = np.full(len(mn), np.nan)
    for (img, colour), g in mn.groupby(["image", "colour"], sort=False):
        ni = np.flatnonzero((nuclei["image"] == img).to_numpy() & (nuclei["colour"] == colour).to_numpy())
        if not len(ni):
            continue
        d = box_gap(_centres(g[BOX].to_numpy(float)), nuclei.loc[ni, BOX].to_numpy(float))
        k = d.argmin(axis=1)
        parent[g.index.to_numpy()] = ni[k]
        gap[g.index.to_numpy()] = d[np.arange(len(g)), k]
    out = mn.assign(parent=_parent_ids(parent), parent_distance=gap)
    return out, nuclei


def cell_table(nuclei: pd.DataFrame, mn_with_parents: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: ``image, cell, n_nuclei, n_mn`` (and the first nucleus' box).

    Nuclei sharing a ``cell`` value (per image) are one cell; without a ``cell`` column each
    nucleus is a cell and ``n_nuclei`` is <NA> (not marked). ``n_mn`` counts the MN whose
    ``parent`` (row position in ``nuclei``) belongs to the cell.
    """
    _check(nuclei, "nuclei")
    _check(mn_with_parents, "mn", ("image", "parent"))
    marked = "cell" in nuclei.columns
    nuc = nuclei.reset_index(drop=True)
    cell = nuc["cell"].astype(str) if marked else pd.Series(np.arange(len(nuc)).astype(str), index=nuc.index)
    key = nuc["image"].astype(str) + "\x00" + cell
    codes, uniques = pd.factorize(key, sort=False)
    parent = mn_with_parents["parent"].dropna().astype(int).to_numpy()
    if len(parent) and parent.max() >= len(nuc):
        raise ValueError(f"mn 'parent' {parent.max()} is not a row of the nuclei table ({len(nuc)} rows)")
    n_mn = np.bincount(codes[parent], minlength=len(uniques)) if len(parent) else np.zeros(len(uniques), int)
    first = pd.Series(np.arange(len(nuc))).groupby(codes).first().to_numpy() if len(nuc) else np.zeros(0, int)
    out = pd.DataFrame({"image": nuc["image"].astype(str).to_numpy()[first] if len(nuc) else [],
                        "cell": cell.to_numpy()[first] if len(nuc) else [],
                        "n_nuclei": pd.array(np.bincount(codes, minlength=len(uniques)) if marked else
                                             [pd.NA] * len(uniques), dtype="Int64"),
                        "n_mn": n_mn.astype(np.int64)})
    for c in BOX:
        out[c] = nuc[c].to_numpy(float)[first] if len(nuc) else []
    return out


def mn_frequency(cells: pd.DataFrame, mn_with_parents: pd.DataFrame | None = None, *, by: str = "image",
                 images: Sequence[str] | None = None) -> pd.DataFrame:
    """MN frequency per ``by`` value (a column of ``cells``, default ``image``).

    Columns: ``by``, n_cells, n_cells_with_mn, mn_frequency (= n_cells_with_mn / n_cells, NaN
    without cells), n_mn (all MN of the ``by`` value, when ``mn_with_parents`` is given and
    ``by`` is one of its columns), n_mn_assigned (MN with a parent), mn_per_cell,
    n_binucleated (cells with 2 nuclei; <NA> when not marked) and binucleated_share.
    ``images`` lists every image to report (images without cells get zero cells).
    """
    _check(cells, "cells", (by, "n_mn", "n_nuclei"))
    g = cells.groupby(cells[by].astype(str), sort=True)
    out = pd.DataFrame({"n_cells": g.size(), "n_cells_with_mn": g["n_mn"].apply(lambda s: int((s >= 1).sum())),
                        "n_mn_assigned": g["n_mn"].sum()})
    marked = cells["n_nuclei"].notna().all() and len(cells)
    out["n_binucleated"] = (g["n_nuclei"].apply(lambda s: int((s == 2).sum())) if marked
                            else pd.Series(pd.NA, index=out.index))
    if images is not None and by == "image":
        out = out.reindex([str(i) for i in images])
        out[["n_cells", "n_cells_with_mn", "n_mn_assigned"]] = out[["n_cells", "n_cells_with_mn", "n_mn_assigned"]].fillna(0)
        if marked:
            out["n_binucleated"] = out["n_binucleated"].fillna(0)
    out.index.name = by
    out = out.reset_index()
    if mn_with_parents is not None and by in mn_with_parents.columns:
        counts = mn_with_parents[by].astype(str).value_counts()
        out["n_mn"] = out[by].map(counts).fillna(0).astype(np.int64)
    else:
        out["n_mn"] = out["n_mn_assigned"]
    for c in ("n_cells", "n_cells_with_mn", "n_mn_assigned"):
        out[c] = out[c].astype(np.int64)
    n = out["n_cells"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["mn_frequency"] = np.where(n > 0, out["n_cells_with_mn"] / np.where(n > 0, n, 1), np.nan)
        out["mn_per_cell"] = np.where(n > 0, out["n_mn_assigned"] / np.where(n > 0, n, 1), np.nan)
        out["binucleated_share"] = (pd.to_numeric(out["n_binucleated"], errors="coerce") / np.where(n > 0, n, np.nan))
    return out[[by, *FREQUENCY_COLUMNS]]


def group_frequency(per_image: pd.DataFrame, meta: pd.DataFrame, *, group_by: str) -> pd.DataFrame:
    """Pool a per-image :func:`mn_frequency` table by a ``meta`` column (``image_id`` + ``group_by``):
    counts summed, frequencies recomputed from the sums (cell-weighted)."""
    _check(per_image, "per_image", ("image", "n_cells", "n_cells_with_mn", "n_mn_assigned", "n_mn"))
    if group_by not in meta.columns or "image_id" not in meta.columns:
        raise ValueError(f"meta needs columns 'image_id' and {group_by!r}; it has {list(meta.columns)}")
    groups = meta.set_index(meta["image_id"].astype(str))[group_by].astype(str)
    missing = sorted(set(per_image["image"].astype(str)) - set(groups.index))
    if missing:
        raise ValueError(f"images not in meta: {missing[:5]}")
    t = per_image.assign(**{group_by: per_image["image"].astype(str).map(groups)})
    sums = t.groupby(group_by, sort=True)[["n_cells", "n_cells_with_mn", "n_mn_assigned", "n_mn"]].sum()
    n = sums["n_cells"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sums["mn_frequency"] = np.where(n > 0, sums["n_cells_with_mn"] / np.where(n > 0, n, 1), np.nan)
        sums["mn_per_cell"] = np.where(n > 0, sums["n_mn_assigned"] / np.where(n > 0, n, 1), np.nan)
    sums["n_images"] = t.groupby(group_by).size()
    return sums.reset_index()


def per_cell_outputs(boxes: pd.DataFrame, *, max_distance: float = 20.0, score_thr: float | None = None,
                     images: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(MN with parents, cell table, per-image MN frequency) of one detector's box table."""
    mn, nuclei = split_classes(boxes, score_thr=score_thr)
    mn = assign_parents(mn, nuclei, max_distance=max_distance)
    cells = cell_table(nuclei, mn)
    return mn, cells, mn_frequency(cells, mn, images=images)


def frequency_comparison(pred: pd.DataFrame, true: pd.DataFrame) -> pd.DataFrame:
    """Per image: true and predicted MN frequency and their difference (pred - true)."""
    t = true.set_index("image")[["n_cells", "mn_frequency"]].add_prefix("true_")
    p = pred.set_index("image")[["n_cells", "mn_frequency"]].add_prefix("pred_")
    out = t.join(p, how="outer")
    out["frequency_error"] = out["pred_mn_frequency"] - out["true_mn_frequency"]
    return out.reset_index()
