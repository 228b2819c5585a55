"""The large-image study's scoring on hand-made tables (the study itself runs in notebook 07)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.large_images import ONE_STAGE, TWO_STAGE, WHOLE, _covered, score_methods, verdict


def test_scores_speedups_and_the_goal_verdict():
    gt = pd.DataFrame({"image": ["a"] * 4, "class": "n", "x1": [0.0, 20, 40, 60], "y1": 0.0,
                       "x2": [10.0, 30, 50, 70], "y2": 10.0})
    hit = gt.assign(score=0.9)
    pred = pd.concat([hit.assign(method=ONE_STAGE, setting="t"),  # all 4 found
                      hit.iloc[:2].assign(method=TWO_STAGE, setting="fast"),  # 2 of 4
                      hit.assign(method=TWO_STAGE, setting="good"),
                      hit.iloc[:3].assign(method=WHOLE, setting="w")], ignore_index=True)
    per_image = pd.DataFrame({"method": [ONE_STAGE, TWO_STAGE, TWO_STAGE, WHOLE], "setting": ["t", "fast", "good", "w"],
                              "image": "a", "stage1_s": [np.nan, 0.1, 0.2, np.nan], "stage2_s": [1.2, 0.1, 0.3, 0.6],
                              "total_s": [1.2, 0.2, 0.5, 0.6], "area_share": [1.0, 0.2, 0.4, 1.0],
                              "canvases": [np.nan, 1, 2, np.nan], "cells_in_regions": [np.nan, 0.5, 1.0, np.nan]})
    table = score_methods(per_image, pred, gt, count_thr=0.25).set_index("setting")
    assert table.loc["t", "map50"] == 1.0 and table.loc["t", "recall"] == 1.0
    assert table.loc["fast", "recall"] == 0.5 and table.loc["w", "n_pred"] == 3 and table.loc["w", "n_true"] == 4
    np.testing.assert_allclose(table["speedup"], [1.0, 6.0, 2.4, 2.0])
    assert table.loc["fast", "map50_delta"] < -40 and table.loc["good", "map50_delta"] == 0
    assert table.loc["fast", "cells_in_regions"] == 0.5 and np.isnan(table.loc["t", "stage1_s"])
    goal = verdict(table.reset_index()).set_index("setting")["meets_goal"]
    assert goal.to_dict() == {"fast": False, "good": False}  # one too inaccurate, the other too slow
    assert verdict(table.reset_index(), speedup=2.0)["meets_goal"].tolist() == [False, True]


def test_cells_inside_regions():
    gt = pd.DataFrame({"x1": [0.0, 50], "y1": [0.0, 50], "x2": [10.0, 60], "y2": [10.0, 60]})
    assert _covered(gt, np.array([[0, 0, 20, 20]])) == 0.5
    assert _covered(gt, np.zeros((0, 4))) == 0.0 and np.isnan(_covered(gt, None))
