"""Per-image and per-group cell statistics from box tables (counts, ratios, sizes, neighbourhoods, flags).

Input tables
------------
``boxes``: one row per object with the image name in ``image`` (prediction/metrics tables)
or ``image_id`` (canonical ``Dataset.objects``); either name is accepted, both only when they
agree. ``class`` and ``x1 y1 x2 y2`` (pixels). A cascade table may add ``det_class``,
``final_class`` and ``changed``; the class used is ``class_col`` (default: ``final_class``
when present, else ``class``). Other columns (``score``, ...) are ignored.

``images``: one row per image, ``image_id`` (or ``image``), ``width``/``height`` in pixels
(needed only for area fractions) and any user columns named in ``groups`` (e.g. treatment,
donor, ``split``). Every image of this table gets a row in per-image tables, with zero counts
when it has no boxes, so pass only the images that were annotated or predicted (for ground
truth: ``ds.images[ds.images.labelled]``). Without it, the images are those of ``boxes``.

Class names (``positive``, ``normal``) are checked for typos: give ``known_classes`` (the
dataset's class names) and only a name outside them is warned about; without it, a name that
occurs in no box is (a class merely absent from a model's predictions is no typo).

Outputs always call the image ``image`` and identify a box by ``cell``: its 0-based row
position in the ``boxes`` table given, so ``boxes.iloc[cell]`` finds it again.

Zero-area boxes (kept by the canonical writer with a warning) count as cells everywhere but
are left out of the reference means (mean normal-cell area, mean positive-cell radius),
which they would otherwise drag towards zero.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = ["DEFAULT_KS", "FlagRule", "cell_sizes", "cells", "flag", "neighbourhood_counts",
           "neighbourhood_summary", "per_image_counts", "positive_ratio"]

DEFAULT_KS: tuple[float, ...] = (2, 4, 6, 8)
# Relative slack on the neighbourhood reach: a cell exactly on the circle counts even when
# the centre, computed as (x1 + x2) / 2, lands one rounding step outside.
_REACH_RTOL = 1e-9
_COORDS = ("x1", "y1", "x2", "y2")


# ----------------------------------------------------------------------------- input checks

def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _image_column(df: pd.DataFrame, what: str) -> str:
    has_image, has_id = "image" in df.columns, "image_id" in df.columns
    if has_image and has_id:
        differ = int((df["image"].astype(str) != df["image_id"].astype(str)).sum())
        if differ:
            raise ValueError(f"{what}: has both 'image' and 'image_id' and they differ in {differ} "
                             "row(s); drop one of them")
        return "image"
    if has_image:
        return "image"
    if has_id:
        return "image_id"
    raise ValueError(f"{what}: needs an 'image' or 'image_id' column, has {list(df.columns)}")


def _rows(index: pd.Index, mask: np.ndarray) -> str:
    bad = list(index[mask])
    more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
    return ", ".join(str(b) for b in bad[:10]) + more


def _class_column(boxes: pd.DataFrame, class_col: str | None) -> str:
    if class_col is None:
        return "final_class" if "final_class" in boxes.columns else "class"
    return class_col


def cells(boxes: pd.DataFrame, *, class_col: str | None = None) -> pd.DataFrame:
    """The box table checked and in one shape: ``cell, image, class, x1..y2, w, h, cx, cy, area``.

    Every problem of the table is reported in one ``ValueError`` (missing columns, rows with
    non-numeric or missing coordinates, inverted boxes, empty image names or classes).
    """
    if not isinstance(boxes, pd.DataFrame):
        raise TypeError(f"boxes must be a pandas DataFrame, got {type(boxes).__name__}")
    col = _class_column(boxes, class_col)
    missing = [c for c in (col, *_COORDS) if c not in boxes.columns]
    problems = []
    if missing:
        raise ValueError(f"boxes table lacks column(s) {missing}; has {list(boxes.columns)}")
    img_col = _image_column(boxes, "boxes table")
    idx = pd.RangeIndex(len(boxes), name="row")
    xy = {c: pd.to_numeric(boxes[c], errors="coerce").to_numpy(dtype=float) for c in _COORDS}
    bad = ~np.isfinite(np.column_stack([xy[c] for c in _COORDS])).all(axis=1) if len(boxes) else np.zeros(0, bool)
    if bad.any():
        problems.append(f"{bad.sum()} row(s) with missing or non-numeric coordinates: rows {_rows(idx, bad)}")
    with np.errstate(invalid="ignore"):
        inverted = (xy["x2"] < xy["x1"]) | (xy["y2"] < xy["y1"])
    if inverted.any():
        problems.append(f"{inverted.sum()} row(s) with x2 < x1 or y2 < y1: rows {_rows(idx, inverted)}")
    image = boxes[img_col].astype("string").fillna("").to_numpy(dtype=object)
    cls = boxes[col].astype("string").fillna("").to_numpy(dtype=object)
    for name, values in ((img_col, image), (col, cls)):
        empty = np.array([v == "" for v in values], dtype=bool)
        if empty.any():
            problems.append(f"{empty.sum()} row(s) with an empty '{name}': rows {_rows(idx, empty)}")
    if problems:
        raise ValueError("boxes table has problems:\n  " + "\n  ".join(problems))
    w, h = xy["x2"] - xy["x1"], xy["y2"] - xy["y1"]
    return pd.DataFrame({"cell": np.arange(len(boxes)), "image": pd.array(image, dtype="str"),
                         "class": pd.array(cls, dtype="str"), **xy, "w": w, "h": h,
                         "cx": (xy["x1"] + xy["x2"]) / 2, "cy": (xy["y1"] + xy["y2"]) / 2,
                         "area": w * h})


def _image_table(images: pd.DataFrame | None, c: pd.DataFrame, groups: list[str],
                 *, need_size: bool = False) -> pd.DataFrame:
    """``image`` + ``width``/``height`` (when needed) + group columns, one row per image."""
    if images is None:
        if groups:
            raise ValueError(f"group column(s) {groups} come from the images table; pass images=")
        if need_size:
            raise ValueError("image sizes are needed: pass images= with 'width' and 'height'")
        return pd.DataFrame({"image": pd.array(pd.unique(c["image"]), dtype="str")})
    img_col = _image_column(images, "images table")
    wanted = groups + (["width", "height"] if need_size else [])
    missing = [g for g in wanted if g not in images.columns]
    if missing:
        raise ValueError(f"images table lacks column(s) {missing}; has {list(images.columns)}")
    clash = [g for g in groups if g in ("image", "cell", "class", "k")]
    if clash:
        raise ValueError(f"group column(s) {clash} clash with output columns; rename them")
    table = pd.DataFrame({"image": images[img_col].astype("string").fillna("").astype("str").to_numpy()})
    for g in groups:
        table[g] = images[g].to_numpy()
    problems = []
    dup = table["image"].duplicated(keep=False).to_numpy()
    if dup.any():
        problems.append(f"repeated image ids: {sorted(set(table['image'][dup]))[:10]}")
    if need_size:
        for s in ("width", "height"):
            v = pd.to_numeric(images[s], errors="coerce").to_numpy(dtype=float)
            bad = ~(v > 0)
            if bad.any():
                problems.append(f"{bad.sum()} image(s) without a positive {s}: "
                                f"{list(table['image'][bad])[:10]}")
            table[s] = v
    unknown = sorted(set(c["image"]) - set(table["image"]))
    if unknown:
        problems.append(f"{len(unknown)} image(s) of the boxes table are not in the images table: "
                        f"{unknown[:10]}")
    if problems:
        raise ValueError("images table has problems:\n  " + "\n  ".join(problems))
    return table


def _warn_absent(c: pd.DataFrame, role: str, names: Iterable[str],
                 known: Sequence[str] | None = None) -> None:
    """Say which names may be typos, and go on. With ``known`` (the dataset's class names) only a
    name outside it is one: a known class merely absent from these boxes (no platelet predicted,
    a subset without it) is legitimate. Without it, a name absent from the boxes is suspect."""
    if known is not None:
        unknown = [n for n in names if n not in set(known)]
        if unknown:
            warnings.warn(f"{role} class(es) {unknown} are not classes of the dataset ({sorted(known)}); "
                          "check the spelling", stacklevel=3)
        return
    seen = set(c["class"])
    absent = [n for n in names if n not in seen]
    if absent and len(c):
        warnings.warn(f"{role} class(es) {absent} do not occur in the boxes (classes: {sorted(seen)}); "
                      "check the spelling, or pass known_classes= (the dataset's classes)", stacklevel=3)


def _check_classes(c: pd.DataFrame, known: Sequence[str] | None = None, **named: list[str]) -> None:
    """Class lists must be non-empty and disjoint; possible typos give a warning (:func:`_warn_absent`)."""
    problems = []
    for role, names in named.items():
        if not names:
            problems.append(f"no {role} class given")
    roles = list(named)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            both = sorted(set(named[a]) & set(named[b]))
            if both:
                problems.append(f"class(es) {both} are both {a} and {b}")
    if problems:
        raise ValueError("; ".join(problems))
    for role, names in named.items():
        _warn_absent(c, role, names, known)


# ----------------------------------------------------------------------------- counts

def per_image_counts(boxes: pd.DataFrame, images: pd.DataFrame | None = None, *,
                     classes: Sequence[str] | None = None, class_col: str | None = None,
                     groups: str | Sequence[str] = ()) -> pd.DataFrame:
    """Boxes per class per image: ``image``, group columns, one column per class, ``total``.

    ``classes`` picks and orders the class columns (default: sorted names found); ``total``
    counts every box of the image, listed class or not.
    """
    c = cells(boxes, class_col=class_col)
    groups = _names(groups)
    table = _image_table(images, c, groups)
    names = _names(classes) if classes is not None else sorted(set(c["class"]))
    clash = [n for n in names if n in ("image", "total", *groups)]
    if clash:
        raise ValueError(f"class name(s) {clash} clash with the columns image/total/groups")
    wide = pd.crosstab(c["image"], c["class"]).reindex(index=table["image"], columns=names, fill_value=0)
    out = table.copy()
    for n in names:
        out[n] = wide[n].fillna(0).astype(int).to_numpy()
    out["total"] = c["image"].value_counts().reindex(table["image"], fill_value=0).astype(int).to_numpy()
    return out


def positive_ratio(boxes: pd.DataFrame, images: pd.DataFrame | None = None, *,
                   positive: str | Sequence[str], normal: str | Sequence[str],
                   class_col: str | None = None, groups: str | Sequence[str] = (),
                   known_classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per image: ``n_positive``, ``n_normal``, ``ratio`` and ``positive_fraction``.

    ``ratio = n_positive / n_normal`` follows IEEE division: ``inf`` when an image has
    positives but no normal cells, ``NaN`` when it has neither (0/0). ``positive_fraction =
    n_positive / (n_positive + n_normal)`` stays in [0, 1] and is NaN only for 0/0, so it is
    the safer number to average; plots leave non-finite values out and say how many.
    """
    positive, normal = _names(positive), _names(normal)
    c = cells(boxes, class_col=class_col)
    _check_classes(c, known_classes, positive=positive, normal=normal)
    counts = per_image_counts(boxes, images, classes=sorted(set(positive + normal)),
                              class_col=class_col, groups=groups)
    groups = _names(groups)
    out = counts[["image", *groups]].copy()
    out["n_positive"] = counts[positive].sum(axis=1).astype(int)
    out["n_normal"] = counts[normal].sum(axis=1).astype(int)
    pos, nor = out["n_positive"].to_numpy(float), out["n_normal"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = pos / nor
        out["positive_fraction"] = pos / (pos + nor)
    return out


# ----------------------------------------------------------------------------- sizes

def cell_sizes(boxes: pd.DataFrame, images: pd.DataFrame, *, normal: str | Sequence[str],
               class_col: str | None = None, groups: str | Sequence[str] = (),
               known_classes: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per box: its area in pixels, as a fraction of the image, and relative to normals.

    ``area_fraction = w*h / (width*height)`` of its image. ``rel_normal_area = w*h /`` the
    mean area of the normal cells (``normal`` classes, zero-area boxes left out) in the same
    image; NaN in an image without such cells. A normal cell of average size scores 1, so
    images of different magnification or size compare.
    """
    normal = _names(normal)
    c = cells(boxes, class_col=class_col)
    _check_classes(c, known_classes, normal=normal)
    groups = _names(groups)
    table = _image_table(images, c, groups, need_size=True)
    is_ref = c["class"].isin(normal) & (c["area"] > 0)
    ref = c.loc[is_ref].groupby("image")["area"].mean()
    out = c[["image", "cell", "class"]].merge(table, on="image", how="left")
    out = out[["image", *groups, "cell", "class"]].copy()
    out["width_px"] = c["w"].to_numpy()
    out["height_px"] = c["h"].to_numpy()
    out["area_px"] = c["area"].to_numpy()
    size = c[["image"]].merge(table[["image", "width", "height"]], on="image", how="left")
    out["area_fraction"] = c["area"].to_numpy() / (size["width"].to_numpy() * size["height"].to_numpy())
    out["rel_normal_area"] = c["area"].to_numpy() / c["image"].map(ref).to_numpy(dtype=float)
    return out


# ----------------------------------------------------------------------------- neighbourhood

def _radius(c: pd.DataFrame, how: str) -> np.ndarray:
    if how == "area":
        return np.sqrt(c["area"].to_numpy() / np.pi)
    if how == "sides":
        return (c["w"].to_numpy() + c["h"].to_numpy()) / 4
    raise ValueError(f"radius must be 'area' or 'sides', got {how!r}")


def neighbourhood_counts(boxes: pd.DataFrame, images: pd.DataFrame | None = None, *,
                         positive: str | Sequence[str], normal: str | Sequence[str],
                         ks: Sequence[float] = DEFAULT_KS, radius: str = "area",
                         scope: str = "image", class_col: str | None = None,
                         groups: str | Sequence[str] = (),
                         known_classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Normal cells around each positive cell within ``k`` mean positive-cell radii.

    For a positive cell p in image I and each k in ``ks``::

        n_neighbours(p, k) = #{normal cells q in I : |centre(q) - centre(p)| <= k * R}

    Centres are box centres ``((x1+x2)/2, (y1+y2)/2)``; distance is Euclidean, in pixels;
    the boundary is **inclusive** (a cell exactly at ``k * R`` counts; relative slack 1e-9
    absorbs rounding of the centres). Cells of other images never count.

    Cell radius: ``radius="area"`` (default) ``r = sqrt(w*h/pi)``, the radius of the circle
    with the box's area; ``radius="sides"`` ``r = (w + h) / 4``, the mean half side.
    ``R`` is the mean r of the positive cells (zero-area boxes left out) of the same image
    (``scope="image"``, default: adapts to each image's magnification) or of the whole table
    (``scope="dataset"``: one physical reach for all images of one microscope setting).

    Returns tidy rows ``image, groups..., cell, class, k, radius_ref, reach, n_neighbours``
    (``reach = k * R``), one per positive cell and k; images without positive cells give no
    rows, a positive cell in an image without normal cells gets 0.
    """
    positive, normal = _names(positive), _names(normal)
    ks_arr = np.asarray(list(ks), dtype=float)
    if ks_arr.ndim != 1 or not len(ks_arr) or not (np.isfinite(ks_arr) & (ks_arr > 0)).all():
        raise ValueError(f"ks must be positive numbers, got {list(ks)}")
    if scope not in ("image", "dataset"):
        raise ValueError(f"scope must be 'image' or 'dataset', got {scope!r}")
    c = cells(boxes, class_col=class_col)
    _check_classes(c, known_classes, positive=positive, normal=normal)
    groups = _names(groups)
    table = _image_table(images, c, groups)
    c = c.assign(r=_radius(c, radius))
    pos = c[c["class"].isin(positive)]
    nor = c[c["class"].isin(normal)]
    ref_pos = pos[pos["area"] > 0]
    if scope == "dataset":
        ref = pd.Series(ref_pos["r"].mean() if len(ref_pos) else np.nan, index=pd.unique(pos["image"]))
    else:
        ref = ref_pos.groupby("image")["r"].mean()
    nor_xy = {img: g[["cx", "cy"]].to_numpy() for img, g in nor.groupby("image", sort=False)}
    parts = []
    for img, p in pos.groupby("image", sort=False):
        big_r = float(ref.get(img, np.nan))  # NaN: only zero-area positives in this image
        reach = ks_arr * big_r
        xy = nor_xy.get(img)
        if xy is None or not np.isfinite(big_r):
            n = np.zeros((len(p), len(ks_arr)), dtype=int)
        else:
            tree = cKDTree(xy)
            # one vectorised query per k; cKDTree's ball query is inclusive (d <= r)
            n = np.column_stack([tree.query_ball_point(p[["cx", "cy"]].to_numpy(),
                                                       r=rk * (1 + _REACH_RTOL), return_length=True)
                                 for rk in reach])
        parts.append(pd.DataFrame({
            "image": img, "cell": np.repeat(p["cell"].to_numpy(), len(ks_arr)),
            "class": np.repeat(p["class"].to_numpy(), len(ks_arr)),
            "k": np.tile(ks_arr, len(p)), "radius_ref": big_r,
            "reach": np.tile(reach, len(p)), "n_neighbours": n.reshape(-1).astype(int)}))
    cols = ["image", *groups, "cell", "class", "k", "radius_ref", "reach", "n_neighbours"]
    if not parts:
        empty = pd.DataFrame({c_: pd.Series(dtype=float) for c_ in cols})
        return empty.astype({"image": "str", "class": "str", "cell": int, "n_neighbours": int})
    out = pd.concat(parts, ignore_index=True)
    out = out.merge(table, on="image", how="left")[cols]
    return out


def neighbourhood_summary(neigh: pd.DataFrame, *, groups: str | Sequence[str] = ()) -> pd.DataFrame:
    """Per image and k: ``n_positive`` cells and their ``mean_neighbours`` (the effective score)."""
    keys = ["image", *_names(groups), "k"]
    missing = [k for k in keys + ["n_neighbours"] if k not in neigh.columns]
    if missing:
        raise ValueError(f"neighbourhood table lacks column(s) {missing}")
    return (neigh.groupby(keys, sort=False, dropna=False)["n_neighbours"]
            .agg(n_positive="size", mean_neighbours="mean").reset_index())


# ----------------------------------------------------------------------------- flag rule

@dataclass(frozen=True)
class FlagRule:
    """Flag a parent object (or an image) holding more than ``threshold`` counted objects.

    count: classes of the counted objects (e.g. chromosome aberrations).
    threshold: flag when the count is ``> threshold`` (``>=`` with ``inclusive=True``).
    parent: classes of the parent objects (e.g. metaphase cell); ``None`` counts per image.
    inside: ``"centre"``: an object is inside a parent when its box centre lies in the parent
        box, edges included; ``"overlap"``: when at least ``min_overlap`` of its box area lies
        in the parent box (a zero-area box falls back to the centre test).
    assign: ``"all"``: an object inside several parents counts for each; ``"best"``: only for
        the parent holding the largest share of it (ties: the earlier parent row).
    name: name of the boolean output column.

    The chromosome lab's "villain cell": ``FlagRule(count=["aberration"], parent=["cell"],
    threshold=10, name="villain")``. A box never counts as inside itself.
    """

    count: tuple[str, ...]
    threshold: float
    parent: tuple[str, ...] | None = None
    inside: str = "centre"
    min_overlap: float = 0.5
    assign: str = "all"
    inclusive: bool = False
    name: str = "flagged"

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", tuple(_names(self.count)))
        if self.parent is not None:
            object.__setattr__(self, "parent", tuple(_names(self.parent)))
        problems = []
        if not self.count:
            problems.append("count needs at least one class")
        if self.parent is not None and not self.parent:
            problems.append("parent must be None (per image) or name at least one class")
        if not np.isfinite(float(self.threshold)):
            problems.append(f"threshold must be a finite number, got {self.threshold!r}")
        if self.inside not in ("centre", "overlap"):
            problems.append(f"inside must be 'centre' or 'overlap', got {self.inside!r}")
        if not 0 < float(self.min_overlap) <= 1:
            problems.append(f"min_overlap must be in (0, 1], got {self.min_overlap!r}")
        if self.assign not in ("all", "best"):
            problems.append(f"assign must be 'all' or 'best', got {self.assign!r}")
        if not self.name or self.name in ("image", "cell", "class", "n_counted"):
            problems.append(f"name {self.name!r} is empty or clashes with an output column")
        if problems:
            raise ValueError("FlagRule: " + "; ".join(problems))

    def describe(self) -> str:
        op = ">=" if self.inclusive else ">"
        where = "per image" if self.parent is None else (
            f"per {'/'.join(self.parent)} ({self.inside} inside"
            + (f", >= {self.min_overlap:g} of the area" if self.inside == "overlap" else "") + ")")
        return f"{self.name}: {'/'.join(self.count)} {where} {op} {self.threshold:g}"


def _inside_share(ch: pd.DataFrame, pa: pd.DataFrame, how: str, min_overlap: float) -> np.ndarray:
    """Per (child, parent) pair row: share of the child inside the parent, 0 when not inside."""
    ix = (np.minimum(ch["x2"].to_numpy(), pa["x2"].to_numpy())
          - np.maximum(ch["x1"].to_numpy(), pa["x1"].to_numpy())).clip(min=0)
    iy = (np.minimum(ch["y2"].to_numpy(), pa["y2"].to_numpy())
          - np.maximum(ch["y1"].to_numpy(), pa["y1"].to_numpy())).clip(min=0)
    area = ch["area"].to_numpy()
    centre_in = ((pa["x1"].to_numpy() <= ch["cx"].to_numpy()) & (ch["cx"].to_numpy() <= pa["x2"].to_numpy())
                 & (pa["y1"].to_numpy() <= ch["cy"].to_numpy()) & (ch["cy"].to_numpy() <= pa["y2"].to_numpy()))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(area > 0, ix * iy / area, centre_in.astype(float))
    inside = centre_in if how == "centre" else ((share >= min_overlap) | ((area <= 0) & centre_in))
    # the share ranks parents for assign="best"; a centre-inside pair with no area share still ranks
    return np.where(inside, np.maximum(share, 1e-12), 0.0)


def flag(boxes: pd.DataFrame, rule: FlagRule, images: pd.DataFrame | None = None, *,
         class_col: str | None = None, groups: str | Sequence[str] = ()) -> pd.DataFrame:
    """Apply ``rule``: count objects per parent (or per image) and flag those above the threshold.

    Per image (``rule.parent is None``): one row per image ``image, groups..., n_counted,
    <rule.name>``. Per parent: one row per parent box ``image, groups..., cell, class,
    x1..y2, n_counted, <rule.name>`` (parents without objects get 0). ``attrs["rule"]``
    holds :meth:`FlagRule.describe`.
    """
    c = cells(boxes, class_col=class_col)
    _warn_absent(c, "rule", dict.fromkeys(rule.count + (rule.parent or ())))
    groups = _names(groups)
    table = _image_table(images, c, groups)
    children = c[c["class"].isin(rule.count)]
    op = np.greater_equal if rule.inclusive else np.greater
    if rule.parent is None:
        out = table.copy()
        out["n_counted"] = children["image"].value_counts().reindex(table["image"], fill_value=0).astype(int).to_numpy()
        out[rule.name] = op(out["n_counted"].to_numpy(), rule.threshold)
        out.attrs["rule"] = rule.describe()
        return out
    parents = c[c["class"].isin(rule.parent)]
    pairs = children.merge(parents, on="image", suffixes=("", "_p"))
    pairs = pairs[pairs["cell"] != pairs["cell_p"]]
    pa = pairs[[f"{k}_p" for k in _COORDS]].set_axis(list(_COORDS), axis=1)
    share = _inside_share(pairs, pa, rule.inside, rule.min_overlap)
    pairs = pairs.assign(share=share)[share > 0]
    if rule.assign == "best" and len(pairs):
        # stable sort by share, descending: ties keep the earlier parent row
        pairs = pairs.sort_values(["cell", "share", "cell_p"], ascending=[True, False, True], kind="stable")
        pairs = pairs.drop_duplicates("cell", keep="first")
    n = pairs["cell_p"].value_counts()
    out = parents[["image", "cell", "class", *_COORDS]].merge(table, on="image", how="left")
    out = out[["image", *groups, "cell", "class", *_COORDS]].copy()
    out["n_counted"] = out["cell"].map(n).fillna(0).astype(int).to_numpy()
    out[rule.name] = op(out["n_counted"].to_numpy(), rule.threshold)
    out.attrs["rule"] = rule.describe()
    return out.reset_index(drop=True)
