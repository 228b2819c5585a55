"""napari inspection of hard cases: image, GT and predicted boxes coloured by outcome, editable labels.

Import this module only when napari is wanted (it imports napari and Qt lazily, but the
functions here exist for a viewer). The pure parts (box <-> napari rectangle conversion,
layer styling, contrast limits) need no display and are tested without one.

Coordinates. Boxes are ``x1 y1 x2 y2`` in pixel-edge coordinates (pixel 0 spans 0..1, as
COCO and the canonical labels). napari draws pixel ``i`` centred on ``i`` and orders
coordinates ``(row, col)``; the box layers are translated by ``(-0.5, -0.5)`` so their data
are exactly the box coordinates and boxes sit on the pixel edges they name.

Exact round trip. napari stores shape vertices as float32. Each box layer keeps the
float64 box in its features (``x1 .. y2``); reading a layer back returns that original for
every shape whose vertices still equal it in float32, and the vertex extent for shapes a
user moved, resized or drew (float32 precision, ~1e-4 px on a 1000 px image).

Queue. :class:`Inspector` shows a :class:`workbench.inspection.hardcases.HardCaseQueue` one image at a
time: keys ``n`` / ``Shift-N`` (and PageDown / PageUp) go to the next / previous image, a
dock lists the image's metrics, a legend, a class chooser (new boxes and "relabel
selected"), "accept selected predictions" (copies predicted boxes into the labels) and
"save version". Edits made on an image are kept while browsing and written together by
:meth:`Inspector.save` as a new label version (:mod:`workbench.inspection.corrections`).

Responsiveness: box layers are created once and updated in place when the image changes
(see ``benchmarks/bench_viewer.py`` for the numbers against one ``add_shapes`` call per
box and against re-creating the layers); in dense images only error boxes carry text.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.inspection.hardcases import (
    DISPLAY_COLOURS, DISPLAY_LABELS, HardCaseQueue, build_queue, case_pixels, read_display_image, requeue, step, text_shown)

__all__ = ["EDITED_COLOUR", "Inspector", "NoDisplayError", "boxes_to_rectangles", "box_layer_style",
           "contrast_limits", "has_display", "image_layer_kwargs", "layer_boxes", "open_image",
           "open_queue", "read_display_image", "rectangles_to_boxes", "require_display", "screenshot"]

BOX = ["x1", "y1", "x2", "y2"]
EDITED_COLOUR = (240, 228, 66)  # Okabe-Ito yellow: boxes added or changed in this session
GT_LAYER = "labels (editable)"
PRED_LAYER = "predictions"
IMAGE_LAYER = "image"
NEXT_KEYS = ("n", "PageDown")
PREVIOUS_KEYS = ("Shift-N", "PageUp")


class NoDisplayError(RuntimeError):
    """napari needs a display (it cannot render offscreen)."""


# ----------------------------------------------------------------------------- display

def has_display() -> bool:
    """Whether a window can be opened (X11/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def require_display() -> None:
    """Raise :class:`NoDisplayError` with what to do instead when no window can open."""
    if not has_display():
        raise NoDisplayError(
            "napari needs a display and none is available (DISPLAY/WAYLAND_DISPLAY unset). "
            "Run on a desktop session, under a virtual display (xvfb-run -a -s \"-screen 0 "
            "1280x1024x24\" python -m workbench inspect ...), or browse the same queue without Qt "
            "in JupyterLab: notebooks/06_inspect_hard_cases.ipynb (workbench.inspection.gallery)")


def _napari():
    """Import napari for a window; opencv/ultralytics point Qt at their own plugins first."""
    require_display()
    os.environ.pop("QT_QPA_PLATFORM_PLUGIN_PATH", None)
    import napari

    return napari


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


def _rgba(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array([*rgb, 255], dtype=float) / 255.0


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _colour_of(display: str) -> tuple[int, int, int]:
    return EDITED_COLOUR if display == "edited" else DISPLAY_COLOURS.get(display, DISPLAY_COLOURS["ignored"])


def box_layer_style(boxes: pd.DataFrame, *, text: str = "auto") -> dict[str, Any]:
    """Data, features, edge colours and text of a box layer (pure; no napari needed).

    ``boxes`` has class, x1..y2, and optionally display (colour role), label (text) and
    score. ``text``: ``"all"``, ``"errors"`` (boxes other than TP), ``"none"`` or ``"auto"``
    (all up to :data:`TEXT_ALL_MAX` boxes, else errors).
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
        "text_colour": [_hex(c) for c in colours],
        **{c: boxes[c].to_numpy(dtype=float) for c in BOX}})
    return {"data": boxes_to_rectangles(boxes), "features": features,
            "edge_color": np.array([_rgba(c) for c in colours]).reshape(-1, 4)}


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
                  editable: bool = True, text_size: int = 8, anchor: str = "upper_left") -> Any:
    """A napari Shapes layer of rectangles for ``boxes`` (see :func:`box_layer_style`)."""
    global _BOX_SHAPES
    if _BOX_SHAPES is None:
        _BOX_SHAPES = _box_shapes_class()
    style = box_layer_style(boxes, text=text)
    layer = _BOX_SHAPES(
        list(style["data"]), shape_type="rectangle", features=style["features"],
        edge_color=style["edge_color"] if len(boxes) else "white", face_color="transparent",
        edge_width=edge_width, name=name, translate=(-0.5, -0.5), opacity=1.0,
        text={"string": "{text}", "size": text_size, "color": {"feature": "text_colour"}, "anchor": anchor})
    layer.read_only = not editable
    layer.editable = editable
    layer.locked = True  # no deleting the layer from the layer list (the inspector owns it)
    return layer


def update_box_layer(layer: Any, boxes: pd.DataFrame, *, edge_width: float, text: str = "auto") -> None:
    """Replace a box layer's shapes in place (keeps the layer, its visual and its controls)."""
    style = box_layer_style(boxes, text=text)
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


# ----------------------------------------------------------------------------- inspector

class Inspector:
    """A napari viewer browsing a hard-case queue, with label editing and saving.

    ``images`` overrides where pixels come from (image id -> array or path); by default the
    queue's :class:`ImageRef` (original file when it exists). ``dataset`` (default: the
    queue's canonical GT folder) is where :meth:`save` writes label versions;
    ``reload(version)`` rebuilds the queue after a save (default: rebuilt from the new
    labels and the same predictions). The layers are made once and their contents replaced
    when the image changes.
    """

    def __init__(self, queue: HardCaseQueue, *, viewer: Any = None, show: bool = True,
                 images: Mapping[str, np.ndarray | str | Path] | None = None,
                 dataset: str | Path | None = None, original: bool = True, text: str = "auto",
                 start: int | str = 0, dock: bool = True,
                 reload: Callable[[str], HardCaseQueue] | None = None):
        if len(queue) == 0:
            raise ValueError("the hard-case queue is empty (no images to inspect)")
        napari = _napari()
        self.queue = queue
        self.viewer = viewer if viewer is not None else napari.Viewer(show=show, title="Cell Workbench: hard cases")
        self.images = dict(images or {})
        gt_source = queue.source.get("gt")
        self.dataset = Path(dataset) if dataset is not None else (
            Path(gt_source) if gt_source and Path(gt_source).is_dir() else None)
        self.version = queue.source.get("version") or None
        self.original, self.text = original, text
        self.reload = reload
        self.pending: dict[str, pd.DataFrame] = {}  # image -> edited boxes not yet saved
        self.index = -1
        self.current_class = queue.classes[0] if queue.classes else ""
        self.image_layer = self.gt_layer = self.pred_layer = None
        self._image_layers: dict[bool, Any] = {}
        self.dock = None
        for key in NEXT_KEYS:
            self.viewer.bind_key(key, lambda _v: self.next(), overwrite=True)
        for key in PREVIOUS_KEYS:
            self.viewer.bind_key(key, lambda _v: self.previous(), overwrite=True)
        if dock:
            self.dock = _Dock(self)
            self.viewer.window.add_dock_widget(self.dock.widget, name="hard case", area="right")
        self.show(start if isinstance(start, int) else queue.index_of(start))

    # -- navigation
    @property
    def image(self) -> str:
        return self.queue.images[self.index]

    def next(self) -> None:
        self.show(step(self.index, len(self.queue), +1))

    def previous(self) -> None:
        self.show(step(self.index, len(self.queue), -1))

    def show(self, index: int) -> None:
        """Show queue position ``index`` (keeps unsaved edits of the image it leaves)."""
        index = step(index, len(self.queue), 0)
        if self.gt_layer is not None and self.index >= 0:
            self._stash()
        self.index = index
        image = self.image
        arr = self._pixels(image)
        self._set_image(arr)
        width = self._edge_width = edge_width_for(arr.shape)
        gt = self.pending.get(image)
        gt = self.queue.gt_boxes(image) if gt is None else gt
        pred = self.queue.pred_boxes(image)
        if self.gt_layer is None:
            # prediction text under the box, label text above it: the two never overlap
            self.pred_layer = self.viewer.add_layer(new_box_layer(pred, name=PRED_LAYER, edge_width=width,
                                                                  text=self.text, editable=False,
                                                                  anchor="lower_left"))
            self.gt_layer = self.viewer.add_layer(new_box_layer(gt, name=GT_LAYER, edge_width=width,
                                                                text=self.text, editable=True))
        else:
            update_box_layer(self.pred_layer, pred, edge_width=width, text=self.text)
            update_box_layer(self.gt_layer, gt, edge_width=width, text=self.text)
        self._set_defaults()
        self.viewer.layers.selection.active = self.gt_layer
        self.viewer.reset_view()
        if self.dock is not None:
            self.dock.refresh()

    def _pixels(self, image: str) -> np.ndarray:
        return case_pixels(self.queue, self.images, image, original=self.original)

    def _set_image(self, arr: np.ndarray) -> None:
        # Layers are updated, never removed: removing layers next to an image crashed napari
        # 0.9 under Mesa's software OpenGL (xvfb). A colour and a grey layer take turns.
        kw = image_layer_kwargs(arr)
        rgb = kw["rgb"]
        layer = self._image_layers.get(rgb)
        if layer is None:
            layer = self.viewer.add_image(kw["data"], name=IMAGE_LAYER if rgb else f"{IMAGE_LAYER} (grey)",
                                          rgb=rgb, contrast_limits=kw["contrast_limits"])
            self.viewer.layers.move(self.viewer.layers.index(layer), 0)
            layer.locked = True
            self._image_layers[rgb] = layer
        else:
            layer.data = kw["data"]
            layer.reset_contrast_limits_range()
            layer.contrast_limits = kw["contrast_limits"]
        for key, other in self._image_layers.items():
            other.visible = key == rgb
        self.image_layer = layer

    def _set_defaults(self) -> None:
        """What a newly drawn box gets: the chosen class and the 'edited' colour."""
        layer = self.gt_layer
        layer.selected_data = set()
        layer.current_edge_color = _hex(EDITED_COLOUR)
        layer.feature_defaults = {"class": self.current_class, "score": np.nan, "display": "edited",
                                  "label": self.current_class, "text": self.current_class,
                                  "text_colour": _hex(EDITED_COLOUR),
                                  **{c: np.nan for c in BOX}}

    # -- editing
    def current_boxes(self) -> pd.DataFrame:
        """The labels layer's boxes now (class, x1..y2 and display)."""
        return layer_boxes(self.gt_layer)

    def _stash(self) -> None:
        from workbench.inspection.corrections import diff_boxes

        image = self.image
        now = self.current_boxes()
        base = self.queue.gt_boxes(image)
        if diff_boxes(base[["class", *BOX]], now[["class", *BOX]]).empty:
            self.pending.pop(image, None)
        else:
            self.pending[image] = now

    def set_class(self, cls: str) -> None:
        """Class for boxes drawn from now on; selected label boxes take it at once (as napari
        applies its current properties to a selection)."""
        if self.queue.classes and cls not in self.queue.classes:
            raise ValueError(f"class {cls!r} is not one of {self.queue.classes}")
        self.current_class = cls
        if self.dock is not None and self.dock.classes.currentText() != cls:
            self.dock.classes.blockSignals(True)  # the dock's chooser follows calls from code
            self.dock.classes.setCurrentText(cls)
            self.dock.classes.blockSignals(False)
        if self.gt_layer.selected_data:
            self.relabel_selected(cls)
        else:
            self._set_defaults()

    def relabel_selected(self, cls: str | None = None) -> int:
        """Give the selected label boxes class ``cls`` (default: the current class)."""
        cls = cls or self.current_class
        if self.queue.classes and cls not in self.queue.classes:
            raise ValueError(f"class {cls!r} is not one of {self.queue.classes}")
        layer = self.gt_layer
        sel = sorted(layer.selected_data)
        if not sel:
            return 0
        feats = layer.features.copy()
        feats.loc[sel, ["class", "label", "text"]] = cls
        feats.loc[sel, "display"] = "edited"
        feats.loc[sel, "text_colour"] = _hex(EDITED_COLOUR)
        colours = np.asarray(layer.edge_color).copy()
        colours[sel] = _rgba(EDITED_COLOUR)
        layer.selected_data = set()
        layer.features = feats
        layer.edge_color = colours
        layer.refresh_text()
        self._set_defaults()
        if self.dock is not None:
            self.dock.refresh()
        return len(sel)

    def accept_selected_predictions(self) -> int:
        """Copy the selected predicted boxes into the labels (their predicted class)."""
        sel = sorted(self.pred_layer.selected_data)
        if not sel:
            return 0
        preds = layer_boxes(self.pred_layer).iloc[sel]
        added = pd.DataFrame({"class": preds["class"].to_numpy(), **{c: preds[c].to_numpy() for c in BOX},
                              "display": "edited", "label": preds["class"].to_numpy()})
        boxes = pd.concat([self.current_boxes(), added], ignore_index=True)
        self.pred_layer.selected_data = set()
        update_box_layer(self.gt_layer, boxes, edge_width=self._edge_width, text=self.text)
        self._set_defaults()
        if self.dock is not None:
            self.dock.refresh()
        return len(sel)

    def edits(self) -> dict[str, pd.DataFrame]:
        """Every image's unsaved edited boxes (class, x1..y2), the shown image included."""
        self._stash()
        return {i: b[["class", *BOX]].reset_index(drop=True) for i, b in self.pending.items()}

    def save(self, note: str = ""):
        """Write all unsaved edits as a new label version; return it (None if nothing changed)."""
        from workbench.inspection import corrections

        if self.dataset is None:
            raise ValueError("no canonical dataset to save into: open the queue from a dataset folder "
                             "(hardcases.load_queue) or pass dataset=")
        edits = self.edits()
        if not edits:
            return None
        saved = corrections.save_version(self.dataset, edits, base=self.version or "latest", note=note)
        self.pending.clear()
        if saved is not None:
            self.version = saved.name
            image = self.image
            self.queue = (self.reload(saved.name) if self.reload is not None
                          else _requeue(self.queue, self.dataset, saved.name))
            self.index = -1  # nothing to stash: the edits are saved
            self.show(self.queue.index_of(image) if image in self.queue.images else 0)
        return saved

    def close(self) -> None:
        self.viewer.close()


def _requeue(queue: HardCaseQueue, dataset: Path, version: str) -> HardCaseQueue:
    """The queue rebuilt with the labels of ``version`` and the same predictions."""
    from workbench.inspection.corrections import read_version_boxes

    gt = read_version_boxes(dataset, version)
    q = requeue(queue, gt[gt["image"].isin(set(queue.images))])
    return HardCaseQueue(q.summary, q.gt, q.pred, q.iou_thr, q.score_thr, q.classes, q.refs,
                         {**q.source, "version": version}, q.pred_input)


class _Dock:
    """The dock: metrics of the shown image, legend, class chooser and action buttons."""

    ROWS = [("GT boxes", "n_gt"), ("predictions", "n_pred"), ("TP", "tp"), ("FN (missed)", "fn"),
            ("FP (spurious)", "fp"), ("wrong class", "misclassified"), ("changed by classifier", "changed"),
            ("precision", "precision"), ("recall", "recall")]

    def __init__(self, inspector: Inspector):
        from qtpy.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QTableWidget,
                                    QVBoxLayout, QWidget)

        self.inspector = inspector
        w = QWidget()
        lay = QVBoxLayout(w)
        self.title = QLabel()
        self.title.setWordWrap(True)
        lay.addWidget(self.title)
        self.table = QTableWidget(len(self.ROWS), 2)
        self.table.setHorizontalHeaderLabels(["metric", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.resizeRowsToContents()
        rows_height = sum(self.table.rowHeight(r) for r in range(len(self.ROWS)))
        self.table.setFixedHeight(rows_height + self.table.horizontalHeader().height() + 4)
        lay.addWidget(self.table)
        legend = "".join(f'<span style="color:{_hex(DISPLAY_COLOURS[k])}">&#9632;</span> {v}<br>'
                         for k, v in DISPLAY_LABELS.items())
        legend += f'<span style="color:{_hex(EDITED_COLOUR)}">&#9632;</span> edited (unsaved or new)'
        lay.addWidget(QLabel(legend))
        nav = QHBoxLayout()
        self.prev_button, self.next_button = QPushButton("< previous (Shift-N)"), QPushButton("next (n) >")
        self.prev_button.clicked.connect(lambda: inspector.previous())
        self.next_button.clicked.connect(lambda: inspector.next())
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        lay.addLayout(nav)
        self.classes = QComboBox()
        self.classes.addItems(list(inspector.queue.classes))
        self.classes.currentTextChanged.connect(lambda c: inspector.set_class(c) if c else None)
        lay.addWidget(QLabel("class for new / relabelled boxes:"))
        lay.addWidget(self.classes)
        self.relabel_button = QPushButton("relabel selected boxes")
        self.relabel_button.clicked.connect(lambda: inspector.relabel_selected())
        self.accept_button = QPushButton("accept selected predictions as labels")
        self.accept_button.clicked.connect(lambda: inspector.accept_selected_predictions())
        self.save_button = QPushButton("save corrections as a new label version")
        self.save_button.clicked.connect(self._save)
        for b in (self.relabel_button, self.accept_button, self.save_button):
            lay.addWidget(b)
        self.status = QLabel()
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.widget = w

    def _save(self) -> None:
        try:
            saved = self.inspector.save()
            self.status.setText(str(saved) if saved else "nothing to save")
        except ValueError as exc:
            self.status.setText(f"not saved: {exc}")

    def refresh(self) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        ins = self.inspector
        m = ins.queue.metrics_of(ins.image)
        self.title.setText(f"<b>{ins.index + 1} / {len(ins.queue)}</b>: {ins.image}")
        for r, (name, key) in enumerate(self.ROWS):
            v = m.get(key)
            text = "-" if v is None or (isinstance(v, float) and np.isnan(v)) else (
                f"{v:.3f}" if isinstance(v, float) else str(v))
            self.table.setItem(r, 0, QTableWidgetItem(name))
            self.table.setItem(r, 1, QTableWidgetItem(text))
        self.status.setText(f"labels: {ins.version or 'v0000'}; images with unsaved edits: {len(ins.pending)}; "
                            f"IoU {ins.queue.iou_thr:g}, score >= {ins.queue.score_thr:g}")


# ----------------------------------------------------------------------------- entry points

def open_queue(queue: HardCaseQueue, **options: Any) -> Inspector:
    """Open a viewer on a hard-case queue (see :class:`Inspector` for the options)."""
    return Inspector(queue, **options)


def open_image(image: np.ndarray | str | Path, *, gt: pd.DataFrame | None = None,
               pred: pd.DataFrame | None = None, name: str = "image", iou_thr: float = 0.5,
               score_thr: float = 0.25, **options: Any) -> Inspector:
    """Open one image with its GT and/or predicted boxes (``class, x1..y2[, score]``)."""
    cols = ["image", "class", *BOX]
    g = (gt.assign(image=name) if gt is not None else pd.DataFrame(columns=cols))
    p = (pred.assign(image=name) if pred is not None else pd.DataFrame(columns=[*cols, "score"]))
    if "score" not in p.columns:
        p = p.assign(score=1.0)
    g = g.astype({"x1": float, "y1": float, "x2": float, "y2": float})
    p = p.astype({"x1": float, "y1": float, "x2": float, "y2": float, "score": float})
    queue = build_queue(g, p, images=[name], iou_thr=iou_thr, score_thr=score_thr)
    return Inspector(queue, images={name: image}, **options)


def screenshot(queue: HardCaseQueue, path: str | Path, *, image: str | int = 0,
               size: tuple[int, int] = (1280, 960), canvas_only: bool = False, **options: Any) -> Path:
    """Render one queue image (default: the hardest) in a shown viewer and save a PNG.

    Needs a display (use ``xvfb-run`` on a headless machine: napari cannot render offscreen).
    """
    _napari()
    try:  # napari's one-time "PyQt5 is deprecated" toast would cover the canvas in the picture
        import napari._qt.qt_main_window as qt_main_window

        qt_main_window.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    ins = Inspector(queue, show=True, start=image, **options)
    try:
        ins.viewer.window.resize(*size)
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        ins.viewer.reset_view()
        QApplication.processEvents()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        ins.viewer.screenshot(str(tmp), canvas_only=canvas_only)
        os.replace(tmp, path)
        return path
    finally:
        ins.close()
