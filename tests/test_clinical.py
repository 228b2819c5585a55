"""Clinical rates on hand-built cases with known answers (incl. empty images and images
without positive cells), groups, bootstrap CIs, quality targets and the system comparison."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.evaluation.clinical import (
    ALL, PRESETS, clinical_rates, clinical_report, compare_systems, image_counts, pass_fail, quality_targets, rates_from_counts)


def box(image, cls, x, y, s=10, score=None):
    row = {"image": image, "class": cls, "x1": float(x), "y1": float(y), "x2": float(x + s), "y2": float(y + s)}
    if score is not None:
        row["score"] = score
    return row


def table(rows, pred=False):
    cols = ["image", "class", "x1", "y1", "x2", "y2"] + (["score"] if pred else [])
    return pd.DataFrame(rows, columns=cols)


@pytest.fixture
def case():
    """Image A: 2 positive (MN) + 2 negative (N) GT cells.
    - MN at (0,0) found as MN         -> detected, correct, true positive
    - MN at (20,0) found as N         -> detected, wrong class, false negative
    - N at (40,0) found as MN         -> detected, wrong class, false positive
    - N at (60,0) missed
    - spurious MN prediction at (100, 100) -> false positive
    Image B: 1 negative GT found as N; no positive cells at all.
    Image C: no GT, no predictions.
    """
    gt = table([box("A", "MN", 0, 0), box("A", "MN", 20, 0), box("A", "N", 40, 0), box("A", "N", 60, 0),
                box("B", "N", 0, 0)])
    pred = table([box("A", "MN", 0, 0, score=0.9), box("A", "N", 20, 0, score=0.8),
                  box("A", "MN", 40, 0, score=0.7), box("A", "MN", 100, 100, score=0.6),
                  box("B", "N", 1, 0, score=0.9)], pred=True)
    return gt, pred


def value(rates, metric, group=ALL):
    row = rates[(rates["metric"] == metric) & (rates["group"] == group)].iloc[0]
    return row["value"], row["count"], row["total"]


def test_each_rate_on_a_hand_built_case(case):
    gt, pred = case
    rates = clinical_rates(gt, pred, positive=["MN"], images=["A", "B", "C"], n_boot=0)
    assert value(rates, "detection_rate") == (4 / 5, 4, 5)
    assert value(rates, "classification_rate") == (2 / 4, 2, 4)  # (0,0) MN and image B's N
    assert value(rates, "fp_rate") == (2 / 3, 2, 3)  # N called MN, and the spurious MN
    assert value(rates, "fn_rate") == (1 / 2, 1, 2)  # MN called N
    assert rates["n_images"].iloc[0] == 3


def test_per_image_counts_with_empty_image_and_no_positive_cells(case):
    gt, pred = case
    counts = image_counts(gt, pred, positive="MN", images=["A", "B", "C"]).set_index("image")
    assert counts.loc["A"].to_dict() == {"n_gt": 4, "n_detected": 3, "n_correct": 1, "n_pred": 4,
                                         "n_pred_pos": 3, "n_false_pos": 2, "n_gt_pos": 2, "n_false_neg": 1}
    assert counts.loc["B"].to_dict() == {"n_gt": 1, "n_detected": 1, "n_correct": 1, "n_pred": 1,
                                         "n_pred_pos": 0, "n_false_pos": 0, "n_gt_pos": 0, "n_false_neg": 0}
    assert (counts.loc["C"] == 0).all()
    # image B alone: no positive cells, no positive calls -> FP and FN rates undefined (NaN), not 0
    only_b = clinical_rates(gt, pred, positive="MN", images=["B"], n_boot=50)
    assert value(only_b, "detection_rate")[0] == 1.0
    assert math.isnan(value(only_b, "fp_rate")[0]) and math.isnan(value(only_b, "fn_rate")[0])
    # image C alone: nothing at all -> every rate NaN, CIs NaN
    only_c = clinical_rates(gt, pred, positive="MN", images=["C"], n_boot=50)
    assert only_c["value"].isna().all() and only_c["lo"].isna().all()


def test_several_positive_classes_mixing_them_is_not_a_false_positive():
    gt = table([box("A", "WBC", 0, 0), box("A", "Platelets", 20, 0), box("A", "RBC", 40, 0)])
    pred = table([box("A", "Platelets", 0, 0, score=1), box("A", "Platelets", 20, 0, score=1),
                  box("A", "RBC", 40, 0, score=1)], pred=True)
    rates = clinical_rates(gt, pred, positive=["WBC", "Platelets"], n_boot=0)
    assert value(rates, "fp_rate") == (0.0, 0, 2)
    assert value(rates, "fn_rate") == (0.0, 0, 2)
    assert value(rates, "classification_rate") == (2 / 3, 2, 3)


def test_perfect_and_empty_predictions(case):
    gt, _ = case
    perfect = gt.assign(score=1.0)
    rates = clinical_rates(gt, perfect, positive="MN", n_boot=20)
    assert rates.set_index("metric")["value"].to_dict() == {"detection_rate": 1.0, "classification_rate": 1.0,
                                                            "fp_rate": 0.0, "fn_rate": 0.0}
    assert (rates["lo"] == rates["value"]).all() and (rates["hi"] == rates["value"]).all()
    none = table([], pred=True)
    rates = clinical_rates(gt, none, positive="MN", n_boot=20).set_index("metric")
    assert rates.loc["detection_rate", "value"] == 0.0 and rates.loc["fn_rate", "value"] == 1.0
    assert math.isnan(rates.loc["classification_rate", "value"]) and math.isnan(rates.loc["fp_rate", "value"])


def test_score_threshold_and_iou(case):
    gt, pred = case
    # dropping predictions below 0.75 removes the N->MN call and the spurious MN
    rates = clinical_rates(gt, pred, positive="MN", score_thr=0.75, n_boot=0)
    assert value(rates, "fp_rate") == (0.0, 0, 1)
    # image B's prediction is shifted by 1 px: IoU 9/11 = 0.818; at IoU 0.9 it no longer matches
    strict = clinical_rates(gt, pred, positive="MN", iou_thr=0.9, n_boot=0)
    assert value(strict, "detection_rate") == (3 / 5, 3, 5)


def test_groups_and_bootstrap_are_seeded(case):
    gt, pred = case
    meta = pd.DataFrame({"image_id": ["A", "B", "C"], "dose": ["high", "low", "low"]})
    rates = clinical_rates(gt, pred, positive="MN", group_by="dose", meta=meta, n_boot=200, seed=3)
    assert set(rates["group"]) == {ALL, "high", "low"}
    assert value(rates, "detection_rate", "high") == (3 / 4, 3, 4)
    assert value(rates, "detection_rate", "low") == (1.0, 1, 1)
    assert rates.loc[rates["group"] == "low", "n_images"].iloc[0] == 2
    again = clinical_rates(gt, pred, positive="MN", group_by="dose", meta=meta, n_boot=200, seed=3)
    pd.testing.assert_frame_equal(rates, again)
    ok = rates.dropna(subset=["lo"])
    assert ((ok["lo"] <= ok["value"] + 1e-12) & (ok["value"] <= ok["hi"] + 1e-12)).all()
    with pytest.raises(ValueError, match="needs meta"):
        clinical_rates(gt, pred, positive="MN", group_by="dose")
    with pytest.raises(ValueError, match="no column 'centre'"):
        clinical_rates(gt, pred, positive="MN", group_by="centre", meta=meta)


@pytest.mark.slow
def test_bootstrap_interval_matches_a_direct_resampling():
    """The weighted bootstrap equals recomputing the pooled rate on resampled images."""
    rng = np.random.default_rng(0)
    counts = pd.DataFrame({"image": [f"i{k}" for k in range(30)]})
    for col in ["n_gt", "n_detected", "n_correct", "n_pred", "n_pred_pos", "n_false_pos", "n_gt_pos", "n_false_neg"]:
        counts[col] = 0
    counts["n_gt"] = rng.integers(5, 20, 30)
    counts["n_detected"] = (counts["n_gt"] * rng.uniform(0.5, 1, 30)).astype(int)
    out = rates_from_counts(counts, n_boot=2000, seed=1).set_index("metric")
    rng2 = np.random.default_rng(1)
    direct = []
    for _ in range(2000):
        w = rng2.multinomial(30, np.full(30, 1 / 30))
        direct.append((w * counts["n_detected"]).sum() / (w * counts["n_gt"]).sum())
    lo, hi = np.percentile(direct, [2.5, 97.5])
    assert out.loc["detection_rate", "lo"] == pytest.approx(lo)
    assert out.loc["detection_rate", "hi"] == pytest.approx(hi)
    assert out.loc["detection_rate", "value"] == counts["n_detected"].sum() / counts["n_gt"].sum()
    assert rates_from_counts(counts, n_boot=2000, seed=2).set_index("metric").loc["detection_rate", "lo"] != lo


def test_report_dict_for_metrics_json(case):
    gt, pred = case
    meta = pd.DataFrame({"dose": ["high", "low", "low"]}, index=pd.Index(["A", "B", "C"], name="image_id"))
    rep = clinical_report(gt, pred.assign(image=pred["image"]), positive=["MN"], group_by="dose", meta=meta,
                          n_boot=100, seed=0)
    assert rep["n_images"] == 3 and rep["positive"] == ["MN"]
    assert set(rep["overall"]) == {"detection_rate", "classification_rate", "fp_rate", "fn_rate"}
    assert rep["overall"]["detection_rate"]["value"] == pytest.approx(0.8)
    assert set(rep["overall"]["fp_rate"]) >= {"value", "lo", "hi"}
    assert set(rep["groups"]) == {"high", "low"} and rep["groups"]["low"]["n_images"] == 2
    assert rep["groups"]["low"]["fn_rate"]["value"] is None  # no positive cells in the low group
    # predictions on images outside meta are left out and counted
    extra = pd.concat([pred, table([box("Z", "MN", 0, 0, score=1)], pred=True)], ignore_index=True)
    rep2 = clinical_report(gt, extra, positive="MN", meta=meta, n_boot=0)
    assert rep2["predictions_outside_images"] == 1
    assert rep2["overall"]["fp_rate"]["value"] == rep["overall"]["fp_rate"]["value"]
    import json

    json.dumps(rep)  # JSON-ready


def test_positive_class_errors(case):
    gt, pred = case
    with pytest.raises(ValueError, match="occur neither"):
        clinical_rates(gt, pred, positive="mn", n_boot=0)
    with pytest.raises(ValueError, match="not among the classes"):
        clinical_rates(gt, pred, positive="X", classes=["MN", "N"], n_boot=0)
    with pytest.raises(ValueError, match="lacks columns"):
        clinical_rates(gt, pred.drop(columns="score"), positive="MN")


def test_pass_fail_against_presets(case):
    gt, pred = case
    perfect = clinical_rates(gt, gt.assign(score=1.0), positive="MN", n_boot=50)
    judged = pass_fail(perfect, "micronuclei")
    assert judged["passed"].all() and judged["passed_ci"].all()
    assert judged.set_index("metric").loc["fp_rate", "rule"] == "<"
    bad = pass_fail(clinical_rates(gt, pred, positive="MN", n_boot=0), "chromosome_aberrations")
    assert not bad["passed"].any()
    assert bad["passed_ci"].isna().all()  # no CIs computed
    assert PRESETS["micronuclei"].classification_rate == 0.95
    custom = quality_targets({"detection_rate": 0.5, "classification_rate": 0.5, "fp_rate": 0.7, "fn_rate": 0.6})
    assert pass_fail(clinical_rates(gt, pred, positive="MN", n_boot=0), custom)["passed"].all()
    with pytest.raises(ValueError, match="presets"):
        quality_targets("blood")
    with pytest.raises(ValueError, match="missing"):
        quality_targets({"detection_rate": 0.5})


def test_compare_systems_on_the_same_images(case):
    gt, pred = case
    det_only = pred.assign(**{"class": "N"})
    table_ = compare_systems(gt, {"detector-only": det_only, "cascade": pred}, positive="MN", n_boot=100, seed=0)
    assert list(table_.columns[:3]) == ["system", "group", "metric"]
    assert set(table_["system"]) == {"detector-only", "cascade"}
    wide = table_.pivot(index="metric", columns="system", values="value")
    # same boxes: same detection rate; the detector-only table never calls a cell positive
    assert wide.loc["detection_rate", "cascade"] == wide.loc["detection_rate", "detector-only"]
    assert wide.loc["fn_rate", "detector-only"] == 1.0
    assert table_.groupby("system")["n_images"].first().nunique() == 1


@pytest.mark.slow
def test_evaluate_cli_applies_the_score_threshold_to_the_clinical_rates(tmp_path):
    """Hand-built case: 4 correct boxes at 0.9 and 4 junk boxes at 0.05. At --score-thr 0.5 the
    junk is below the operating point, so the clinical FP rate is 0 (it was 4/8 when the rates
    ignored the threshold) and the threshold is recorded."""
    import json

    from workbench.cli import main

    cells = [(10 + 40 * i, 10, 40 + 40 * i, 40) for i in range(4)]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
            "categories": [{"id": 1, "name": "WBC"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "area": (x2 - x1) * (y2 - y1), "iscrowd": 0} for i, (x1, y1, x2, y2) in enumerate(cells)]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    good = [("a", x1, y1, x2, y2, "WBC", 0.9) for x1, y1, x2, y2 in cells]
    junk = [("a", x1, 60, x2, 90, "WBC", 0.05) for x1, _, x2, _ in cells]
    pd.DataFrame(good + junk, columns=["image", "x1", "y1", "x2", "y2", "class", "score"]).to_csv(
        tmp_path / "pred.csv", index=False)

    def rates(thr: float) -> dict:
        out = tmp_path / f"eval_{thr}"
        assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.csv"),
                     "--out", str(out), "--positive", "WBC", "--score-thr", str(thr), "--n-boot", "0"]) == 0
        return json.loads((out / "metrics.json").read_text())["clinical"]

    at_half = rates(0.5)
    assert at_half["score_thr"] == 0.5
    assert at_half["overall"]["fp_rate"]["value"] == 0.0
    assert at_half["overall"]["detection_rate"]["value"] == 1.0
    at_low = rates(0.01)  # the junk is now above the operating point: 4 of 8 positive predictions are FP
    assert at_low["overall"]["fp_rate"]["value"] == 0.5


def test_evaluate_refuses_predictions_that_name_no_ground_truth_image():
    """mAP 0 because every image name is wrong is an input error, not a result."""
    from workbench.evaluation.files import GroundTruth, evaluate_tables

    gt = GroundTruth(pd.DataFrame({"image": ["a"], "class": ["WBC"], "x1": [0.0], "y1": [0.0], "x2": [9.0],
                                   "y2": [9.0]}), ["a"], ["WBC"], None, None, "constructed")
    pred = pd.DataFrame({"image": ["a.jpg"], "x1": [0.0], "y1": [0.0], "x2": [9.0], "y2": [9.0],
                         "class": ["WBC"], "score": [0.9]})
    with pytest.raises(ValueError, match="no prediction names an image of the ground truth constructed"):
        evaluate_tables(gt, pred, n_boot=0)
    doc, _ = evaluate_tables(gt, pred.assign(image="a"), n_boot=0)
    assert doc["map50"] == pytest.approx(1.0)
