"""Overlay images: positive, normal and classifier-corrected boxes drawn on the microscopy image.

Roles and colours (Okabe-Ito palette, distinguishable with the common colour-vision
deficiencies; override with ``colours=``):

* ``positive`` (class in ``positive``): vermillion ``#D55E00``
* ``normal`` (class in ``normal``): sky blue ``#56B4E9``
* ``corrected``: boxes the classifier relabelled, whatever their class: bluish green
  ``#009E73``. A box is corrected when the table's ``changed`` column is true, or, without
  that column, when ``det_class`` and ``final_class`` differ.
* ``other`` (any other class): grey ``#999999``, listed in legends only when present.
* ``missed``: ground-truth cells no detection found, for error galleries: rows whose
  ``missed`` column is true (add the GT rows to the table); black, listed only when present.

Drawing order is other, normal, positive, corrected, missed, so the rarer and more important boxes
stay on top. The class used is ``class_col`` (default ``final_class`` when present, else
``class``), as in :mod:`workbench.analysis.stats`; the image column is ``image`` or ``image_id``.

:func:`draw_overlay` returns an RGB uint8 array (OpenCV drawing, no anti-aliasing, so box
pixels have exactly the role colour); :func:`overlay_figure` and :func:`overlay_gallery`
return matplotlib Figures with a legend. Grey and 16-bit/float images are display-scaled
with :func:`workbench.core.images.to_uint8` (a percentile stretch by default); the caller's array
is never modified.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from workbench.core.images import Normalisation, to_uint8

__all__ = ["COLOURS", "ROLES", "box_roles", "display_rgb", "draw_overlay", "error_counts",
           "overlay_figure", "overlay_gallery", "worst_images"]

ROLES = ("other", "normal", "positive", "corrected", "missed")  # drawing order: later on top
COLOURS: dict[str, tuple[int, int, int]] = {
    "positive": (213, 94, 0),  # Okabe-Ito vermillion
    "normal": (86, 180, 233),  # Okabe-Ito sky blue
    "corrected": (0, 158, 115),  # Okabe-Ito bluish green
    "other": (153, 153, 153),
    "missed": (0, 0, 0),
}
_LABELS = {"positive": "positive", "normal": "normal", "corrected": "corrected by classifier",
           "other": "other classes", "missed": "missed (GT, not detected)"}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def display_rgb(arr: np.ndarray, *, norm: Normalisation = Normalisation()) -> np.ndarray:
    """An RGB uint8 copy of ``arr`` for display: grey is repeated on three channels, alpha
    dropped, 16-bit/float mapped to 8 bits with ``norm``."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)) or arr.size == 0:
        raise ValueError(f"expected an (H, W) or (H, W, 1-4) image array, got shape {arr.shape}")
    arr8, _ = to_uint8(arr, norm)
    if arr8.ndim == 2:
        arr8 = np.repeat(arr8[..., None], 3, axis=2)
    return np.ascontiguousarray(arr8, dtype=np.uint8).copy()


def _truthy(values: pd.Series, name: str) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy()
    text = values.astype("string").fillna("").str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())[:10].tolist()
        raise ValueError(f"column {name!r} must be true/false; rows {rows} have "
                         f"{sorted(set(values[bad].astype(str)))[:5]}")
    return text.isin(_TRUE).to_numpy()


def box_roles(boxes: pd.DataFrame, *, positive: str | Sequence[str], normal: str | Sequence[str],
              class_col: str | None = None) -> pd.Series:
    """The role of every box (``positive``, ``normal``, ``corrected``, ``other``, ``missed``), same index."""
    positive, normal = _names(positive), _names(normal)
    both = sorted(set(positive) & set(normal))
    if both:
        raise ValueError(f"class(es) {both} are both positive and normal")
    col = class_col or ("final_class" if "final_class" in boxes.columns else "class")
    if col not in boxes.columns:
        raise ValueError(f"boxes table lacks the class column {col!r}; has {list(boxes.columns)}")
    cls = boxes[col].astype("string").fillna("")
    role = np.where(cls.isin(positive), "positive", np.where(cls.isin(normal), "normal", "other"))
    if "changed" in boxes.columns:
        corrected = _truthy(boxes["changed"], "changed")
    elif {"det_class", "final_class"} <= set(boxes.columns):
        corrected = (boxes["det_class"].astype("string").fillna("")
                     != boxes["final_class"].astype("string").fillna("")).to_numpy()
    else:
        corrected = np.zeros(len(boxes), dtype=bool)
    role = np.where(corrected, "corrected", role)
    if "missed" in boxes.columns:
        role = np.where(_truthy(boxes["missed"], "missed"), "missed", role)
    return pd.Series(role, index=boxes.index, name="role")


def _pixel_corners(boxes: pd.DataFrame, width: int, height: int) -> np.ndarray:
    xy = boxes[["x1", "y1", "x2", "y2"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise ValueError(f"boxes with missing or non-numeric coordinates at rows {np.flatnonzero(bad)[:10].tolist()}")
    # x2/y2 are the far edges; the last pixel inside is one less
    p = np.rint(xy).astype(np.int64)
    p[:, 2:] = np.maximum(p[:, 2:] - 1, p[:, :2])
    p[:, [0, 2]] = p[:, [0, 2]].clip(0, width - 1)
    p[:, [1, 3]] = p[:, [1, 3]].clip(0, height - 1)
    return p


def _default_thickness(shape: tuple[int, ...]) -> int:
    return max(1, int(round(max(shape[:2]) / 400)))


def _colours(colours: Mapping[str, tuple[int, int, int]] | None) -> dict[str, tuple[int, int, int]]:
    out = dict(COLOURS)
    for role, c in (colours or {}).items():
        if role not in COLOURS:
            raise ValueError(f"unknown role {role!r} in colours; roles are {list(COLOURS)}")
        out[role] = tuple(int(v) for v in c)
    return out


def draw_overlay(arr: np.ndarray, boxes: pd.DataFrame, *, positive: str | Sequence[str],
                 normal: str | Sequence[str], class_col: str | None = None,
                 colours: Mapping[str, tuple[int, int, int]] | None = None, thickness: int | None = None,
                 legend: bool = False, norm: Normalisation = Normalisation()) -> np.ndarray:
    """Draw the boxes of ONE image (pixels of ``arr``) by role; returns a new RGB uint8 array.

    ``thickness`` defaults to max(1, round(longer side / 400)) pixels. ``legend=True`` adds a
    small key in the top-left corner (it covers image pixels; figures carry their own legend).
    """
    img = display_rgb(arr, norm=norm)
    h, w = img.shape[:2]
    cols = _colours(colours)
    roles = box_roles(boxes, positive=positive, normal=normal, class_col=class_col).to_numpy()
    corners = _pixel_corners(boxes, w, h)
    t = thickness or _default_thickness(img.shape)
    for role in ROLES:
        for x1, y1, x2, y2 in corners[roles == role]:
            cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), cols[role], t, lineType=cv2.LINE_8)
    if legend:
        _draw_key(img, [r for r in ("positive", "normal", "corrected", "other")
                        if r != "other" or (roles == "other").any()], cols)
    return img


def _draw_key(img: np.ndarray, roles: list[str], cols: dict[str, tuple[int, int, int]]) -> None:
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    line = int(round(22 * scale / 0.5))
    size = cv2.getTextSize("corrected by classifier", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0]
    box_w, box_h = size[0] + line + 12, line * len(roles) + 8
    cv2.rectangle(img, (0, 0), (min(w - 1, box_w), min(h - 1, box_h)), (255, 255, 255), -1)
    for i, role in enumerate(roles):
        y = 4 + i * line
        cv2.rectangle(img, (4, y + 2), (4 + line - 6, y + line - 4), cols[role], -1)
        cv2.putText(img, _LABELS[role], (line + 4, y + line - 6), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)


def _legend(fig: Figure, role_counts: pd.Series, positive: list[str], normal: list[str],
            cols: dict[str, tuple[int, int, int]]) -> None:
    text = {"positive": f"positive: {', '.join(positive)}", "normal": f"normal: {', '.join(normal)}",
            "corrected": _LABELS["corrected"], "other": _LABELS["other"], "missed": _LABELS["missed"]}
    shown = [r for r in ("positive", "normal", "corrected", "other", "missed")
             if r not in ("other", "missed") or role_counts.get(r, 0)]
    handles = [Patch(facecolor="none", edgecolor=np.array(cols[r]) / 255, linewidth=2) for r in shown]
    labels = [f"{text[r]} (n={int(role_counts.get(r, 0))})" for r in shown]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(shown), 2), fontsize=8)


def overlay_figure(arr: np.ndarray, boxes: pd.DataFrame, *, positive: str | Sequence[str],
                   normal: str | Sequence[str], class_col: str | None = None,
                   colours: Mapping[str, tuple[int, int, int]] | None = None, thickness: int | None = None,
                   title: str = "", size: float = 6.0, norm: Normalisation = Normalisation()) -> Figure:
    """One image with its boxes by role and a legend with the number of boxes per role."""
    drawn = draw_overlay(arr, boxes, positive=positive, normal=normal, class_col=class_col,
                         colours=colours, thickness=thickness, norm=norm)
    h, w = drawn.shape[:2]
    fig = Figure(figsize=(size, size * h / w + 0.8), layout="constrained")
    ax = fig.subplots()
    ax.imshow(drawn, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    counts = box_roles(boxes, positive=positive, normal=normal, class_col=class_col).value_counts()
    _legend(fig, counts, _names(positive), _names(normal), _colours(colours))
    return fig


def _image_col(boxes: pd.DataFrame) -> str:
    for c in ("image", "image_id"):
        if c in boxes.columns:
            return c
    raise ValueError(f"boxes table needs an 'image' or 'image_id' column, has {list(boxes.columns)}")


def overlay_gallery(images: Mapping[str, np.ndarray], boxes: pd.DataFrame, *,
                    positive: str | Sequence[str], normal: str | Sequence[str],
                    image_ids: Sequence[str] | None = None, titles: Mapping[str, str] | None = None,
                    class_col: str | None = None, colours: Mapping[str, tuple[int, int, int]] | None = None,
                    ncols: int = 3, panel_size: float = 4.0,
                    norm: Normalisation = Normalisation()) -> Figure:
    """A grid of overlays for several images (e.g. the :func:`worst_images`), one legend.

    ``images`` maps image id -> array (see :func:`read_images`); ``boxes`` holds the boxes of
    all of them; ``image_ids`` picks and orders the panels (default: ``images`` order);
    ``titles`` maps id -> panel title (default: the id).
    """
    ids = list(image_ids) if image_ids is not None else list(images)
    missing = [i for i in ids if i not in images]
    if missing:
        raise ValueError(f"no image array given for {missing[:10]}")
    if not ids:
        raise ValueError("no images to show")
    col = _image_col(boxes)
    key = boxes[col].astype("string").fillna("")
    n = len(ids)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    first = np.asarray(images[ids[0]])
    aspect = first.shape[0] / first.shape[1]
    fig = Figure(figsize=(panel_size * ncols, panel_size * aspect * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    counts = pd.Series(dtype=int)
    for ax, image_id in zip(axes, ids):
        sub = boxes[(key == str(image_id)).to_numpy()]
        ax.imshow(draw_overlay(images[image_id], sub, positive=positive, normal=normal, class_col=class_col,
                               colours=colours, norm=norm), interpolation="nearest")
        ax.set_title((titles or {}).get(image_id, str(image_id)), fontsize=8)
        counts = counts.add(box_roles(sub, positive=positive, normal=normal, class_col=class_col)
                            .value_counts(), fill_value=0)
    _legend(fig, counts, _names(positive), _names(normal), _colours(colours))
    return fig


def error_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Errors per image: ``image, fp, fn, errors`` from a match table of
    :func:`workbench.evaluation.metrics.match` (column ``outcome``), or ``image, changed, errors`` from a
    cascade table (column ``changed``: boxes the classifier relabelled)."""
    col = _image_col(table)
    img = table[col].astype("string").fillna("").rename("image")
    if "outcome" in table.columns:
        out = pd.DataFrame({"image": img, "fp": (table["outcome"] == "fp").to_numpy(),
                            "fn": (table["outcome"] == "fn").to_numpy()})
        out = out.groupby("image", sort=True)[["fp", "fn"]].sum().astype(int).reset_index()
        out["errors"] = out["fp"] + out["fn"]
    elif "changed" in table.columns:
        out = pd.DataFrame({"image": img, "changed": _truthy(table["changed"], "changed")})
        out = out.groupby("image", sort=True)[["changed"]].sum().astype(int).reset_index()
        out["errors"] = out["changed"]
    else:
        raise ValueError("need a match table (column 'outcome') or a cascade table (column 'changed'), "
                         f"got columns {list(table.columns)}")
    return out.sort_values(["errors", "image"], ascending=[False, True], kind="stable").reset_index(drop=True)


def worst_images(table: pd.DataFrame, *, n: int = 6) -> list[str]:
    """Up to ``n`` images with the most errors (see :func:`error_counts`), only those with any."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    e = error_counts(table)
    return [str(i) for i in e.loc[e["errors"] > 0, "image"].head(n)]
