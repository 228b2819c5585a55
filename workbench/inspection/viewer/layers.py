"""napari box layers: box <-> rectangle conversion, layer styling, image display range, layer building.

The pure parts (conversion, styling, contrast limits) need no display and are tested without
one; :func:`new_box_layer` and :func:`update_box_layer` import napari when called.

Coordinates. Boxes are ``x1 y1 x2 y2`` in pixel-edge coordinates (pixel 0 spans 0..1, as
COCO and the canonical labels). napari draws pixel ``i`` centred on ``i`` and orders
coordinates ``(row, col)``; the box layers are translated by ``(-0.5, -0.5)`` so their data
are exactly the box coordinates and boxes sit on the pixel edges they name.

Exact round trip. napari stores shape vertices as float32. Each box layer keeps the
float64 box in its features (``x1 .. y2``); reading a layer back returns that original for
every shape whose vertices still equal it in float32, and the vertex extent for shapes a
user moved, resized or drew (float32 precision, ~1e-4 px on a 1000 px image).

Readable text. Box text is drawn in the box's colour, darkened on a pale image (a sky-blue TP
label on a pale blood smear) or lightened on a dark one (fluorescence) until its contrast with
the image's median colour reaches WCAG's 4.5:1 (:func:`readable_on`); napari text has no
outline or background to rely on instead.

Responsiveness: box layers are created once and updated in place when the image changes
(see ``benchmarks/bench_viewer.py`` for the numbers against one ``add_shapes`` call per
box and against re-creating the layers); in dense images only error boxes carry text.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.inspection.hardcases import DISPLAY_COLOURS, text_shown

__all__ = ["BOX", "EDITED_COLOUR", "box_layer_style", "boxes_to_rectangles", "contrast_limits", "contrast_ratio",
           "edge_width_for", "hex_colour", "image_background", "image_layer_kwargs", "layer_boxes", "new_box_layer",
           "readable_on", "rectangles_to_boxes", "rgba", "update_box_layer"]

BOX = ["x1", "y1", "x2", "y2"]
EDITED_COLOUR = (240, 228, 66)  # Okabe-Ito yellow: boxes added or changed in this session

# ----------------------------------------------------------------------------- pure conversion

def boxes_to_rectangles(boxes: pd.DataFrame | np.ndarray) -> np.ndarray:
    """``(N, 4)`` x1 y1 x2 y2 boxes (or a table with those columns) -> ``(N, 4, 2)`` napari
    rectangles, vertices ``(row, col)``: top-left, top-right, bottom-right, bottom-left."""
    xy = boxes[BOX].to_numpy(dtype=float) if isinstance(boxes, pd.DataFrame) else np.asarray(boxes, dtype=float)
    xy = xy.reshape(-1, 4)
    x1, y1, x2, y2 = xy.T
    return np.stack([np.column_stack([y1, x1]), np.column_stack([y1, x2]),
                     np.column_stack([y2, x2]), np.column_stack([y2, x1])], axis=1)


def rectangles_to_boxes(data: Sequence[np.ndarray] | np.ndarray, *,
                        originals: np.ndarray | None = None) -> np.ndarray:
    """napari shape vertices (any shape type, ``(row, col)``) -> ``(N, 4)`` x1 y1 x2 y2.

    Each shape becomes its axis-aligned extent. ``originals`` (``(N, 4)`` float64, NaN for
    unknown) are returned instead where the vertices equal them in float32, which makes
    boxes -> napari -> boxes exact although napari keeps float32 vertices.
    """
    if len(data) == 0:
        return np.zeros((0, 4))
    ext = np.array([[v[:, -1].min(), v[:, -2].min(), v[:, -1].max(), v[:, -2].max()]
                    for v in (np.asarray(d, dtype=float) for d in data)], dtype=float)
    if originals is None:
        return ext
    orig = np.asarray(originals, dtype=float).reshape(-1, 4)
    if len(orig) != len(ext):
        raise ValueError(f"{len(orig)} original boxes for {len(ext)} shapes")
    with np.errstate(invalid="ignore", over="ignore"):
        same = np.all(orig.astype(np.float32) == ext.astype(np.float32), axis=1) & np.isfinite(orig).all(axis=1)
    return np.where(same[:, None], orig, ext)


def rgba(rgb: tuple[int, int, int]) -> np.ndarray:
    """An RGB colour (0-255) as napari's RGBA floats (0-1, opaque)."""
    return np.array([*rgb, 255], dtype=float) / 255.0


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """An RGB colour (0-255) as ``#rrggbb`` (napari text colours, Qt rich text)."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _colour_of(display: str) -> tuple[int, int, int]:
    return EDITED_COLOUR if display == "edited" else DISPLAY_COLOURS.get(display, DISPLAY_COLOURS["ignored"])


def _luminance(rgb: Sequence[float]) -> float:
    """WCAG relative luminance of an sRGB colour (0-255)."""
    c = np.asarray(rgb, dtype=float)[:3] / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio of two RGB colours (0-255): 1 (same) .. 21 (black on white)."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def readable_on(rgb: tuple[int, int, int], background: Sequence[float], *,
                ratio: float = 4.5) -> tuple[int, int, int]:
    """``rgb`` mixed towards black (on a light background) or white (on a dark one) in the
    smallest of 20 steps that reaches ``ratio`` contrast with ``background``; the hue stays."""
    towards = 0.0 if contrast_ratio((0, 0, 0), background) >= contrast_ratio((255, 255, 255), background) else 255.0
    c = np.asarray(rgb, dtype=float)
    for t in np.linspace(0.0, 1.0, 21):
        mixed = tuple(int(round(v)) for v in c + (towards - c) * t)
        if contrast_ratio(mixed, background) >= ratio:
            break
    return mixed


def image_background(arr: np.ndarray, contrast: Sequence[float] | None = None) -> tuple[int, int, int]:
    """The median colour of an image as displayed (scaled by the ``contrast`` limits, default
    :func:`contrast_limits`), RGB 0-255: what box text has to stand out against."""
    arr = np.asarray(arr)
    data = arr[..., :3] if arr.ndim == 3 else arr[..., None]
    lo, hi = contrast if contrast is not None else contrast_limits(arr)
    step = max(1, int(np.sqrt(data.shape[0] * data.shape[1] / 250_000)))  # ~250k pixels are plenty
    sample = data[::step, ::step].reshape(-1, data.shape[-1]).astype(float)
    med = np.clip((np.median(sample, axis=0) - lo) / (hi - lo) * 255.0, 0, 255)
    med = np.repeat(med, 3) if med.size == 1 else med
    return tuple(int(round(v)) for v in med)


def box_layer_style(boxes: pd.DataFrame, *, text: str = "auto",
                    background: Sequence[float] | None = None) -> dict[str, Any]:
    """Data, features, edge colours and text of a box layer (pure; no napari needed).

    ``boxes`` has class, x1..y2, and optionally display (colour role), label (text) and
    score. ``text``: ``"all"``, ``"errors"`` (boxes other than TP), ``"none"`` or ``"auto"``
    (all up to :data:`TEXT_ALL_MAX` boxes, else errors). ``background`` (the image's median
    colour, :func:`image_background`): text colours are made readable on it (:func:`readable_on`).
    """
    n = len(boxes)
    display = (boxes["display"].astype(str) if "display" in boxes.columns
               else pd.Series(["gt_tp"] * n, index=boxes.index)).to_numpy(dtype=object)
    label = (boxes["label"].astype(str) if "label" in boxes.columns
             else boxes["class"].astype(str)).to_numpy(dtype=object)
    shown = text_shown(display, text)
    colours = [_colour_of(d) for d in display]
    features = pd.DataFrame({
        "class": boxes["class"].astype(str).to_numpy(dtype=object),
        "score": boxes["score"].to_numpy(dtype=float) if "score" in boxes.columns else np.full(n, np.nan),
        "display": display, "label": label,
        "text": np.where(shown, label, ""),
        # object dtype also when empty: a float column would refuse the string default of a drawn box
        "text_colour": np.array([hex_colour(c if background is None else readable_on(c, background))
                                 for c in colours], dtype=object),
        **{c: boxes[c].to_numpy(dtype=float) for c in BOX}})
    return {"data": boxes_to_rectangles(boxes), "features": features,
            "edge_color": np.array([rgba(c) for c in colours]).reshape(-1, 4)}


def layer_boxes(layer: Any) -> pd.DataFrame:
    """The boxes of a napari Shapes layer: class, x1..y2 plus its other features.

    Unchanged shapes give back their original float64 coordinates exactly; shapes whose
    extent changed (moved, resized, drawn) are marked ``display = "edited"``.
    """
    feats = layer.features.reset_index(drop=True)
    n = len(layer.data)
    orig = feats[BOX].to_numpy(dtype=float) if set(BOX) <= set(feats.columns) else np.full((n, 4), np.nan)
    xyxy = rectangles_to_boxes(layer.data, originals=orig)
    out = feats.copy()
    if "class" not in out.columns:
        out["class"] = ""
    moved = ~np.all(xyxy == orig, axis=1)  # NaN originals (drawn boxes) count as moved
    out[BOX] = xyxy
    if "display" in out.columns:
        out.loc[moved, "display"] = "edited"
    return out


# ----------------------------------------------------------------------------- images

def contrast_limits(arr: np.ndarray, *, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Display range: full range for 8-bit RGB, else the ``low``..``high`` percentiles."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and arr.ndim == 3:
        return 0.0, 255.0
    data = arr[..., :3] if arr.ndim == 3 else arr
    lo, hi = (float(v) for v in np.percentile(data, [low, high]))
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def image_layer_kwargs(arr: np.ndarray, *, low: float = 0.5, high: float = 99.5) -> dict[str, Any]:
    """``add_image`` arguments: grey or RGB, any bit depth, alpha dropped, percentile limits."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]  # drop alpha
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected a grey (H, W) or colour (H, W, 3/4) image, got shape {arr.shape}")
    rgb = arr.ndim == 3
    return {"data": arr, "rgb": rgb, "contrast_limits": list(contrast_limits(arr, low=low, high=high))}


# ----------------------------------------------------------------------------- napari layers

def _box_shapes_class():
    """A Shapes layer whose text placement is linear in the number of shapes.

    napari 0.9's ``Shapes._view_text_coords`` rebuilds the list of all vertices once per
    shape in view (quadratic: 1.4 s of 2.6 s adding 700 labelled boxes). This subclass reads
    that list once, and can stay read-only (``read_only``; napari would re-enable editing).
    Everything else, including the type string and key bindings, is napari's Shapes.
    """
    from napari.layers import Shapes

    class BoxShapes(Shapes):
        class_keymap = Shapes.class_keymap  # keep the Shapes key bindings (copied at subclassing)
        read_only = False  # napari's layer controls re-enable editing; this keeps it off

        @property
        def editable(self) -> bool:
            return Shapes.editable.fget(self)

        @editable.setter
        def editable(self, value: bool) -> None:
            Shapes.editable.fset(self, bool(value) and not self.read_only)

        @property
        def _type_string(self) -> str:
            return "shapes"

        @property
        def _view_text_coords(self):
            try:
                data = self._data_view.data
                shown = self._slice_input.displayed
                coords = [data[i][:, shown] for i in self._view_indices]
                return self.text.compute_text_coords(coords, self._slice_input.ndisplay, self._slice_input.order)
            except AttributeError:  # a napari without these internals: its own (slower) code
                return super()._view_text_coords

    return BoxShapes


_BOX_SHAPES = None


def new_box_layer(boxes: pd.DataFrame, *, name: str, edge_width: float, text: str = "auto",
                  editable: bool = True, text_size: int = 8, anchor: str = "upper_left",
                  background: Sequence[float] | None = None) -> Any:
    """A napari Shapes layer of rectangles for ``boxes`` (see :func:`box_layer_style`)."""
    global _BOX_SHAPES
    if _BOX_SHAPES is None:
        _BOX_SHAPES = _box_shapes_class()
    style = box_layer_style(boxes, text=text, background=background)
    layer = _BOX_SHAPES(
        list(style["data"]), shape_type="rectangle", features=style["features"],
        edge_color=style["edge_color"] if len(boxes) else "white", face_color="transparent",
        edge_width=edge_width, name=name, translate=(-0.5, -0.5), opacity=1.0,
        text={"string": "{text}", "size": text_size, "color": {"feature": "text_colour"}, "anchor": anchor})
    layer.read_only = not editable
    layer.editable = editable
    layer.locked = True  # no deleting the layer from the layer list (the inspector owns it)
    return layer


def update_box_layer(layer: Any, boxes: pd.DataFrame, *, edge_width: float, text: str = "auto",
                     background: Sequence[float] | None = None) -> None:
    """Replace a box layer's shapes in place (keeps the layer, its visual and its controls)."""
    style = box_layer_style(boxes, text=text, background=background)
    read_only = getattr(layer, "read_only", False)
    editable = layer.editable
    # one redraw for all the property changes below (napari private API, guarded)
    block = getattr(layer, "_block_refresh", contextlib.nullcontext)
    with block():
        layer.read_only = False
        layer.editable = True  # napari refuses some changes on layers that are not editable
        layer.selected_data = set()
        layer.data = (list(style["data"]), ["rectangle"] * len(boxes)) if len(boxes) else []
        layer.features = style["features"]
        if len(boxes):
            layer.edge_width = edge_width
            layer.edge_color = style["edge_color"]
        layer.read_only = read_only
        layer.editable = editable
    layer.refresh_text()
    layer.refresh()


def edge_width_for(shape: Sequence[int]) -> float:
    """Box outline width in image pixels: readable at full view, thin on small images."""
    return float(max(2.0, round(max(shape[:2]) / 350, 1)))
