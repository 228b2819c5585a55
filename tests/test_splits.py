"""Splits: seeded, stable when the library grows, grouped, on the real BCCD meta table.

Hash placement (the default) is tested for its defining property, each image's split being a
function of (seed, unit, ratios) alone, and for shares near the ratios; exact placement
(``exact=True``) for counts within one image. Re-import stability on real folders is in
test_split_stability.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.data.canonical import read_meta
from workbench.data.splits import assign_splits, check_groups, parse_ratios, split_dataset


@pytest.fixture(scope="module")
def meta(bccd_canonical) -> pd.DataFrame:
    return read_meta(bccd_canonical)


@pytest.fixture
def unsplit(meta) -> pd.DataFrame:
    return meta.assign(split="")


def counts(split: pd.Series) -> dict[str, int]:
    return {s: int((split == s).sum()) for s in ("train", "val", "test")}


def assert_near_target(split: pd.Series, ratios, tol: float = 1.0) -> None:
    names = ("train", "val", "test")[: len(ratios)]
    n = len(split)
    for name, r in zip(names, ratios):
        target = r / sum(ratios) * n
        assert abs((split == name).sum() - target) <= tol, (name, counts(split), target)


def test_default_hash_placement_lands_near_8_1_1(unsplit):
    split = assign_splits(unsplit)
    assert split.index.equals(unsplit.index)
    # 292 images placed independently: each count within 3 binomial standard deviations
    for name, p in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        sd = np.sqrt(292 * p * (1 - p))
        assert abs((split == name).sum() - 292 * p) <= 3 * sd, (name, counts(split))


def test_each_image_split_depends_on_nothing_but_seed_unit_and_ratios(unsplit):
    """The defining property: an image's split is the same whichever other images exist."""
    full = assign_splits(unsplit, seed=7).set_axis(unsplit["image_id"])
    for part in (unsplit.iloc[::3], unsplit.iloc[100:140], unsplit.sample(frac=0.5, random_state=2)):
        alone = assign_splits(part.reset_index(drop=True), seed=7).set_axis(part["image_id"])
        assert alone.equals(full[part["image_id"]])
    assert not assign_splits(unsplit, seed=8).equals(assign_splits(unsplit, seed=7))


def test_default_exact_8_1_1_is_within_one_image_of_target(unsplit):
    split = assign_splits(unsplit, exact=True)
    assert counts(split) == {"train": 234, "val": 29, "test": 29}  # 292 * (0.8, 0.1, 0.1) = 233.6, 29.2, 29.2
    assert_near_target(split, (8, 1, 1))
    assert split.index.equals(unsplit.index)


@pytest.mark.parametrize("ratios", [(7, 2, 1), (8, 2), (1, 1, 1), (3, 0, 1), "7:2:1", "8:2"])
def test_any_ratio_within_one_image_with_exact(unsplit, ratios):
    split = assign_splits(unsplit, ratios=ratios, seed=3, exact=True)
    vals = parse_ratios(ratios)
    assert_near_target(split, vals)
    if len(vals) == 2:
        assert set(split) == {"train", "val"}
    # small sets too: every prefix size of the library
    for n in (1, 2, 5, 9, 10, 31):
        assert_near_target(assign_splits(unsplit.head(n), ratios=ratios, seed=n, exact=True), vals)
    # hash placement: a zero ratio is never used, two ratios never give test
    hashed = assign_splits(unsplit, ratios=ratios, seed=3)
    assert set(hashed) <= {n for n, r in zip(("train", "val", "test"), vals) if r > 0}


@pytest.mark.parametrize("exact", [False, True])
def test_deterministic_and_seed_dependent(unsplit, exact):
    a = assign_splits(unsplit, seed=0, exact=exact)
    b = assign_splits(unsplit.sample(frac=1.0, random_state=1).reset_index(drop=True), seed=0, exact=exact)
    # same seed: same assignment, whatever the row order of the table
    assert a.set_axis(unsplit["image_id"]).sort_index().equals(b.set_axis(
        unsplit.sample(frac=1.0, random_state=1)["image_id"].to_numpy()).sort_index())
    c = assign_splits(unsplit, seed=1, exact=exact)
    if exact:
        assert counts(a) == counts(c)
    assert (a != c).sum() > 50  # different seeds give different splits


def test_official_split_is_kept(meta):
    split = assign_splits(meta, ratios=(8, 1, 1))
    assert split.equals(meta["split"].rename("split"))  # BCCD train 205 / val 87, nothing new to place
    assert counts(split) == {"train": 205, "val": 87, "test": 0}
    redo = assign_splits(meta, keep_existing=False, exact=True)
    assert counts(redo) == {"train": 234, "val": 29, "test": 29}


@pytest.mark.parametrize("exact", [False, True])
def test_growth_by_ten_percent_never_moves_existing_images(unsplit, exact):
    first = assign_splits(unsplit, seed=5, exact=exact)
    library = unsplit.assign(split=first)
    # real rows under new ids and with new pixels (a copy with the same pixels joins its original)
    extra = unsplit.sample(n=29, random_state=0).assign(
        image_id=lambda d: d["image_id"] + "_copy", pixel_sha256=lambda d: d["pixel_sha256"] + "x", split="")
    grown = pd.concat([library, extra], ignore_index=True)
    second = assign_splits(grown, seed=5, exact=exact)
    assert second.iloc[: len(library)].equals(first.rename("split"))
    assert second.iloc[len(library):].isin(["train", "val", "test"]).all()
    if exact:
        assert_near_target(second, (8, 1, 1))  # totals still within one image of 8:1:1


def test_exact_growth_with_official_split_fills_the_missing_test_share(meta):
    extra = meta.sample(n=29, random_state=0).assign(image_id=lambda d: d["image_id"] + "_new",
                                                     pixel_sha256=lambda d: d["pixel_sha256"] + "x", split="")
    grown = pd.concat([meta, extra], ignore_index=True)
    split = assign_splits(grown, ratios=(8, 1, 1), exact=True)
    assert split.iloc[: len(meta)].equals(meta["split"].rename("split"))
    # official val (87 of 292) is far over its 10 %: no new image goes there; train and test,
    # both below target, share the new images so that their deficits end up about equal
    new = counts(split.iloc[len(meta):])
    assert new["val"] == 0 and new["train"] + new["test"] == 29
    total = counts(split)
    deficit_train, deficit_test = 0.8 * len(grown) - total["train"], 0.1 * len(grown) - total["test"]
    assert abs(deficit_train - deficit_test) <= 1, (new, deficit_train, deficit_test)


def test_group_by_keeps_groups_together(unsplit):
    number = unsplit["image_id"].str.extract(r"(\d+)$")[0].astype(int)
    df = unsplit.assign(slide=(number // 7).map("slide{:02d}".format))
    for exact in (False, True):
        split = assign_splits(df, group_by="slide", seed=2, exact=exact)
        assert check_groups(df.assign(split=split), "slide").empty
        per_group = df.assign(split=split).groupby("slide")["split"].nunique()
        assert (per_group == 1).all()
    assert_near_target(split, (8, 1, 1), tol=7)  # exact: within about one group (<= 7 images)
    # hash placement: a group's split is its own, whatever other groups exist
    alone = assign_splits(df[df["slide"] == "slide03"], group_by="slide", seed=2)
    both = assign_splits(df, group_by="slide", seed=2)[df["slide"] == "slide03"]
    assert alone.equals(both) and alone.nunique() == 1

    # a group with an assigned image takes its new images into that split
    df2 = df.assign(split=np.where(df["image_id"] == df["image_id"].iloc[0], "test", ""))
    split2 = assign_splits(df2, group_by="slide")
    first_group = df2["slide"].iloc[0]
    assert set(split2[df2["slide"] == first_group]) == {"test"}


def test_group_already_straddling_splits_is_a_clear_error(unsplit):
    df = unsplit.assign(slide="s1", split="").copy()
    df.loc[df.index[0], "split"] = "train"
    df.loc[df.index[1], "split"] = "val"
    report = check_groups(df, "slide")
    assert report.to_dict(orient="records") == [{"group": "s1", "splits": "train:1, val:1", "images": 2}]
    with pytest.raises(ValueError, match=r"'s1' \(train:1, val:1\)"):
        assign_splits(df, group_by="slide")
    # re-splitting from scratch is allowed and then keeps the group together
    assert assign_splits(df, group_by="slide", keep_existing=False).nunique() == 1


@pytest.mark.parametrize("ratios, message", [
    ((-1, 1, 1), r"must not be negative, got -1 for train"),
    ((0, 0, 0), r"must not all be zero"),
    ((7, 1, 1, 1), r"2 \(train:val\) or 3 \(train:val:test\) parts, got 4"),
    ((8,), r"got 1"),
    ("8:x:1", r"must be numbers, got 'x' for val"),
    ((8, float("nan"), 1), r"must be finite"),
])
def test_bad_ratios(unsplit, ratios, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(unsplit, ratios=ratios)


def test_bad_meta_values(unsplit):
    with pytest.raises(ValueError, match=r"group_by column 'patient' is not in meta.csv"):
        assign_splits(unsplit, group_by="patient")
    bad = unsplit.assign(split="trainval")
    with pytest.raises(ValueError, match=r"must be one of .* 292 image\(s\) have other values"):
        assign_splits(bad)
    dup = pd.concat([unsplit.head(2), unsplit.head(1)])
    with pytest.raises(ValueError, match="image ids must be unique"):
        assign_splits(dup)


@pytest.mark.slow
def test_split_dataset_rewrites_lists_yaml_and_records_settings(bccd_canonical, tmp_path):
    root = shutil.copytree(bccd_canonical, tmp_path / "bccd")
    kept = split_dataset(root)  # official split kept: nothing moves
    assert kept.set_index("split")["images"].to_dict() == {"train": 205, "val": 87, "test": 0}
    assert kept["moved"].sum() == 0 and kept["assigned"].sum() == 0

    summary = split_dataset(root, ratios=(7, 2, 1), seed=4, keep_existing=False, exact=True)
    meta = read_meta(root)
    by = summary.set_index("split")
    assert by["images"].to_dict() == counts(meta["split"]) == {"train": 204, "val": 59, "test": 29}
    assert by.loc["train", "objects"] == int(meta.loc[meta["split"] == "train", "n_objects"].sum())
    for name in ("train", "val", "test"):
        listed = (root / f"{name}.txt").read_text().split()
        assert sorted(listed) == sorted(f"./{f}" for f in meta.loc[meta["split"] == name, "file"])
    doc = yaml.safe_load((root / "dataset.yaml").read_text())
    assert (doc["train"], doc["val"], doc["test"]) == ("train.txt", "val.txt", "test.txt")
    info = json.loads((root / "dataset.json").read_text())
    assert info["split"]["ratios"] == [7.0, 2.0, 1.0] and info["split"]["seed"] == 4
    assert info["split"]["exact"] is True and "not stable across re-imports" in info["split"]["method"]
    assert info["split_source"] == "workbench"
    assert any("exact counts" in n for n in summary.attrs["notes"])
    # the same call again changes nothing
    again = split_dataset(root, ratios=(7, 2, 1), seed=4)
    assert again["kept"].sum() == 292 and read_meta(root)["split"].equals(meta["split"])
