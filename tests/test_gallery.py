"""The ipywidgets gallery (no Qt): drawing in outcome colours, navigation, metrics; notebook 06."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import MNFINDER
from workbench.inspection import gallery
from workbench.inspection import hardcases
from workbench.inspection.hardcases import DISPLAY_COLOURS
from workbench.core.images import read_image

BOX = ["x1", "y1", "x2", "y2"]


@pytest.fixture(scope="module")
def bccd_queue(tmp_path_factory):
    from _tiny import tiny_bccd
    from workbench.inspection.corrections import read_version_boxes

    ds = tiny_bccd(tmp_path_factory.mktemp("g") / "bccd", n_train=2, n_val=4)
    truth = read_version_boxes(ds)
    pred = truth[truth.index % 4 != 0].drop(columns="class_id").assign(score=0.8)  # every 4th box missed
    return hardcases.load_queue(ds, pred, split="val")


def test_render_draws_boxes_in_outcome_colours_on_a_real_image(bccd_queue):
    q = bccd_queue
    image = q.images[0]
    arr = hardcases.read_display_image(q.refs[image])
    out = gallery.render_case(arr, q.gt_boxes(image), q.pred_boxes(image), max_size=None)
    assert out.shape == arr.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, arr) and not np.array_equal(out, arr)
    fn = q.gt_boxes(image).query("display == 'fn'").iloc[0]
    x, y = int(round(fn["x1"])), int(round(fn["y1"])) + 5  # on the left edge of a missed box
    assert tuple(out[y, x]) == DISPLAY_COLOURS["fn"]
    small = gallery.render_case(arr, q.gt_boxes(image), q.pred_boxes(image), max_size=320)
    assert max(small.shape[:2]) == 320
    assert gallery.png_bytes(small)[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_scales_16bit_grey_images(tmp_path):
    arr, info = read_image(MNFINDER / "training-data" / "2022-05-26_RPE1" / "images" / "1.tif")
    assert info.bit_depth == 16
    gt = pd.DataFrame({"class": ["nucleus"], "x1": [100.0], "y1": [100.0], "x2": [200.0], "y2": [180.0],
                       "display": ["fn"], "label": ["nucleus"]})
    out = gallery.render_case(arr, gt, None, max_size=None)
    assert out.shape == (*arr.shape, 3) and out.dtype == np.uint8
    assert 20 < out[..., 0].mean() < 235  # stretched, not the dark top byte
    assert tuple(out[140, 100]) == DISPLAY_COLOURS["fn"]


def test_gallery_navigates_and_shows_metrics(bccd_queue):
    g = gallery.Gallery(bccd_queue, max_size=400)
    first = g.image.value
    assert "1 / 4" in g.info.value and "FN (missed)" in g.info.value
    m = bccd_queue.metrics_of(bccd_queue.images[0])
    assert f"<b>{m['fn']}</b>" in g.info.value
    g.next_button.click()
    assert g.index == 1 and g.slider.value == 2 and g.image.value != first and "2 / 4" in g.info.value
    g.prev_button.click()
    g.prev_button.click()
    assert g.index == 0  # clamped
    g.slider.value = 4
    assert g.index == 3 and bccd_queue.images[3] in g.info.value
    with pytest.raises(ValueError, match="empty"):
        gallery.Gallery(hardcases.build_queue(pd.DataFrame(columns=["image", "class", *BOX]),
                                              pd.DataFrame(columns=["image", "class", *BOX, "score"])))


@pytest.mark.slow
def test_notebook_06_builds_the_queue_and_gallery_without_a_window(tmp_path):
    """With a given prediction table (here: the real GT of BCCD val with every 5th box left out,
    so the run stays well under a minute; the smoke default trains a 1-epoch detector first)."""
    from workbench.data.datasets import prepare
    from workbench.evaluation.files import load_ground_truth
    from workbench.studies.notebooks import run_notebook

    truth = load_ground_truth(prepare("bccd"), split="val")
    pred_csv = tmp_path / "given.csv"
    truth.boxes[truth.boxes.index % 5 != 0].assign(score=0.9).to_csv(pred_csv, index=False)
    executed = run_notebook("06_inspect_hard_cases", {"dataset": "bccd", "profile": "smoke", "pred": str(pred_csv)},
                            out_dir=tmp_path)
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    errors = [o.get("ename") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "**87 images**" in text and "No viewer opened" in text
    n_with_errors = int(text.split("**87 images**, ")[1].split(" with errors")[0])
    b = truth.boxes
    zero_area = (b["x2"] <= b["x1"]) | (b["y2"] <= b["y1"])  # matches nothing, as in pycocotools
    assert n_with_errors == b[(b.index % 5 == 0) | zero_area]["image"].nunique()
    widget = [o for c in nb.cells for o in c.get("outputs", [])
              if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget  # the gallery widget was displayed
    # its state is saved with the notebook (JupyterLab shows it on reopening) and the offline HTML
    # shows it as a static page: the rendered image embedded, no script from a CDN
    from workbench.studies.notebook_html import external_resources, notebook_html
    from workbench.studies.notebooks import text_figure_reprs

    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert widget[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in state
    assert any(m["model_name"] == "ImageModel" and m.get("buffers") for m in state.values())
    page = notebook_html(executed)
    assert not external_resources(page)
    assert page.count("src=\"data:image/png;base64,") >= 1 and "Widgets as saved" in page
    assert not text_figure_reprs(executed)
