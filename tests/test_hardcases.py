"""The hard-case queue: outcome roles from workbench.evaluation.metrics.match, per-image counts, queue order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.inspection import hardcases
from workbench.evaluation.files import load_ground_truth
from workbench.inspection.hardcases import DISPLAY_COLOURS, build_queue, step, text_shown


def _gt(rows):
    return pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2"])


def _pred(rows):
    return pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2", "score"])


@pytest.fixture
def hand_built():
    """Five images whose outcomes are known by construction (boxes far apart or identical)."""
    gt = _gt([
        ("a", "RBC", 0, 0, 10, 10),      # found
        ("a", "RBC", 50, 50, 60, 60),    # missed
        ("a", "WBC", 80, 80, 95, 95),    # missed
        ("b", "RBC", 0, 0, 10, 10),      # detected as WBC: wrong class
        ("c", "RBC", 0, 0, 10, 10),      # found
        ("d", "WBC", 0, 0, 20, 20),      # found (class changed by the classifier)
    ])
    pred = _pred([
        ("a", "RBC", 0, 0, 10, 10, 0.9),   # TP
        ("a", "RBC", 30, 30, 40, 40, 0.8),  # FP
        ("b", "WBC", 0, 0, 10, 10, 0.7),   # wrong class (FP + the GT's FN)
        ("c", "RBC", 0, 0, 10, 10, 0.95),  # TP
        ("c", "RBC", 70, 70, 80, 80, 0.1),  # below score_thr: dropped
        ("d", "WBC", 0, 0, 20, 20, 0.6),   # TP, changed
    ]).assign(changed=[False, False, False, False, False, True], det_class=["RBC", "RBC", "WBC", "RBC", "RBC", "RBC"])
    return gt, pred


def test_roles_and_counts_of_a_hand_built_evaluation(hand_built):
    gt, pred = hand_built
    q = build_queue(gt, pred, images=["a", "b", "c", "d", "e"], score_thr=0.25)
    assert q.gt["display"].tolist() == ["gt_tp", "fn", "fn", "wrong_class", "gt_tp", "gt_tp"]
    assert q.gt["outcome"].tolist() == ["tp", "fn", "fn", "fn", "tp", "tp"]
    assert q.pred["display"].tolist() == ["tp", "fp", "wrong_class", "tp", "changed"]
    assert len(q.pred) == 5  # the 0.1 prediction is below score_thr and not counted
    s = q.summary.set_index("image")
    assert s.loc["a", ["n_gt", "n_pred", "tp", "fp", "fn", "misclassified"]].tolist() == [3, 2, 1, 1, 2, 0]
    assert s.loc["b", ["tp", "fp", "fn", "misclassified"]].tolist() == [0, 1, 1, 1]
    assert s.loc["d", "changed"] == 1
    assert s.loc["e", ["n_gt", "n_pred", "errors"]].tolist() == [0, 0, 0]
    assert s.loc["a", "precision"] == 0.5 and s.loc["a", "recall"] == pytest.approx(1 / 3)
    assert np.isnan(s.loc["e", "precision"])
    # FN first, then FP, then misclassified, then classifier changes, then name
    assert q.images == ["a", "b", "d", "c", "e"]
    # text: predictions show class and score, a changed one the detector's class too
    assert q.pred["label"].tolist()[:2] == ["RBC 0.90", "RBC 0.80"]
    assert q.pred["label"].iloc[-1] == "RBC\u2192WBC 0.60"


def test_queue_order_puts_false_negatives_before_false_positives():
    gt = _gt([("fp_only", "c", 0, 0, 10, 10), ("fn_only", "c", 0, 0, 10, 10)])
    pred = _pred([("fp_only", "c", 0, 0, 10, 10, 0.9), ("fp_only", "c", 40, 40, 50, 50, 0.9),
                  ("fp_only", "c", 60, 60, 70, 70, 0.9)])
    q = build_queue(gt, pred)
    assert q.images == ["fn_only", "fp_only"]  # 1 FN outranks 2 FP


def test_misclassified_boxes_need_a_located_partner():
    gt = _gt([("x", "RBC", 0, 0, 10, 10)])
    pred = _pred([("x", "WBC", 5, 5, 15, 15, 0.9)])  # IoU 25/175 < 0.5: not located
    q = build_queue(gt, pred)
    assert q.gt["display"].tolist() == ["fn"] and q.pred["display"].tolist() == ["fp"]
    assert q.summary["misclassified"].tolist() == [0]


def test_step_clamps_and_text_rule():
    assert step(0, 5, -1) == 0 and step(4, 5, +1) == 4 and step(2, 5, +1) == 3
    with pytest.raises(ValueError, match="empty"):
        step(0, 0, 1)
    disp = np.array(["gt_tp", "fn", "tp", "fp"])
    assert text_shown(disp, "auto").all()
    assert text_shown(disp, "errors").tolist() == [False, True, False, True]
    assert text_shown(np.array(["tp"] * 200 + ["fp"]), "auto").sum() == 1  # dense: errors only
    with pytest.raises(ValueError, match="text mode"):
        text_shown(disp, "some")


def test_bad_tables_give_clear_errors(hand_built):
    gt, pred = hand_built
    with pytest.raises(ValueError, match="missing column"):
        build_queue(gt.drop(columns="x1"), pred)
    with pytest.raises(ValueError, match="score_thr"):
        build_queue(gt, pred, score_thr=1.5)


def test_load_queue_on_real_bccd_counts_dropped_boxes_as_false_negatives(bccd_canonical):
    truth = load_ground_truth(bccd_canonical, split="val")
    rng = np.random.default_rng(0)
    drop = rng.random(len(truth.boxes)) < 0.1
    pred = truth.boxes[~drop].assign(score=0.9)
    q = hardcases.load_queue(bccd_canonical, pred, split="val")
    assert len(q) == len(truth.images) == 87
    assert q.source["version"] == "v0000"
    b = truth.boxes
    # a zero-area GT box (BloodImage_00338 has one) matches nothing, as in pycocotools
    zero_area = ((b["x2"] <= b["x1"]) | (b["y2"] <= b["y1"])).to_numpy()
    assert zero_area.sum() == 1
    expected_fn = b[drop | zero_area].groupby("image").size()
    got = q.summary.set_index("image")["fn"]
    assert got[got > 0].sort_index().to_dict() == expected_fn.sort_index().to_dict()
    assert q.summary["fp"].sum() == (zero_area & ~drop).sum()  # the zero-area copy, if kept
    assert (q.summary["misclassified"] == 0).all()
    assert q.summary["fn"].is_monotonic_decreasing  # hardest first
    ref = q.refs[q.images[0]]
    assert ref.file.is_file() and ref.original is not None and ref.original.suffix == ".jpg"
    assert hardcases.read_display_image(ref).dtype == np.uint8


def test_display_colours_are_distinct():
    colours = list(DISPLAY_COLOURS.values())
    assert len(set(colours)) == len(colours)


def test_cli_inspect_without_a_display_says_what_to_do(monkeypatch, capsys, tmp_path, bccd_canonical):
    import argparse

    import pandas as pd

    from workbench.cli import inspect as cli_inspect
    from workbench.data.canonical import read_meta

    # inspect ranks the images before it looks for a display (the table stays reusable with --pred)
    first = read_meta(bccd_canonical).query("split == 'val'")["image_id"].iloc[0]
    pd.DataFrame([{"image": first, "x1": 10.0, "y1": 10.0, "x2": 60.0, "y2": 60.0, "class": "RBC",
                   "score": 0.9}]).to_csv(tmp_path / "pred.csv", index=False)

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    parser = argparse.ArgumentParser()
    cli_inspect.register(parser.add_subparsers())
    a = parser.parse_args(["inspect", str(tmp_path / "pred.csv"), "--gt", str(bccd_canonical), "--split", "val"])
    assert a.func(a) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: napari needs a display") and "xvfb-run" in err and "06_inspect_hard_cases" in err
