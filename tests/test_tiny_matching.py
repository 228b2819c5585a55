"""Tests for workbench.evaluation.tiny_matching: hand-built tiny boxes, agreement with metrics.match, real MN boxes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.evaluation import metrics
from workbench.evaluation import tiny_matching as tm
from workbench.evaluation.tiny_matching import Criterion


def boxes(rows, *, scores=None, image="a", cls="mn") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2"], dtype=float)
    df.insert(0, "class", cls)
    df.insert(0, "image", image)
    if scores is not None:
        df["score"] = scores
    return df


def test_a_one_pixel_shift_of_a_5px_box_fails_iou50_only_twice_shifted_but_passes_centre_3px():
    gt = boxes([[10, 10, 15, 15]])
    one = boxes([[11, 10, 16, 15]], scores=[0.9])  # IoU 20/30 = 0.667
    two = boxes([[11, 11, 16, 16]], scores=[0.9])  # IoU 16/34 = 0.47, centre distance sqrt(2)
    assert tm.iou_matrix(gt[tm.BOX], one[tm.BOX])[0, 0] == pytest.approx(20 / 30)
    assert tm.iou_matrix(gt[tm.BOX], two[tm.BOX])[0, 0] == pytest.approx(16 / 34)
    for crit, expected in ((tm.IOU50, "fn"), (tm.CENTRE3, "tp"), (tm.MIN8_IOU50, "tp")):
        m = tm.match(gt, two, crit)
        assert m.loc[m["kind"] == "gt", "outcome"].item() == expected, crit.label()
    m = tm.match(gt, two, tm.CENTRE3)
    assert m.loc[m["kind"] == "gt", "distance"].item() == pytest.approx(np.sqrt(2))


def test_min_size_iou_grows_both_boxes_about_their_centres():
    grown = tm.grow_to(np.array([[10, 10, 15, 15], [0, 0, 20, 4]]), 8)
    assert grown.tolist() == [[8.5, 8.5, 16.5, 16.5], [0, -2, 20, 6]]
    # two 5x5 boxes 3 px apart: IoU 0.25 natively, 5x8/(2*64-40) = 0.4545 at min 8 px, 0.5 needs min 9 px
    gt, pred = boxes([[10, 10, 15, 15]]), boxes([[13, 10, 18, 15]], scores=[0.5])
    ok8, iou8 = tm.fit_matrix(gt[tm.BOX].to_numpy(), pred[tm.BOX].to_numpy(), Criterion("min_size_iou", 0.5, 8))
    assert iou8[0, 0] == pytest.approx(40 / 88) and not ok8[0, 0]
    ok9, _ = tm.fit_matrix(gt[tm.BOX].to_numpy(), pred[tm.BOX].to_numpy(), Criterion("min_size_iou", 0.5, 9))
    assert ok9[0, 0]


def test_centre_distance_threshold_is_inclusive_and_one_to_one():
    gt = boxes([[0, 0, 4, 4], [20, 0, 24, 4]])
    pred = boxes([[3, 0, 7, 4], [1, 0, 5, 4], [40, 40, 44, 44]], scores=[0.9, 0.8, 0.7])
    m = tm.match(gt, pred, Criterion("centre", 3))
    p = m[m["kind"] == "pred"].set_index("pred_id")
    # the higher-scored prediction (3 px away, exactly at the threshold) takes GT 0; the closer one is then FP
    assert p.loc[0, "outcome"] == "tp" and p.loc[0, "gt_id"] == 0 and p.loc[0, "distance"] == 3
    assert p.loc[1, "outcome"] == "fp" and p.loc[2, "outcome"] == "fp"
    g = m[m["kind"] == "gt"].set_index("gt_id")
    assert g["outcome"].tolist() == ["tp", "fn"]
    assert set(m["criterion"]) == {"centre<=3px"}


def test_a_prediction_takes_the_nearest_free_gt_and_classes_do_not_mix():
    gt = pd.concat([boxes([[0, 0, 4, 4], [2, 0, 6, 4]]), boxes([[0, 0, 30, 30]], cls="nucleus")], ignore_index=True)
    pred = pd.concat([boxes([[2.5, 0, 6.5, 4]], scores=[0.9]),
                      boxes([[1, 1, 31, 31]], scores=[0.8], cls="nucleus")], ignore_index=True)
    m = tm.match(gt, pred, tm.TINY_DEFAULTS)
    p = m[m["kind"] == "pred"].set_index("pred_id")
    assert p.loc[0, "gt_id"] == 1  # 0.5 px from GT 1, 2.5 px from GT 0
    assert p.loc[1, "gt_id"] == 2 and p.loc[1, "criterion"] == "IoU0.5"
    prf = tm.prf(gt, pred, tm.TINY_DEFAULTS, score_thr=0.5).set_index("class")
    assert prf.loc["mn", ["tp", "fp", "fn"]].tolist() == [1, 0, 1]
    assert prf.loc["nucleus", "recall"] == 1.0 and prf.loc["mn", "criterion"] == "centre<=3px"


def test_missing_criterion_for_a_class_is_named():
    gt = boxes([[0, 0, 4, 4]], cls="nucleus")
    with pytest.raises(ValueError, match="no matching criterion for class 'nucleus'"):
        tm.match(gt, boxes([], scores=[]), {"mn": tm.CENTRE3})


@pytest.mark.parametrize("bad", [dict(kind="dice"), dict(kind="iou", threshold=0), dict(kind="centre", threshold=-1),
                                 dict(kind="min_size_iou", threshold=0.5, min_size=0)])
def test_bad_criteria_are_rejected(bad):
    with pytest.raises(ValueError):
        Criterion(**bad)


def test_empty_tables():
    m = tm.match(boxes([]), boxes([], scores=[]), tm.CENTRE3)
    assert m.empty
    m = tm.match(boxes([[0, 0, 5, 5]]), boxes([], scores=[]), tm.CENTRE3)
    assert m["outcome"].tolist() == ["fn"]
    m = tm.match(boxes([]), boxes([[0, 0, 5, 5]], scores=[0.3]), tm.CENTRE3)
    assert m["outcome"].tolist() == ["fp"]


def test_iou_criterion_gives_the_outcomes_of_metrics_match():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, size=(40, 2))
    wh = rng.uniform(3, 9, size=(40, 2))
    gt = boxes(np.hstack([xy, xy + wh]))
    gt["image"] = np.where(np.arange(40) % 2, "a", "b")
    jittered = np.hstack([xy, xy + wh]) + rng.normal(0, 1.2, size=(40, 4))
    jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2] + 0.5)
    pred = boxes(jittered, scores=rng.permutation(40) / 40)
    pred["image"] = gt["image"]
    extra = rng.uniform(0, 60, (10, 2))
    pred = pd.concat([pred, boxes(np.hstack([extra, extra + 5]),
                                  scores=rng.uniform(0, 1, 10), image="a")], ignore_index=True)
    ours = tm.match(gt, pred, tm.IOU50)
    ref = metrics.match(gt, pred, iou_thr=0.5)
    cols = ["kind", "gt_id", "pred_id", "outcome"]
    pd.testing.assert_frame_equal(ours[cols].reset_index(drop=True), ref[cols].reset_index(drop=True))
    assert np.allclose(ours["iou"].to_numpy(float), ref["iou"].to_numpy(float), equal_nan=True)


def test_real_mnfinder_annotations_against_themselves_shifted():
    """Real GT micronuclei shifted diagonally by 1 px: centre distance keeps them, IoU 0.5 loses many."""
    from workbench.data import datasets
    from workbench.evaluation.files import load_ground_truth

    gt = load_ground_truth(datasets.prepare("mnfinder"), split="val").boxes
    gt = gt[gt["class"] == "mn"].reset_index(drop=True)
    pred = gt.copy()
    pred[["x1", "x2"]] += 1.0
    pred[["y1", "y2"]] += 1.0
    pred["score"] = 1.0
    table = tm.prf_by_criterion(gt, pred, classes=["mn"])
    recall = table.set_index("criterion")["recall"]
    assert recall["centre<=3px"] == 1.0
    assert recall["IoU0.5"] < recall["IoU0.5@min8px"] <= 1.0
    assert recall["IoU0.5"] < 0.9  # tiny boxes: a diagonal 1 px shift is enough to fail IoU 0.5


def test_clinical_counts_use_the_per_class_criteria():
    gt = pd.concat([boxes([[10, 10, 15, 15]]), boxes([[40, 40, 70, 70]], cls="nucleus")], ignore_index=True)
    pred = pd.concat([boxes([[11, 11, 16, 16]], scores=[0.9]),  # MN found at 1.4 px (IoU 0.47)
                      boxes([[100, 100, 105, 105]], scores=[0.8]),  # spurious MN
                      boxes([[41, 41, 71, 71]], scores=[0.9], cls="nucleus")], ignore_index=True)
    c = tm.clinical_counts(gt, pred, positive="mn", images=["a", "b"]).set_index("image")
    assert c.loc["a", ["n_gt", "n_detected", "n_correct", "n_pred_pos", "n_false_pos", "n_false_neg"]].tolist() == \
        [2, 2, 2, 2, 1, 0]
    assert c.loc["b"].sum() == 0
