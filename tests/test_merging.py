"""NMS / NMM over box tables: cut cells merge once, touching cells stay apart, agreement with
torchvision's NMS and a brute-force overlap search."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.inference.merging import merge_table, nmm, nms, overlap, overlap_pairs, union_boxes
from workbench.evaluation.metrics import box_iou


def _table(rows, columns=("x1", "y1", "x2", "y2", "class", "score", "tile")):
    return pd.DataFrame(rows, columns=list(columns))


def test_cell_cut_by_a_tile_edge_is_reported_once_with_its_whole_box():
    # tile 0 spans x 0..256 and sees only the left 6 px of the cell; tile 1 sees it whole
    t = _table([(250, 100, 256, 120, "cell", 0.6, 0), (250, 100, 280, 120, "cell", 0.9, 1)])
    nmm_out = merge_table(t, method="nmm", metric="ios", threshold=0.5, source="tile")
    assert len(nmm_out) == 1
    assert nmm_out[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [250, 100, 280, 120]
    assert nmm_out["n_merged"].tolist() == [2]
    assert len(merge_table(t, method="nms", metric="ios", threshold=0.5, source="tile")) == 1
    # IoU of the piece with the whole cell is 6/30 = 0.2: IoU-NMS would count it twice
    assert len(merge_table(t, method="nms", metric="iou", threshold=0.5, source="tile")) == 2


def test_cut_boxes_complete_a_winning_piece_and_whole_boxes_stay_tight():
    # the partial piece scores higher than the whole view: it wins and is completed
    t = _table([(250, 100, 256, 120, "cell", 0.9, 0), (250, 100, 280, 120, "cell", 0.6, 1)]).assign(cut=[True, False])
    out = merge_table(t, method="nmm", metric="ios", source="tile", cut="cut")
    assert out[["x1", "x2", "score"]].iloc[0].tolist() == [250, 280, 0.9]
    # a whole winner absorbs a slightly offset duplicate and a lower second box of the same
    # other tile, and keeps its own box (a union would grow it past the cell)
    t = _table([(100, 100, 120, 120, "cell", 0.9, 0), (103, 102, 123, 122, "cell", 0.8, 1),
                (101, 101, 119, 121, "cell", 0.4, 1)]).assign(cut=False)
    out = merge_table(t, method="nmm", metric="ios", source="tile", cut="cut")
    assert len(out) == 1 and out[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [100, 100, 120, 120]
    assert out["n_merged"].tolist() == [3]


def test_union_of_two_partial_pieces_is_the_whole_cell():
    # a cell cut in both tiles (wider than the overlap strip 240..256): left and right pieces
    t = _table([(230, 50, 256, 70, "cell", 0.7, 0), (240, 50, 275, 70, "cell", 0.8, 1)])
    out = merge_table(t, method="nmm", metric="ios", threshold=0.5, source="tile")
    assert out[["x1", "x2"]].iloc[0].tolist() == [230, 275] and out["score"].iloc[0] == 0.8


def test_touching_cells_stay_two_and_one_box_per_other_tile_is_absorbed():
    # two touching nuclei whose boxes overlap (IoS 0.6), each seen by tiles 0 and 1
    t = _table([(0, 0, 20, 20, "cell", 0.90, 0), (8, 0, 28, 20, "cell", 0.85, 0),
                (0.5, 0, 20.5, 20, "cell", 0.80, 1), (8, 0, 28, 20, "cell", 0.70, 1)])
    out = merge_table(t, method="nmm", metric="ios", threshold=0.5, source="tile")
    assert len(out) == 2
    np.testing.assert_allclose(out[["x1", "x2"]].to_numpy(), [[0, 20.5], [8, 28]])
    # without sources every box may absorb every other: the greedy merge joins the two cells
    assert len(merge_table(t, method="nmm", metric="ios", threshold=0.5)) == 1


def test_classes_and_images_never_merge():
    t = _table([(0, 0, 10, 10, "a", 0.9, 0), (0, 0, 10, 10, "b", 0.8, 1)])
    assert len(merge_table(t, method="nmm", source="tile")) == 2
    t2 = t.assign(**{"class": "a"}, image=["i1", "i2"])
    assert len(merge_table(t2, method="nms", by=("image", "class"), source="tile")) == 2
    assert len(merge_table(t2, method="nms", by=("class",), source="tile")) == 1


def test_same_source_boxes_are_left_to_the_detector():
    t = _table([(0, 0, 10, 10, "a", 0.9, 0), (0, 0, 10, 10, "a", 0.8, 0)])
    assert len(merge_table(t, method="nms", metric="iou", source="tile")) == 2
    assert len(merge_table(t, method="nms", metric="iou")) == 1


def _random_boxes(n, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(4, 45, (n, 2))
    return np.c_[xy, xy + wh], rng.uniform(size=n), rng.integers(0, 3, n)


@pytest.mark.parametrize("metric", ["iou", "ios"])
def test_overlap_pairs_equal_a_brute_force_search(metric):
    boxes, _, groups = _random_boxes(700, seed=1)
    sources = np.arange(700) % 4
    i, j, v = overlap_pairs(boxes, metric=metric, threshold=0.25, groups=groups, sources=sources)
    a = np.repeat(np.arange(700), 700)
    b = np.tile(np.arange(700), 700)
    full = overlap(boxes[a], boxes[b], metric=metric).reshape(700, 700)
    if metric == "iou":
        np.testing.assert_allclose(full, box_iou(boxes, boxes), atol=1e-12)
    want = (full >= 0.25) & (full > 0) & (groups[:, None] == groups[None]) & (sources[:, None] != sources[None])
    bi, bj = np.nonzero(np.triu(want, 1))
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    np.testing.assert_allclose(v, full[bi, bj])


@pytest.mark.slow  # importing torchvision, the reference, takes seconds
def test_nms_equals_torchvision_batched_nms():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    boxes, scores, groups = _random_boxes(2000, seed=2)
    keep = nms(boxes, scores, threshold=0.5, metric="iou", groups=groups)
    ref = ops.batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups), 0.5).numpy()
    assert np.array_equal(keep, ref)  # both in descending score order


def test_nmm_labels_representatives_and_union():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 12, 10], [50, 50, 60, 60]], dtype=float)
    label, reps, joined = nmm(boxes, np.array([0.5, 0.9, 0.7]), threshold=0.5, metric="ios")
    assert reps.tolist() == [1, 2] and label.tolist() == [0, 0, 1] and joined.all()
    np.testing.assert_array_equal(union_boxes(boxes, label, 2), [[0, 0, 12, 10], [50, 50, 60, 60]])
    # with cut flags only a cut representative is completed
    _, _, joined = nmm(boxes, np.array([0.5, 0.9, 0.7]), threshold=0.5, cut=[False, False, False])
    assert joined.tolist() == [False, True, True]
    np.testing.assert_array_equal(union_boxes(boxes, label, 2, joined=joined), [[5, 0, 12, 10], [50, 50, 60, 60]])


def test_empty_and_bad_input():
    empty = _table([])
    assert merge_table(empty, source="tile").empty
    assert nms(np.zeros((0, 4)), np.zeros(0)).size == 0
    with pytest.raises(ValueError, match="x2 < x1"):
        nms(np.array([[5, 0, 1, 1.0]]), np.array([1.0]))
    with pytest.raises(ValueError, match="metric"):
        nms(np.zeros((1, 4)), np.ones(1), metric="dice")
    with pytest.raises(ValueError, match="one value per box"):
        overlap_pairs(np.zeros((2, 4)), groups=[1])
    with pytest.raises(ValueError, match="lacks columns"):
        merge_table(_table([]).drop(columns="score"))
    with pytest.raises(ValueError, match="merge method"):
        merge_table(_table([]), method="wbf")
