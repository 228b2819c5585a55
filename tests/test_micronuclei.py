"""Tests for workbench.analysis.micronuclei: parent assignment, per-cell counts and MN frequency."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import micronuclei as mnx


def table(rows, cls, image="a") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2"], dtype=float)
    df.insert(0, "class", cls)
    df.insert(0, "image", image)
    return df


NUCLEI = table([[0, 0, 30, 30], [50, 0, 80, 30]], "nucleus")


def test_box_gap_is_zero_inside_and_euclidean_outside():
    d = mnx.box_gap(np.array([[10, 10], [33, 34], [-3, 15]]), np.array([[0, 0, 30, 30]]))
    assert d[:, 0].tolist() == [0.0, 5.0, 3.0]


def test_each_mn_goes_to_the_nearest_nucleus_within_reach():
    mn = table([[32, 10, 36, 14],  # 2 px right of nucleus 0, 14 px left of nucleus 1
                [44, 10, 48, 14],  # 16 px from nucleus 0, 2 px from nucleus 1
                [36, 60, 40, 64],  # 30+ px from both: no parent
                [10, 10, 14, 14]],  # inside nucleus 0
               "mn")
    out = mnx.assign_parents(mn, NUCLEI, max_distance=20)
    assert out["parent"].tolist()[:2] == [0, 1]
    assert pd.isna(out["parent"].iloc[2]) and out["parent"].iloc[3] == 0
    assert out["parent_distance"].tolist()[:2] == [4.0, 4.0] and out["parent_distance"].iloc[3] == 0
    assert np.isnan(out["parent_distance"].iloc[2])


def test_equal_gaps_go_to_the_nucleus_with_the_nearer_centre_and_images_do_not_mix():
    nuclei = table([[0, 0, 30, 30], [0, 40, 30, 100]], "nucleus")  # MN sits in the 10 px gap, 5 px from both
    mn = pd.concat([table([[13, 33, 17, 37]], "mn"), table([[13, 33, 17, 37]], "mn", image="b")], ignore_index=True)
    out = mnx.assign_parents(mn, nuclei, max_distance=20)
    assert out["parent"].iloc[0] == 0  # centre of nucleus 0 is 20 px away, of nucleus 1 is 35 px
    assert pd.isna(out["parent"].iloc[1])  # image b has no nuclei


def test_negative_reach_is_rejected():
    with pytest.raises(ValueError, match="max_distance"):
        mnx.assign_parents(table([], "mn"), NUCLEI, max_distance=-1)


def test_parents_from_mask_colours_follow_the_colour_not_the_distance():
    objects = pd.DataFrame({
        "image_id": ["a"] * 4, "class": ["nucleus", "nucleus", "mn", "mn"],
        "x1": [0, 50, 44, 32], "y1": [0, 0, 10, 10], "x2": [30, 80, 48, 36], "y2": [30, 30, 14, 14],
        "source_object": ["nucleus_masks/a.png instance 1 (colour #FF0001)", "nucleus_masks/a.png instance 2 (colour #ff0002)",
                          "mn_masks/a.png instance 1 (colour #ff0001)", "mn_masks/a.png instance 2 (colour #00ff00)"]})
    mn, nuclei = mnx.parents_from_colours(objects)
    assert len(nuclei) == 2
    assert mn["parent"].iloc[0] == 0  # nearer to nucleus 1, but drawn in nucleus 0's colour
    assert pd.isna(mn["parent"].iloc[1])  # no nucleus of that colour


def test_cells_and_frequency_on_a_constructed_image_pair():
    nuclei = pd.concat([table([[0, 0, 30, 30], [50, 0, 80, 30], [100, 0, 130, 30], [0, 50, 30, 80]], "nucleus"),
                        table([[0, 0, 30, 30]], "nucleus", image="b")], ignore_index=True)
    # image a: nucleus 0 has 2 MN, nucleus 1 has 1, nucleus 2 and 3 none; one orphan MN far away
    mn = pd.concat([table([[31, 5, 34, 8], [31, 20, 34, 23], [81, 5, 84, 8], [300, 300, 303, 303]], "mn"),
                    table([], "mn", image="b")], ignore_index=True)
    mn = mnx.assign_parents(mn, nuclei, max_distance=10)
    cells = mnx.cell_table(nuclei, mn)
    assert cells["n_mn"].tolist() == [2, 1, 0, 0, 0]
    assert cells["n_nuclei"].isna().all()  # no 'cell' column: binucleation not marked
    freq = mnx.mn_frequency(cells, mn, images=["a", "b", "c"]).set_index("image")
    assert freq.loc["a", ["n_cells", "n_cells_with_mn", "n_mn", "n_mn_assigned"]].tolist() == [4, 2, 4, 3]
    assert freq.loc["a", "mn_frequency"] == pytest.approx(2 / 4)
    assert freq.loc["a", "mn_per_cell"] == pytest.approx(3 / 4)
    assert freq.loc["b", "mn_frequency"] == 0.0
    assert freq.loc["c", "n_cells"] == 0 and np.isnan(freq.loc["c", "mn_frequency"])
    assert freq["n_binucleated"].isna().all()
    meta = pd.DataFrame({"image_id": ["a", "b", "c"], "set": ["x", "x", "y"]})
    groups = mnx.group_frequency(freq.reset_index(), meta, group_by="set").set_index("set")
    assert groups.loc["x", "mn_frequency"] == pytest.approx(2 / 5)  # pooled over cells, not a mean of images
    assert groups.loc["x", "n_images"] == 2 and np.isnan(groups.loc["y", "mn_frequency"])


def test_binucleated_cells_where_the_nuclei_table_marks_cells():
    nuclei = table([[0, 0, 30, 30], [32, 0, 62, 30], [100, 0, 130, 30]], "nucleus").assign(cell=["c1", "c1", "c2"])
    mn = mnx.assign_parents(table([[40, 32, 43, 35]], "mn"), nuclei, max_distance=10)  # below the 2nd nucleus
    cells = mnx.cell_table(nuclei, mn)
    assert cells["n_nuclei"].tolist() == [2, 1] and cells["n_mn"].tolist() == [1, 0]
    freq = mnx.mn_frequency(cells, mn).iloc[0]
    assert freq["n_cells"] == 2 and freq["n_binucleated"] == 1 and freq["binucleated_share"] == 0.5
    assert freq["mn_frequency"] == 0.5


def test_per_cell_outputs_apply_the_score_threshold():
    boxes = pd.concat([NUCLEI.assign(score=[0.9, 0.1]), table([[31, 5, 34, 8], [81, 5, 84, 8]], "mn").assign(score=[0.8, 0.9])],
                      ignore_index=True)
    mn, cells, freq = mnx.per_cell_outputs(boxes, max_distance=5, score_thr=0.5)
    assert len(cells) == 1 and mn["parent"].tolist()[0] == 0 and pd.isna(mn["parent"].iloc[1])
    assert freq["mn_frequency"].item() == 1.0 and freq["n_mn"].item() == 2


@pytest.mark.slow
def test_real_mnfinder_colour_parents_agree_with_the_nearest_nucleus_rule():
    """On the vendored validation annotations most MN lie next to the nucleus of their colour."""
    from workbench.data import datasets

    root = datasets.prepare("mnfinder")
    objects = pd.read_csv(root / "objects.csv")
    mn, nuclei = mnx.parents_from_colours(objects)
    has = mn["parent"].notna()
    assert has.mean() > 0.8  # most MN reuse a nucleus colour (the provenance notes 89-95 %)
    nearest = mnx.assign_parents(mn.drop(columns=["parent", "parent_distance"]), nuclei, max_distance=1e9)
    agree = (nearest["parent"][has].astype(int) == mn["parent"][has].astype(int)).mean()
    assert agree > 0.7
    freq = mnx.mn_frequency(mnx.cell_table(nuclei, mn), mn)
    assert ((freq["mn_frequency"] > 0) & (freq["mn_frequency"] < 1)).all()
