"""What napari shows a user: the image fitted to the canvas once the window has its size, box text
readable on pale smears and on dark fluorescence images, a Qt 6 binding without napari's PyQt5
deprecation notice. The GUI tests need a display (make test: xvfb-run)."""
from __future__ import annotations

import os
import sys

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


def test_the_screenshot_process_gets_a_virtual_display_when_there_is_none(monkeypatch, tmp_path):
    from workbench.inspection.viewer import inspector

    monkeypatch.setenv("DISPLAY", ":7")
    plain = inspector.screenshot_command("p.csv", "ds", tmp_path / "s.png", split="test", score_thr=0.4)
    assert plain[1:4] == ["-m", "workbench", "inspect"] and plain[plain.index("--split") + 1] == "test"
    assert plain[plain.index("--score-thr") + 1] == "0.4" and plain[plain.index("--screenshot") + 1] == str(tmp_path / "s.png")
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(inspector.shutil, "which", lambda name: "/usr/bin/xvfb-run" if name == "xvfb-run" else None)
    wrapped = inspector.screenshot_command("p.csv", "ds", tmp_path / "s.png")
    assert wrapped[:3] == ["/usr/bin/xvfb-run", "-a", "-s"]
    assert wrapped[3] == "-screen 0 1280x1024x24"
    assert wrapped[4:] == [sys.executable, "-m", "workbench", "inspect", "p.csv", "--gt", "ds", "--score-thr", "0.25",
                           "--screenshot", str(tmp_path / "s.png")]
    monkeypatch.setattr(inspector.shutil, "which", lambda name: None)
    with pytest.raises(inspector.NoDisplayError, match="xvfb"):
        inspector.screenshot_command("p.csv", "ds", tmp_path / "s.png")


@gui[0]
@gui[1]
def test_the_napari_screenshot_becomes_a_figure_with_the_boxes_drawn(tmp_path):
    from _tiny import tiny_bccd
    from workbench.inspection import corrections
    from workbench.inspection.viewer import screenshot_figure

    ds = tiny_bccd(tmp_path / "bccd", n_train=1, n_val=2)
    truth = corrections.read_version_boxes(ds)
    pred = truth[truth.index % 3 != 0].drop(columns="class_id").assign(score=0.9)  # every 3rd box missed
    pred.to_csv(tmp_path / "pred.csv", index=False)
    files = screenshot_figure(tmp_path / "pred.csv", ds, tmp_path / "fig" / "napari_hardest", split="val",
                              caption="hardest image")
    assert [f.name for f in files] == ["napari_hardest.png", "napari_hardest.pdf", "napari_hardest.caption.txt"]
    assert not list((tmp_path / "fig").glob(".*"))  # the raw screenshot is not left behind
    shot = read_image(files[0])[0][..., :3].astype(int)
    for role in ("fn", "gt_tp"):  # the missed and the found boxes' outlines, in their outcome colours
        assert (np.abs(shot - np.array(DISPLAY_COLOURS[role])).sum(-1) < 40).sum() > 100, role
