"""The hard-case queue as an ipywidgets gallery: for JupyterLab without a display (no Qt).

One image at a time with its GT and predicted boxes drawn in the viewer's outcome colours
(:data:`workbench.inspection.hardcases.DISPLAY_COLOURS`), previous/next buttons, a slider to jump, and
the image's metrics. Drawing is OpenCV on a downscaled copy (boxes stay crisp): GT boxes as
thick outlines with their text above the box, predictions as thin outlines with their text
below it. Grey and 16-bit images are display-scaled like the viewer (percentile stretch).

Nothing here is editable: corrections need the napari viewer (``python -m workbench
inspect``); the gallery is for looking.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import pandas as pd

from workbench.inspection.hardcases import (
    DISPLAY_COLOURS, DISPLAY_LABELS, HardCaseQueue, case_pixels, step, text_shown)
from workbench.report.overlays import display_rgb

__all__ = ["Gallery", "gallery", "metrics_html", "png_bytes", "render_case"]

BOX = ["x1", "y1", "x2", "y2"]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _colour(display: str) -> tuple[int, int, int]:
    return DISPLAY_COLOURS.get(display, DISPLAY_COLOURS["ignored"])


def render_case(arr: np.ndarray, gt: pd.DataFrame, pred: pd.DataFrame, *, max_size: int | None = 1000,
                text: str = "auto", font_scale: float = 0.4) -> np.ndarray:
    """An RGB uint8 picture of one image with its GT and predicted boxes (pure).

    ``gt``/``pred`` are the queue's per-image tables (class, x1..y2, display, label). The
    image is scaled down to ``max_size`` on its long side first; box coordinates follow.
    """
    img = display_rgb(arr)
    h, w = img.shape[:2]
    scale = 1.0 if not max_size or max(h, w) <= max_size else max_size / max(h, w)
    if scale != 1.0:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    thick = max(1, round(max(img.shape[:2]) / 350))
    for boxes, width, below in ((pred, max(1, thick - 1), True), (gt, thick + 1, False)):
        if boxes is None or not len(boxes):
            continue
        xy = boxes[BOX].to_numpy(dtype=float) * scale
        p = np.rint(xy).astype(int)
        p[:, 2:] = np.maximum(p[:, 2:] - 1, p[:, :2])  # x2/y2 are far edges
        display = boxes["display"].astype(str).to_numpy() if "display" in boxes else np.array(["gt_tp"] * len(boxes))
        labels = (boxes["label"] if "label" in boxes else boxes["class"]).astype(str).to_numpy()
        shown = text_shown(display, text)
        # errors last, so they are drawn on top
        for k in np.argsort(np.isin(display, ["gt_tp", "tp"]) * -1, kind="stable"):
            c = _colour(display[k])
            cv2.rectangle(img, (int(p[k, 0]), int(p[k, 1])), (int(p[k, 2]), int(p[k, 3])), c, width)
            if shown[k] and labels[k]:
                y = int(p[k, 3]) + 12 if below else int(p[k, 1]) - 3
                cv2.putText(img, labels[k], (int(p[k, 0]), max(10, y)), _FONT, font_scale, c, 1, cv2.LINE_AA)
    return img


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG-encoded bytes of an RGB uint8 array."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode an image of shape {rgb.shape} as PNG")
    return buf.tobytes()


def metrics_html(queue: HardCaseQueue, index: int) -> str:
    """The metrics of queue image ``index`` and the colour legend, as HTML."""
    image = queue.images[index]
    m = queue.metrics_of(image)

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [("GT boxes", "n_gt"), ("predictions", "n_pred"), ("TP", "tp"), ("FN (missed)", "fn"),
            ("FP (spurious)", "fp"), ("wrong class", "misclassified"), ("changed by classifier", "changed"),
            ("precision", "precision"), ("recall", "recall")]
    table = "".join(f"<tr><td>{name}</td><td style='text-align:right'><b>{fmt(m[key])}</b></td></tr>"
                    for name, key in rows)
    legend = " ".join(f"<span style='color:rgb{DISPLAY_COLOURS[k]}'>&#9632;</span>&nbsp;{html.escape(v)}"
                      for k, v in DISPLAY_LABELS.items())
    return (f"<b>{index + 1} / {len(queue)}</b>: {html.escape(image)}<br>"
            f"<table>{table}</table><small>IoU {queue.iou_thr:g}, score &ge; {queue.score_thr:g}. "
            f"GT: thick outline, text above; predictions: thin, text below.<br>{legend}</small>")


class Gallery:
    """Browse a hard-case queue in a notebook: ``display(Gallery(queue).widget)``."""

    def __init__(self, queue: HardCaseQueue, *, images: Mapping[str, np.ndarray | str | Path] | None = None,
                 original: bool = True, max_size: int = 900, text: str = "auto", start: int = 0):
        import ipywidgets as w

        if len(queue) == 0:
            raise ValueError("the hard-case queue is empty (no images to show)")
        self.queue, self.images, self.original = queue, dict(images or {}), original
        self.max_size, self.text = max_size, text
        self.index = -1
        self.image = w.Image(format="png", layout=w.Layout(max_width=f"{max_size}px"))
        self.info = w.HTML()
        self.prev_button = w.Button(description="previous", icon="arrow-left")
        self.next_button = w.Button(description="next", icon="arrow-right")
        self.slider = w.IntSlider(min=1, max=len(queue), value=1, description="image", continuous_update=False)
        self.prev_button.on_click(lambda _b: self.previous())
        self.next_button.on_click(lambda _b: self.next())
        self.slider.observe(lambda ch: self.show(ch["new"] - 1), names="value")
        self.widget = w.VBox([w.HBox([self.prev_button, self.next_button, self.slider]),
                              w.HBox([self.image, self.info])])
        self.show(start)

    def _pixels(self, image: str) -> np.ndarray:
        return case_pixels(self.queue, self.images, image, original=self.original)

    def render(self, index: int) -> np.ndarray:
        image = self.queue.images[index]
        return render_case(self._pixels(image), self.queue.gt_boxes(image), self.queue.pred_boxes(image),
                           max_size=self.max_size, text=self.text)

    def show(self, index: int) -> None:
        index = step(index, len(self.queue), 0)
        if index == self.index:
            return
        self.index = index
        self.image.value = png_bytes(self.render(index))
        self.info.value = metrics_html(self.queue, index)
        if self.slider.value != index + 1:
            self.slider.value = index + 1  # re-enters show() with the same index: a no-op

    def next(self) -> None:
        self.show(step(self.index, len(self.queue), +1))

    def previous(self) -> None:
        self.show(step(self.index, len(self.queue), -1))


def gallery(queue: HardCaseQueue, **options: Any) -> Gallery:
    """A :class:`Gallery` of ``queue`` (options as for the class)."""
    return Gallery(queue, **options)
