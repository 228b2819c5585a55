"""Notebook 05's helpers: grouping columns, the side-by-side rates table, profiles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.studies import independent_test as it


def _gt(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"image": img, "class": "RBC", "x1": 0, "y1": 0, "x2": 1, "y2": 1}
            for img, n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2"])


def test_density_groups_are_tertiles_of_objects_per_image():
    meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)]})
    gt = _gt({"i0": 1, "i1": 2, "i2": 5, "i3": 6, "i4": 20, "i5": 30})
    groups = it.derive_groups(meta, gt, "density")
    assert groups.tolist() == ["low", "low", "mid", "mid", "high", "high"]


def test_density_of_an_image_without_boxes_is_low():
    meta = pd.DataFrame({"image_id": ["a", "b", "c", "d"]})
    groups = it.derive_groups(meta, _gt({"b": 3, "c": 9, "d": 27}), "density")
    assert groups.iloc[0] == "low" and groups.iloc[3] == "high"


def test_set_group_is_the_folder_of_the_image_id_and_meta_columns_win():
    meta = pd.DataFrame({"image_id": ["val/setA/x", "val/setB/y", "z"], "dose": ["0", "2", "2"]})
    assert it.derive_groups(meta, _gt({}), "set").tolist() == ["val/setA", "val/setB", "(none)"]
    assert it.derive_groups(meta, _gt({}), "dose").tolist() == ["0", "2", "2"]
    with pytest.raises(ValueError, match="neither a meta.csv column"):
        it.derive_groups(meta, _gt({}), "centre")


def test_rates_wide_puts_systems_side_by_side_with_cis():
    rates = pd.DataFrame({"system": ["detector-only", "cascade"], "group": ["all", "all"],
                          "metric": ["fp_rate", "fp_rate"], "value": [0.25, np.nan], "lo": [0.1, np.nan],
                          "hi": [0.4, np.nan], "count": [1, 0], "total": [4, 0], "n_images": [3, 3]})
    wide = it.rates_wide(rates)
    assert wide.columns.tolist() == ["group", "metric", "detector-only", "cascade"]
    assert wide.iloc[0]["detector-only"] == "0.250 [0.100, 0.400]"
    assert wide.iloc[0]["cascade"] == "n/a"  # an undefined rate (no positive predictions) is not shown as 0


def test_profiles():
    assert it.profile_of("smoke").det_epochs == 1
    assert it.profile_of("full").cls_arch == "resnet34"  # the published classifier
    assert it.profile_of("modest", det_epochs=3).det_epochs == 3
    with pytest.raises(ValueError, match="unknown profile"):
        it.profile_of("huge")


def test_every_study_names_its_profiles_the_same_way():
    from workbench.studies import large_images
    from workbench.studies import large_images_mn
    from workbench.studies import micronuclei
    from workbench.studies.base import pick

    for profiles in (it.PROFILES, large_images.PROFILES, large_images_mn.PROFILES, micronuclei.PROFILES):
        assert {"smoke", "modest", "full"} <= set(profiles)
        assert pick("smoke", profiles) is profiles["smoke"] and pick(profiles["full"], profiles) is profiles["full"]
    with pytest.raises(ValueError, match=r"unknown profile 'fast'; known: \['full', 'modest', 'smoke'\]"):
        pick("fast", micronuclei.PROFILES)
