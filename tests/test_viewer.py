"""napari viewer on real images: exact box round trips (8-bit JPEG, 16-bit TIFF), outcome colours,
editing + saving a label version, queue keys, screenshot. Needs a display (make test: xvfb-run)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from _tiny import tiny_bccd
from conftest import MNFINDER, checksums, copy_bccd_subset
from workbench.inspection import corrections
from workbench.inspection import hardcases
from workbench.inspection.hardcases import DISPLAY_COLOURS
from workbench.core.images import read_image
from workbench.data.importers import read_raw
from workbench.inspection.viewer import (
    EDITED_COLOUR, boxes_to_rectangles, image_background, layer_boxes, open_image, readable_on, rectangles_to_boxes,
    screenshot)
from workbench.inspection.viewer import Inspector

pytestmark = [
    pytest.mark.slow,  # napari start-up costs seconds per test: not in the quick loop
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"),
                       reason="no display: run `make test` (uses xvfb-run) or install xvfb; napari cannot render offscreen"),
]
BOX = ["x1", "y1", "x2", "y2"]


@pytest.fixture
def close_all():
    opened = []
    yield opened.append
    for ins in opened:
        ins.close()


def _raw_boxes(root, fmt, image_id):
    raw = read_raw(root, fmt)
    im = next(i for i in raw.images if i.image_id == image_id)
    boxes = pd.DataFrame([(o.cls, o.x1, o.y1, o.x2, o.y2) for o in im.objects], columns=["class", *BOX])
    return im.image_path, boxes


@pytest.fixture(scope="module")
def bccd0(tmp_path_factory):
    """The first real BCCD image (JPEG) and its VOC boxes, read by the VOC importer."""
    return _raw_boxes(copy_bccd_subset(tmp_path_factory.mktemp("voc") / "bccd", n=1), "voc", "BloodImage_00000")


def test_pure_conversion_is_exact_and_row_col_ordered():
    b = np.array([[1.0, 2.0, 30.5, 40.25], [0.1, 1 / 3, 2 / 3, 7.0]])
    r = boxes_to_rectangles(b)
    assert r.shape == (2, 4, 2) and r[0].tolist() == [[2, 1], [2, 30.5], [40.25, 30.5], [40.25, 1]]
    assert np.array_equal(rectangles_to_boxes(r), b)
    # napari keeps float32 vertices: the originals come back exactly, an edited shape by its extent
    r32 = r.astype(np.float32)
    assert np.array_equal(rectangles_to_boxes(r32, originals=b), b)
    r32[1, :, 1] += 5
    got = rectangles_to_boxes(r32, originals=b)
    assert np.array_equal(got[0], b[0]) and got[1, 0] == pytest.approx(b[1, 0] + 5, abs=1e-5)


@pytest.mark.parametrize("case", ["bccd_jpeg_8bit", "mnfinder_tiff_16bit"])
def test_boxes_round_trip_exactly_through_a_shapes_layer(case, bccd0, close_all):
    if case == "bccd_jpeg_8bit":
        path, boxes = bccd0
    else:
        path, boxes = _raw_boxes(MNFINDER, "masks", "training-data/2022-05-26_RPE1/1")
    arr, info = read_image(path)
    assert info.bit_depth == (8 if case.startswith("bccd") else 16)
    boxes = boxes.assign(**{c: boxes[c].astype(float) + 1 / 3 for c in BOX})  # sub-pixel values napari's float32 cannot hold
    ins = open_image(arr, gt=boxes, name="img")
    close_all(ins)
    back = layer_boxes(ins.gt_layer)
    assert back["class"].tolist() == boxes["class"].tolist()
    assert np.array_equal(back[BOX].to_numpy(), boxes[BOX].to_numpy())  # bit-exact
    assert (back["display"] == "fn").all()  # no predictions: every GT is missed
    layer = ins.image_layer
    assert layer.data.dtype == arr.dtype and layer.rgb == (arr.ndim == 3)
    if case == "mnfinder_tiff_16bit":  # percentile limits, not the 0..65535 range
        lo, hi = np.percentile(arr, [0.5, 99.5])
        assert tuple(layer.contrast_limits) == pytest.approx((lo, hi))
        assert hi < 20000
    # boxes sit on pixel edges: the layer is shifted half a pixel against the image's pixel centres
    assert tuple(ins.gt_layer.translate) == (-0.5, -0.5)


def test_outcome_colours_match_a_hand_built_evaluation(bccd0, close_all):
    path, boxes = bccd0
    gt = boxes.iloc[:3].reset_index(drop=True)  # WBC, RBC, RBC
    pred = pd.DataFrame([
        {**gt.iloc[0].to_dict(), "score": 0.9},                      # TP
        {**gt.iloc[1].to_dict(), "class": "WBC", "score": 0.8},      # wrong class
        {"class": "RBC", "x1": 1, "y1": 1, "x2": 20, "y2": 20, "score": 0.7},  # FP
    ])                                                                # GT 2: FN
    ins = open_image(read_image(path)[0], gt=gt, pred=pred, name="BloodImage_00000")
    close_all(ins)
    expect_gt = ["gt_tp", "wrong_class", "fn"]
    expect_pred = ["tp", "wrong_class", "fp"]
    rgba = lambda roles: np.array([[*DISPLAY_COLOURS[r], 255] for r in roles]) / 255
    assert np.allclose(ins.gt_layer.edge_color, rgba(expect_gt))
    assert np.allclose(ins.pred_layer.edge_color, rgba(expect_pred))
    assert ins.pred_layer.text.values.tolist() == ["WBC 0.90", "WBC 0.80", "RBC 0.70"]
    assert not ins.pred_layer.editable and ins.gt_layer.editable
    m = ins.queue.metrics_of("BloodImage_00000")
    assert (m["tp"], m["fn"], m["fp"], m["misclassified"]) == (1, 2, 2, 1)
    assert ins.dock.table.item(3, 1).text() == "2"  # FN row of the dock


def test_editing_the_layer_and_saving_writes_a_new_version(tmp_path, close_all):
    ds = tiny_bccd(tmp_path / "bccd")
    truth = corrections.read_version_boxes(ds)
    pred = truth.assign(score=0.9).drop(columns="class_id")
    queue = hardcases.load_queue(ds, pred.iloc[::2], split="val")  # every other box missed
    ins = Inspector(queue, show=True)
    close_all(ins)
    image = ins.image
    before = checksums(ds / "labels")
    old = queue.gt_boxes(image)
    layer = ins.gt_layer
    n = len(layer.data)

    data = [d.copy() for d in layer.data]
    data[1][:, 1] += 6.0  # move box 1 right by 6 px (same count: features stay aligned)
    layer.data = data
    layer.selected_data = {2}
    layer.remove_selected()  # delete box 2 (as the delete key does)
    ins.set_class("Platelets")
    layer.add_rectangles(np.array([[[10, 10], [10, 40], [35, 40], [35, 10]]], dtype=float))  # draw
    layer.selected_data = {0}
    ins.set_class("WBC" if old["class"][0] != "WBC" else "RBC")  # choosing a class relabels the selection
    assert not layer.selected_data and ins.relabel_selected() == 0
    assert ins.dock.classes.currentText() == ins.current_class
    assert len(layer.data) == n
    assert np.allclose(layer.edge_color[-1], np.array([*EDITED_COLOUR, 255]) / 255)

    ins.next()  # unsaved edits survive browsing
    assert image in ins.pending
    ins.show(ins.queue.index_of(image))
    assert len(ins.gt_layer.data) == n

    saved = ins.save(note="test edit")
    assert saved.name == "v0001" and ins.version == "v0001" and not ins.pending
    assert checksums(ds / "labels") == before  # canonical labels untouched
    assert sorted(saved.changes["action"]) == ["add", "delete", "move", "relabel"]
    log = pd.read_csv(saved.path / "changes.csv", keep_default_na=False)
    added = json.loads(log.loc[log["action"] == "add", "after"].iloc[0])
    assert added == {"class": "Platelets", "box": [10.0, 10.0, 40.0, 35.0]}
    moved = log[log["action"] == "move"].iloc[0]
    assert json.loads(moved["after"])["box"][0] == pytest.approx(json.loads(moved["before"])["box"][0] + 6, abs=1e-3)
    # the version's label file for the image, and untouched files identical to the canonical ones
    stem = os.path.splitext(os.path.basename(queue.refs[image].file))[0]
    lines = (saved.path / "labels" / f"{stem}.txt").read_text().splitlines()
    assert len(lines) == n and lines[-1].startswith("0 ")  # Platelets is class 0
    old_lines = (ds / "labels" / f"{stem}.txt").read_text().splitlines()
    assert lines[3:-1] == old_lines[4:]  # boxes after the deleted one: same bytes
    for p in (ds / "labels").iterdir():
        if p.stem != stem:
            assert (saved.path / "labels" / p.name).read_bytes() == p.read_bytes()
    # the queue now scores against the saved labels
    assert len(ins.queue.gt_boxes(image)) == n and ins.queue.source["version"] == "v0001"

    # a second edit leaves v0001 byte-identical
    v1 = checksums(saved.path)
    ins.show(ins.queue.index_of(image))
    ins.gt_layer.selected_data = {0}
    ins.gt_layer.remove_selected()
    second = ins.save()
    assert second.name == "v0002" and second.changes["action"].tolist() == ["delete"]
    assert checksums(saved.path) == v1


def test_queue_keys_and_dock_navigation(bccd_canonical, close_all):
    truth = corrections.read_version_boxes(bccd_canonical)
    pred = truth[truth.index % 3 != 0].assign(score=0.8)
    queue = hardcases.load_queue(bccd_canonical, pred, split="val")
    ins = Inspector(queue, show=True)
    close_all(ins)
    keys = {str(k): f for k, f in ins.viewer.keymap.items()}
    assert {"N", "Shift+N", "PageDown", "PageUp"} <= set(keys)
    keys["N"](ins.viewer)
    assert ins.index == 1 and ins.dock.title.text().startswith("<b>2 / 87</b>")
    keys["Shift+N"](ins.viewer)
    keys["Shift+N"](ins.viewer)
    assert ins.index == 0  # clamped at the start
    ins.dock.next_button.click()
    assert ins.image == queue.images[1]
    assert [int(ins.dock.table.item(r, 1).text()) for r in (3, 4)] == \
        [queue.metrics_of(ins.image)["fn"], queue.metrics_of(ins.image)["fp"]]
    # a prediction accepted as a label: same box and class, marked edited, kept while browsing
    n = len(ins.gt_layer.data)
    ins.pred_layer.selected_data = {0}
    assert ins.accept_selected_predictions() == 1
    got = layer_boxes(ins.gt_layer).iloc[-1]
    want = queue.pred_boxes(ins.image).iloc[0]
    assert len(ins.gt_layer.data) == n + 1 and got["class"] == want["class"] and got["display"] == "edited"
    assert [got[c] for c in BOX] == [want[c] for c in BOX]
    ins.next()
    assert queue.images[1] in ins.pending and len(ins.edits()) == 1


def test_cli_inspect_writes_a_screenshot_with_boxes_and_text(tmp_path, capsys):
    """``inspect PRED --gt DATASET --split val --screenshot PNG`` (the parser as the CLI builds it)."""
    import argparse

    from workbench.cli import inspect as cli_inspect

    ds = tiny_bccd(tmp_path / "bccd", n_train=1, n_val=2)
    truth = corrections.read_version_boxes(ds)
    pred = truth[truth.index % 3 != 0].drop(columns="class_id").assign(score=0.9)  # every 3rd box missed
    pred.to_csv(tmp_path / "pred.csv", index=False)
    parser = argparse.ArgumentParser()
    cli_inspect.register(parser.add_subparsers())
    a = parser.parse_args(["inspect", str(tmp_path / "pred.csv"), "--gt", str(ds), "--split", "val",
                           "--screenshot", str(tmp_path / "shot.png")])
    assert a.func(a) == 0
    assert "2 images, 2 with errors" in capsys.readouterr().out
    shot = read_image(tmp_path / "shot.png")[0][..., :3].astype(int)
    assert shot.shape[0] > 500  # the whole window: canvas and dock
    for role in ("fn", "gt_tp"):  # box outlines
        assert (np.abs(shot - np.array(DISPLAY_COLOURS[role])).sum(-1) < 40).sum() > 200, role
    # predicted TP boxes lie under the GT boxes here: their text shows, darkened to read on the smear
    background = image_background(read_image(ds / "images" / "BloodImage_00000.jpg")[0])
    text = np.array(readable_on(DISPLAY_COLOURS["tp"], background))
    assert (np.abs(shot - text).sum(-1) < 40).sum() > 200
