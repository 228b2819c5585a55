"""What napari shows a user: the image fitted to the canvas once the window has its size, box text
readable on pale smears and on dark fluorescence images, a Qt 6 binding without napari's PyQt5
deprecation notice. The GUI tests need a display (make test: xvfb-run)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from conftest import BCCD
from workbench.core.images import read_image
from workbench.inspection.hardcases import DISPLAY_COLOURS
from workbench.inspection.viewer import EDITED_COLOUR, box_layer_style, contrast_ratio, image_background, readable_on

pytestmark = pytest.mark.slow  # napari start-up costs seconds per test: not in the quick loop

gui = [pytest.mark.gui,
       pytest.mark.skipif(not os.environ.get("DISPLAY"),
                          reason="no display: run `make test` (uses xvfb-run) or install xvfb; napari cannot render offscreen")]
SMEAR = BCCD / "JPEGImages" / "BloodImage_00000.jpg"


def test_box_text_is_readable_on_pale_and_dark_images():
    smear = image_background(read_image(SMEAR)[0])
    assert min(smear) > 150  # a pale blood smear
    dark = image_background(np.full((50, 60), 400, dtype=np.uint16) + np.arange(60, dtype=np.uint16) % 7,
                            (300.0, 4000.0))
    assert max(dark) < 40
    for background in (smear, dark):
        for colour in (*DISPLAY_COLOURS.values(), EDITED_COLOUR):
            text = readable_on(colour, background)
            assert contrast_ratio(text, background) >= 4.5, (colour, background, text)
    # the light-blue TP label of the issue: unreadable as it was, readable now, still blue
    tp = DISPLAY_COLOURS["gt_tp"]
    assert contrast_ratio(tp, smear) < 2.5
    r, g, b = readable_on(tp, smear)
    assert b > r and b > g
    assert readable_on(tp, dark) == tp  # already readable on a dark image: left as it is
    style = box_layer_style(pd.DataFrame({"class": ["RBC"], "x1": [0.0], "y1": [0.0], "x2": [9.0], "y2": [9.0],
                                          "display": ["gt_tp"]}), background=smear)
    assert style["features"]["text_colour"].tolist() == ["#{:02x}{:02x}{:02x}".format(r, g, b)]


def _fits(viewer, shape) -> tuple[bool, float]:
    """Whether the whole image is inside the canvas, and how much of the canvas it fills."""
    canvas_h, canvas_w = viewer.canvas.size
    zoom = viewer.camera.zoom
    inside = shape[0] * zoom <= canvas_h + 1 and shape[1] * zoom <= canvas_w + 1
    return inside, max(shape[0] * zoom / canvas_h, shape[1] * zoom / canvas_w)


@gui[0]
@gui[1]
def test_the_image_opens_fitted_and_refits_until_the_user_zooms():
    from qtpy.QtWidgets import QApplication

    from workbench.inspection.viewer import open_image

    image = read_image(SMEAR)[0]
    ins = open_image(image, gt=pd.DataFrame({"class": ["WBC"], "x1": [260.0], "y1": [177.0], "x2": [491.0],
                                             "y2": [376.0]}), show=True)
    try:
        for size in ((1400, 1000), (900, 700)):  # the window takes its size after the first fit
            ins.viewer.window.resize(*size)
            for _ in range(3):
                QApplication.processEvents()
            inside, filled = _fits(ins.viewer, image.shape)
            assert inside and filled > 0.85, (size, ins.viewer.canvas.size, ins.viewer.camera.zoom)
        ins.viewer.camera.zoom *= 2  # the user zooms in: a resize keeps their view
        zoom = ins.viewer.camera.zoom
        ins.viewer.window.resize(1200, 900)
        for _ in range(3):
            QApplication.processEvents()
        assert ins.viewer.camera.zoom == pytest.approx(zoom)
        ins.next()  # the next image (here the same one) is fitted again
        assert _fits(ins.viewer, image.shape)[0]
    finally:
        ins.close()


@gui[0]
@gui[1]
def test_napari_runs_on_qt6_without_the_pyqt5_deprecation_notice():
    from workbench.inspection.viewer import open_image

    ins = open_image(read_image(SMEAR)[0], show=True)
    try:
        import qtpy
        from napari.utils.notifications import notification_manager

        assert qtpy.API_NAME in ("PyQt6", "PySide6") and qtpy.QT_VERSION.startswith("6.")
        messages = [str(n.message) for n in notification_manager.records]
        assert not [m for m in messages if "PyQt5" in m or "deprecated" in m], messages
    finally:
        ins.close()
