"""Style levels: from a user CSV, or derived from measurements with the rule recorded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _tiny import tiny_bccd
from workbench.data.library.style_levels import (
    LEVEL, LevelRule, apply_edges, derive_levels, level_name, levels_from_csv, measure, quantile_edges)


def table(values, column="sharpness") -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"im{k}" for k in range(len(values))], column: values})


def test_quantile_levels_best_end_is_level_0_and_edges_are_recorded():
    t = table([1, 2, 3, 4, 5, 6, 7, 8, 9])
    sharp = derive_levels(t, LevelRule("quantile", "sharpness", k=3, best="high"))
    assert sharp.table[LEVEL].tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]  # sharpest third = level 0
    crowd = derive_levels(t, LevelRule("quantile", "sharpness", k=3, best="low"))
    assert crowd.table[LEVEL].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sharp.rule.edges == pytest.approx((3.6667, 6.3333), abs=1e-3)
    assert sharp.rule.derived and "DERIVED" in sharp.rule.describe() and "3.667" in sharp.rule.describe()
    assert sharp.counts().to_dict() == {0: 3, 1: 3, 2: 3}
    # the fitted rule re-applies unchanged to new images (test images get the training pool's cut points)
    again = derive_levels(table([0.5, 5.0, 100.0]), sharp.rule)
    assert again.table[LEVEL].tolist() == [2, 1, 0] and again.rule.edges == sharp.rule.edges
    assert sharp.rule.to_dict()["description"] == sharp.rule.describe()


def test_unmeasured_images_get_level_minus_one_and_are_counted():
    lv = derive_levels(table([1.0, np.nan, 3.0, 4.0]), LevelRule("quantile", "sharpness", k=2))
    assert lv.table[LEVEL].tolist()[1] == -1 and lv.notes == {"unmeasured": 1}
    assert apply_edges(pd.Series([1.0, 2.0, 3.0]), [2.0], best="low").tolist() == [0, 1, 1]


def test_category_levels_from_density_class():
    t = table(["sparse", "dense", "clustered", "sparse"], column="density")
    rule = LevelRule("categories", "density", mapping={"sparse": 0, "clustered": 1, "dense": 2})
    assert derive_levels(t, rule).table[LEVEL].tolist() == [0, 2, 1, 0]
    assert "sparse->0" in rule.describe()
    with pytest.raises(ValueError, match=r"without a level in the mapping: \['empty'\]"):
        derive_levels(table(["empty"], column="density"), rule)


def test_bad_rules_and_tables_are_refused():
    with pytest.raises(ValueError, match="no column 'contrast'"):
        derive_levels(table([1, 2]), LevelRule("quantile", "contrast", k=2))
    with pytest.raises(ValueError, match="cannot fill 3 bins"):
        quantile_edges(pd.Series([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="2 cut points"):
        derive_levels(table([1, 2, 3]), LevelRule("quantile", "sharpness", k=3, edges=(1.0,)))
    with pytest.raises(ValueError, match="use levels_from_csv"):
        derive_levels(table([1, 2]), LevelRule("user_csv", "sharpness"))


def test_levels_from_a_user_csv(tmp_path):
    path = tmp_path / "levels.csv"
    pd.DataFrame({"image_id": ["a", "b", "c", "x"], "style_level": [0, 3, 5, 1]}).to_csv(path, index=False)
    lv = levels_from_csv(path, ["a", "b", "c"])
    assert lv.table.set_index("image_id")[LEVEL].to_dict() == {"a": 0, "b": 3, "c": 5}
    assert not lv.rule.derived and str(path) in lv.rule.describe() and lv.notes == {"rows_not_in_dataset": 1}
    with pytest.raises(ValueError, match="no style level for 1 image"):
        levels_from_csv(path, ["a", "zz"])
    pd.DataFrame({"image_id": ["a", "b"], "style_level": [0, 1.5]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="non-negative integer"):
        levels_from_csv(path, ["a", "b"])
    pd.DataFrame({"image_id": ["a", "a"], "style_level": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="listed twice"):
        levels_from_csv(path, ["a"])
    with pytest.raises(FileNotFoundError):
        levels_from_csv(tmp_path / "none.csv", ["a"])


def test_level_names():
    assert level_name([2, 0, 1]) == "0-2" and level_name([0, 2]) == "0,2" and level_name([3]) == "3"


def test_levels_derived_from_real_audit_proxies(tmp_path):
    ds = tiny_bccd(tmp_path / "bccd", n_train=6, n_val=3)
    images = measure(ds)
    assert images["sharpness"].gt(0).all() and len(images) == 9
    lv = derive_levels(images, LevelRule("quantile", "sharpness", k=3))
    order = images.assign(level=lv.table[LEVEL].to_numpy()).sort_values("sharpness")
    assert order["level"].is_monotonic_decreasing  # sharper images never get a worse level
    assert lv.counts().to_dict() == {0: 3, 1: 3, 2: 3}
