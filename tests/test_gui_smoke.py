"""napari renders under a virtual display: a real image with boxes becomes visible pixels.

Run by `make test` under xvfb-run; without a display these tests are skipped with the reason.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import BCCD

pytestmark = [
    pytest.mark.slow,  # napari start-up costs seconds per test: not in the quick loop
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"),
                       reason="no display: run `make test` (uses xvfb-run) or install xvfb; napari cannot render offscreen"),
]


@pytest.fixture
def viewer():
    # opencv-python points Qt at its own plugins; napari's Qt must use its own (xcb) instead.
    from workbench.inspection.viewer import import_napari

    pytest.importorskip("napari")
    napari = import_napari()  # drops opencv's Qt plugin path, preloads what crashes after a GL context
    v = napari.Viewer(show=True)
    yield v
    v.close()


def test_napari_renders_a_real_image_with_box_overlay(viewer):
    image = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00000.jpg"))
    viewer.add_image(image, name="BloodImage_00000")
    blank = viewer.screenshot(canvas_only=True)
    rect = np.array([[[177, 260], [177, 491], [376, 491], [376, 260]]], dtype=float)  # WBC box (row, col)
    viewer.add_shapes(rect, shape_type="rectangle", edge_color="lime", face_color="transparent",
                      edge_width=6, name="boxes")
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.shape[0] > 100 and shot[..., :3].std() > 10  # the image was drawn
    diff = np.abs(shot[..., :3].astype(int) - blank[..., :3].astype(int)).sum(-1) > 60
    green = (shot[..., 1] > 200) & (shot[..., 0] < 120) & (shot[..., 2] < 120)
    assert diff.mean() > 0.002 and green.sum() > 200  # the lime box outline appeared
