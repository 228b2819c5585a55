"""The large-image study's scoring on hand-made tables, its cells and their reuse of notebook 08's
detectors (the study itself runs in notebook 07)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.studies.large_images import ONE_STAGE, TWO_STAGE, WHOLE, cells_covered, score_methods, verdict


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
    assert cells_covered(gt, np.array([[0, 0, 20, 20]])) == 0.5
    assert cells_covered(gt, np.zeros((0, 4))) == 0.0 and np.isnan(cells_covered(gt, None))


# ----------------------------------------------------------------------------- micronucleus images

def _mn_truth() -> pd.DataFrame:
    return pd.DataFrame({"image": ["a"] * 4, "class": ["nucleus", "nucleus", "mn", "mn"],
                         "x1": [0.0, 100, 40, 150], "y1": [0.0, 100, 10, 100], "x2": [30.0, 130, 45, 155],
                         "y2": [30.0, 130, 15, 105]})


def test_micronucleus_columns_and_recall_change_against_one_stage():
    from workbench.studies import large_images_mn

    gt = _mn_truth()
    hit = gt.assign(score=0.9)
    pred = pd.concat([hit.assign(method=ONE_STAGE, setting="t"),
                      hit.drop(index=3).assign(method=TWO_STAGE, setting="g"),  # one MN missed
                      hit.iloc[:2].assign(method=WHOLE, setting="w")], ignore_index=True)  # nuclei only
    per_image = pd.DataFrame({"method": [ONE_STAGE, TWO_STAGE, WHOLE], "setting": ["t", "g", "w"], "image": "a",
                              "stage1_s": [np.nan, 0.1, np.nan], "stage2_s": [3.0, 0.4, 0.5], "total_s": [3.0, 0.5, 0.5],
                              "area_share": [1.5, 0.3, 1.0], "canvases": [np.nan, 2, np.nan],
                              "cells_in_regions": [np.nan, 0.5, np.nan]})
    table = large_images_mn.score(per_image, pred, gt, count_thr=0.25).set_index("setting")
    assert table.loc["t", "mn_recall"] == 1.0 and table.loc["g", "mn_recall"] == 0.5
    assert table.loc["g", "mn_recall_delta"] == -50.0 and table.loc["w", "mn_recall"] == 0.0
    assert table.loc["w", "n_pred_mn"] == 0 and (table["n_true_mn"] == 2).all() and (table["nucleus_recall"] == 1).all()
    goal = large_images_mn.verdict(table.reset_index()).set_index("setting")
    assert goal.loc["g", "speedup"] == 6.0 and goal.loc["g", "mn_recall_delta"] == -50.0
    assert not goal.loc["g", "meets_goal"]  # 6x faster, but mAP50 fell by more than a point


def test_a_row_that_finds_nothing_never_meets_the_goal():
    table = pd.DataFrame({"method": [ONE_STAGE, TWO_STAGE], "setting": ["t", "g"], "speedup": [1.0, 9.0],
                          "map50": [0.0, 0.0], "map50_delta": [0.0, 0.0], "recall": 0.0, "area_share": 1.0,
                          "cells_in_regions": np.nan})
    assert verdict(table)["meets_goal"].tolist() == [False]


class _BrightBlobs:
    """Boxes of the bright regions of each array: ``mn`` where the blob peaks above 200,
    ``nucleus`` otherwise (ignores ``imgsz``: it sees arrays at their own size)."""

    def __call__(self, arrays):
        from scipy import ndimage

        out = []
        for a in arrays:
            grey = a.mean(axis=2) if a.ndim == 3 else a.astype(float)
            labels, n = ndimage.label(grey > 60)
            rows = [(float(x.start), float(y.start), float(x.stop), float(y.stop),
                     "mn" if grey[y, x].max() > 200 else "nucleus", 0.9)
                    for y, x in ndimage.find_objects(labels)]
            out.append(pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2", "class", "score"]))
        return out


def test_every_micronucleus_row_reports_boxes_in_native_pixels():
    """One-stage tiling of the upsampled image, both kinds of stage 1, and whole-image passes
    all find the 4 px micronucleus beside its nucleus, where it is in the native image."""
    from dataclasses import replace

    from workbench.studies import large_images_mn
    from workbench.studies import micronuclei
    from workbench.studies.large_images import GuidedSetting

    image = np.full((200, 240), 10, np.uint8)
    image[80:120, 90:130] = 120  # a nucleus
    image[100:104, 136:140] = 255  # its micronucleus, 6 px to the right, centre (138, 102)
    mn = replace(micronuclei.PROFILES["smoke"], scale=2, tile=160)
    guided = (GuidedSetting(margin=12, canvas=160), GuidedSetting(stage1=1.0, margin=12))
    fake = _BrightBlobs()
    methods = large_images_mn.make_methods(mn, fake, fake, lambda base, imgsz: base, guided=guided, whole_scales=(1.0,))
    assert [m for m, _, _ in methods] == [ONE_STAGE, TWO_STAGE, TWO_STAGE, WHOLE]
    for method, setting, fn in methods:
        table, info = fn(image)
        found = table[table["class"] == "mn"]
        assert len(found) == 1, (method, setting)
        centre = (found["x1"] + found["x2"]).item() / 2, (found["y1"] + found["y2"]).item() / 2
        np.testing.assert_allclose(centre, (138, 102), atol=1.0, err_msg=f"{method} {setting}")
        assert (table["class"] == "nucleus").sum() == 1
        if method == TWO_STAGE:  # the same columns whichever stage 1 found the nuclei
            assert list(table.columns) == ["x1", "y1", "x2", "y2", "class", "score"]
            assert info["regions"] == 1 and 0 < info["area_share"] < 0.3
            np.testing.assert_allclose(info["region_boxes"], [[78, 68, 142, 132]], atol=1)  # nucleus + 12 px, native


def test_guided_settings_are_checked():
    import pytest

    from workbench.studies.large_images import GuidedSetting

    assert GuidedSetting(stage1=0.75).label() == "stage 1 whole x0.75, margin 20, merge 0.5, canvas 640"
    for bad in ({"stage1": 0}, {"margin": -1}, {"region_merge": 2}, {"canvas": 8}):
        with pytest.raises(ValueError):
            GuidedSetting(**bad)


def test_imgsz_for_rounds_up_to_the_stride():
    from workbench.studies.large_images import imgsz_for

    assert imgsz_for(869, 3) == 2624 and imgsz_for(1000, 0.25) == 256 and imgsz_for(1000, 0.5) == 512
    assert imgsz_for(10, 1.0) == 32  # never below one stride


def test_part_2_runs_notebook_08s_own_detector_cells_in_its_work_folder(tmp_path):
    """Part 2 trains nothing of its own: its detector cells are notebook 08's (same keys, same
    config, same run folders), so notebook 08's reuse rule decides whether they are trained."""
    from dataclasses import replace

    from workbench.studies import micronuclei
    from workbench.studies.base import Cell
    from workbench.studies.large_images import PROFILES, LargeImagesStudy

    study = LargeImagesStudy(profile="cpu", work_dir=tmp_path)
    cells = study.cells()
    assert [c.key for c in cells[:2]] == ["nuclei_yolov8n_p256_s0", "timing"]
    mn = micronuclei.MicronucleiStudy(profile=replace(micronuclei.PROFILES["cpu"], approaches=("guided",)),
                                      work_dir=tmp_path / "micronuclei")
    expected = [c for c in mn.cells() if c.key != "evaluate"]
    wrapped = [Cell.from_dict(c.config["detector_cell"]) for c in cells if "detector_cell" in c.config]
    assert wrapped == expected
    assert [c.key for c in expected] == ["mn_native_yolov8n_x1_s0", "mn_upsampled_yolov8n_x3_s0"]
    assert cells[-1].key == "micronuclei_timing" and set(cells[-1].needs) == {c.key for c in cells[2:4]}
    assert study.mn.detector_run("upsampled") == tmp_path / "micronuclei" / "runs" / "mn_upsampled_yolov8n_x3_s0_plus16"
    # rebuilt from its arguments (another process), it finds the same detectors
    again = LargeImagesStudy(**study.study_args())
    assert again.mn.work_dir == study.mn.work_dir
    assert [c.to_dict() for c in again.cells()] == [c.to_dict() for c in cells]
    # without a work folder, part 2 uses notebook 08's default one: the two notebooks share detectors
    assert LargeImagesStudy(profile="cpu").mn.work_dir == micronuclei.MicronucleiStudy(profile="cpu").work_dir
    assert [c.key for c in LargeImagesStudy(profile="smoke", micronuclei=False).cells()] == [
        "nuclei_yolov8n_p256_s0", "timing"]
    assert PROFILES["cpu"].train_batch == 16 and PROFILES["cpu"].batch == 16  # training vs inference batch
