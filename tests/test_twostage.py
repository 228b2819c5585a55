"""Two-stage coarse-to-fine path: region proposals and merging, shelf packing, exact
pack/unpack of boxes, and an end-to-end run with a fake detector on a constructed image."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _blobs import BlobDetector, blob_image, sorted_boxes
from workbench.inference.twostage import (
    TwoStageSettings, layout_pieces, merge_regions, pack_boxes, pack_shelves, propose_regions, render_canvases, split_regions, two_stage_predict, two_stage_predict_image, unpack_boxes)


def _boxes(rows):
    return pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2", "class", "score"])


def test_proposals_obey_score_size_margin_and_merge_thresholds():
    det = _boxes([(100, 100, 120, 120, "c", 0.9), (101, 100, 121, 120, "c", 0.8),  # near-duplicate
                  (130, 100, 150, 118, "c", 0.5),  # 10 px right of the first: merges after the margin
                  (500, 500, 520, 520, "c", 0.05),  # below region_conf
                  (700, 10, 702, 12, "c", 0.9),  # smaller than min_size
                  (0, 0, 400, 400, "c", 0.9),  # larger than max_size
                  (980, 700, 1000, 720, "c", 0.9)])  # at the border: clipped
    s = TwoStageSettings(region_conf=0.1, min_size=5, max_size=200, margin=8, region_nms=0.7, region_merge=0.0)
    regions = propose_regions(det, image_size=(800, 1000), settings=s)
    assert sorted(regions.tolist()) == [[92, 92, 158, 128], [972, 692, 1000, 728]]
    apart = propose_regions(det, image_size=(800, 1000), settings=TwoStageSettings(
        region_conf=0.1, min_size=5, max_size=200, margin=8, region_merge=None))
    assert len(apart) == 3  # duplicate suppressed by NMS, neighbours no longer merged
    assert propose_regions(det.iloc[:0], image_size=(800, 1000)).shape == (0, 4)


def test_region_merging_repeats_until_no_region_overlaps():
    # a and b overlap; c overlaps neither, only the union of a and b (its empty corner)
    out = merge_regions(np.array([[0, 0, 10, 10], [8, 8, 20, 20], [15, 0, 25, 5], [50, 50, 60, 60]]))
    assert sorted(out.tolist()) == [[0, 0, 25, 20], [50, 50, 60, 60]]
    high = merge_regions(np.array([[0, 0, 10, 10], [8, 0, 20, 10]]), threshold=0.5)  # IoS 0.2 < 0.5
    assert len(high) == 2


def test_regions_larger_than_a_canvas_are_tiled_into_pieces():
    pieces, owner = split_regions(np.array([[0, 0, 100, 50], [200, 100, 700, 300]]), canvas=256, overlap=0.25)
    assert owner.tolist()[0] == 0 and pieces[0].tolist() == [0, 0, 100, 50]
    big = pieces[owner == 1]
    assert ((big[:, 2:] - big[:, :2]) <= 256).all()
    assert big[:, 0].min() == 200 and big[:, 2].max() == 700 and big[:, 3].max() == 300


def test_shelf_packing_places_items_without_overlap_inside_the_canvas():
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 200, (60, 2))
    sizes[0] = (256, 256)  # a full canvas
    place = pack_shelves(sizes, canvas=256, gap=4)
    rect = np.c_[place[:, 1:], place[:, 1:] + sizes]
    assert (rect[:, 2:] <= 256).all() and (rect[:, :2] >= 0).all()
    for c in np.unique(place[:, 0]):
        r = rect[place[:, 0] == c]
        # grow by the gap: no two items may touch closer than `gap`
        g = np.c_[r[:, :2], r[:, 2:] + 4]
        inter = (np.minimum(g[:, None, 2], g[None, :, 2]) - np.maximum(g[:, None, 0], g[None, :, 0])).clip(0) * \
                (np.minimum(g[:, None, 3], g[None, :, 3]) - np.maximum(g[:, None, 1], g[None, :, 1])).clip(0)
        np.fill_diagonal(inter, 0)
        assert inter.max() == 0
    assert place[:, 0].max() + 1 <= 2 * np.ceil((sizes + 4).prod(axis=1).sum() / 256 ** 2) + 1
    with pytest.raises(ValueError, match="1..256 px"):
        pack_shelves(np.array([[300, 10]]), canvas=256)


def test_packing_then_unpacking_boxes_is_exact():
    rng = np.random.default_rng(3)
    xy = rng.integers(0, 1800, (40, 2))
    regions = np.c_[xy, xy + rng.integers(20, 400, (40, 2))]  # some larger than the canvas
    layout = layout_pieces(regions, canvas=256, gap=6, overlap=0.2)
    piece = rng.integers(0, len(layout), 500)
    lay = layout.set_index("piece").loc[piece]
    w, h = (lay["x1"] - lay["x0"]).to_numpy(), (lay["y1"] - lay["y0"]).to_numpy()
    # boxes inside their pieces, at 1/16 px (exact in binary floating point) ...
    a = np.floor(rng.uniform(0, 1, (500, 4)) * 16) / 16
    x1 = lay["x0"].to_numpy() + a[:, 0] * (w - 1)
    y1 = lay["y0"].to_numpy() + a[:, 1] * (h - 1)
    x2 = x1 + a[:, 2] * (lay["x1"].to_numpy() - x1)
    y2 = y1 + a[:, 3] * (lay["y1"].to_numpy() - y1)
    boxes = pd.DataFrame({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class": "c", "score": 0.5, "piece": piece})
    on_canvas = pack_boxes(boxes, layout)
    back = unpack_boxes(on_canvas.drop(columns="piece"), layout, min_inside=0.5)
    assert len(back) == len(boxes)
    np.testing.assert_array_equal(back[["x1", "y1", "x2", "y2"]].to_numpy(), boxes[["x1", "y1", "x2", "y2"]].to_numpy())
    # ... and at arbitrary float positions, exact to rounding
    jitter = rng.uniform(0, 0.999, 500)
    moved = boxes.assign(x1=x1 + jitter * (x2 - x1) * 0.01)
    back2 = unpack_boxes(pack_boxes(moved, layout).drop(columns="piece"), layout)
    np.testing.assert_allclose(back2["x1"].to_numpy(), moved["x1"].to_numpy(), rtol=0, atol=1e-9)
    assert back["piece"].tolist() == piece.tolist()


def test_canvas_boxes_on_the_fill_are_dropped_and_overhangs_clipped():
    layout = layout_pieces(np.array([[100, 100, 140, 130], [300, 300, 330, 340]]), canvas=128, gap=8, overlap=0.2)
    first = layout.set_index("piece").loc[0]
    cx, cy = int(first["cx"]), int(first["cy"])
    boxes = pd.DataFrame({"x1": [cx + 30.0, 120.0], "y1": [cy + 5.0, 120.0], "x2": [cx + 44.0, 127.0],
                          "y2": [cy + 15.0, 127.0], "class": "c", "score": 0.9, "canvas": 0})
    out = unpack_boxes(boxes, layout, min_inside=0.5)
    assert len(out) == 1  # the second box lies on the fill
    # 10 of 14 px inside piece 0 (40 px wide): clipped at its right edge x = 140
    assert out[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [130.0, 105.0, 140.0, 115.0]


def test_rendered_canvases_hold_the_pieces_at_full_resolution():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    layout = layout_pieces(np.array([[10, 20, 60, 90], [200, 100, 390, 290]]), canvas=128, gap=4, overlap=0.2)
    canvases = render_canvases(img, layout, canvas=128, fill=0)
    assert all(c.shape == (128, 128, 3) for c in canvases)
    for r in layout.itertuples():
        w, h = r.x1 - r.x0, r.y1 - r.y0
        np.testing.assert_array_equal(canvases[r.canvas][r.cy:r.cy + h, r.cx:r.cx + w], img[r.y0:r.y1, r.x0:r.x1])


SPARSE = [(100, 120, 130, 150), (600, 80, 636, 110), (612, 118, 640, 150),  # a pair near each other
          (1500, 900, 1530, 935), (300, 1400, 340, 1430)]
CLUSTER = [(1000 + 45 * i, 1500 + 45 * j, 1030 + 45 * i, 1530 + 45 * j) for i in range(8) for j in range(5)]


@pytest.mark.slow
def test_two_stage_finds_every_cell_once_and_reads_a_fraction_of_the_image():
    cells = SPARSE + CLUSTER  # the cluster's region (~360 x 220 px + margins) exceeds a 256 canvas
    img = blob_image(2000, 2000, cells)
    whole = BlobDetector()([img])[0]
    assert len(whole) == len(cells)
    fine = BlobDetector()
    s = TwoStageSettings(coarse_scale=0.25, coarse_tile=256, region_conf=0.5, margin=12, canvas=256, gap=8,
                         tile_overlap=0.25, batch=4, fill="median")
    table, info = two_stage_predict_image(img, BlobDetector(), fine, settings=s, name="big")
    assert len(table) == len(cells)
    np.testing.assert_array_equal(sorted_boxes(table), sorted_boxes(whole))  # merged pieces are exact
    assert info["regions"] >= 5 and info["pieces"] > info["regions"]  # the cluster region was tiled
    assert info["area_share"] < 0.15 and 1 <= info["canvases"] < info["pieces"]  # several pieces per canvas
    assert max(fine.calls) <= 4 and sum(fine.calls) == info["canvases"]
    assert info["stage1_s"] > 0 and info["stage2_s"] > 0
    # several images, and an image without cells (no regions, no canvases)
    table2, infos = two_stage_predict(BlobDetector(), {"big": img, "empty": np.zeros((500, 500), np.uint8)},
                                      fine=BlobDetector(), settings=s)
    assert len(table2) == len(cells) and set(table2["image"]) == {"big"}
    assert infos.set_index("image").loc["empty", "canvases"] == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="coarse_scale"):
        TwoStageSettings(coarse_scale=0)
    with pytest.raises(ValueError, match="max_size"):
        TwoStageSettings(min_size=10, max_size=5)
    with pytest.raises(ValueError, match="fill"):
        TwoStageSettings(fill="mean")
