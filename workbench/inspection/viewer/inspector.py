"""napari inspection of hard cases: the :class:`Inspector` window, its dock, and the entry points.

Import this only when napari is wanted: napari and Qt are imported when a window opens, not
at import (the CLI prints its help without them). Layer building and the pure box <->
rectangle conversion are in :mod:`workbench.inspection.viewer.layers`.

Queue. :class:`Inspector` shows a :class:`workbench.inspection.hardcases.HardCaseQueue` one image at a
time: keys ``n`` / ``Shift-N`` (and PageDown / PageUp) go to the next / previous image, a
dock lists the image's metrics, a legend, a class chooser (new boxes and "relabel
selected"), "accept selected predictions" (copies predicted boxes into the labels) and
"save version". Edits made on an image are kept while browsing and written together by
:meth:`Inspector.save` as a new label version (:mod:`workbench.inspection.corrections`).

Fit. Each image opens fitted to the canvas; the canvas gets its size only once the window is
shown, so the view is fitted again whenever the canvas size changes while the camera is still
where the last fit put it (a view the user zoomed or panned is left alone).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from workbench.inspection.hardcases import (
    DISPLAY_COLOURS, DISPLAY_LABELS, HardCaseQueue, build_queue, case_pixels, requeue, step)
from workbench.inspection.viewer.layers import (
    BOX, EDITED_COLOUR, edge_width_for, hex_colour, image_background, image_layer_kwargs, layer_boxes, new_box_layer,
    readable_on, rgba, update_box_layer)

__all__ = ["Inspector", "NoDisplayError", "has_display", "import_napari", "open_image", "open_queue",
           "require_display", "screenshot", "screenshot_command", "screenshot_figure"]

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


def import_napari():
    """napari, imported for a window (raises :class:`NoDisplayError` without a display).

    opencv (imported by ultralytics) points Qt at its own plugins through
    ``QT_QPA_PLATFORM_PLUGIN_PATH``; that setting is dropped first."""
    require_display()
    os.environ.pop("QT_QPA_PLATFORM_PLUGIN_PATH", None)
    preload_gl_conflicts()
    import napari

    return napari


def preload_gl_conflicts() -> None:
    """Load triton (through ``torch._dynamo``) before napari opens an OpenGL context.

    With PyQt6 under Mesa (Xvfb, llvmpipe), importing triton *after* a napari canvas exists
    crashes the process (segmentation fault in triton's native module: two LLVMs in one
    process); loaded first, both work. torchvision's ops import it on first use, so a session
    that inspects and then predicts or fine-tunes would crash without this."""
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # no torch: nothing to preload
        pass


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
        napari = import_napari()
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
        self._fitted: tuple[np.ndarray, float] | None = None  # camera centre and zoom of the last fit
        self._background: tuple[int, int, int] | None = None  # the shown image's median colour (box text)
        self.dock = None
        self.viewer.canvas.events.size.connect(self._on_canvas_size)
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
        bg = self._background = image_background(self.image_layer.data, self.image_layer.contrast_limits)
        gt = self.pending.get(image)
        gt = self.queue.gt_boxes(image) if gt is None else gt
        pred = self.queue.pred_boxes(image)
        if self.gt_layer is None:
            # prediction text under the box, label text above it: the two never overlap
            self.pred_layer = self.viewer.add_layer(new_box_layer(pred, name=PRED_LAYER, edge_width=width,
                                                                  text=self.text, editable=False,
                                                                  anchor="lower_left", background=bg))
            self.gt_layer = self.viewer.add_layer(new_box_layer(gt, name=GT_LAYER, edge_width=width,
                                                                text=self.text, editable=True, background=bg))
        else:
            update_box_layer(self.pred_layer, pred, edge_width=width, text=self.text, background=bg)
            update_box_layer(self.gt_layer, gt, edge_width=width, text=self.text, background=bg)
        self._set_defaults()
        self.viewer.layers.selection.active = self.gt_layer
        self.fit()
        if self.dock is not None:
            self.dock.refresh()

    def fit(self) -> None:
        """Fit the image to the canvas (and refit when the canvas size changes, until the user
        zooms or pans)."""
        self.viewer.reset_view()
        self._fitted = (np.array(self.viewer.camera.center, dtype=float), float(self.viewer.camera.zoom))

    def _on_canvas_size(self, _event: Any = None) -> None:
        if self._fitted is None:
            return
        centre, zoom = self._fitted
        camera = self.viewer.camera
        if np.allclose(camera.center, centre) and np.isclose(camera.zoom, zoom):
            self.fit()

    def _edited_text_colour(self) -> str:
        return hex_colour(EDITED_COLOUR if self._background is None else readable_on(EDITED_COLOUR, self._background))

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
        layer.current_edge_color = hex_colour(EDITED_COLOUR)
        layer.feature_defaults = {"class": self.current_class, "score": np.nan, "display": "edited",
                                  "label": self.current_class, "text": self.current_class,
                                  "text_colour": self._edited_text_colour(),
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
        feats.loc[sel, "text_colour"] = self._edited_text_colour()
        colours = np.asarray(layer.edge_color).copy()
        colours[sel] = rgba(EDITED_COLOUR)
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
        update_box_layer(self.gt_layer, boxes, edge_width=self._edge_width, text=self.text,
                         background=self._background)
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
        legend = "".join(f'<span style="color:{hex_colour(DISPLAY_COLOURS[k])}">&#9632;</span> {v}<br>'
                         for k, v in DISPLAY_LABELS.items())
        legend += f'<span style="color:{hex_colour(EDITED_COLOUR)}">&#9632;</span> edited (unsaved or new)'
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
    import_napari()
    ins = Inspector(queue, show=True, start=image, **options)
    try:
        ins.viewer.window.resize(*size)
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()  # the canvas takes its size; the inspector refits the image
        QApplication.processEvents()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        ins.viewer.screenshot(str(tmp), canvas_only=canvas_only)
        os.replace(tmp, path)
        return path
    finally:
        ins.close()


XVFB_SCREEN = "1280x1024x24"  # the virtual screen xvfb-run gives the screenshot process


def screenshot_command(pred: str | Path, gt: str | Path, png: str | Path, *, split: str | None = None,
                       score_thr: float = 0.25, image: str | None = None) -> list[str]:
    """The ``inspect --screenshot`` command line, under ``xvfb-run`` when this machine has no display
    but has xvfb-run; :class:`NoDisplayError` when it has neither."""
    cmd = [sys.executable, "-m", "workbench", "inspect", str(pred), "--gt", str(gt), "--score-thr", str(score_thr),
           "--screenshot", str(png)]
    cmd += ["--split", split] if split else []
    cmd += ["--image", image] if image is not None else []
    if has_display():
        return cmd
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        require_display()  # raises, saying what to install
    return [xvfb, "-a", "-s", f"-screen 0 {XVFB_SCREEN}", *cmd]


def screenshot_figure(pred: str | Path, gt: str | Path, stem: str | Path, *, split: str | None = None,
                      score_thr: float = 0.25, image: str | None = None, caption: str = "",
                      timeout_s: float = 600) -> list[Path]:
    """Render one image of the hard-case queue (default: the hardest) in napari and save it as a
    figure (``stem.png`` + ``stem.pdf`` with its caption, like every figure of the workbench).

    napari runs in its own process (``python -m workbench inspect ... --screenshot``, under
    ``xvfb-run`` on a headless machine): a notebook kernel that already imported ultralytics or
    cv2 can make Qt abort on loading its platform plugin. Raises :class:`NoDisplayError` without
    a display or xvfb-run, and ``RuntimeError`` (with the process's output) when the render fails.
    """
    from matplotlib.figure import Figure

    from workbench.core.images import read_image
    from workbench.report.figures import save_figure

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    raw = stem.with_name(f".{stem.name}.napari.png")
    cmd = screenshot_command(pred, gt, raw, split=split, score_thr=score_thr, image=image)
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM_PLUGIN_PATH"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0 or not raw.is_file():
        raise RuntimeError(f"napari screenshot of {pred} on {gt} failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-2000:]}")
    try:
        shot = read_image(raw)[0][..., :3]
    finally:
        raw.unlink(missing_ok=True)
    h, w = shot.shape[:2]
    fig = Figure(figsize=(10, 10 * h / w))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(shot)
    ax.set_axis_off()
    return save_figure(fig, stem, caption=caption, dpi=150)
